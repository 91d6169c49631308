"""The same study on the local executor and on a local Ray cluster: sessions/s and efficiency.

The model under test is the fake OpenAI-compatible server of ``_common`` (its own process,
``--latency`` s a call, ``--slots`` requests served at once; more queue). The study is
``_common.study_200``'s (PE and CBT personas × 2 severities × repeats, 10 therapist turns each,
template patient: one backend call a turn; lexical appraiser unless ``--appraiser``), all sessions in flight and the subject's
concurrency equal to the slots, so only the runner's CPU keeps the backend from staying full.
Three cases, round-robin over ``--repeats`` rounds, median reported:

- ``local``: the runner in this process (``executor: local``, ``processes: 1``);
- ``local ×N``: ``processes: N`` forked worker processes;
- ``ray ×N``: ``executor: {kind: ray, workers: N}`` on a Ray cluster started once, before the
  timed runs, with ``ray.init(num_cpus=N)`` (its start-up is printed apart). A run's wall time
  includes starting its N worker actors (each imports LangGraph and builds the session graph),
  printed apart too.

Efficiency = ideal / wall, ideal = backend calls × latency / slots (or one session's chain of
10 calls, when that is longer: use at least ``--slots`` sessions). The scale model at the end
turns the local case's runner CPU per turn and the Ray driver's CPU per session into the cores
and nodes that keep N backend slots full (``benchmarks/README.md`` §7). Exit status 1 when a run
is wrong: a session not completed with its 10 turns, or the cases' sessions or transcripts
differ.

Run: ``.venv/bin/python benchmarks/bench_ray.py [--repeats 3] [--workers 2] [--sessions 400]``
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    BackendProcess,
    RunResult,
    fmt_s,
    median,
    run_inprocess,
    study_200,
    temp_home,
    warm_up,
)

TURNS = 10
BUSY = 0.8  # the share of a core a worker process is planned at (the issue: 4 processes, 0.81)


@dataclass
class Case:
    """One executor set-up and its runs."""

    label: str
    update: dict[str, Any]
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    turns: list[int] = field(default_factory=list)
    startups: list[float] = field(default_factory=list)


def transcripts(store_path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every stored session's turn records in order (text, codes, state), without timings."""
    out: dict[str, list[dict[str, Any]]] = {}
    with sqlite3.connect(store_path) as db:
        rows = db.execute("SELECT session_id, record FROM turns ORDER BY session_id, idx")
        for sid, record in rows:
            turn = json.loads(record)
            turn.pop("latency_s", None)
            out.setdefault(sid, []).append(turn)
    return out


def study_doc(
    base_url: str, sessions: int, slots: int, appraiser: str, update: dict[str, Any]
) -> dict[str, Any]:
    repeats = max(1, sessions // 40)  # 20 personas × 2 severities per repeat
    doc = study_200(
        base_url, patient_fake=False, sessions_in_flight=40 * repeats, role_concurrency=slots
    )
    return doc | {"id": "bench-ray", "repeats": repeats, "appraiser": {"model": appraiser}} | update


def timed_worker_start() -> list[float]:
    """Record how long each Ray run takes to start its actors (patched in, benchmark only)."""
    from therasim.simulations import ray_executor

    seen: list[float] = []
    start = ray_executor._start_workers

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return start(*args, **kwargs)
        finally:
            seen.append(time.perf_counter() - t)

    ray_executor._start_workers = timed  # type: ignore[assignment]
    return seen


def check(result: RunResult, label: str) -> list[str]:
    n = len(result.session_ids)
    problems = []
    if result.completed != n or result.failed:
        problems.append(f"{label}: {result.completed} of {n} completed, {result.failed} failed")
    if any(t != TURNS for t in result.turns) or len(result.turns) != n:
        problems.append(f"{label}: sessions without {TURNS} therapist turns {dict(result.reasons)}")
    return problems


def scale_model(cpu_per_turn: float, driver_per_session: float, busy: float = BUSY) -> list[str]:
    """Cores and 16-core nodes that keep N slots full at latency L (one backend call a turn).

    Turns a second = slots / latency; worker cores = that × CPU per turn / ``busy``; nodes keep
    one core for Ray and the OS. The one driver stores every session: past ``busy`` of a core
    (``busy / driver_per_session`` sessions a second) it is the bound, whatever the workers."""
    most = busy / driver_per_session
    lines = [
        "RESULT scale model (1 backend call a turn, 10 turns a session, 16-core nodes with 1 core "
        f"left to Ray and the OS; runner {cpu_per_turn * 1e3:.2f} ms CPU a turn at {busy:.0%} "
        f"of a core per worker; driver {driver_per_session * 1e3:.2f} ms CPU a session, so it "
        f"stores at most {most:,.0f} sessions/s):",
        "RESULT   slots  latency   turns/s  worker cores  nodes  driver cores  bound",
    ]
    for slots in (64, 512, 4096):
        for latency in (0.5, 2.0):
            turns_s = slots / latency
            workers = math.ceil(turns_s * cpu_per_turn / busy)
            nodes = math.ceil(workers / 15)
            driver = turns_s / TURNS * driver_per_session
            bound = (
                "backend"
                if driver <= busy
                else f"driver (≤ {most * TURNS / turns_s:.2f} of the slots)"
            )
            lines.append(
                f"RESULT   {slots:>5}  {latency:>5.1f} s  {turns_s:>8,.0f}  {workers:>12}  "
                f"{nodes:>5}  {driver:>12.2f}  {bound}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the cases (median)")
    parser.add_argument("--workers", type=int, default=2, help="processes and Ray workers")
    parser.add_argument("--sessions", type=int, default=400, help="sessions (a multiple of 40)")
    parser.add_argument("--latency", type=float, default=0.2, help="backend seconds a call")
    parser.add_argument("--slots", type=int, default=256, help="backend requests at once")
    parser.add_argument(
        "--appraiser",
        default="scripted:lexical",
        help="the study's appraiser (scripted:statistical costs a few ms more a turn, and each "
        "new worker loads the trained coder)",
    )
    args = parser.parse_args(argv)

    import ray

    n = args.workers
    cases = [
        Case("local", {}),
        Case(f"local ×{n}", {"processes": n}),
        Case(f"ray ×{n}", {"executor": {"kind": "ray", "address": "local", "workers": n}}),
    ]
    problems: list[str] = []
    started = time.perf_counter()
    warm_up()
    startups = timed_worker_start()
    reference: dict[str, list[str]] | None = None
    with temp_home("bench-ray") as root, BackendProcess(args.latency, args.slots) as backend:
        t = time.perf_counter()
        ray.init(
            num_cpus=n, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR
        )
        cluster_s = time.perf_counter() - t
        print(
            f"fake backend (own process): {args.latency} s a call, {args.slots} slots; Ray cluster "
            f"of {n} CPUs started in {cluster_s:.1f} s; cache off",
            flush=True,
        )
        try:
            for round_ in range(args.repeats):
                for i, case in enumerate(cases):
                    doc = study_doc(
                        backend.base_url, args.sessions, args.slots, args.appraiser, case.update
                    )
                    path = root / f"r{round_}-c{i}.sqlite"
                    before = len(startups)
                    result = run_inprocess(doc, path, backend)
                    label = f"{case.label} run {round_ + 1}"
                    problems += check(result, label)
                    case.walls.append(result.wall_s)
                    case.cpus.append(result.cpu_s)
                    case.calls.append(result.backend_calls)
                    case.turns.append(sum(result.turns))
                    case.startups += startups[before:]
                    content = transcripts(path)
                    if reference is None:
                        reference = content
                    elif content != reference:
                        problems.append(
                            f"{label}: sessions or transcripts differ from the first run"
                        )
                    extra = (
                        f", workers started in {startups[-1]:.1f} s"
                        if len(startups) > before
                        else ""
                    )
                    print(
                        f"  {label}: {result.wall_s:.2f} s wall, {result.cpu_s:.2f} s CPU in this "
                        f"process, {result.backend_calls} backend calls, {len(result.session_ids)} "
                        f"sessions{extra}",
                        flush=True,
                    )
        finally:
            ray.shutdown()
    print(f"\n({time.perf_counter() - started:.0f} s in all)")
    local_wall = median(cases[0].walls)
    for case in cases:
        wall = median(case.walls)
        calls = int(median([float(c) for c in case.calls]))
        ideal = max(calls * args.latency / args.slots, TURNS * args.latency)  # slots, or a chain
        sessions = args.sessions // 40 * 40
        line = (
            f"RESULT {case.label}: median {wall:.2f} s {fmt_s(case.walls)}; {sessions / wall:.1f} "
            f"sessions/s; ideal {ideal:.2f} s → efficiency {ideal / wall:.2f}; "
            f"{local_wall / wall:.2f}× the local executor's rate; CPU in this process "
            f"{median(case.cpus):.1f} s"
        )
        if case.startups:
            line += f"; of the wall, worker start-up {median(case.startups):.1f} s"
        print(line)
    turns = median([float(t) for t in cases[0].turns])
    cpu_per_turn = median(cases[0].cpus) / turns
    busy = median(cases[0].cpus) / local_wall
    driver_per_session = median(cases[2].cpus) / (args.sessions // 40 * 40)
    print(
        f"RESULT runner CPU per turn (local): {cpu_per_turn * 1e3:.2f} ms (the process used "
        f"{busy:.0%} of a core); Ray driver CPU per session: {driver_per_session * 1e3:.2f} ms"
    )
    for line in scale_model(cpu_per_turn, driver_per_session):
        print(line)
    for problem in problems:
        print(f"PROBLEM {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
