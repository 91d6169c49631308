"""Peak memory of a 1,000-session study run through the CLI (target: ≤ 500 MB).

The study is fully offline: ``scripted:adherent`` subject, ``scripted:template-patient``,
``scripted:lexical`` appraiser, 10 PE + 10 CBT personas × 2 severities × 25 repeats = 1,000
sessions, ``max_turns: 10``, questionnaires on, 64 sessions in flight. It runs as a child process
(``python -m therasim run study.yaml --no-judge --no-report``) in a temp dir; its peak RSS is read
from ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` after it exits, and its RSS is also sampled every
0.25 s (psutil) to show whether memory grows with the sessions done or stays flat.

Exit status 1 when the peak exceeds the target or the run is incomplete.

Run: ``.venv/bin/python benchmarks/bench_memory.py``
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml
from _common import temp_home

SESSIONS = 1000
TARGET_MB = 500.0


def study_doc(output: Path) -> dict[str, object]:
    return {
        "id": "bench-memory",
        "subjects": {"adherent": "scripted:adherent"},
        "patient": {"model": "scripted:template-patient"},
        "appraiser": {"model": "scripted:lexical"},
        "personas": {"globs": ["pe-*", "cbt-*"], "limit": 10},
        "severities": ["routine", "distress"],
        "repeats": 25,
        "max_turns": 10,
        "questionnaires": True,
        "concurrency": 64,
        "output": str(output),
    }


def sample_rss(proc: subprocess.Popen[bytes]) -> list[tuple[float, float]]:
    """(seconds since start, RSS MB) every 0.25 s until the process exits; [] without psutil."""
    try:
        import psutil
    except ImportError:
        proc.wait()
        return []
    samples: list[tuple[float, float]] = []
    started = time.perf_counter()
    try:
        handle = psutil.Process(proc.pid)
        while proc.poll() is None:
            samples.append((time.perf_counter() - started, handle.memory_info().rss / 2**20))
            time.sleep(0.25)
    except psutil.NoSuchProcess:
        pass
    proc.wait()
    return samples


def store_stats(out: Path) -> tuple[float, int, dict[str, int], dict[int, int]]:
    """Store size in MB (db + WAL), completed sessions, termination reasons, turns histogram."""
    from therasim.simulations.store import Store

    size = sum(p.stat().st_size for p in out.glob("sessions.sqlite*")) / 2**20
    with Store(out / "sessions.sqlite") as store:
        rows = store.sessions()
    reasons: dict[str, int] = {}
    turns: dict[int, int] = {}
    for r in rows:
        reasons[r.termination_reason.value] = reasons.get(r.termination_reason.value, 0) + 1
        turns[r.n_turns] = turns.get(r.n_turns, 0) + 1
    completed = sum(1 for r in rows if r["status"] == "completed")
    return size, completed, reasons, dict(sorted(turns.items()))


BASELINE_CODE = (
    "import resource; import therasim.cli, therasim.pipeline; "
    "from therasim.personas import load_library; load_library(); "
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)


def baseline_mb() -> float:
    """Peak RSS of a process that only imports the run path and loads the persona library."""
    out = subprocess.run(
        [sys.executable, "-c", BASELINE_CODE], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> int:
    problems: list[str] = []
    with temp_home("bench-mem") as root:
        out = root / "run"
        study_path = root / "study.yaml"
        study_path.write_text(yaml.safe_dump(study_doc(out), sort_keys=False), encoding="utf-8")
        env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb"}
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "therasim", "run", str(study_path), "--no-judge", "--no-report"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        samples = sample_rss(proc)
        wall = time.perf_counter() - started
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        # ru_maxrss is in KiB on Linux: the largest RSS of any waited-for child (the only one)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if proc.returncode != 0:
            problems.append(f"therasim run exited {proc.returncode}: {stderr[-1500:]}")
        size_mb, completed, reasons, turns = store_stats(out)
    base_mb = baseline_mb()
    if completed != SESSIONS:
        problems.append(f"{completed} of {SESSIONS} sessions completed")
    if peak_mb > TARGET_MB:
        problems.append(f"peak RSS {peak_mb:.0f} MB is over the {TARGET_MB:.0f} MB target")
    n_turns = sum(k * v for k, v in turns.items())
    print(f"{completed} sessions completed, {n_turns} therapist turns; turns per session {turns}")
    print(f"termination reasons {reasons}")
    if samples:
        marks = [0.1, 0.25, 0.5, 0.75, 1.0]
        trace = ", ".join(
            f"{samples[min(len(samples) - 1, int(m * (len(samples) - 1)))][1]:.0f} MB @ {m:.0%}"
            for m in marks
        )
        print(f"RSS over the run (psutil, every 0.25 s): {trace}")
    print(
        f"RESULT memory: peak RSS {peak_mb:.0f} MB (target ≤ {TARGET_MB:.0f} MB) for {SESSIONS} "
        f"sessions, 64 in flight, questionnaires on; wall {wall:.1f} s for the whole CLI command "
        f"({SESSIONS / wall:.0f} sessions/s); store {size_mb:.1f} MB "
        f"({size_mb * 1024 / max(1, completed):.0f} KB a session); imports + persona library "
        f"alone peak at {base_mb:.0f} MB"
    )
    for problem in problems:
        print(f"PROBLEM {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
