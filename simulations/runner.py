"""The study runner: many sessions in flight, resumable, within budget.

Sessions run as asyncio tasks drawn by a fixed pool of workers (``study.concurrency``), so a
study of any size holds only the sessions in flight in memory. Per-role concurrency and rate
limits live in the gateway. A session is stored whole when it ends (see ``store.py``), so a
rerun — after a crash, ``kill -9`` or Ctrl-C — skips every completed session and redoes only
what had not finished (failed sessions are retried). The budget, when spent, stops new
sessions from starting; those in flight finish and are stored.

Where the sessions run is the study's ``executor``: ``local`` (this module: asyncio workers, or
``processes: N`` forked worker processes) or ``ray`` (``ray_executor.py``, imported only then).
This process keeps the store, resume and the budget on either; ``--executor`` on the command
line overrides the study's kind (:func:`executor_override`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import os
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from therasim.agents.llm import Gateway, parse_model_spec, price_of
from therasim.agents.llm.usage import Totals
from therasim.agents.types import Usage
from therasim.personas.schema import Persona
from therasim.protocols import load_protocol
from therasim.simulations.budget import BudgetMeter, SharedSpending, spent_in_store
from therasim.simulations.records import (
    SessionResult,
    SessionSpec,
    TerminationReason,
    resolve_persona,
)
from therasim.simulations.store import Store
from therasim.simulations.study import ExecutorSpec, Study

ProgressFn = Callable[["RunStats"], None]


@dataclass
class RunStats:
    """What a run did, updated live."""

    total: int = 0
    skipped: int = 0
    completed: int = 0
    failed: int = 0
    not_started: int = 0
    turns: int = 0
    usage: Totals = field(default_factory=Totals)
    started: float = field(default_factory=time.monotonic)
    budget_exhausted: bool = False
    failures: dict[str, int] = field(default_factory=dict)
    retried: int = 0  # sessions run again because their (Ray) worker died

    @property
    def done(self) -> int:
        """Sessions finished, whether completed or failed."""
        return self.completed + self.failed

    @property
    def input_tokens(self) -> int:
        """Input tokens of every call so far."""
        return self.usage.input_tokens

    @property
    def output_tokens(self) -> int:
        """Output tokens of every call so far."""
        return self.usage.output_tokens

    @property
    def cost_usd(self) -> float:
        """The known cost (a call with no price adds nothing)."""
        return self.usage.cost_usd

    @property
    def to_run(self) -> int:
        """Sessions this run has to do (the total less those already stored)."""
        return self.total - self.skipped

    @property
    def elapsed_s(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def eta_s(self) -> float | None:
        """Seconds left at the pace so far; None before the first session finishes."""
        if self.done == 0:
            return None
        return self.elapsed_s / self.done * max(0, self.to_run - self.done - self.not_started)


ExecutorKind = Literal["local", "ray"]

_EXECUTOR: contextvars.ContextVar[ExecutorKind | None] = contextvars.ContextVar(
    "therasim_executor", default=None
)


@contextlib.contextmanager
def executor_override(kind: ExecutorKind | None) -> Iterator[None]:
    """Run the studies started in this block (and in the event loops it starts) on ``kind``,
    whatever their files say: ``therasim run --executor``. ``None`` changes nothing."""
    token = _EXECUTOR.set(kind) if kind is not None else None
    try:
        yield
    finally:
        if token is not None:
            _EXECUTOR.reset(token)


def executor_of(study: Study) -> ExecutorSpec:
    """Where ``study``'s sessions run: its ``executor``, with the kind of an enclosing
    :func:`executor_override`. A local study moved to Ray takes its ``processes`` as workers."""
    kind = _EXECUTOR.get()
    spec = study.executor
    if kind is None or kind == spec.kind:
        return spec
    workers = spec.workers
    if kind == "ray" and workers is None and study.processes > 1:
        workers = study.processes
    return spec.model_copy(update={"kind": kind, "workers": workers})


def check_executor(study: Study) -> None:
    """Fail now (a ``ConfigError`` naming the extra) when the study's executor cannot run here."""
    if executor_of(study).kind == "ray":
        from therasim.simulations.ray_executor import require_ray

        require_ray()


def failed_result(spec: SessionSpec, library: dict[str, Persona], error: str) -> SessionResult:
    """A session that could not run, stored as failed (``internal_error``) with ``error``."""
    persona = library.get(spec.persona)
    now = time.time()
    return SessionResult(
        session_id=spec.session_id,
        spec=spec,
        persona_ref=f"{spec.persona}@{spec.persona_version}",
        modality=persona.modality if persona else "pe",
        status="failed",
        termination_reason=TerminationReason.INTERNAL_ERROR,
        error=error,
        started=now,
        finished=now,
    )


async def run_specs(
    specs: list[SessionSpec],
    *,
    study: Study,
    store: Store,
    gateway: Gateway,
    library: dict[str, Persona],
    progress: ProgressFn | None = None,
    spent_before: Totals | None = None,
    shared: tuple[SharedSpending, int] | None = None,
) -> RunStats:
    """Run every spec not already completed in ``store``; returns the run's statistics.

    The study's budget is metered live (``budget.py``): once spent, no session starts (counted
    as not started) and those in flight stop at their next turn boundary, ``budget_exhausted``.
    ``spent_before`` replaces what the store says earlier runs spent; ``shared`` is a worker
    process's view of the other workers' spending (the pool and this worker's slot)."""
    done = store.session_ids(status="completed")
    todo = [s for s in specs if s.session_id not in done]
    stats = RunStats(total=len(specs), skipped=len(specs) - len(todo))
    meter = BudgetMeter(study.budget, gateway)
    if shared is not None:
        meter.shared, meter.slot = shared
    if meter.limited:
        meter.before = spent_before if spent_before is not None else spent_in_store(store)
    if not todo:
        return stats
    executor = executor_of(study)
    if executor.kind == "ray":
        from therasim.simulations.ray_executor import run_on_ray

        return await run_on_ray(
            todo,
            stats,
            study=study,
            executor=executor,
            store=store,
            gateway=gateway,
            library=library,
            progress=progress,
            meter=meter,
        )
    if study.processes > 1:
        return await _run_in_processes(
            todo, stats, study=study, store=store, gateway=gateway, progress=progress, meter=meter
        )
    # Imported here: LangGraph is most of a rerun's start-up, and a finished study needs none of it.
    from therasim.simulations.session import run_session

    queue: asyncio.Queue[SessionSpec] = asyncio.Queue()
    for spec in todo:
        queue.put_nowait(spec)

    async def worker() -> None:
        while True:
            try:
                spec = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if stats.budget_exhausted or meter.exhausted():
                stats.budget_exhausted = True
                stats.not_started += 1
                continue
            try:
                over_budget = meter.exhausted if meter.limited else None
                result = await run_session(spec, gateway, library, over_budget=over_budget)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must cost one session, not the batch
                result = failed_result(
                    spec, library, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
                )
            store.save_session(result)
            tally(stats, result)
            if progress is not None:
                progress(stats)

    workers = [
        asyncio.create_task(worker()) for _ in range(min(study.concurrency, max(1, len(todo))))
    ]
    try:
        with _collector_skips_startup():
            await asyncio.gather(*workers)
    finally:
        for w in workers:
            w.cancel()
    return stats


def tally(stats: RunStats, result: SessionResult) -> None:
    """Count one stored session in ``stats`` (status, failure reason, turns, usage)."""
    if result.termination_reason is TerminationReason.BUDGET_EXHAUSTED:
        stats.budget_exhausted = True
    if result.status == "completed":
        stats.completed += 1
    else:
        stats.failed += 1
        reason = result.termination_reason.value
        stats.failures[reason] = stats.failures.get(reason, 0) + 1
    stats.turns += result.therapist_turns
    stats.usage += Totals.sum(result.calls)


@contextlib.contextmanager
def _collector_skips_startup() -> Iterator[None]:
    """Hide what exists before the sessions start from the cyclic garbage collector.

    Sessions leave cyclic garbage (LangGraph's tasks, callbacks, coroutines) that survives into
    the oldest generation, so full collections come every second or so. Each one walked every
    module, persona and schema of the process as well and stopped the event loop for 0.1–0.2 s,
    leaving the backend idle meanwhile (``benchmarks/``). ``gc.freeze`` moves the objects
    alive now to a generation the collector skips; ``gc.unfreeze`` gives them back at the end.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# --------------------------------------------------------------------------- several processes


def _exit_with_parent(parent: int, every_s: float = 0.5) -> None:
    """End this worker as soon as its parent is gone (a ``kill -9`` of ``therasim run`` must
    not leave workers simulating, writing and then blocked on a dead pipe). Its unfinished
    sessions are not stored, and a rerun redoes them."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


#: The run's shared spending, inherited by each worker process at its start (``_init_shard``).
_SHARED: SharedSpending | None = None


def _init_shard(shared: SharedSpending | None, parent: int) -> None:
    """Start a worker process: keep the run's shared spending, and end with the parent. The
    watch starts here, before the worker waits for its sessions: a parent killed before it had
    handed them over left workers blocked on the pool's queue for ever."""
    global _SHARED
    _SHARED = shared
    _exit_with_parent(parent)


def _shard_main(
    study_doc: dict[str, Any],
    config_doc: dict[str, Any],
    store_path: str,
    spec_docs: list[dict[str, Any]],
    slot: int,
    spent_before: dict[str, Any],
) -> RunStats:
    """One worker process: its own gateway and store connection, its share of the sessions; the
    budget is the study's, metered over every worker (``SharedSpending``, slot ``slot``)."""
    from therasim.agents.llm import GatewayConfig
    from therasim.personas.loader import load_library

    study = Study.model_validate({**study_doc, "processes": 1})
    specs = [SessionSpec.model_validate(d) for d in spec_docs]

    async def go() -> RunStats:
        gateway = Gateway(GatewayConfig.model_validate(config_doc))
        try:
            with Store(store_path) as store:
                return await run_specs(
                    specs,
                    study=study,
                    store=store,
                    gateway=gateway,
                    library=load_library(),
                    spent_before=Totals(**spent_before),
                    shared=(_SHARED, slot) if _SHARED is not None else None,
                )
        finally:
            await gateway.aclose()

    return asyncio.run(go())


async def _run_in_processes(
    todo: list[SessionSpec],
    stats: RunStats,
    *,
    study: Study,
    store: Store,
    gateway: Gateway,
    progress: ProgressFn | None,
    meter: BudgetMeter,
) -> RunStats:
    """Shard the sessions over ``study.processes`` worker processes.

    One Python process is CPU-bound at a few milliseconds a turn; more processes use more cores.
    Each worker gets every ``processes``-th session, its share of the session and per-role
    concurrency, its own gateway and its own connection to the store (SQLite in WAL mode takes
    the concurrent writers). Progress is read from the store while they run. Each role's
    limits are divided among the workers that get sessions (no more than there are sessions);
    the budget is not: every worker meters the whole study's spending, earlier runs' and every
    worker's so far (:class:`~therasim.simulations.budget.SharedSpending`), so a worker that
    finishes early leaves what it did not spend to the others.
    """
    import concurrent.futures
    import multiprocessing

    n = max(1, min(study.processes, len(todo)))
    per = {"concurrency": max(1, study.concurrency // n)}
    spent_doc = asdict(meter.spent())
    study_doc = study.model_copy(update=per).model_dump(mode="json")
    config = gateway.config.model_copy(
        update={
            "roles": {
                name: role.model_copy(
                    update={
                        "concurrency": max(1, role.concurrency // n),
                        "rpm": role.rpm / n if role.rpm else None,
                    }
                )
                for name, role in gateway.config.roles.items()
            }
        }
    )
    shards = [[s.model_dump(mode="json") for s in todo[i::n]] for i in range(n)]
    loop = asyncio.get_running_loop()
    # fork where the platform has it: a spawned worker re-imports LangGraph and friends (~1.5 s),
    # a forked one starts at once; each builds its own event loop, gateway and store connection.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    shared = SharedSpending(n, ctx) if meter.limited else None
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=n, mp_context=ctx, initializer=_init_shard, initargs=(shared, os.getpid())
    ) as pool:
        futures = [
            loop.run_in_executor(
                pool,
                _shard_main,
                study_doc,
                config.model_dump(mode="json"),
                str(store.path),
                shard,
                slot,
                spent_doc,
            )
            for slot, shard in enumerate(shards)
            if shard
        ]
        pending = set(futures)
        before = store.count("completed") + store.count("failed") - stats.skipped
        while pending:
            _, pending_set = await asyncio.wait(pending, timeout=0.5)
            pending = set(pending_set)
            if progress is not None:
                finished = (
                    store.count("completed")
                    + store.count("failed")
                    - stats.skipped
                    - max(0, before)
                )
                progress(
                    RunStats(
                        total=stats.total,
                        skipped=stats.skipped,
                        completed=finished,
                        started=stats.started,
                    )
                )
        results = [f.result() for f in futures]
    for r in results:
        stats.completed += r.completed
        stats.failed += r.failed
        stats.not_started += r.not_started
        stats.turns += r.turns
        stats.usage += r.usage
        stats.budget_exhausted |= r.budget_exhausted
        for reason, count in r.failures.items():
            stats.failures[reason] = stats.failures.get(reason, 0) + count
    if progress is not None:
        progress(stats)
    return stats


# --------------------------------------------------------------------------- estimates


@dataclass
class Estimate:
    """What a study will cost, before it runs (``--dry-run``)."""

    sessions: int
    to_run: int
    calls: int
    tokens: int
    cost_usd: float | None
    per_role: dict[str, dict[str, Any]]
    assumptions: str


# Rough sizes of one call's prompt and reply, in tokens (therasim's own assumptions, printed
# with the estimate): a participant prompt plus a transcript that grows by ~60 tokens a turn.
PROMPT_TOKENS = {"subject": 350, "patient": 450, "appraiser": 500, "questionnaire": 400}
REPLY_TOKENS = {"subject": 90, "patient": 70, "appraiser": 60, "questionnaire": 40}
TOKENS_PER_UTTERANCE = 60


def estimate(study: Study, specs: list[SessionSpec], done: set[str]) -> Estimate:
    """Calls, tokens and cost of the sessions not yet done, from the protocols' expected length."""
    per_role: dict[str, dict[str, Any]] = {}
    cost_known = True
    total_cost = 0.0
    todo = [s for s in specs if s.session_id not in done]
    for spec in todo:
        graph = load_protocol(spec.protocol)
        turns = min(
            spec.max_turns, max(1, sum(graph.phase(p).min_turns for p in graph.canonical_path))
        )
        # PHQ-9 for everyone and PCL-5 for PE, each before and after the session
        instruments = 2 if graph.protocol.modality == "pe" else 1
        n_questionnaires = 2 * instruments if spec.questionnaires else 0
        plan = {
            "subject": (spec.subject, turns),
            "appraiser": (spec.appraiser, turns),
            "patient": (spec.patient, turns),
            "questionnaire": (spec.patient, n_questionnaires),
        }
        for role, (model_spec, calls) in plan.items():
            model = parse_model_spec(model_spec)
            transcript = (
                TOKENS_PER_UTTERANCE * turns
            )  # average transcript over the session ≈ turns × 2 / 2
            tokens_in = calls * (PROMPT_TOKENS[role] + (transcript if role != "appraiser" else 0))
            tokens_out = calls * REPLY_TOKENS[role]
            entry = per_role.setdefault(role, {"calls": 0, "tokens": 0, "backend_calls": 0})
            entry["calls"] += calls
            entry["tokens"] += tokens_in + tokens_out
            if model.is_real:
                entry["backend_calls"] += calls
            cost = price_of(
                model, Usage(input_tokens=tokens_in, output_tokens=tokens_out), dict(study.prices)
            )
            if cost is None:
                cost_known = False
            else:
                total_cost += cost
    calls = sum(e["calls"] for e in per_role.values())
    tokens = sum(e["tokens"] for e in per_role.values())
    return Estimate(
        sessions=len(specs),
        to_run=len(todo),
        calls=calls,
        tokens=tokens,
        cost_usd=total_cost if cost_known else None,
        per_role=per_role,
        assumptions=(
            "turns = the protocol's shortest full path (capped by max_turns); prompts "
            f"{PROMPT_TOKENS['subject']}-{PROMPT_TOKENS['appraiser']} tokens plus ~{TOKENS_PER_UTTERANCE} tokens per utterance "
            "of transcript; judging not included; scripted and local models cost 0"
        ),
    )


def check_specs(specs: list[SessionSpec], library: dict[str, Persona]) -> None:
    """Resolve every persona variant and protocol before the run (config errors fail fast)."""
    seen: set[tuple[str, str]] = set()
    for spec in specs:
        key = (spec.persona, repr(sorted(spec.variant.items())))
        if key not in seen:
            resolve_persona(spec, library)
            seen.add(key)
        load_protocol(spec.protocol)
