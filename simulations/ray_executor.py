"""``executor: {kind: ray}``: a study's sessions on Ray workers; this process keeps the rest.

The driver (the process running ``therasim run``) keeps what must exist once: the SQLite store,
resume (it hands out only the sessions not yet completed, ``runner.run_specs``) and the budget.
The sessions run on ``workers`` Ray actors (:class:`SessionWorker`), one CPU each. An actor
is given what its sessions need and nothing else: a copy of the study's gateway config (the role
limits divided among the actors, as ``processes: N`` divides them), the personas of the sessions
to run and whether real model requests are allowed; each session's spec carries its model specs
and seed. Each actor builds its own gateway and runs up to its share of ``concurrency`` sessions
at once on its own event loop; there is no state shared between actors.

The driver keeps ``concurrency`` sessions in flight, each sent to the least busy actor, and
writes each session whole to the store as it comes back (``ray.wait``), exactly as the local
runner writes it: the same study gives the same session ids and transcripts on either executor.

**A worker that dies** (killed, out of memory, a crash in native code, a lost node) is restarted
by Ray and gets no new session until it answers again (:class:`_Pool`); the sessions it had in
flight are sent again, each up to ``max_retries`` times, then stored as failed with the error.
A session's result is written only by the driver and only once, so none is lost or written
twice; one that never comes back (every worker gone) is not stored, and a rerun redoes it.

**The budget** is metered by one more actor, the ledger (:class:`BudgetLedger`): what earlier
runs spent plus what every worker's gateway has sent. Each worker charges it after every
utterance of every session (one small remote call, made only when the study has a budget)
and learns whether the budget is spent; a restarted worker's spending before its restart is
kept. Once spent, the sessions in flight stop at their next turn (``budget_exhausted``) and the
driver, which asks the ledger before it starts sessions, starts no more, as the local runner
does: the overshoot is at most one turn per session in flight.

**The cluster.** ``address: local`` starts a Ray cluster on this machine with ``workers`` CPUs
for the run and stops it afterwards; ``auto`` connects to the running cluster (``ray start``),
``ray://HOST:PORT`` to a remote one through Ray Client. If Ray is already initialised in this
process, its cluster is used as it is. therasim (and any ``python:`` subject's module) must be
importable on every node. Ray's own logs stay in its session folder, not on the console.

Ray is imported only here, and only when a study asks for it: ``import therasim`` never imports
it, and a study with ``executor: {kind: ray}`` fails fast with a ``ConfigError`` naming the extra
when it is missing (:func:`require_ray`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from therasim.agents.llm import (
    Gateway,
    GatewayConfig,
    allow_model_requests,
    model_requests_allowed,
    therasim_home,
)
from therasim.agents.llm.usage import Totals
from therasim.errors import ConfigError, TherasimError
from therasim.personas.schema import Persona
from therasim.simulations.budget import BudgetMeter, is_spent
from therasim.simulations.records import SessionResult, SessionSpec, TurnRecord
from therasim.simulations.runner import ProgressFn, RunStats, failed_result, tally
from therasim.simulations.store import Store
from therasim.simulations.study import Budget, ExecutorSpec, Study

RAY_EXTRA = "pip install 'therasim[ray]'"
POLL_S = 0.5  # how often the driver wakes without a result
CONTROL_CALLS = 3  # actor calls beside the sessions: ready, spent, close
DOWN_LIMIT = 20  # failed pings (backing off to 5 s, ~1.5 min in all) before a worker is given up


def require_ray() -> Any:
    """The ``ray`` module; a :class:`ConfigError` naming the extra when it cannot be imported."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            f"executor kind 'ray' needs Ray, which is not installed here: {RAY_EXTRA}",
            field="executor.kind",
        ) from None
    return ray


class SessionWorker:
    """A Ray actor (made with ``ray.remote`` at run time): one gateway, many sessions.

    Everything it holds came with it: the gateway config, the personas of the study's sessions,
    whether real model requests are allowed here. A restarted actor is built again from the same
    arguments."""

    def __init__(
        self,
        config: GatewayConfig,
        personas: dict[str, Persona],
        allow_real: bool,
        ledger: Any | None = None,
        index: int = 0,
    ) -> None:
        allow_model_requests(allow_real)  # this process is the actor's alone
        self._config = config
        self._library = personas
        self._ledger = ledger  # the budget's BudgetLedger actor; None without a budget
        self._index = index
        self._stopped = False
        self._gateway: Gateway | None = None

    def _gate(self) -> Gateway:
        if self._gateway is None:  # made on the actor's event loop, where it is used
            self._gateway = Gateway(self._config)
        return self._gateway

    async def ready(self) -> int:
        """Import and build what the first session would (LangGraph, the session graph), hide
        it from the cyclic collector as the local runner does; returns this process's id."""
        import gc

        from therasim.simulations.session import session_graph

        session_graph()
        gc.collect()
        gc.freeze()
        return os.getpid()

    async def run(self, spec: SessionSpec) -> SessionResult:
        """One session to its end; an exception is the session's failure, not the actor's."""
        from therasim.simulations.session import run_session

        metered = self._ledger is not None
        try:
            return await run_session(
                spec,
                self._gate(),
                self._library,
                on_turn=self._charge if metered else None,
                over_budget=(lambda: self._stopped) if metered else None,
            )
        except Exception as exc:  # a bug must cost one session, not the batch
            detail = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
            return failed_result(spec, self._library, detail)

    async def _charge(self, record: TurnRecord) -> None:
        """After each utterance, tell the ledger what this worker has sent and learn whether the
        budget is spent; the session reads that at its next turn boundary and stops there.
        (Charging at every utterance, not only at boundaries, keeps the ledger within a call
        or two of what this worker has sent.)"""
        if not self._stopped and self._ledger is not None:
            pid, sent = await self.spent()
            self._stopped = await self._ledger.charge.remote(self._index, pid, sent)

    async def spent(self) -> tuple[int, Totals]:
        """This process's id and what its gateway has sent so far (what the budget counts)."""
        roles = self._gateway.accounting.roles.values() if self._gateway else []
        return os.getpid(), Totals.sum(roles)

    async def close(self) -> None:
        """Release the gateway's HTTP clients and cache connection."""
        if self._gateway is not None:
            await self._gateway.aclose()
            self._gateway = None


class BudgetLedger:
    """A Ray actor (made with ``ray.remote`` at run time): the study's spending across the
    workers, against its budget. Workers charge it at every turn boundary."""

    def __init__(self, budget: Budget, before: Totals) -> None:
        self._budget = budget
        self._before = before  # earlier runs, and this run's driver before the workers
        self._spending = _Spending()

    async def charge(self, worker: int, pid: int, sent: Totals) -> bool:
        """Record what worker ``worker`` (process ``pid``) has sent in all; whether the budget
        is now spent."""
        self._spending.update(worker, pid, sent)
        return await self.spent()

    async def spent(self) -> bool:
        """Whether the budget is spent."""
        return is_spent(self._budget, self._before + self._spending.total())


@dataclass
class _Job:
    spec: SessionSpec
    worker: int
    attempt: int  # 0 the first time


@dataclass
class _Spending:
    """What the actors have sent, kept across restarts (an actor's counters start again at 0)."""

    pids: dict[int, int] = field(default_factory=dict)
    last: dict[int, Totals] = field(default_factory=dict)
    banked: Totals = field(default_factory=Totals)

    def update(self, worker: int, pid: int, sent: Totals) -> None:
        if self.pids.get(worker, pid) != pid:  # restarted since the last reading
            self.banked += self.last.get(worker, Totals())
        self.pids[worker] = pid
        self.last[worker] = sent

    def total(self) -> Totals:
        out = self.banked
        for sent in self.last.values():
            out += sent
        return out


def _connect(ray: Any, executor: ExecutorSpec) -> bool:
    """Start or join the cluster ``executor.address`` names; True when this call started Ray."""
    if ray.is_initialized():
        return False
    quiet: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if executor.address == "local":
            cpus = executor.workers or os.cpu_count() or 1
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, **quiet)
        else:
            ray.init(address=executor.address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = " (start one with `ray start --head`, or use address: local)"
        raise ConfigError(
            f"cannot reach the Ray cluster at {executor.address!r}: {exc}"
            + (hint if executor.address == "auto" else ""),
            field="executor.address",
        ) from None
    return True


@contextlib.contextmanager
def _worker_logs_hidden(ray: Any) -> Iterator[None]:
    """Keep the raylet's worker-death notices off the console while the run's progress bar is
    on it (they go to Ray's log folder still). Ray has no public switch for these lines; this is
    the flag its own debugger uses, left alone when a Ray version lacks it."""
    module: Any = getattr(getattr(ray, "_private", None), "worker", None)
    before = getattr(module, "_worker_logs_enabled", None)
    if before is None:
        yield
        return
    module._worker_logs_enabled = False
    try:
        yield
    finally:
        module._worker_logs_enabled = before


def _worker_config(gateway: Gateway, executor: ExecutorSpec, n: int) -> GatewayConfig:
    """The driver's gateway config with each role's limits divided among ``n`` actors. On a
    local cluster the actors share this machine's response cache."""
    config = gateway.config
    update: dict[str, Any] = {
        "roles": {
            name: role.model_copy(
                update={
                    "concurrency": max(1, role.concurrency // n),
                    "rpm": role.rpm / n if role.rpm else None,
                }
            )
            for name, role in config.roles.items()
        }
    }
    if executor.address == "local" and config.cache_enabled and not config.cache_path:
        update["cache_path"] = str(therasim_home() / "cache.sqlite")
    return config.model_copy(update=update)


def _start_workers(
    ray: Any,
    todo: list[SessionSpec],
    *,
    study: Study,
    executor: ExecutorSpec,
    gateway: Gateway,
    library: dict[str, Persona],
    ledger: Any | None,
) -> list[Any]:
    """Create the actors and wait until each has built its session graph."""
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    n = max(1, min(executor.workers or int(cpus) or 1, len(todo)))
    per = math.ceil(study.concurrency / n)
    personas = {spec.persona: library[spec.persona] for spec in todo if spec.persona in library}
    actor = ray.remote(SessionWorker).options(
        num_cpus=min(1.0, cpus / n),  # more workers than CPUs share them rather than wait
        max_restarts=-1,  # a dead worker comes back; its sessions are retried here, not by Ray
        max_task_retries=0,
        max_concurrency=per + CONTROL_CALLS,
    )
    config = _worker_config(gateway, executor, n)
    allow_real = model_requests_allowed()
    workers = [actor.remote(config, personas, allow_real, ledger, i) for i in range(n)]
    refs = [w.ready.remote() for w in workers]
    try:
        ray.get(refs)
    except ray.exceptions.RayError as exc:
        for w in workers:
            ray.kill(w)
        raise TherasimError(f"a Ray worker could not start: {exc}") from None
    return workers


def _wait(ray: Any, pending: list[Any], timeout: float) -> list[Any]:
    """The refs that are ready within ``timeout`` s (at least one, unless none is)."""
    ready, rest = ray.wait(pending, num_returns=1, timeout=timeout)
    if ready and rest:  # take every other result that is in as well
        more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
        ready += more
    return list(ready)


async def run_on_ray(
    todo: list[SessionSpec],
    stats: RunStats,
    *,
    study: Study,
    executor: ExecutorSpec,
    store: Store,
    gateway: Gateway,
    library: dict[str, Persona],
    progress: ProgressFn | None,
    meter: BudgetMeter,
) -> RunStats:
    """Run ``todo`` on Ray workers, storing each session as it comes back (see the module)."""
    ray = require_ray()
    started_here = _connect(ray, executor)
    workers: list[Any] = []
    ledger = None
    try:
        with _worker_logs_hidden(ray):
            if meter.limited:  # one small actor; no CPU of its own, so it never waits for one
                ledger = (
                    ray.remote(BudgetLedger)
                    .options(num_cpus=0, max_restarts=-1)
                    .remote(meter.budget, meter.spent())
                )
            workers = await asyncio.to_thread(
                _start_workers,
                ray,
                todo,
                study=study,
                executor=executor,
                gateway=gateway,
                library=library,
                ledger=ledger,
            )
            await _drive(
                ray, workers, todo, stats, study, executor, store, library, progress, ledger
            )
            with contextlib.suppress(ray.exceptions.RayError):
                await asyncio.to_thread(ray.get, [w.close.remote() for w in workers], timeout=10)
    finally:
        for actor in [*workers, *([ledger] if ledger is not None else [])]:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        if started_here:
            ray.shutdown()
    if progress is not None:
        progress(stats)
    return stats


class _Pool:
    """The actors, the sessions each has in flight, and those that are down.

    A worker whose session failed because it died is down until it answers ``ready`` again (Ray
    restarts it): no session is sent to it meanwhile, where it would fail again without ever
    having run. One that does not come back within ``DOWN_LIMIT`` pings is given up."""

    def __init__(self, ray: Any, workers: list[Any]) -> None:
        self.ray = ray
        self.workers = workers
        self.load = [0] * len(workers)
        self.down: set[int] = set()
        self.gone: set[int] = set()
        self.pings: dict[Any, int] = {}
        self.fails: dict[int, int] = {}
        self.ping_at: dict[int, float] = {}
        self.last_error = ""

    def pick(self) -> int | None:
        """The least busy worker that is up, if any."""
        up = [i for i in range(len(self.workers)) if i not in self.down]
        return min(up, key=self.load.__getitem__) if up else None

    def lost(self, i: int, error: str) -> None:
        """Worker ``i`` lost a session: down until it answers again."""
        self.last_error = error
        if i not in self.down:
            self.down.add(i)
            self.fails[i] = 0
            self.ping_at[i] = 0.0

    def ping_due(self) -> None:
        """Ask the down workers whose turn has come whether they are back."""
        now = time.monotonic()
        for i, at in list(self.ping_at.items()):
            if now >= at:
                del self.ping_at[i]
                self.pings[self.workers[i].ready.remote()] = i

    def answered(self, ref: Any) -> None:
        """A ping came back: the worker is up again, or is pinged later (backing off)."""
        i = self.pings.pop(ref)
        try:
            self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.fails[i] += 1
            if self.fails[i] >= DOWN_LIMIT:
                self.gone.add(i)  # stays in ``down``: nothing is sent to it again
            else:
                self.ping_at[i] = time.monotonic() + min(5.0, 0.1 * 2 ** self.fails[i])
            return
        self.down.discard(i)

    @property
    def all_gone(self) -> bool:
        """Every worker was given up."""
        return len(self.gone) == len(self.workers)


async def _drive(
    ray: Any,
    workers: list[Any],
    todo: list[SessionSpec],
    stats: RunStats,
    study: Study,
    executor: ExecutorSpec,
    store: Store,
    library: dict[str, Persona],
    progress: ProgressFn | None,
    ledger: Any | None,
) -> None:
    """The driver's loop: keep ``concurrency`` sessions in flight, store what comes back; with a
    budget, ask the ``ledger`` before starting sessions."""
    queue: deque[tuple[SessionSpec, int]] = deque((spec, 0) for spec in todo)
    pending: dict[Any, _Job] = {}
    pool = _Pool(ray, workers)

    while queue or pending:
        if (
            ledger is not None
            and not stats.budget_exhausted
            and queue
            and len(pending) < study.concurrency
        ):
            stats.budget_exhausted = await asyncio.to_thread(ray.get, ledger.spent.remote())
        pool.ping_due()
        while queue and len(pending) < study.concurrency:
            if stats.budget_exhausted:
                queue.popleft()
                stats.not_started += 1
                continue
            i = pool.pick()
            if i is None:
                break
            spec, attempt = queue.popleft()
            pending[workers[i].run.remote(spec)] = _Job(spec, i, attempt)
            pool.load[i] += 1
        if pool.all_gone:
            raise TherasimError(
                f"every Ray worker died and none came back ({pool.last_error}); the sessions "
                "not stored are run by the next `therasim run`"
            )
        waiting = [*pending, *pool.pings]
        if not waiting:
            await asyncio.sleep(0.1)  # every worker is down, waiting for its next ping
            continue
        for ref in await asyncio.to_thread(_wait, ray, waiting, POLL_S):
            if ref in pool.pings:
                pool.answered(ref)
                continue
            job = pending.pop(ref)
            pool.load[job.worker] -= 1
            try:
                result: SessionResult = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # raised in the actor, not a lost worker
                result = failed_result(job.spec, library, f"{type(exc).__name__}: {exc}")
            except ray.exceptions.RayError as exc:  # the worker died with the session in flight
                pool.lost(job.worker, f"{type(exc).__name__}: {exc}")
                stats.retried += 1
                if stats.budget_exhausted:
                    stats.not_started += 1  # not stored: a rerun with more budget redoes it
                    continue
                if job.attempt < executor.max_retries:
                    queue.appendleft((job.spec, job.attempt + 1))
                    continue
                result = failed_result(
                    job.spec,
                    library,
                    f"the Ray worker running this session died on each of its {job.attempt + 1} "
                    f"attempt(s) (executor.max_retries: {executor.max_retries}); the last: "
                    f"{type(exc).__name__}: {exc}",
                )
            store.save_session(result)
            tally(stats, result)
            if progress is not None:
                progress(stats)
