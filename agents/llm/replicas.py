"""Model replicas: one model spec served by several OpenAI-compatible endpoints.

``openai:MODEL?base_url=URL1,URL2`` names replicas of one model (vLLM servers on a cluster, say).
The OpenAI backend keeps one :class:`ReplicaPool` per replica set, and each request goes through
:meth:`ReplicaPool.call`:

- **Choice.** The replica with the fewest requests in flight; ties go round-robin, so
  one-at-a-time traffic still spreads. A replica at its ``replica_concurrency`` is skipped (the
  call waits when every replica is full); ``replica_rpm`` paces each replica's requests.
- **Failure.** A connection error, a 5xx, a timeout (HTTP 408, or the call abandoned in flight:
  the gateway's own timeout cancels it) takes the replica out for a cool-down that doubles with
  each consecutive failure, up to a cap. After the cool-down one request at a time probes it;
  the first success puts it back. A 429 or another 4xx is the request's problem, not the
  replica's: it goes to the gateway unchanged.
- **Failover, bounded.** A failed request is sent at once to another replica that is up and not
  yet tried by this call, at most ``max_tries`` replicas per call. When none is left, the last
  error goes back to the gateway, whose retries and backoff are unchanged::

      gateway attempt 1 ─► A fails (A down) ─► B fails (B down) ─► error ─► gateway backoff
      gateway attempt 2 ─► C (up) ─► answer

  So one call sends at most ``max_tries × max_attempts`` requests, and a replica that failed
  gets no new traffic for its cool-down: concurrent calls do not all rediscover the failure.
- **All down.** A call then probes the replica back soonest (ignoring the cool-down) as long as
  that replica has nothing in flight; otherwise it waits for a probe's outcome. Each replica
  sees at most one probe at a time, and the call stays bounded by the gateway's timeout.

Limits: the role's ``concurrency`` and ``rpm`` still bound the total (the gateway applies them
before the backend is called); the per-replica limits apply inside. Waiting for a replica slot
counts toward the call's timeout. The cache key does not depend on the replica: it is the spec's.
State lives in the pool (no globals), one pool per backend instance and replica set.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from therasim.errors import ModelConnectionError, ModelError, ModelTimeout, ServerError

R = TypeVar("R")

#: Errors that take a replica out and send the request to another one.
FAILOVER_ERRORS = (ModelConnectionError, ServerError, ModelTimeout)


@dataclass(frozen=True)
class ReplicaPolicy:
    """How a pool treats failing replicas (the defaults suit a cluster of vLLM servers)."""

    #: first cool-down of a failed replica; doubles with each consecutive failure
    cooldown_base_s: float = 1.0
    #: longest cool-down
    cooldown_max_s: float = 60.0
    #: replicas one call may try before its error goes back to the gateway
    max_tries: int = 3
    #: the pool's clock (tests pass a fake one)
    clock: Callable[[], float] = time.monotonic

    def cooldown(self, failures: int) -> float:
        """The cool-down after ``failures`` consecutive failures."""
        factor: int = 2 ** max(0, failures - 1)
        return min(self.cooldown_max_s, self.cooldown_base_s * factor)


@dataclass(eq=False)
class Replica:
    """One endpoint of a pool and what the pool knows about it."""

    index: int
    url: str
    proxy: str | None = None
    limiter: Any = None  # aiolimiter.AsyncLimiter when replica_rpm is set
    outstanding: int = 0  # requests chosen for it and not finished (rpm waits included)
    peak_outstanding: int = 0
    failures: int = 0  # consecutive; 0 = up
    down_until: float = 0.0
    epoch: int = 0  # bumped when it is taken out: older requests' outcomes do not count
    served: int = 0
    failed: int = 0

    def available(self, now: float, limit: int | None) -> bool:
        """Up, or back from its cool-down with no probe in flight, and under ``limit``."""
        if self.failures and (self.down_until > now or self.outstanding):
            return False
        return limit is None or self.outstanding < limit

    def describe(self) -> dict[str, object]:
        """Counters for logs and tests."""
        return {
            "url": self.url,
            "outstanding": self.outstanding,
            "peak_outstanding": self.peak_outstanding,
            "served": self.served,
            "failed": self.failed,
            "up": self.failures == 0,
        }


@dataclass
class _Ticket:
    """One request on one replica: the epoch it was sent in, whether it left."""

    replica: Replica
    epoch: int
    sent: bool = False


@dataclass(eq=False)
class ReplicaPool:
    """Least-outstanding routing with failover over replicas of one model (module docstring)."""

    urls: Sequence[str]
    concurrency: int | None = None
    rpm: float | None = None
    policy: ReplicaPolicy = field(default_factory=ReplicaPolicy)
    proxy_for: Callable[[str], str | None] | None = None
    replicas: tuple[Replica, ...] = field(init=False)
    _cursor: int = field(default=0, init=False)
    _waiters: list[asyncio.Future[None]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("a replica pool needs at least one URL")
        limiter: Callable[[], Any] = lambda: None  # noqa: E731
        if self.rpm:
            from aiolimiter import AsyncLimiter

            period = 60 / self.rpm
            limiter = lambda: AsyncLimiter(1, period)  # noqa: E731  (steady pacing, as the gateway's)
        self.replicas = tuple(
            Replica(i, url, self.proxy_for(url) if self.proxy_for else None, limiter())
            for i, url in enumerate(self.urls)
        )

    async def call(self, send: Callable[[Replica], Awaitable[R]]) -> R:
        """``send(replica)`` on the best replica, failing over as the module docstring says."""
        tried: list[Replica] = []
        last: ModelError | None = None
        while True:
            ticket = await self._acquire(tried, last)
            replica = ticket.replica
            tried.append(replica)
            try:
                if replica.limiter is not None:
                    await replica.limiter.acquire()
                ticket.sent = True
                result = await send(replica)
            except FAILOVER_ERRORS as exc:
                self._failed(ticket)
                last = _naming(exc, replica)
                if len(tried) >= min(self.policy.max_tries, len(self.replicas)):
                    raise
                continue
            except asyncio.CancelledError:
                if ticket.sent:  # abandoned in flight: the gateway's timeout, in practice
                    self._failed(ticket)
                raise
            else:
                self._succeeded(ticket)
                return result
            finally:
                self._release(replica)

    def describe(self) -> list[dict[str, object]]:
        """Each replica's counters."""
        return [replica.describe() for replica in self.replicas]

    # ---- internals

    async def _acquire(self, tried: list[Replica], last: ModelError | None) -> _Ticket:
        """A replica for the next request, counted as outstanding; waits when all are busy."""
        while True:
            now = self.policy.clock()
            replica, wait = self._choose(tried, now)
            if replica is None and not wait:
                if last is not None:
                    raise last  # no replica left to fail over to: the gateway backs off
                replica = self._probe(tried)
            if replica is not None:
                replica.outstanding += 1
                replica.peak_outstanding = max(replica.peak_outstanding, replica.outstanding)
                return _Ticket(replica, replica.epoch)
            await self._wait(self._next_return(now))

    def _choose(self, tried: list[Replica], now: float) -> tuple[Replica | None, bool]:
        """The available replica with the fewest outstanding (round-robin among ties), and
        whether a call that finds none should wait (some replica is just full)."""
        count = len(self.replicas)
        best: Replica | None = None
        full = False
        for step in range(count):
            replica = self.replicas[(self._cursor + step) % count]
            if replica in tried:
                continue
            if replica.available(now, self.concurrency):
                if best is None or replica.outstanding < best.outstanding:
                    best = replica
            elif replica.failures == 0:
                full = True  # up but at its concurrency limit
        if best is not None:
            self._cursor = (best.index + 1) % count
        return best, best is None and full

    def _probe(self, tried: list[Replica]) -> Replica | None:
        """With every replica down: the one back soonest that has nothing in flight."""
        idle = [r for r in self.replicas if r not in tried and not r.outstanding]
        return min(idle, key=lambda r: (r.down_until, r.index)) if idle else None

    def _next_return(self, now: float) -> float | None:
        """Seconds until the next replica's cool-down ends (None when none is cooling down)."""
        ends = [r.down_until - now for r in self.replicas if r.failures and r.down_until > now]
        return min(ends) if ends else None

    async def _wait(self, timeout: float | None) -> None:
        """Until a request finishes (or ``timeout`` seconds, when a cool-down ends)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            if timeout is None:
                await waiter
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await waiter
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _release(self, replica: Replica) -> None:
        replica.outstanding -= 1
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _succeeded(self, ticket: _Ticket) -> None:
        replica = ticket.replica
        replica.served += 1
        if ticket.epoch == replica.epoch:  # sent since it was last taken out: a real answer
            replica.failures = 0
            replica.down_until = 0.0

    def _failed(self, ticket: _Ticket) -> None:
        replica = ticket.replica
        replica.failed += 1
        if ticket.epoch != replica.epoch:
            return  # sent before it was taken out: that failure is already counted
        replica.failures += 1
        replica.epoch += 1
        replica.down_until = self.policy.clock() + self.policy.cooldown(replica.failures)


def _naming(error: ModelError, replica: Replica) -> ModelError:
    """``error`` with the replica's URL in its message (the spec alone does not say which)."""
    error.detail += f" (replica {replica.url})"
    error.args = (f"[role {error.role}, model {error.model}] {error.detail}",)
    return error
