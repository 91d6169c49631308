"""Running a finished study again: how many backend calls, and how long, against the first run.

The study is the 1-call study of ``bench_efficiency.py`` (200 sessions × 10 therapist turns,
fake backend in its own process, 0.2 s a call, 64 calls in flight). Measured:

1. in-process (``run_specs`` wall time), cache off: first run, then the same store again — every
   session is completed in the store, so the rerun skips them all (0 backend calls);
2. the whole CLI, ``python -m therasim run study.yaml --no-judge --no-report`` (cache on, its own
   ``THERASIM_HOME``): first run, then the same command again — process start-up and imports
   dominate the second;
3. a NEW store with the response cache warm (``cache: true``, same ``THERASIM_HOME``), in-process
   and through the CLI: 0 backend calls too, but every session is simulated again (graph,
   appraiser, patient, store) with the subject's replies served from the cache, so the fraction
   is far above that of a rerun.

Exit status 1 when a rerun or a warm-cache run calls the backend, or a run is incomplete.

Run: ``.venv/bin/python benchmarks/bench_rerun.py``
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from _common import (
    LATENCY_S,
    SLOTS,
    BackendProcess,
    RunResult,
    run_inprocess,
    study_200,
    temp_home,
    warm_up,
)

SESSIONS = 200
TARGET_FRACTION = 0.05  # a rerun takes at most 5 % of the first run's wall time (issue #6)


def run_cli(study_path: Path, home: Path) -> tuple[float, str]:
    """Wall time and output of ``python -m therasim run STUDY --no-judge --no-report``."""
    env = {
        **os.environ,
        "THERASIM_HOME": str(home),
        "NO_COLOR": "1",
        "TERM": "dumb",
        "COLUMNS": "200",
    }
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "therasim", "run", str(study_path), "--no-judge", "--no-report"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(
            f"therasim run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return wall, proc.stdout


def cli_counts(output: str) -> tuple[int, int, int]:
    """(completed, failed, already done) from the CLI's summary line."""
    m = re.search(r"(\d+) completed, (\d+) failed, (\d+) already done", output)
    if m is None:
        raise RuntimeError(f"no summary line in the CLI output:\n{output[-2000:]}")
    return int(m[1]), int(m[2]), int(m[3])


def store_summary(store_path: Path) -> tuple[int, set[int]]:
    """Completed sessions in a store and the set of their therapist-turn counts."""
    from therasim.simulations.store import Store

    with Store(store_path) as store:
        rows = [r for r in store.sessions() if r.status == "completed"]
    return len(rows), {r.n_turns for r in rows}


def timed(command: list[str]) -> float:
    """Wall time of a command (run to completion, output discarded)."""
    started = time.perf_counter()
    subprocess.run(command, capture_output=True, check=True, timeout=120)
    return time.perf_counter() - started


def write_study(doc: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def main() -> int:
    problems: list[str] = []
    lines: list[str] = []
    started = time.perf_counter()
    warm_up()
    with temp_home("bench-rerun") as root, BackendProcess(LATENCY_S, SLOTS) as backend:
        print(
            f"fake backend (own process): {LATENCY_S} s a call, {SLOTS} slots; "
            f"{SESSIONS} sessions × 10 turns, 200 in flight, subject concurrency {SLOTS}",
            flush=True,
        )

        def expect(ok: bool, what: str) -> None:
            if not ok:
                problems.append(what)

        def show(label: str, r: RunResult) -> None:
            print(
                f"  {label}: {r.wall_s:.2f} s run_specs wall, {r.backend_calls} backend calls, "
                f"{r.completed} completed, {len(r.session_ids) - r.completed - r.failed} skipped",
                flush=True,
            )

        # 1. in-process, cache off: the same store twice
        doc = study_200(backend.base_url, patient_fake=False, sessions_in_flight=SESSIONS)
        first = run_inprocess(doc, root / "inproc.sqlite", backend)
        show("in-process first run", first)
        again = run_inprocess(doc, root / "inproc.sqlite", backend)
        show("in-process rerun    ", again)
        expect(first.completed == SESSIONS and set(first.turns) == {10}, "first run incomplete")
        expect(again.backend_calls == 0, f"rerun made {again.backend_calls} backend calls")
        expect(again.completed == 0 and again.failed == 0, "rerun simulated sessions again")
        expect(
            again.wall_s <= TARGET_FRACTION * first.wall_s,
            f"in-process rerun took {again.wall_s / first.wall_s:.1%} of the first run",
        )
        lines.append(
            f"RESULT rerun in-process (run_specs): {again.backend_calls} backend calls; "
            f"{again.wall_s:.3f} s vs first {first.wall_s:.2f} s = {again.wall_s / first.wall_s:.1%}"
        )

        # 2. in-process, warm response cache, new store
        cached = study_200(
            backend.base_url, patient_fake=False, sessions_in_flight=SESSIONS, cache=True
        )
        cold = run_inprocess(cached, root / "cache-cold.sqlite", backend)
        show("in-process cache on, cold cache, new store", cold)
        warm = run_inprocess(cached, root / "cache-warm.sqlite", backend)
        show("in-process cache on, warm cache, new store", warm)
        subject_calls, subject_cached, _ = warm.accounting.get("subject", (0, 0, 0))
        expect(warm.backend_calls == 0, f"warm-cache run made {warm.backend_calls} backend calls")
        expect(warm.completed == SESSIONS and set(warm.turns) == {10}, "warm-cache run incomplete")
        lines.append(
            f"RESULT warm cache, new store, in-process: {warm.backend_calls} backend calls "
            f"({subject_cached}/{subject_calls} subject calls from the cache); {warm.wall_s:.2f} s "
            f"vs cold-cache first run {cold.wall_s:.2f} s = {warm.wall_s / cold.wall_s:.0%} "
            f"(every session is re-simulated from the cache)"
        )

        # 3. the CLI, cache on, its own THERASIM_HOME: first, same command again, new store
        home = root / "home-cli"
        doc_cli = study_200(
            backend.base_url,
            patient_fake=False,
            sessions_in_flight=SESSIONS,
            cache=True,
            output=root / "cli-run",
        )
        study_path = write_study(doc_cli, root / "study.yaml")
        calls0 = backend.calls
        cli_first, out = run_cli(study_path, home)
        calls1 = backend.calls
        print(f"  CLI first run: {cli_first:.2f} s, {calls1 - calls0} backend calls", flush=True)
        expect(cli_counts(out) == (SESSIONS, 0, 0), f"CLI first run: {cli_counts(out)}")
        cli_again, out = run_cli(study_path, home)
        calls2 = backend.calls
        print(f"  CLI rerun:     {cli_again:.2f} s, {calls2 - calls1} backend calls", flush=True)
        expect(cli_counts(out) == (0, 0, SESSIONS), f"CLI rerun: {cli_counts(out)}")
        expect(calls2 == calls1, f"CLI rerun made {calls2 - calls1} backend calls")
        expect(
            cli_again <= TARGET_FRACTION * cli_first,
            f"CLI rerun took {cli_again / cli_first:.1%} of the first run "
            f"(target ≤ {TARGET_FRACTION:.0%})",
        )
        doc_new = {**doc_cli, "output": str(root / "cli-run-new-store")}
        new_path = write_study(doc_new, root / "study-new-store.yaml")
        cli_warm, out = run_cli(new_path, home)
        calls3 = backend.calls
        print(
            f"  CLI new store, warm cache: {cli_warm:.2f} s, {calls3 - calls2} backend calls",
            flush=True,
        )
        expect(cli_counts(out) == (SESSIONS, 0, 0), f"CLI warm-cache run: {cli_counts(out)}")
        expect(calls3 == calls2, f"CLI warm-cache run made {calls3 - calls2} backend calls")
        n, turns = store_summary(root / "cli-run-new-store" / "sessions.sqlite")
        expect(n == SESSIONS and turns == {10}, f"CLI warm-cache store: {n} sessions, {turns}")

        # what a CLI process costs before it simulates anything
        startup = timed([sys.executable, "-m", "therasim", "--help"])
        # what `therasim run` imports before it simulates (evaluation.axes, with pandas and
        # scipy, only for a study that sets thresholds; this one does not)
        imports = timed([sys.executable, "-c", "import therasim.pipeline"])
        lines.append(
            f"RESULT rerun CLI (whole command): {calls2 - calls1} backend calls; "
            f"{cli_again:.2f} s vs first {cli_first:.2f} s = {cli_again / cli_first:.1%} "
            f"(for scale: `python -m therasim --help` {startup:.2f} s; importing what `run` imports, "
            f"therasim.pipeline, {imports:.2f} s)"
        )
        lines.append(
            f"RESULT warm cache, new store, CLI: {calls3 - calls2} backend calls; "
            f"{cli_warm:.2f} s vs first {cli_first:.2f} s = {cli_warm / cli_first:.0%}"
        )
    print(f"\n({time.perf_counter() - started:.0f} s in all)")
    for line in lines:
        print(line)
    for problem in problems:
        print(f"PROBLEM {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
