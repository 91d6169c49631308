"""Time, peak RSS and HTML size of ``therasim report --html`` as a study grows (issue 12, item 13).

Stores: ``studies/quickstart.yaml`` (fully offline, scripted) with ``repeats`` 1, 5 and 20, i.e.
48, 240 and 960 sessions, each simulated and judged once with ``therasim run STUDY --no-report
--output DIR`` and kept under ``--stores`` (default ``/tmp/therasim-bench-report``) for reuse: the
960-session store takes several minutes to build. Each report runs as a child process
(``python -m therasim report DIR --html FILE``); its peak RSS is that child's own
``ru_maxrss`` (``os.wait4``). Targets for ~1,000 sessions: under 15 s and under 300 MB, with
memory growing sublinearly in sessions.

Exit status 1 when a report fails; the targets are printed, not enforced (the machine is shared).

Run: ``.venv/bin/python benchmarks/bench_report.py [--repeats 1,5,20] [--stores DIR]``
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 15.0
TARGET_MB = 300.0


def build_store(stores: Path, repeats: int) -> Path:
    """The run folder of quickstart × ``repeats``, simulated and judged once (reused after)."""
    out = stores / f"quickstart-r{repeats}"
    if (out / "sessions.sqlite").exists() and (out / "done").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    text = (REPO / "studies" / "quickstart.yaml").read_text(encoding="utf-8")
    text = re.sub(r"(?m)^repeats: \d+$", f"repeats: {repeats}", text)
    study = stores / f"quickstart-r{repeats}.yaml"
    study.write_text(text, encoding="utf-8")
    env = {**os.environ, "THERASIM_HOME": str(stores / "home"), "NO_COLOR": "1"}
    print(f"building {out} (quickstart, repeats {repeats}) …", flush=True)
    subprocess.run(
        [sys.executable, "-m", "therasim", "run", str(study), "--no-report", "--output", str(out)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (out / "done").write_text("ok", encoding="utf-8")
    return out


def measure(run: Path) -> tuple[int, float, float, float, float]:
    """(sessions, wall s, CPU s, peak MB, HTML MB) of one ``therasim report --html`` child."""
    from therasim.simulations.store import Store

    with Store(run / "sessions.sqlite") as store:
        sessions = store.count()
    html = run / "report.html"
    env = {**os.environ, "THERASIM_HOME": str(run.parent / "home"), "NO_COLOR": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "therasim", "report", str(run), "--html", str(html)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise RuntimeError(f"therasim report {run} failed: {err[-1500:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return sessions, wall, cpu, usage.ru_maxrss / 1024, html.stat().st_size / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", default="1,5,20", help="quickstart repeats, comma-separated")
    parser.add_argument("--stores", default="/tmp/therasim-bench-report", type=Path)
    args = parser.parse_args()
    rows = []
    for repeats in (int(r) for r in args.repeats.split(",")):
        run = build_store(args.stores, repeats)
        sessions, wall, cpu, peak, size = measure(run)
        rows.append((sessions, wall, cpu, peak, size))
        print(
            f"RESULT report: {sessions} sessions  {wall:6.1f} s wall  {cpu:6.1f} s CPU  "
            f"peak {peak:5.0f} MB  HTML {size:4.1f} MB ({size * 1024 / sessions:5.1f} KB a session)",
            flush=True,
        )
    if len(rows) > 1:
        (n0, w0, c0, p0, s0), (n1, w1, c1, p1, s1) = rows[0], rows[-1]
        print(
            f"RESULT ratios {n1}/{n0} sessions = {n1 / n0:.0f}×: wall {w1 / w0:.1f}×, CPU "
            f"{c1 / c0:.1f}×, peak RSS {p1 / p0:.2f}×, HTML {s1 / s0:.2f}×"
        )
    sessions, wall, _, peak, _ = rows[-1]
    print(
        f"RESULT targets at {sessions} sessions: {wall:.1f} s (target < {TARGET_S:.0f} s) "
        f"{'met' if wall < TARGET_S else 'MISSED'}; peak {peak:.0f} MB (target < {TARGET_MB:.0f} MB) "
        f"{'met' if peak < TARGET_MB else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
