"""The offline coders on the gold test split: code and failure scores, and time per turn.

Calibrates each appraiser on the shipped gold set's test split (nothing here trains or tunes on
it: the statistical coder learns from the dev split only) and prints the figures the calibration
issue sets targets for:

- code micro-F1 ≥ 0.80 (the offline coder);
- every failure's recall ≥ 0.80 at precision ≥ 0.80 through the codes-plus-rules path;
- ``appropriate`` accuracy ≥ 0.90;
- time per turn of the statistical coder < 5 ms (median over the test split, model loaded).

``--local N`` adds the bundled SmolLM2-135M as appraiser and as judge on N test turns spread
evenly over the files (every k-th by id), reported as it is: one appraiser call and one judge
call per turn (plus repair rounds and the item fallback), several seconds each on 2 cores
(N = 40 took 9 minutes).

Exit status 1 when the statistical coder misses a target.

``--gold FILE...`` scores on some gold files only, e.g. the ones added after the coder's design
was settled (``agents/gold/voices_*.jsonl``): their test lines are text nobody tuned on.

Run: ``.venv/bin/python benchmarks/bench_coder.py [--local N] [--split test] [--gold FILE...]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time

from therasim.agents.gold import load_gold, load_shipped_gold, select_split
from therasim.agents.llm import Gateway, GatewayConfig, RoleConfig, allow_model_requests
from therasim.evaluation.judging.calibration import calibrate, gold_context
from therasim.evaluation.judging.calibration_scores import CalibrationReport
from therasim.evaluation.judging.panel import JudgeSpec

TARGET_F1 = 0.80
TARGET_FAILURE = 0.80
TARGET_APPROPRIATE = 0.90
TARGET_MS = 5.0


def _v(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def report_lines(name: str, r: CalibrationReport) -> list[str]:
    lines = [
        f"RESULT {name}: n={r.n} code micro P/R/F1 = {_v(r.codes.micro.precision)}/"
        f"{_v(r.codes.micro.recall)}/{_v(r.codes.micro.f1)} macro-F1 {_v(r.codes.macro['f1'])}; "
        f"appropriate accuracy {_v(r.appropriate_accuracy)} (hard {_v(r.hard_accuracy)}, n={r.n_hard})"
    ]
    for path, scores in r.failure_paths.items():
        per = " ".join(f"{f}={_v(s.recall)}/{_v(s.precision)}" for f, s in scores.per_label.items())
        lines.append(
            f"RESULT {name} failures via {path} (recall/precision): micro "
            f"{_v(scores.micro.recall)}/{_v(scores.micro.precision)} · {per}"
        )
    for j in r.judges:
        lines.append(
            f"RESULT {name} judge {j.name}: met rate {_v(j.met_rate)}, unanswered {j.errors}/{j.asked}"
        )
    return lines


async def run(spec: str, turns: list, judges: list[JudgeSpec]) -> CalibrationReport:
    roles = {"appraiser": RoleConfig(model=spec, concurrency=2)}
    roles.update({j.role: RoleConfig(model=j.model, concurrency=2) for j in judges})
    gateway = Gateway(GatewayConfig(roles=roles))
    try:
        return await calibrate(gateway, turns, appraiser=spec, judges=judges, concurrency=2)
    finally:
        await gateway.aclose()


def time_per_turn(turns: list) -> float:
    from therasim.agents.statcoder import load_coder

    coder = load_coder()
    contexts = [gold_context(t) for t in turns]
    times = []
    for t, ctx in zip(turns, contexts, strict=True):
        started = time.perf_counter()
        coder.appraise(t.therapist, ctx)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", default="test", choices=["dev", "test", "all"])
    parser.add_argument(
        "--local", type=int, default=0, metavar="N", help="also SmolLM2 on N spread turns"
    )
    parser.add_argument(
        "--gold",
        nargs="+",
        metavar="FILE",
        help="score on these gold files only (default: the shipped set); training stays on dev",
    )
    args = parser.parse_args()
    os.environ.setdefault("THERASIM_HOME", tempfile.mkdtemp(prefix="therasim-bench-"))
    gold = load_gold(args.gold) if args.gold else load_shipped_gold()
    turns = select_split(gold, args.split)
    started = time.perf_counter()
    from therasim.agents.statcoder import load_coder

    load_coder()
    print(f"RESULT statistical coder trained (or loaded) in {time.perf_counter() - started:.1f} s")
    reports = {
        "scripted:lexical": asyncio.run(run("scripted:lexical", turns, [])),
        "scripted:statistical": asyncio.run(run("scripted:statistical", turns, [])),
    }
    if args.local:
        allow_model_requests(True)
        judges = [JudgeSpec(name="smollm2", model="local")]
        ordered = sorted(turns, key=lambda t: t.id)
        sample = ordered[:: max(1, len(ordered) // args.local)][: args.local]  # spread over files
        reports["local"] = asyncio.run(run("local", sample, judges))
    for name, r in reports.items():
        print("\n".join(report_lines(name, r)))
    ms = time_per_turn(turns)
    print(f"RESULT statistical coder: median {ms:.2f} ms a turn")
    r = reports["scripted:statistical"]
    misses = []
    if (r.codes.micro.f1 or 0) < TARGET_F1:
        misses.append(f"code micro-F1 {_v(r.codes.micro.f1)} < {TARGET_F1}")
    for f, s in r.failures.per_label.items():
        if (s.recall or 0) < TARGET_FAILURE or (s.precision or 0) < TARGET_FAILURE:
            misses.append(
                f"{f} recall/precision {_v(s.recall)}/{_v(s.precision)} < {TARGET_FAILURE}"
            )
    if (r.appropriate_accuracy or 0) < TARGET_APPROPRIATE:
        misses.append(f"appropriate accuracy {_v(r.appropriate_accuracy)} < {TARGET_APPROPRIATE}")
    if ms >= TARGET_MS:
        misses.append(f"{ms:.2f} ms a turn ≥ {TARGET_MS}")
    for m in misses:
        print(f"TARGET MISSED: {m}")
    print("targets met" if not misses else f"{len(misses)} target(s) missed")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
