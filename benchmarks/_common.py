"""Shared plumbing of the benchmarks: a fake backend in its own process, temp homes, study runs.

The benchmarks are scripts, not tests: each prints what it measured and exits non-zero only when
the run itself is wrong (a session that did not run its turns, a backend call where none may be).

The fake backend is ``tests/fake_openai.py``'s ``FakeOpenAIServer`` run in a child
process (:class:`BackendProcess`), so that its CPU time is not charged to the runner: a real
model server is another machine, and on the 2-core box these figures come from, an in-process
server would share the runner's GIL. ``slots`` gives the server a fixed number of requests it
serves at once (a continuous-batching engine's batch size); requests beyond that queue, so
"ideal = calls × latency / slots" is a true lower bound on the wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

LATENCY_S = 0.2
SLOTS = 64

# what the fake patient says, in turn; plain first-person lines that pass the patient guards
PATIENT_LINES = (
    "It's hard to say out loud. My chest gets tight when I think about that night.",
    "I keep seeing the headlights. I want to stop but I'll keep going.",
    "Maybe a sixty right now. My hands are shaking a little.",
    "I usually just change the subject when this comes up.",
    "It feels a bit less sharp than it did at the start.",
    "I'm not sure I believe that, but I can see why you say it.",
)


def fake_reply(body: dict[str, Any]) -> str:
    """The fake backend's answer: a patient line for ``fake-patient``, else an echoing therapist."""
    messages = body.get("messages", [])
    if body.get("model") == "fake-patient":
        return PATIENT_LINES[len(messages) % len(PATIENT_LINES)]
    last = str(messages[-1].get("content", "")) if messages else ""
    return f"I hear you. You said: {last[:60]} Can you stay with that a little longer?"


def _serve(conn: Connection, latency_s: float, slots: int | None) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from fake_openai import FakeOpenAIServer

    class SlottedServer(FakeOpenAIServer):
        """The fake server with at most ``slots`` requests being answered at once."""

        _slots: asyncio.Semaphore | None = None

        async def _respond(self, method: str, path: str, raw: bytes) -> tuple[str, str]:
            if slots is None:
                return await super()._respond(method, path, raw)
            if self._slots is None:  # created on the server's own event loop
                self._slots = asyncio.Semaphore(slots)
            async with self._slots:
                return await super()._respond(method, path, raw)

    server = SlottedServer(latency_s=latency_s, reply=fake_reply)
    server.start()
    conn.send(server.base_url)
    try:
        while True:
            command = conn.recv()
            if command == "calls":
                conn.send((server.calls, dict(Counter(r.get("model") for r in server.requests))))
            elif command == "cpu":
                conn.send(time.process_time())
            elif command == "stop":
                break
    except EOFError:
        pass
    finally:
        server.stop()


class BackendProcess:
    """A FakeOpenAIServer (latency, slots) in a child process; ``calls`` asks it for its count."""

    def __init__(self, latency_s: float = LATENCY_S, slots: int | None = SLOTS) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, latency_s, slots), daemon=True)
        self.latency_s = latency_s
        self.slots = slots
        self.base_url = ""

    def __enter__(self) -> BackendProcess:
        self._proc.start()
        if not self._conn.poll(30):
            raise RuntimeError("the fake backend did not start")
        self.base_url = self._conn.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self._conn.send("stop")
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()

    @property
    def calls(self) -> int:
        """Chat-completion requests the server received so far (``FakeOpenAIServer.calls``)."""
        return self.calls_by_model()[0]

    def calls_by_model(self) -> tuple[int, dict[str, int]]:
        self._conn.send("calls")
        total, by_model = self._conn.recv()
        return int(total), dict(by_model)

    @property
    def cpu_s(self) -> float:
        """The backend process's CPU time so far (all its threads)."""
        self._conn.send("cpu")
        return float(self._conn.recv())


@contextlib.contextmanager
def temp_home(prefix: str) -> Iterator[Path]:
    """A temp dir that is also ``$THERASIM_HOME`` (the response cache) for the block."""
    before = os.environ.get("THERASIM_HOME")
    with tempfile.TemporaryDirectory(prefix=f"therasim-{prefix}-") as tmp:
        root = Path(tmp)
        os.environ["THERASIM_HOME"] = str(root / "home")
        try:
            yield root
        finally:
            if before is None:
                os.environ.pop("THERASIM_HOME", None)
            else:
                os.environ["THERASIM_HOME"] = before


def study_200(
    base_url: str,
    *,
    patient_fake: bool,
    sessions_in_flight: int,
    role_concurrency: int = SLOTS,
    cache: bool = False,
    output: Path | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    """The 200-session study: 10 PE + 10 CBT personas × 2 severities × 5 repeats, 10 turns each."""
    doc: dict[str, Any] = {
        "id": "bench-200",
        "subjects": {"fake": f"openai:fake?base_url={base_url}"},
        "personas": {"globs": ["pe-*", "cbt-*"], "limit": 10},
        "severities": ["routine", "distress"],
        "repeats": 5,
        "max_turns": 10,
        "questionnaires": False,
        "concurrency": sessions_in_flight,
        "subject_limits": {"concurrency": role_concurrency},
        "cache": cache,
        "processes": processes,
    }
    if patient_fake:
        doc["patient"] = {
            "model": f"openai:fake-patient?base_url={base_url}",
            "concurrency": role_concurrency,
        }
    if output is not None:
        doc["output"] = str(output)
    return doc


@dataclass
class RunResult:
    """One in-process ``run_specs`` run."""

    wall_s: float
    cpu_s: float
    backend_cpu_s: float
    session_ids: list[str]
    completed: int
    failed: int
    turns: list[int]
    reasons: Counter[str]
    backend_calls: int
    accounting: dict[str, tuple[int, int, int]]  # role → (calls, cached, backend)


def warm_up() -> None:
    """Import what a first backend call imports lazily, and build the session graph, so that
    the timed runs measure the runner's steady state rather than module imports (~1 s)."""
    import aiohttp  # noqa: F401  (imported lazily by the gateway's first openai call)

    from therasim.personas import load_library
    from therasim.simulations.session import session_graph

    load_library()
    session_graph()


def run_inprocess(
    doc: dict[str, Any], store_path: Path, backend: BackendProcess | None
) -> RunResult:
    """Expand ``doc`` and run it with ``run_specs`` on ``store_path``; times ``run_specs`` only
    (``cpu_s`` is this process's CPU time over the same span, all threads)."""
    from therasim.agents.llm import Gateway
    from therasim.personas import load_library
    from therasim.simulations.runner import run_specs
    from therasim.simulations.store import Store
    from therasim.simulations.study import Study, expand

    study = Study.model_validate(doc)
    library = load_library()
    specs = expand(study, library)
    calls_before = backend.calls if backend else 0
    backend_cpu_before = backend.cpu_s if backend else 0.0

    async def go() -> tuple[float, float, Any, list[dict[str, Any]], Gateway]:
        gateway = Gateway(study.gateway_config())
        try:
            with Store(store_path) as store:
                started, cpu0 = time.perf_counter(), time.process_time()
                stats = await run_specs(
                    specs, study=study, store=store, gateway=gateway, library=library
                )
                wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
                rows = store.sessions()
        finally:
            await gateway.aclose()
        return wall, cpu, stats, rows, gateway

    wall, cpu, stats, rows, gateway = asyncio.run(go())
    ids = {s.session_id for s in specs}
    mine = [r for r in rows if r.session_id in ids]
    return RunResult(
        wall_s=wall,
        cpu_s=cpu,
        backend_cpu_s=(backend.cpu_s - backend_cpu_before) if backend else 0.0,
        session_ids=[s.session_id for s in specs],
        completed=stats.completed,
        failed=stats.failed,
        turns=[r.n_turns for r in mine],
        reasons=Counter(r.termination_reason.value for r in mine),
        backend_calls=(backend.calls - calls_before) if backend else 0,
        accounting={
            role: (u.calls, u.cached_calls, u.backend_calls)
            for role, u in gateway.accounting.roles.items()
        },
    )


def makespan(durations: list[float], workers: int) -> float:
    """Wall time of running jobs in order on ``workers`` (each takes the next job when free)."""
    free = [0.0] * workers
    for d in durations:
        i = min(range(workers), key=free.__getitem__)
        free[i] += d
    return max(free)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)


def fmt_s(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"
