#!/usr/bin/env python3
"""Score cue files (the statistical coder's broad phrase features) on the gold DEV split only.

Cues are regular expressions per behaviour code, matched case-insensitively against a therapist
reply, in any language. They are features the coder weighs, not decisions, so recall matters
more than precision; this prints both per code, and with --show CODE the dev replies a code's
cues miss and the ones they wrongly hit. The test split is never read.

    .venv/bin/python scripts/cue_check.py agents/prompts/cues_*.yaml [--show validation]
"""

from __future__ import annotations

import argparse
import sys

from therasim.agents.gold import dev_turns
from therasim.agents.statcoder import load_cues


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+")
    parser.add_argument("--show", help="list the dev misses and false hits of this code")
    args = parser.parse_args()
    cues = load_cues(args.files)
    turns = dev_turns()
    print(f"{len(turns)} dev turns")
    for code, regexes in cues.items():
        gold = [code in {c.value for c in t.codes} for t in turns]
        hit = [any(r.search(t.therapist) for r in regexes) for t in turns]
        tp = sum(g and h for g, h in zip(gold, hit, strict=True))
        fp = sum(h and not g for g, h in zip(gold, hit, strict=True))
        n = sum(gold)
        p = tp / (tp + fp) if tp + fp else float("nan")
        r = tp / n if n else float("nan")
        print(f"{code:22s} n={n:3d} recall={r:.2f} precision={p:.2f} patterns={len(regexes)}")
        if args.show == code:
            for t, g, h in zip(turns, gold, hit, strict=True):
                if g != h:
                    kind = "MISS" if g else "FALSE"
                    print(f"  {kind} {t.id} [{t.phase_kind.value}] {t.therapist[:400]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
