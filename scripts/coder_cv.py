#!/usr/bin/env python3
"""Cross-validate the statistical coder on the gold DEV split: the figure to tune against.

The test split is for measurement only (``benchmarks/bench_coder.py``); choices about the coder
(features, model, thresholds, cues) are made on this script's out-of-fold figures. Each fold
trains the whole coder (inner cross-validation for thresholds, grouped by voice, included) on the
other folds.

    .venv/bin/python scripts/coder_cv.py [--folds 5 | --voice-groups 4 | --by-voice [--only REGEX]]
        [--misses CODE] [--dump FILE | --from-dump FILE]

``--dump`` saves each held-out turn's codes before the codebook rules (JSON); ``--from-dump``
scores such a file through the current ``codebook_rules`` without training, so a rule change is
compared on the same out-of-fold codes in seconds instead of a full cross-validation.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import zlib
from pathlib import Path

import numpy as np
from pydantic import TypeAdapter, ValidationError

from therasim.agents.coderules import codebook_rules
from therasim.agents.gold import GoldTurn, dev_turns
from therasim.agents.statcoder import train_coder
from therasim.evaluation.judging.calibration import (
    CODES,
    FAILURES,
    appropriate_from,
    failures_from_codes,
    gold_context,
)
from therasim.evaluation.judging.calibration_scores import score_set
from therasim.vocab import BehaviourCode


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--by-voice",
        action="store_true",
        help="hold out each 'voices' file's dev lines in turn (text in styles the cues were not "
        "written from) and score only those: a closer proxy for unseen text than random folds",
    )
    parser.add_argument(
        "--voice-groups",
        type=int,
        metavar="K",
        help="K folds that keep each file's voice together (a turn's id without its number, "
        "hashed to a fold): every dev turn is scored once, by a coder that saw none of its voice "
        "(K coders, not one a file as with --by-voice)",
    )
    parser.add_argument(
        "--only",
        metavar="REGEX",
        help="with --by-voice: score only the voices whose id prefix matches (e.g. 'v|d2' for the "
        "voices files before voices_dev3_*), to compare runs on the same held-out text",
    )
    parser.add_argument(
        "--misses",
        metavar="CODE",
        help="print the held-out turns where CODE was missed or given wrongly, with their text",
    )
    parser.add_argument(
        "--dump",
        metavar="FILE",
        type=Path,
        help="save each held-out turn's codes before the codebook rules to FILE (JSON)",
    )
    parser.add_argument(
        "--from-dump",
        metavar="FILE",
        type=Path,
        help="score the codes saved by --dump through the current codebook rules (no training)",
    )
    args = parser.parse_args()
    from sklearn.model_selection import KFold

    all_dev = dev_turns()
    if args.from_dump:
        try:
            saved = _DUMP.validate_json(args.from_dump.read_bytes())
        except (OSError, ValidationError) as exc:
            parser.error(f"{args.from_dump}: {_problem(exc)}")
        by_id = {t.id: t for t in all_dev}
        unknown = sorted(set(saved) - set(by_id))
        if unknown:
            parser.error(
                f"{args.from_dump}: {len(unknown)} ids not in the dev split, e.g. {unknown[0]}"
            )
        turns = [by_id[i] for i in saved]
        predicted = [frozenset(c.value for c in _with_rules(set(saved[t.id]), t)) for t in turns]
        _report(turns, predicted, args.misses)
        return 0
    if args.by_voice:
        # one fold per voices file: the first three by id prefix, the dev-only voices_dev<N>_*
        # files by their 'd<N><voice>-' prefix
        prefixes: tuple[str, ...] = ("vpe-", "vmx-", "vcbt-")
        prefixes += tuple(
            sorted({t.id.split("-")[0] + "-" for t in all_dev if re.match(r"d\d", t.id)})
        )
        folds = [
            (
                [i for i, t in enumerate(all_dev) if not t.id.startswith(p)],
                [i for i, t in enumerate(all_dev) if t.id.startswith(p)],
            )
            for p in prefixes
            if args.only is None or re.match(args.only, p)
        ]
    elif args.voice_groups:
        group = [zlib.crc32(t.id.rsplit("-", 1)[0].encode()) % args.voice_groups for t in all_dev]
        folds = [
            (
                [i for i, g in enumerate(group) if g != k],
                [i for i, g in enumerate(group) if g == k],
            )
            for k in range(args.voice_groups)
        ]
    else:
        folds = list(KFold(args.folds, shuffle=True, random_state=7).split(all_dev))
    scored = sorted({i for _, test_idx in folds for i in test_idx})
    turns = all_dev
    predicted = [frozenset[str]()] * len(turns)
    before_rules: dict[str, list[str]] = {}
    for train_idx, test_idx in folds:
        coder = train_coder([turns[i] for i in train_idx])
        for i in test_idx:
            turn = turns[i]
            chosen: set[BehaviourCode] = set()
            if turn.therapist.strip():
                chosen, _ = coder.model_codes(turn.therapist, gold_context(turn), turn.patient)
            before_rules[turn.id] = sorted(c.value for c in chosen)
            predicted[i] = frozenset(c.value for c in _with_rules(chosen, turn))
    turns = [all_dev[i] for i in scored]
    predicted = [predicted[i] for i in scored]
    if args.dump:
        args.dump.write_text(
            json.dumps({t.id: before_rules[t.id] for t in turns}), encoding="utf-8"
        )
    _report(turns, predicted, args.misses)
    return 0


#: what ``--dump`` writes: turn id -> codes before the codebook rules
_DUMP = TypeAdapter(dict[str, list[BehaviourCode]])


def _problem(exc: Exception) -> str:
    """A dump that cannot be read, in one line naming the first bad entry."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "the file"
    return f"{exc.error_count()} problem(s); {where}: {first['msg']}"


def _with_rules(chosen: set[BehaviourCode], turn: GoldTurn) -> set[BehaviourCode]:
    """The coder's final codes for a held-out turn: its model codes through the codebook rules,
    as ``StatisticalCoder.appraise`` applies them (an empty reply, with no codes, comes out as
    task abandonment alone by the short-reply rule)."""
    return codebook_rules(chosen, turn.therapist, turn.phase_kind, turn.risk)


def _report(turns: list[GoldTurn], predicted: list[frozenset[str]], misses: str | None) -> None:
    """Print per-code, per-failure and appropriate figures for held-out turns, and the misses
    of one code when asked."""
    gold = [frozenset(c.value for c in t.codes) for t in turns]
    codes = score_set(CODES, gold, predicted, intervals=False)
    rules = [failures_from_codes(p, t, t.therapist) for p, t in zip(predicted, turns, strict=True)]
    failures = score_set(
        FAILURES, [frozenset(f.value for f in t.failures) for t in turns], rules, intervals=False
    )
    appropriate = np.mean(
        [
            appropriate_from(p, f) == t.appropriate
            for p, f, t in zip(predicted, rules, turns, strict=True)
        ]
    )
    m = codes.micro
    print(
        f"dev CV ({len(turns)} turns): code micro P/R/F1 {m.precision:.3f}/{m.recall:.3f}/{m.f1:.3f}"
    )
    for code, s in codes.per_label.items():
        print(
            f"  {code:22s} n={s.support:3d} P={s.precision or 0:.2f} R={s.recall or 0:.2f} F1={s.f1 or 0:.2f}"
        )
    fm = failures.micro
    print(f"failures (codes + rules) micro R/P {fm.recall:.3f}/{fm.precision:.3f}")
    for name, s in failures.per_label.items():
        print(f"  {name:26s} n={s.support:3d} R={s.recall or 0:.2f} P={s.precision or 0:.2f}")
    print(f"appropriate accuracy {appropriate:.3f}")
    if misses:
        for t, p in zip(turns, predicted, strict=True):
            wanted, given = misses in {c.value for c in t.codes}, misses in p
            if wanted != given:
                kind = "MISSED" if wanted else "WRONG "
                text = " ".join(t.therapist.split())[:300]
                print(
                    f"{kind} {t.id} [{t.phase_kind.value}/{t.risk.value}] {sorted(p)}\n    {text}"
                )


if __name__ == "__main__":
    sys.exit(main())
