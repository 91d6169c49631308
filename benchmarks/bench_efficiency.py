"""How close the runner gets to the backend's limit: 200 sessions × 10 therapist turns.

The model under test is a fake OpenAI-compatible server (its own process, 0.2 s a call, 64
requests served at once). Efficiency = ideal / measured wall time of ``run_specs``, with
ideal = backend calls × 0.2 s / 64: the time a perfectly busy 64-slot backend needs.

Two variants: the patient is ``scripted:template-patient`` (1 backend call a turn) or the fake
server too (2 calls a turn; CBT sessions open with the patient, so they make 11 patient calls).
Two configurations:

(a) 64 concurrent backend calls per role, all 200 sessions in flight: the backend stays full;
(b) 64 sessions in flight: a session is a chain of sequential calls, so the best possible is
    the makespan of the sessions on 64 workers (1-call: ceil(200/64) = 4 waves × 2 s = 8 s
    against an ideal of 6.25 s, a bound of 0.78 from quantisation alone).

Run: ``.venv/bin/python benchmarks/bench_efficiency.py [--repeats 3] [--variant 1|2] [--config a|b]``
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path

from _common import (
    LATENCY_S,
    SLOTS,
    BackendProcess,
    RunResult,
    fmt_s,
    makespan,
    median,
    run_inprocess,
    study_200,
    temp_home,
)

SESSIONS = 200
TURNS = 10


def _backend_calls_per_session(store_path: Path, session_ids: list[str]) -> list[int]:
    """Backend (openai:*) calls of each session, in spec order, from the store's calls table."""
    with sqlite3.connect(store_path) as db:
        counts = dict(
            db.execute(
                "SELECT session_id, COUNT(*) FROM calls WHERE model LIKE 'openai:%' AND cached=0 "
                "GROUP BY session_id"
            ).fetchall()
        )
    return [int(counts.get(sid, 0)) for sid in session_ids]


def _check(result: RunResult, label: str) -> list[str]:
    problems = []
    if result.specs != SESSIONS:
        problems.append(f"{label}: {result.specs} specs, expected {SESSIONS}")
    if result.completed != SESSIONS or result.failed:
        problems.append(f"{label}: {result.completed} completed, {result.failed} failed")
    short = [t for t in result.turns if t != TURNS]
    if short or len(result.turns) != SESSIONS:
        problems.append(
            f"{label}: {len(short)} sessions without {TURNS} therapist turns ({dict(result.reasons)})"
        )
    return problems


def run_case(
    backend: BackendProcess, root: Path, *, patient_fake: bool, config: str, repeats: int
) -> tuple[str, list[str]]:
    """Run one variant × configuration ``repeats`` times; returns the result line and problems."""
    in_flight = SESSIONS if config == "a" else SLOTS
    walls: list[float] = []
    cpus: list[float] = []
    calls: list[int] = []
    problems: list[str] = []
    bound_s = 0.0
    label = f"{'2-call' if patient_fake else '1-call'} ({config})"
    for i in range(repeats):
        doc = study_200(backend.base_url, patient_fake=patient_fake, sessions_in_flight=in_flight)
        store_path = root / f"{label.replace(' ', '')}-{i}.sqlite".replace("(", "").replace(")", "")
        cpu0 = time.process_time()
        result = run_inprocess(doc, store_path, backend)
        cpus.append(time.process_time() - cpu0)
        problems += _check(result, f"{label} run {i + 1}")
        walls.append(result.wall_s)
        calls.append(result.backend_calls)
        from therasim.personas import load_library
        from therasim.simulations.study import Study, expand

        ids = [s.session_id for s in expand(Study.model_validate(doc), load_library())]
        per_session = _backend_calls_per_session(store_path, ids)
        if sum(per_session) != result.backend_calls:
            problems.append(
                f"{label}: store records {sum(per_session)} backend calls, server saw {result.backend_calls}"
            )
        bound_s = (
            makespan([n * LATENCY_S for n in per_session], SLOTS)
            if config == "b"
            else sum(per_session) * LATENCY_S / SLOTS
        )
        print(
            f"  {label} run {i + 1}: {result.wall_s:.2f} s wall, {cpus[-1]:.2f} s CPU, "
            f"{result.backend_calls} backend calls, turns/session {min(result.turns)}-{max(result.turns)}, "
            f"{dict(result.reasons)}",
            flush=True,
        )
    wall = median(walls)
    n_calls = calls[len(calls) // 2] if len(set(calls)) > 1 else calls[0]
    ideal = n_calls * LATENCY_S / SLOTS
    line = (
        f"RESULT efficiency {label}: median {wall:.2f} s over {fmt_s(walls)}; "
        f"{n_calls} backend calls (server count); ideal {ideal:.2f} s → efficiency {ideal / wall:.2f}"
    )
    if config == "b":
        line += (
            f"; best possible with 64 sessions {bound_s:.2f} s → bound {ideal / bound_s:.2f}"
            f" (measured is {bound_s / wall:.0%} of the bound)"
        )
    line += f"; runner CPU {median(cpus):.1f} s ({median(cpus) / wall:.0%} of wall)"
    return line, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per case (median reported)")
    parser.add_argument("--variant", choices=["1", "2", "both"], default="both")
    parser.add_argument("--config", choices=["a", "b", "both"], default="both")
    args = parser.parse_args(argv)

    variants = [False, True] if args.variant == "both" else [args.variant == "2"]
    configs = ["a", "b"] if args.config == "both" else [args.config]
    lines: list[str] = []
    problems: list[str] = []
    started = time.perf_counter()
    with temp_home("bench-eff") as root, BackendProcess(LATENCY_S, SLOTS) as backend:
        print(
            f"fake backend at {backend.base_url}: {LATENCY_S} s a call, {SLOTS} slots; "
            f"{SESSIONS} sessions × {TURNS} therapist turns; cache off",
            flush=True,
        )
        for patient_fake in variants:
            for config in configs:
                line, found = run_case(
                    backend, root, patient_fake=patient_fake, config=config, repeats=args.repeats
                )
                print(line, flush=True)
                lines.append(line)
                problems += found
    print(f"\n({time.perf_counter() - started:.0f} s in all)")
    for line in lines:
        print(line)
    for problem in problems:
        print(f"PROBLEM {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
