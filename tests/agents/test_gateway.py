"""The gateway: specs, roles, cache, retries, limits, accounting, structured output."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from factories import scripted_agents
from fake_openai import FakeOpenAIServer
from pydantic import BaseModel

from therasim.agents.llm import (
    BUILTIN_BACKENDS,
    FunctionBackend,
    Gateway,
    GatewayConfig,
    Price,
    RoleConfig,
    builtin_backends,
    parse_model_spec,
)
from therasim.agents.llm.backends import Backend, RawCompletion
from therasim.agents.llm.backends.openai import status_error
from therasim.agents.types import CompletionRequest, Usage
from therasim.errors import (
    ConfigError,
    ModelConnectionError,
    ModelRequestsBlocked,
    ModelTimeout,
    PermanentModelError,
    RateLimited,
    ServerError,
    StructuredOutputError,
    UnknownNameError,
)


class Verdict(BaseModel):
    met: bool
    reason: str


OPEN: list[Gateway] = []


@pytest.fixture(autouse=True)
async def _close_gateways() -> AsyncIterator[None]:
    """Every gateway a test makes is closed after it (its HTTP session bound to the test's loop)."""
    yield
    while OPEN:
        await OPEN.pop().aclose()


def gateway(
    tmp_path: Path, model: str, backends: dict[str, Backend] | None = None, **config: object
) -> Gateway:
    role = RoleConfig(
        model=model, **{k: v for k, v in config.items() if k in RoleConfig.model_fields}
    )
    rest = {k: v for k, v in config.items() if k not in RoleConfig.model_fields}
    rest.setdefault("backoff_base_s", 0.0)
    g = Gateway(
        GatewayConfig(
            roles={"subject": role, "judge": role},
            cache_path=str(tmp_path / "cache.sqlite"),
            **rest,
        ),  # type: ignore[arg-type]
        backends=backends,
    )
    OPEN.append(g)
    return g


def req(text: str = "hello", role: str = "subject", **kw: object) -> CompletionRequest:
    return CompletionRequest.of(role, [{"role": "user", "content": text}], **kw)  # type: ignore[arg-type]


def scripted_openai(
    tmp_path: Path, replies: list[str] | None = None, **config: object
) -> tuple[Gateway, FunctionBackend]:
    """A gateway whose ``openai:`` backend is a :class:`FunctionBackend` answering ``replies`` in
    turn (then an echo); the spec is ``openai:fake``."""
    queue = list(replies or [])

    def reply(request: CompletionRequest) -> str:
        return queue.pop(0) if queue else f"I hear you. You said: {request.messages[-1].content}"

    backend = FunctionBackend(reply)
    return gateway(tmp_path, "openai:fake", backends={"openai": backend}, **config), backend


VALID = '{"met": true, "reason": "Looks fine."}'
BROKEN = '{"met": tru, "reason": "broken'


# ------------------------------------------------------------------ specs and roles


def test_model_specs_parse_every_backend() -> None:
    assert parse_model_spec("local").backend == "local"
    assert parse_model_spec("local:/models/x.gguf").name == "/models/x.gguf"
    s = parse_model_spec("openai:gpt-4o-mini?base_url=http://127.0.0.1:8000/v1&api_key_env=MY_KEY")
    assert (s.backend, s.name, s.base_url, s.api_key_env) == (
        "openai",
        "gpt-4o-mini",
        "http://127.0.0.1:8000/v1",
        "MY_KEY",
    )
    assert parse_model_spec("anthropic:claude-x").backend == "anthropic"
    assert parse_model_spec("scripted:adherent").name == "adherent"
    assert parse_model_spec("python:pkg.mod:fn").name == "pkg.mod:fn"


def test_unknown_backend_lists_known_and_suggests() -> None:
    with pytest.raises(UnknownNameError) as info:
        parse_model_spec("opnai:gpt-4o")
    message = str(info.value)
    assert "did you mean 'openai'" in message
    assert "local" in message and "scripted" in message
    with pytest.raises(ConfigError):
        parse_model_spec("openai:gpt?colour=red")
    with pytest.raises(ConfigError):
        parse_model_spec("python:no_function_here")


def test_roles_resolve_judges_and_default() -> None:
    config = GatewayConfig(
        roles={"judge": RoleConfig(model="scripted:a"), "default": RoleConfig(model="scripted:b")}
    )
    assert config.role("judge:strict").model == "scripted:a"
    assert config.role("patient").model == "scripted:b"
    with pytest.raises(UnknownNameError, match="did you mean 'subject'"):
        GatewayConfig(roles={"subject": RoleConfig(model="local")}).role("subjekt")


# ------------------------------------------------------------------ the backend registry


def test_every_backend_name_is_registered() -> None:
    registry = builtin_backends()
    assert registry.names() == sorted(BUILTIN_BACKENDS)
    real = {name for name in BUILTIN_BACKENDS if registry.create(name).real}
    assert real == set(BUILTIN_BACKENDS) - {"scripted", "python"}
    assert [n for n in BUILTIN_BACKENDS if registry.create(n).local] == ["local"]
    with pytest.raises(UnknownNameError, match="did you mean 'openai'"):
        registry.create("opena")


async def test_function_backend_sync_and_async(tmp_path: Path) -> None:
    async def shout(request: CompletionRequest) -> str:
        await asyncio.sleep(0)
        return request.messages[-1].content.upper()

    g = gateway(
        tmp_path,
        "openai:fake",
        backends={
            "openai": FunctionBackend(shout),
            "anthropic": FunctionBackend(lambda r: RawCompletion("fixed", Usage(output_tokens=9))),
        },
    )
    assert (await g.complete(req("hi"))).text == "HI"  # not real: no opt-in needed
    fixed = await g.complete(req("x", model="anthropic:claude-x"))
    assert (fixed.text, fixed.usage.output_tokens) == ("fixed", 9)
    failures = [RateLimited("busy")]

    def flaky(request: CompletionRequest) -> str:
        if failures:
            raise failures.pop()
        return "after a retry"

    retried = gateway(tmp_path, "openai:fake", backends={"openai": FunctionBackend(flaky)})
    assert (await retried.complete(req("y"))).attempts == 2


# ------------------------------------------------------------------ scripted and python


def _echo(request: CompletionRequest) -> str:
    return "echo: " + request.messages[-1].content


async def test_scripted_backend_and_unknown_name(tmp_path: Path) -> None:
    g = gateway(tmp_path, "scripted:test-echo")
    resp = await g.complete(req("hi"))
    assert resp.text == "echo: hi"
    assert resp.usage.output_tokens > 0
    bad = gateway(tmp_path, "scripted:test-ecko")
    with pytest.raises(UnknownNameError, match="did you mean 'test-echo'"):
        await bad.complete(req("hi"))


def sync_app(messages: list[dict[str, str]]) -> str:
    return f"{len(messages)} messages, last {messages[-1]['content']}"


async def async_app(messages: list[dict[str, str]]) -> dict[str, str]:
    await asyncio.sleep(0)
    return {"content": messages[-1]["content"].upper()}


async def test_python_backend_sync_and_async(tmp_path: Path) -> None:
    g = gateway(tmp_path, f"python:{__name__}:sync_app")
    assert (await g.complete(req("x"))).text == "1 messages, last x"
    g2 = gateway(tmp_path, f"python:{__name__}:async_app")
    assert (await g2.complete(req("shout"))).text == "SHOUT"


TIMEOUT_CALLS = {"n": 0}


async def timing_out_app(messages: list[dict[str, str]]) -> str:
    TIMEOUT_CALLS["n"] += 1
    raise TimeoutError("db read timed out")


async def test_an_apps_own_timeout_error_is_its_error_not_the_gateways(tmp_path: Path) -> None:
    """A ``python:`` app's exceptions are permanent, its own TimeoutError too: one call, its
    message, not "no answer within 120 s" after four attempts."""
    TIMEOUT_CALLS["n"] = 0
    g = gateway(tmp_path, f"python:{__name__}:timing_out_app", max_attempts=4, timeout_s=120)
    with pytest.raises(PermanentModelError, match="TimeoutError: db read timed out"):
        await g.complete(req("x"))
    assert TIMEOUT_CALLS["n"] == 1


# ------------------------------------------------------------------ the OpenAI path


async def test_real_calls_blocked_by_default(tmp_path: Path) -> None:
    backend = FunctionBackend(lambda r: "never", real=True)
    g = gateway(tmp_path, "openai:fake", backends={"openai": backend})
    with pytest.raises(ModelRequestsBlocked) as info:
        await g.complete(req())
    assert "role subject" in str(info.value) and "openai:fake" in str(info.value)
    assert backend.calls == []
    with pytest.raises(ModelRequestsBlocked):  # the real backend too, before any connection
        await gateway(tmp_path, "openai:fake?base_url=http://127.0.0.1:9/v1").complete(req())


async def test_repeated_request_served_from_cache(tmp_path: Path) -> None:
    g, backend = scripted_openai(tmp_path)
    first = await g.complete(req("same", seed=3))
    second = await g.complete(req("same", seed=3))
    assert len(backend.calls) == 1
    assert second.cached and not first.cached
    assert second.text == first.text
    assert g.cache is not None and (g.cache.hits, g.cache.misses) == (1, 1)
    # a different repeat index is a different sample: it reaches the backend
    await g.complete(req("same", seed=3, repeat=1))
    assert len(backend.calls) == 2
    assert g.accounting.for_role("subject").backend_calls == 2


async def test_cache_key_is_unchanged(tmp_path: Path) -> None:
    # existing caches must keep hitting: the key format is the request's hash with the mode
    g, _ = scripted_openai(tmp_path)
    await g.complete(req("same", seed=3))
    key = req("same", seed=3).cache_key("openai:fake", {"mode": None})
    assert g.cache is not None and g.cache.get(key) is not None


async def test_cache_can_be_bypassed(tmp_path: Path) -> None:
    g, backend = scripted_openai(tmp_path, cache_enabled=False)
    await g.complete(req("same"))
    await g.complete(req("same"))
    assert len(backend.calls) == 2


async def test_429_twice_then_success(tmp_path: Path, real_requests: None) -> None:
    with FakeOpenAIServer(plan=["429", "429", "ok"]) as server:
        g = gateway(tmp_path, f"openai:fake?base_url={server.base_url}")
        resp = await g.complete(req())
        assert server.calls == 3
        assert resp.attempts == 3
        assert g.accounting.for_role("subject").retries == 2


async def test_retries_are_bounded(tmp_path: Path, real_requests: None) -> None:
    with FakeOpenAIServer(default="429") as server:
        g = gateway(tmp_path, f"openai:fake?base_url={server.base_url}", max_attempts=3)
        with pytest.raises(RateLimited, match=r"role subject.*after 3 attempts"):
            await g.complete(req())
        assert server.calls == 3


async def test_timeout_is_retried(tmp_path: Path, real_requests: None) -> None:
    with FakeOpenAIServer(plan=["timeout", "ok"], hang_s=5) as server:
        g = gateway(tmp_path, f"openai:fake?base_url={server.base_url}", timeout_s=0.3)
        resp = await g.complete(req())
        assert resp.attempts == 2 and server.calls == 2
    with FakeOpenAIServer(default="timeout", hang_s=5) as server:
        g = gateway(
            tmp_path, f"openai:fake?base_url={server.base_url}", timeout_s=0.2, max_attempts=2
        )
        with pytest.raises(ModelTimeout, match="openai:fake"):
            await g.complete(req("other"))


async def test_a_synchronous_scripted_agent_runs_without_the_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scripted agent seen to answer synchronously cannot be interrupted, so the gateway arms
    no timer for it after its first call; an asynchronous one keeps the timeout."""
    from therasim.agents.llm import gateway as gateway_module

    armed: list[float] = []
    real_timeout = asyncio.timeout

    def counting_timeout(delay: float | None) -> asyncio.Timeout:
        armed.append(delay or 0.0)
        return real_timeout(delay)

    monkeypatch.setattr(gateway_module.asyncio, "timeout", counting_timeout)

    async def slow(request: CompletionRequest) -> str:
        await asyncio.sleep(5)
        return "late"

    with scripted_agents({"sync-echo": lambda r: "ok", "slow-async": slow}):
        g = gateway(tmp_path, "scripted:sync-echo", timeout_s=0.2)
        for n in range(3):
            assert (await g.complete(req(f"turn {n}"))).text == "ok"
        assert armed == [0.2]  # the first call, before the agent was seen to be synchronous
        g = gateway(tmp_path, "scripted:slow-async", timeout_s=0.2, max_attempts=1)
        for _ in range(2):
            with pytest.raises(ModelTimeout, match="scripted:slow-async"):
                await g.complete(req())
        assert armed == [0.2, 0.2, 0.2]


async def test_http_answers_map_onto_the_error_tree(tmp_path: Path, real_requests: None) -> None:
    with FakeOpenAIServer(plan=["500", "ok"]) as server:
        g = gateway(tmp_path, f"openai:fake?base_url={server.base_url}", cache_enabled=False)
        assert (await g.complete(req())).attempts == 2  # a 5xx is retried
    with FakeOpenAIServer(default="401") as server:
        g = gateway(tmp_path, f"openai:fake?base_url={server.base_url}", max_attempts=3)
        with pytest.raises(PermanentModelError, match="HTTP 401: Incorrect API key provided"):
            await g.complete(req())
        assert server.calls == 1  # never retried
    with FakeOpenAIServer(default="not_a_completion") as server:
        g = gateway(tmp_path, f"openai:fake?base_url={server.base_url}", max_attempts=2)
        with pytest.raises(ServerError, match=r"malformed chat completion.*after 2 attempts"):
            await g.complete(req())


@pytest.mark.parametrize(
    ("status", "body", "kind", "detail"),
    [
        (429, b'{"error": {"message": "slow down"}}', RateLimited, "HTTP 429: slow down"),
        (408, b"", ModelTimeout, "HTTP 408: "),
        (503, b"upstream busy", ServerError, "HTTP 503: upstream busy"),
        (400, b'{"error": "bad request"}', PermanentModelError, "HTTP 400: bad request"),
        (404, b'{"detail": "no such model"}', PermanentModelError, 'HTTP 404: {"detail"'),
    ],
)
def test_status_codes_map_onto_the_tree(
    status: int, body: bytes, kind: type[Exception], detail: str
) -> None:
    error = status_error(status, body, "subject", "openai:m")
    assert type(error) is kind
    assert error.detail.startswith(detail)
    assert str(error).startswith("[role subject, model openai:m] HTTP")


async def test_dropped_connection_is_retried(tmp_path: Path, real_requests: None) -> None:
    with FakeOpenAIServer(plan=["disconnect", "ok"]) as server:
        g = gateway(tmp_path, f"openai:fake?base_url={server.base_url}", cache_enabled=False)
        resp = await g.complete(req())
        assert resp.attempts == 2 and server.calls == 2
    with FakeOpenAIServer(default="disconnect") as server:
        g = gateway(tmp_path, f"openai:fake?base_url={server.base_url}", max_attempts=2)
        with pytest.raises(ModelConnectionError, match="after 2 attempts"):
            await g.complete(req())


async def test_unreachable_endpoint_is_a_connection_error(
    tmp_path: Path, real_requests: None
) -> None:
    with FakeOpenAIServer() as server:
        dead = server.base_url  # the port is free again once the server stops
    g = gateway(tmp_path, f"openai:fake?base_url={dead}", max_attempts=2)
    with pytest.raises(ModelConnectionError, match=r"role subject.*after 2 attempts"):
        await g.complete(req())


async def test_proxy_from_the_environment(
    tmp_path: Path, real_requests: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with FakeOpenAIServer() as proxy:  # answers the proxied request itself
        monkeypatch.setenv("HTTP_PROXY", proxy.base_url.removesuffix("/v1"))
        unreachable = "http://127.0.0.1:9/v1"  # only the proxy makes this work
        g = gateway(tmp_path, f"openai:fake?base_url={unreachable}", cache_enabled=False)
        assert (await g.complete(req("via proxy"))).text.startswith("I hear you")
        assert proxy.calls == 1
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        direct = gateway(tmp_path, f"openai:fake?base_url={unreachable}", max_attempts=1)
        with pytest.raises(ModelConnectionError):  # NO_PROXY: straight to the dead port
            await direct.complete(req("direct"))
        assert proxy.calls == 1


async def test_request_body_and_headers(
    tmp_path: Path, real_requests: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THERASIM_TEST_KEY", "sk-test-123")
    with FakeOpenAIServer() as server:
        keyed = f"openai:fake?base_url={server.base_url}&api_key_env=THERASIM_TEST_KEY"
        await gateway(tmp_path, keyed).complete(req("hi", seed=7, max_tokens=50))
        await gateway(tmp_path, f"openai:fake?base_url={server.base_url}").complete(req("yo"))
        keyed_body, plain_body = server.requests
        keyed_headers, plain_headers = server.headers
    assert keyed_body["messages"] == [{"role": "user", "content": "hi"}]
    assert (keyed_body["model"], keyed_body["seed"], keyed_body["max_tokens"]) == ("fake", 7, 50)
    assert "max_completion_tokens" not in keyed_body  # compatible servers read max_tokens
    assert keyed_headers["authorization"] == "Bearer sk-test-123"
    assert keyed_headers["content-type"] == plain_headers["content-type"] == "application/json"
    assert "authorization" not in plain_headers  # no key configured, none sent
    assert plain_body["messages"] == [{"role": "user", "content": "yo"}]


async def test_a_repeat_sends_a_new_seed(tmp_path: Path, real_requests: None) -> None:
    # A seeded server (llama.cpp, vLLM) returns the same sample for the same seed: a patient's
    # retry after a rejected answer must send another one, or it gets the rejected answer again.
    with FakeOpenAIServer() as server:
        g = gateway(tmp_path, f"openai:fake?base_url={server.base_url}")
        for repeat in (0, 1, 2):
            await g.complete(req("again", seed=7, repeat=repeat))
        await g.complete(req("unseeded", repeat=1))
        seeds = [body.get("seed") for body in server.requests]
    assert seeds[0] == 7, "a first attempt sends its seed as it is"
    assert len(set(seeds[:3])) == 3
    assert seeds[3] is None, "no seed is made up for an unseeded request"


async def test_broken_json_repaired_in_one_round(tmp_path: Path) -> None:
    g, backend = scripted_openai(tmp_path, [BROKEN, VALID])
    verdict, resp = await g.structured(req("judge this", role="judge:a"), Verdict)
    assert verdict.met is True
    assert len(backend.calls) == 2  # the broken answer, then one repair
    (_, first_mode), (repair, repair_mode) = backend.calls
    assert "not valid JSON" in repair.messages[-1].content
    assert repair.messages[-2].content == BROKEN
    assert first_mode == repair_mode == resp.structured_mode == "json_schema"
    # the one response (stored as one call row) carries both calls' tokens, as metered
    sent = g.accounting.for_role("judge:a")
    assert resp.usage.input_tokens == sent.input_tokens > 0
    assert resp.usage.output_tokens == sent.output_tokens and resp.attempts == 2


async def test_structured_falls_back_to_json_object_and_remembers(
    tmp_path: Path, real_requests: None
) -> None:
    with FakeOpenAIServer(reject_json_schema=True) as server:
        g = gateway(tmp_path, f"openai:fake?base_url={server.base_url}")
        _, resp = await g.structured(req("one", role="judge:a"), Verdict)
        assert resp.structured_mode == "json_object"
        assert server.requests[-1]["response_format"]["type"] == "json_object"
        assert "schema" in server.requests[-1]["response_format"]
        calls_before = server.calls
        await g.structured(req("two", role="judge:a"), Verdict)
        assert server.calls == calls_before + 1  # json_object tried first now
        # and a new gateway on the same cache file remembers it too
        g2 = gateway(tmp_path, f"openai:fake?base_url={server.base_url}")
        await g2.structured(req("three", role="judge:a"), Verdict)
        assert server.requests[-1]["response_format"]["type"] == "json_object"


async def test_structured_output_error_when_nothing_parses(tmp_path: Path) -> None:
    g, backend = scripted_openai(tmp_path, [BROKEN] * 6)
    with pytest.raises(StructuredOutputError, match=r"role judge:a.*Verdict"):
        await g.structured(req("x", role="judge:a"), Verdict)
    # every mode, each with one repair round
    assert [mode for _, mode in backend.calls] == [
        "json_schema",
        "json_schema",
        "json_object",
        "json_object",
        "prompt",
        "prompt",
    ]


# ------------------------------------------------------------------ limits and accounting


async def test_concurrency_limit_per_role(tmp_path: Path) -> None:
    in_flight = 0
    peak = 0

    async def slow(request: CompletionRequest) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return "ok"

    g = gateway(tmp_path, "scripted:test-slow", concurrency=2)
    with scripted_agents({"test-slow": slow}):
        await asyncio.gather(*(g.complete(req(str(i))) for i in range(8)))
    assert peak == 2


async def test_requests_per_minute_limit(tmp_path: Path) -> None:
    g = gateway(tmp_path, "scripted:test-echo", rpm=600)  # one call per 0.1 s
    started = time.perf_counter()
    await asyncio.gather(*(g.complete(req(str(i))) for i in range(4)))
    assert time.perf_counter() - started >= 0.28


async def test_tokens_and_cost_per_role(tmp_path: Path, real_requests: None) -> None:
    with FakeOpenAIServer() as server:
        g = Gateway(
            GatewayConfig(
                roles={"subject": RoleConfig(model=f"openai:priced?base_url={server.base_url}")},
                cache_enabled=False,
                prices={"priced": Price(input_per_mtok=1_000_000, output_per_mtok=2_000_000)},
            )
        )
        OPEN.append(g)
        resp = await g.complete(req("a" * 40))
        body = server.requests[0]
        assert resp.usage.input_tokens == sum(len(m["content"]) // 4 for m in body["messages"])
        expected = resp.usage.input_tokens * 1.0 + resp.usage.output_tokens * 2.0
        assert resp.usage.cost_usd == pytest.approx(expected)
        totals = g.accounting.for_role("subject")
        assert totals.input_tokens == resp.usage.input_tokens
        assert totals.cost_usd == pytest.approx(expected)


# ------------------------------------------------------------------ the local backend's sizing


def fake_local(
    monkeypatch: pytest.MonkeyPatch, server: FakeOpenAIServer, start_s: float = 0.0
) -> list[str | None]:
    """Point ``local`` at ``server``; the stand-in start blocks for ``start_s`` like the real one.

    Returns the list of start-ups (one entry per ``ensure_local_server`` call).
    """
    from therasim.agents import local

    starts: list[str | None] = []

    def ensure(gguf: str | None = None, **_: object) -> object:
        starts.append(gguf)
        time.sleep(start_s)  # blocking, as the real start and warm-up are
        return local.LocalServer(
            model_path=Path("model.gguf"),
            port=int(server.base_url.rsplit(":", 1)[1].split("/")[0]),
            process=None,  # type: ignore[arg-type]
            log_path=Path("log"),
        )

    monkeypatch.setattr(local, "ensure_local_server", ensure)
    return starts


def test_local_timeout_is_sized_per_backend() -> None:
    local, remote = parse_model_spec("local"), parse_model_spec("openai:gpt-4o-mini")
    config = GatewayConfig()
    assert config.timeout_for(local) == 600.0 and config.timeout_for(remote) == 120.0
    only_timeout = GatewayConfig(timeout_s=5)  # as today: one timeout for every backend
    assert only_timeout.timeout_for(local) == 5 and only_timeout.timeout_for(remote) == 5
    both = GatewayConfig(timeout_s=5, local_timeout_s=50)
    assert both.timeout_for(local) == 50 and both.timeout_for(remote) == 5


async def test_local_default_max_tokens_never_overrides_the_caller(
    tmp_path: Path, real_requests: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAIServer() as server:
        fake_local(monkeypatch, server)
        g = gateway(tmp_path, "local", local_max_tokens=64, cache_enabled=False)
        await g.complete(req("unset"))
        await g.complete(req("set by the caller", max_tokens=300))
        await g.structured(req("structured, unset", role="judge:a"), Verdict)
        await g.structured(req("structured, set", role="judge:a", max_tokens=90), Verdict)
        assert [r["max_tokens"] for r in server.requests] == [64, 300, 512, 90]
        capped = gateway(tmp_path, "local", max_tokens=77, cache_enabled=False)  # the role's cap
        await capped.complete(req("role cap"))
        assert server.requests[-1]["max_tokens"] == 77
        remote = gateway(
            tmp_path,
            f"openai:fake?base_url={server.base_url}",
            local_max_tokens=64,
            cache_enabled=False,
        )
        await remote.complete(req("remote, unset"))
        assert server.requests[-1]["max_tokens"] == 256  # the request's own default, not local's


async def test_local_server_starts_once_outside_the_timed_call(
    tmp_path: Path, real_requests: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAIServer() as server:
        starts = fake_local(monkeypatch, server, start_s=0.6)
        g = gateway(tmp_path, "local", local_timeout_s=0.3, cache_enabled=False)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        clock = asyncio.create_task(ticker())
        replies = await asyncio.gather(*(g.complete(req(f"first {i}")) for i in range(4)))
        clock.cancel()
        assert starts == [None], "one start-up for concurrent first calls"
        assert all(r.attempts == 1 and r.latency_s < 0.3 for r in replies)  # start not timed
        assert ticks >= 10, "the blocking start-up ran off the event loop"
        await g.complete(req("later"))
        assert starts == [None]


async def test_local_calls_queue_in_the_gateway_not_in_the_timeout(
    tmp_path: Path, real_requests: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # llama.cpp's server answers one completion at a time; four calls of 0.2 s each under a 0.5 s
    # timeout all succeed, because each call's clock starts when the server starts on it
    with FakeOpenAIServer(latency_s=0.2) as server:
        fake_local(monkeypatch, server)
        g = gateway(tmp_path, "local", local_timeout_s=0.5, concurrency=8, cache_enabled=False)
        began = time.perf_counter()
        replies = await asyncio.gather(*(g.complete(req(f"q{i}")) for i in range(4)))
        assert time.perf_counter() - began >= 0.8  # one at a time
        assert all(r.attempts == 1 for r in replies) and server.calls == 4


async def test_local_timeout_is_not_retried(
    tmp_path: Path, real_requests: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the server keeps generating for an abandoned request: a retry would wait behind it
    with FakeOpenAIServer(plan=["timeout", "ok"], hang_s=2) as server:
        fake_local(monkeypatch, server)
        g = gateway(tmp_path, "local", local_timeout_s=0.3, max_attempts=4)
        with pytest.raises(ModelTimeout, match=r"within 0.3 s.*not retried") as info:
            await g.complete(req())
        assert server.calls == 1
        assert info.value.role == "subject" and info.value.model == "local"
        usage = g.accounting.for_role("subject")
        assert (usage.retries, usage.errors) == (0, 1)
    with FakeOpenAIServer(plan=["500", "ok"]) as server:  # other transient errors still retry
        fake_local(monkeypatch, server)
        g = gateway(tmp_path, "local", cache_enabled=False)
        assert (await g.complete(req("five hundred"))).attempts == 2


@pytest.fixture(autouse=True, scope="module")
def _scripted_agents() -> Iterator[None]:
    with scripted_agents({"test-echo": _echo}):
        yield


async def test_a_registered_backend_is_usable_in_a_model_spec(tmp_path: Path) -> None:
    from therasim.agents.llm import BACKENDS, FunctionBackend, parse_model_spec

    with pytest.raises(UnknownNameError, match="unknown backend 'myserver'"):
        parse_model_spec("myserver:m1")
    with BACKENDS.temporarily("myserver", lambda: FunctionBackend(lambda request: "hi")):
        assert parse_model_spec("myserver:m1").backend == "myserver"
        g = Gateway(
            GatewayConfig(roles={"subject": RoleConfig(model="myserver:m1")}, cache_enabled=False)
        )
        try:
            assert (await g.complete(req("x"))).text == "hi"
        finally:
            await g.aclose()
    assert "myserver" not in BACKENDS


async def test_structured_calls_with_another_schema_do_not_share_a_cache_entry(
    tmp_path: Path,
) -> None:
    """In json_schema and json_object modes the schema travels in ``response_format``, not in
    the messages: it is part of the cache key, or a second rubric would get the first's answer."""
    from pydantic import BaseModel

    class Met(BaseModel):
        met: bool

    class Scored(BaseModel):
        met: bool
        score: int | None = None

    g, backend = scripted_openai(tmp_path, ['{"met": false}', '{"met": true, "score": 9}'])
    first, r1 = await g.structured(req("judge this turn", role="judge"), Met)
    second, r2 = await g.structured(req("judge this turn", role="judge"), Scored)
    assert (first.met, second.met, second.score) == (False, True, 9)
    assert not r1.cached and not r2.cached and len(backend.calls) == 2
    again, r3 = await g.structured(req("judge this turn", role="judge"), Scored)
    assert r3.cached and again == second and len(backend.calls) == 2


async def test_a_langchain_model_gets_the_sampling_settings_on_structured_calls_too(
    tmp_path: Path, real_requests: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A judge asked for temperature 0 must not run at the provider's default on its
    structured calls, while the cache files the answer as a temperature-0 one."""
    from pydantic import BaseModel

    class Met(BaseModel):
        met: bool
        reason: str

    with FakeOpenAIServer() as server:
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.base_url.removesuffix("/v1"))
        monkeypatch.setenv("AZURE_OPENAI_API_KEY", "not-a-key")
        monkeypatch.setenv("OPENAI_API_VERSION", "2024-08-01-preview")
        g = gateway(tmp_path, "azure_openai:gpt-4o", cache_enabled=False)
        request = req("judge this", role="judge", temperature=0.0, max_tokens=77)
        await g.complete(request)
        verdict, response = await g.structured(request, Met)
        bodies = list(server.requests)
    assert verdict.met and response.structured_mode == "json_schema"
    assert [(b.get("temperature"), b.get("max_tokens")) for b in bodies] == [(0.0, 77)] * 2
    assert "response_format" in bodies[1]


# ------------------------------------------------------------------ replies, limits, SDK errors


async def test_a_reply_that_is_not_valid_unicode_is_refused_for_the_role_that_gave_it(
    tmp_path: Path,
) -> None:
    """A lone surrogate (half an emoji) cannot be stored as UTF-8: the call fails for the
    role that produced it, once (not retried), and nothing reaches the cache."""
    backend = FunctionBackend(lambda request: "I hear you \ud83d")
    g = gateway(tmp_path, "openai:fake", backends={"openai": backend})
    for _ in range(2):
        with pytest.raises(
            PermanentModelError, match=r"not valid Unicode text.*U\+D83D at character 11 of 12"
        ) as info:
            await g.complete(req("x"))
        assert (info.value.role, info.value.model) == ("subject", "openai:fake")
    assert len(backend.calls) == 2  # the second call was not answered from the cache
    usage = g.accounting.for_role("subject")
    assert (usage.retries, usage.errors) == (0, 2)
    assert usage.output_tokens > 0  # what the refused replies cost still counts


async def test_an_entry_that_covers_several_roles_is_one_shared_concurrency_limit() -> None:
    """'judge' is one limit for every judge:<name>, 'default' one for every role not named;
    a role with an entry of its own keeps its own limit."""
    in_flight: dict[str, int] = {}
    peak: dict[str, int] = {}

    async def slow(request: CompletionRequest) -> str:
        entry = request.metadata["entry"]
        in_flight[entry] = in_flight.get(entry, 0) + 1
        peak[entry] = max(peak.get(entry, 0), in_flight[entry])
        await asyncio.sleep(0.05)
        in_flight[entry] -= 1
        return "ok"

    one = {"model": "openai:m", "concurrency": 1}
    g = Gateway(
        GatewayConfig(
            roles={
                "judge": RoleConfig(**one),  # type: ignore[arg-type]
                "judge:own": RoleConfig(**one),  # type: ignore[arg-type]
                "default": RoleConfig(model="openai:m", concurrency=2),
            },
            cache_enabled=False,
        ),
        backends={"openai": FunctionBackend(slow)},
    )
    OPEN.append(g)
    calls = [(f"judge:{n}", "judge") for n in "abc"]
    calls += [("judge:own", "own")] * 3
    calls += [(r, "default") for r in ("subject", "patient", "appraiser", "coach")]
    await asyncio.gather(
        *(
            g.complete(req(f"{role} {i}", role=role, metadata={"entry": entry}))
            for i, (role, entry) in enumerate(calls)
        )
    )
    assert peak == {"judge": 1, "own": 1, "default": 2}


async def test_an_entry_that_covers_several_roles_is_one_shared_rate_limit() -> None:
    """rpm=600 on 'judge' is one request per 0.1 s for all judges together: three judges'
    calls at once take at least 0.2 s."""
    g = Gateway(
        GatewayConfig(roles={"judge": RoleConfig(model="openai:m", rpm=600)}, cache_enabled=False),
        backends={"openai": FunctionBackend(lambda request: "ok")},
    )
    OPEN.append(g)
    started = time.perf_counter()
    await asyncio.gather(*(g.complete(req(n, role=f"judge:{n}")) for n in "abc"))
    assert time.perf_counter() - started >= 0.18


class _Response:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code

    def __repr__(self) -> str:  # a stable test id
        return f"Response({self.status_code})"


class _SDKError(Exception):
    """A provider SDK's exception, as therasim sees one it does not import."""

    def __init__(self, message: str = "boom", **attrs: object) -> None:
        super().__init__(message)
        for name, value in attrs.items():
            setattr(self, name, value)


class RateLimitError(_SDKError):  # anthropic, mistral, groq: status_code
    pass


class OverloadedError(_SDKError):  # anthropic's 529
    pass


class ResourceExhausted(_SDKError):  # google.api_core: code = 429
    pass


class DeadlineExceeded(_SDKError):
    pass


class APIConnectionError(_SDKError):
    pass


class ServiceUnavailable(_SDKError):
    pass


class ThrottlingException(_SDKError):  # botocore, dynamically named
    pass


class ModelThrottled(ThrottlingException):  # a subclass: matched through the MRO
    pass


class BadRequestError(_SDKError):
    pass


class ClientError(_SDKError):  # botocore: a response dict
    pass


SDK_ERRORS: list[tuple[Exception, type[Exception]]] = [
    (RateLimitError(status_code=429), RateLimited),
    (OverloadedError(status_code=529), ServerError),
    (_SDKError(status_code=500), ServerError),
    (_SDKError(status_code=408), ModelTimeout),
    (_SDKError(response=_Response(503)), ServerError),  # httpx.HTTPStatusError style
    (_SDKError(response=_Response(429)), RateLimited),
    (ResourceExhausted(code=429), RateLimited),  # google
    (_SDKError(code=502), ServerError),
    (ClientError(response={"ResponseMetadata": {"HTTPStatusCode": 429}}), RateLimited),
    (RateLimitError(), RateLimited),  # by name when no status is carried
    (DeadlineExceeded(), ModelTimeout),
    (APIConnectionError(), ModelConnectionError),
    (ServiceUnavailable(), ServerError),
    (ModelThrottled(), RateLimited),
    (ServiceUnavailable(code=7), ServerError),  # a code that is no HTTP status: the name decides
    (ServiceUnavailable(code="UNAVAILABLE"), ServerError),
    (ServiceUnavailable(code=True), ServerError),
]


def _mapped(exc: Exception) -> Exception:
    from therasim.agents.llm.backends import map_client_error

    error = map_client_error(exc, "judge:a", "anthropic:claude")
    assert (error.role, error.model) == ("judge:a", "anthropic:claude")
    assert type(exc).__name__ in str(error)
    return error


@pytest.mark.parametrize(
    ("exc", "expected"),
    SDK_ERRORS,
    ids=[f"{type(e).__name__}{vars(e) or ''}->{k.__name__}" for e, k in SDK_ERRORS],
)
def test_a_provider_sdks_transient_error_is_classed_by_its_status_or_its_name(
    exc: Exception, expected: type[Exception]
) -> None:
    """An SDK therasim does not import (Anthropic, Google, Bedrock, …): its 429s, 5xx,
    timeouts and connection errors are transient, so the gateway retries them."""
    assert type(_mapped(exc)) is expected


def test_a_carried_http_status_decides_over_the_class_name() -> None:
    assert type(_mapped(RateLimitError(status_code=429))) is RateLimited
    assert type(_mapped(RateLimitError(status_code=401))) is PermanentModelError
    assert type(_mapped(ServiceUnavailable(response=_Response(404)))) is PermanentModelError
    assert type(_mapped(BadRequestError(status_code=400))) is PermanentModelError
    assert type(_mapped(_SDKError(code=404))) is PermanentModelError
    assert type(_mapped(ValueError("bad"))) is PermanentModelError  # unknown: permanent


@pytest.mark.parametrize(
    ("status", "kind"),
    [(408, ModelTimeout), (429, RateLimited), (503, ServerError), (529, ServerError),
     (400, PermanentModelError), (404, PermanentModelError)],
)  # fmt: skip
def test_an_openai_status_error_goes_by_its_status(status: int, kind: type[Exception]) -> None:
    import httpx
    import openai

    response = httpx.Response(status, request=httpx.Request("POST", "http://127.0.0.1/v1"))
    error = openai.APIStatusError(f"status {status}", response=response, body=None)
    assert type(_mapped(error)) is kind


class _FakeChat:
    """A LangChain chat model that raises the queued errors, then answers."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.calls = 0

    async def ainvoke(self, messages: object, **kwargs: object) -> object:
        from types import SimpleNamespace

        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return SimpleNamespace(content="ok", usage_metadata={"input_tokens": 3, "output_tokens": 1})


async def test_a_langchain_providers_rate_limit_and_overload_are_retried(
    tmp_path: Path, real_requests: None
) -> None:
    from therasim.agents.llm.backends import LangChainBackend

    backend = LangChainBackend()
    chat = _FakeChat([RateLimitError(status_code=429), OverloadedError(status_code=529)])
    backend._clients["anthropic:claude"] = chat
    g = gateway(tmp_path, "anthropic:claude", backends={"anthropic": backend})
    response = await g.complete(req("x"))
    assert (response.text, response.attempts, chat.calls) == ("ok", 3, 3)
    chat.errors = [BadRequestError(status_code=400)]
    with pytest.raises(PermanentModelError, match="BadRequestError"):
        await g.complete(req("y"))
    assert chat.calls == 4  # a 400 is not retried
