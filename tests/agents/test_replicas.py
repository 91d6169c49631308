"""Model replicas: spec parsing, least-outstanding routing, per-replica limits, failover and
cool-down, against loopback fake servers (one per replica)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fake_openai import FakeOpenAIServer

from therasim.agents.llm import Gateway, GatewayConfig, RoleConfig, parse_model_spec
from therasim.agents.llm.backends.openai import OpenAIBackend
from therasim.agents.llm.replicas import Replica, ReplicaPolicy, ReplicaPool
from therasim.agents.types import CompletionRequest
from therasim.errors import ConfigError, ModelConnectionError, ServerError

OPEN: list[Gateway] = []


@pytest.fixture(autouse=True)
async def _close_gateways() -> AsyncIterator[None]:
    yield
    while OPEN:
        await OPEN.pop().aclose()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingServer(FakeOpenAIServer):
    """A fake server that records how many requests it held at once."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.inflight = 0
        self.peak = 0

    async def _respond(self, method: str, path: str, raw: bytes) -> tuple[str, str]:
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        try:
            return await super()._respond(method, path, raw)
        finally:
            self.inflight -= 1


def replicated(*urls: str, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"openai:fake?base_url={','.join(urls)}" + (f"&{query}" if query else "")


def make_gateway(
    tmp_path: Path,
    model: str,
    *,
    policy: ReplicaPolicy | None = None,
    concurrency: int = 8,
    **config: Any,
) -> tuple[Gateway, OpenAIBackend]:
    backend = OpenAIBackend(replica_policy=policy)
    config.setdefault("backoff_base_s", 0.0)
    config.setdefault("cache_enabled", False)
    g = Gateway(
        GatewayConfig(
            roles={"subject": RoleConfig(model=model, concurrency=concurrency)},
            cache_path=str(tmp_path / "cache.sqlite"),
            **config,
        ),
        backends={"openai": backend},
    )
    OPEN.append(g)
    return g, backend


def pool_of(backend: OpenAIBackend, spec: str) -> ReplicaPool:
    pool = backend.pool(parse_model_spec(spec))
    assert pool is not None
    return pool


def req(text: str = "hello") -> CompletionRequest:
    return CompletionRequest.of("subject", [{"role": "user", "content": text}])


def dead_url() -> str:
    with FakeOpenAIServer() as server:
        return server.base_url  # the port is closed once the server stops


# ------------------------------------------------------------------ spec parsing


def test_base_url_lists_replicas() -> None:
    spec = parse_model_spec("openai:m?base_url=http://a:8000/v1, http://b:8000/v1&replica_rpm=60")
    assert spec.base_urls == ("http://a:8000/v1", "http://b:8000/v1")
    assert spec.base_url == "http://a:8000/v1"  # what the rest of the code reads
    assert spec.replicated and spec.replica_rpm == 60.0 and spec.replica_concurrency is None
    single = parse_model_spec("openai:m?base_url=http://a:8000/v1")
    assert single.base_urls == ("http://a:8000/v1",) and not single.replicated
    assert single.raw == "openai:m?base_url=http://a:8000/v1"
    assert parse_model_spec("openai:m?base_url=http://a/v1&replica_concurrency=2").replicated


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("openai:m?base_url=http://a/v1,ftp://b/v1", "base URL 2 of 2 'ftp://b/v1' needs an http"),
        ("openai:m?base_url=http://a/v1,,http://c/v1", "base URL 2 of 3 is empty"),
        ("openai:m?base_url=http://a:99999/v1", "base URL 'http://a:99999/v1' is not a valid URL"),
        ("openai:m?base_url=http:///v1,http://b/v1", "base URL 1 of 2 'http:///v1' names no host"),
        ("openai:m?base_url=http://a/v1,http://a/v1", "'http://a/v1' is listed twice"),
        ("openai:m?base_url=http://a/v1&replica_concurrency=0", "replica_concurrency must be"),
        ("openai:m?base_url=http://a/v1&replica_rpm=inf", "replica_rpm must be a positive"),
        ("ollama:m?base_url=http://a/v1,http://b/v1", "need an OpenAI-compatible endpoint"),
        ("openai:m?base_url=http://a/v1&replicas=2", "unknown option(s) replicas"),
        ("openai:m?replica_concurrency=4", "limit the replicas named in base_url"),
    ],
)
def test_spec_errors_name_the_bad_part(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_model_spec(spec)
    assert message in str(info.value)


# ------------------------------------------------------------------ one URL: nothing changes


async def test_single_url_keeps_its_requests_and_cache_key(
    tmp_path: Path, real_requests: None
) -> None:
    with FakeOpenAIServer() as server:
        spec = f"openai:fake?base_url={server.base_url}"
        g, backend = make_gateway(tmp_path, spec, cache_enabled=True)
        await g.complete(req("same"))
        assert backend.pool(parse_model_spec(spec)) is None  # straight to the one endpoint
        # the key of the spec's old form, computed as the gateway always did
        key = req("same").cache_key(spec, {"mode": None})
        assert g.cache is not None and g.cache.get(key) is not None
        sent = req("same")
        assert server.requests == [
            {
                "model": "fake",
                "messages": [{"role": "user", "content": "same"}],
                "temperature": sent.temperature,
                "max_tokens": sent.max_tokens,
            }
        ]
        assert server.headers[0]["host"] == server.base_url.split("/")[2]


async def test_cache_key_does_not_depend_on_the_replica(
    tmp_path: Path, real_requests: None
) -> None:
    with FakeOpenAIServer(latency_s=0.05) as a, FakeOpenAIServer(latency_s=0.05) as b:
        spec = replicated(a.base_url, b.base_url)
        g, _ = make_gateway(tmp_path, spec, cache_enabled=True)
        await asyncio.gather(g.complete(req("one")), g.complete(req("two")))
        assert (a.calls, b.calls) == (1, 1)  # one each
        assert g.cache is not None
        for text in ("one", "two"):
            assert g.cache.get(req(text).cache_key(spec, {"mode": None})) is not None
        assert (await g.complete(req("two"))).cached  # whoever served it
        assert a.calls + b.calls == 2


# ------------------------------------------------------------------ routing and limits


async def test_ties_go_round_robin() -> None:
    pool = ReplicaPool(["http://a", "http://b", "http://c"])
    order: list[str] = []

    async def send(replica: Replica) -> str:
        order.append(replica.url)
        return replica.url

    for _ in range(6):
        await pool.call(send)
    assert order == ["http://a", "http://b", "http://c"] * 2


async def test_more_requests_go_to_the_faster_replica_within_the_limit(
    tmp_path: Path, real_requests: None
) -> None:
    with (
        CountingServer(latency_s=0.01) as fast,
        CountingServer(latency_s=0.25) as slow,
    ):
        spec = replicated(fast.base_url, slow.base_url, replica_concurrency=3)
        g, backend = make_gateway(tmp_path, spec, concurrency=12)
        replies = await asyncio.gather(*(g.complete(req(f"r{i}")) for i in range(36)))
        assert len(replies) == 36 and all(r.attempts == 1 for r in replies)
        assert fast.calls + slow.calls == 36
        assert fast.calls >= 2 * slow.calls
        assert fast.peak <= 3 and slow.peak <= 3  # the per-replica limit, seen by the servers
        stats = pool_of(backend, spec).describe()
        assert all(s["peak_outstanding"] == 3 and s["outstanding"] == 0 for s in stats)


async def test_least_outstanding_beats_round_robin(tmp_path: Path, real_requests: None) -> None:
    with FakeOpenAIServer(latency_s=0.01) as fast, FakeOpenAIServer(latency_s=0.2) as slow:
        g, _ = make_gateway(tmp_path, replicated(fast.base_url, slow.base_url), concurrency=8)
        await asyncio.gather(*(g.complete(req(f"r{i}")) for i in range(32)))
        # round-robin would split 16/16; the slow replica keeps its requests longer
        assert fast.calls + slow.calls == 32 and fast.calls >= 3 * slow.calls


async def test_rpm_applies_per_replica(tmp_path: Path, real_requests: None) -> None:
    with FakeOpenAIServer() as a, FakeOpenAIServer() as b:
        # one request per 0.1 s on each replica: 6 requests, 3 each, take at least 0.2 s
        g, _ = make_gateway(tmp_path, replicated(a.base_url, b.base_url, replica_rpm=600))
        started = time.perf_counter()
        await asyncio.gather(*(g.complete(req(f"r{i}")) for i in range(6)))
        assert time.perf_counter() - started >= 0.18
        assert (a.calls, b.calls) == (3, 3)


# ------------------------------------------------------------------ failure and recovery


async def test_closed_port_fails_over_then_is_retried_after_its_cooldown(
    tmp_path: Path, real_requests: None
) -> None:
    clock = Clock()
    dead = dead_url()
    with FakeOpenAIServer() as live:
        spec = replicated(dead, live.base_url)
        policy = ReplicaPolicy(cooldown_base_s=10, cooldown_max_s=15, clock=clock)
        g, backend = make_gateway(tmp_path, spec, policy=policy)
        pool = pool_of(backend, spec)
        down = pool.replicas[0]
        for i in range(5):
            reply = await g.complete(req(f"r{i}"))
            assert reply.attempts == 1  # the pool failed over inside one gateway attempt
        assert live.calls == 5 and down.failed == 1 and down.failures == 1
        assert g.accounting.for_role("subject").retries == 0

        clock.now += 9.9  # still cooling down: not tried
        await g.complete(req("a"))
        assert down.failed == 1
        clock.now += 0.2  # back: probed (and fails again), the request still succeeds
        await g.complete(req("b"))
        await g.complete(req("c"))
        assert down.failed == 2 and live.calls == 8
        assert down.down_until == pytest.approx(clock.now + 15)  # doubled, then capped
        clock.now += 15.1
        await g.complete(req("d"))
        await g.complete(req("e"))
        assert down.failed == 3 and live.calls == 10


async def test_a_recovered_replica_takes_traffic_again(tmp_path: Path, real_requests: None) -> None:
    clock = Clock()
    with FakeOpenAIServer(default="500") as flaky, FakeOpenAIServer() as steady:
        spec = replicated(flaky.base_url, steady.base_url)
        g, backend = make_gateway(
            tmp_path, spec, policy=ReplicaPolicy(cooldown_base_s=1, clock=clock)
        )
        replica = pool_of(backend, spec).replicas[0]
        await g.complete(req("first"))  # 500 on flaky, answered by steady
        assert (flaky.calls, steady.calls) == (1, 1) and replica.failures == 1
        flaky.default = "ok"
        for i in range(3):
            await g.complete(req(f"r{i}"))
        assert flaky.calls == 1  # cooling down: no traffic
        clock.now += 1.5
        for i in range(4):
            await g.complete(req(f"s{i}"))
        assert replica.failures == 0 and flaky.calls == 3  # the probe passed: round-robin again


async def test_a_timeout_takes_the_replica_out(tmp_path: Path, real_requests: None) -> None:
    with FakeOpenAIServer(default="timeout", hang_s=5) as hung, FakeOpenAIServer() as ok:
        spec = replicated(hung.base_url, ok.base_url)
        g, backend = make_gateway(tmp_path, spec, timeout_s=0.3)
        first = await g.complete(req("first"))
        assert first.attempts == 2  # the gateway's timeout, then its retry on the other replica
        replica = pool_of(backend, spec).replicas[0]
        assert replica.failed == 1 and replica.failures == 1
        later = await g.complete(req("later"))
        assert later.attempts == 1 and (hung.calls, ok.calls) == (1, 2)


async def test_a_429_leaves_the_replica_up(tmp_path: Path, real_requests: None) -> None:
    with FakeOpenAIServer(plan=["429"]) as a, FakeOpenAIServer() as b:
        spec = replicated(a.base_url, b.base_url)
        g, backend = make_gateway(tmp_path, spec)
        reply = await g.complete(req())
        assert reply.attempts == 2  # the gateway's backoff handles rate limits, as before
        assert all(s["up"] for s in pool_of(backend, spec).describe())


async def test_every_replica_failing_is_bounded_and_names_the_replica(
    tmp_path: Path, real_requests: None
) -> None:
    with FakeOpenAIServer(default="500") as a, FakeOpenAIServer(default="500") as b:
        spec = replicated(a.base_url, b.base_url)
        g, _ = make_gateway(tmp_path, spec, max_attempts=2)
        with pytest.raises(ServerError, match=r"replica http://127\.0\.0\.1.*after 2 attempts"):
            await g.complete(req())
        # attempt 1: a, then b; attempt 2: both down, one probe of the one back soonest
        assert a.calls + b.calls == 3
    dead = [dead_url(), dead_url()]
    g, _ = make_gateway(tmp_path, replicated(*dead), max_attempts=2)
    with pytest.raises(ModelConnectionError, match="after 2 attempts"):
        await g.complete(req())


def test_cooldown_doubles_up_to_its_cap() -> None:
    policy = ReplicaPolicy(cooldown_base_s=1, cooldown_max_s=10)
    assert [policy.cooldown(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
