#!/usr/bin/env python3
"""Check gold JSONL files: the format, the coverage counts, and that every line's failures and
`appropriate` follow from its codes by the codebook's rules (agents/gold/codebook.md §2–3).

    .venv/bin/python scripts/gold_check.py [FILE ...]   (default: the shipped set)
"""

from __future__ import annotations

import sys
from collections import Counter

from therasim.agents.gold import load_gold, shipped_gold_files
from therasim.errors import ConfigError
from therasim.evaluation.judging.calibration import rules_on_gold_codes


def main(argv: list[str]) -> int:
    files = argv or [str(p) for p in shipped_gold_files()]
    try:
        turns = load_gold(files)
    except ConfigError as exc:
        print(f"error: {exc}")
        return 1
    codes = Counter(c.value for t in turns for c in t.codes)
    failures = Counter(f.value for t in turns for f in t.failures)
    print(
        f"{len(turns)} turns · pe {sum(t.modality == 'pe' for t in turns)} · "
        f"cbt {sum(t.modality == 'cbt' for t in turns)} · appropriate "
        f"{sum(t.appropriate for t in turns)} · hard {sum(t.hard for t in turns)}"
    )
    print("codes:   ", dict(sorted(codes.items())))
    print("failures:", dict(sorted(failures.items())))
    print("phase kinds:", dict(sorted(Counter(t.phase_kind.value for t in turns).items())))
    print(
        "severity:",
        dict(Counter(t.severity.value for t in turns)),
        "risk:",
        dict(Counter(t.risk.value for t in turns)),
    )
    bad = 0
    for t in turns:
        want_f, want_a = rules_on_gold_codes(t)
        have_f = {f.value for f in t.failures}
        if want_f != have_f or want_a != t.appropriate:
            bad += 1
            print(
                f"DISAGREE {t.id}: labels failures={sorted(have_f)} appropriate={t.appropriate}; "
                f"rules on its codes give failures={sorted(want_f)} appropriate={want_a}"
            )
    print(f"{bad} line(s) disagree with the codebook rules")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
