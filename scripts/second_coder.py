#!/usr/bin/env python3
"""Inter-coder agreement: a second, blind coder's labels of gold turns against the shipped gold.

Two careful coders reading the same codebook do not agree perfectly, and where they disagree no
coder can be checked against the gold more finely than that. This script puts a number on it:
per behaviour code, per failure and for ``appropriate``, how often a second coder's labels match
the gold and Cohen's κ with its 95 % interval (statsmodels). With ``--dump`` (a file written by
``scripts/coder_cv.py --dump``: the statistical coder's out-of-fold codes on dev turns) the
coder's κ against the gold on the same turns stands beside it, so a coder figure can be read
against the agreement of two coders.

    .venv/bin/python scripts/second_coder.py [FILE] [--dump DUMP ...]

FILE (default ``benchmarks/data/second_coder_dev.jsonl``): JSONL, one line per turn,
``{"id", "codes", "failures", "appropriate"}``, ids of shipped gold turns; errors name the file,
line and field. Dev turns only: the test split is for measuring coders, not for reading.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from statsmodels.stats.inter_rater import cohens_kappa

from therasim.agents.coderules import codebook_rules
from therasim.agents.gold import Failure, GoldTurn, load_shipped_gold
from therasim.evaluation.judging.calibration import (
    CODES,
    FAILURES,
    appropriate_from,
    failures_from_codes,
)
from therasim.vocab import BehaviourCode

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "benchmarks" / "data" / "second_coder_dev.jsonl"


class SecondLabels(BaseModel):
    """One turn as a second coder labelled it (the gold format's label fields only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    codes: list[BehaviourCode]
    failures: list[Failure]
    appropriate: bool


_DUMP = TypeAdapter(dict[str, list[BehaviourCode]])


def load_labels(path: Path) -> list[SecondLabels]:
    """The labels in ``path``; a bad line raises ``SystemExit`` naming the file, line and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"{path}: {exc}") from None
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            labels = SecondLabels.model_validate_json(line)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "line"
            raise SystemExit(f"{path}:{number}: {field}: {first['msg']}") from None
        out.append(labels)
    return out


def kappa(a: Sequence[bool], b: Sequence[bool]) -> tuple[float, float, float] | None:
    """Cohen's κ of two binary codings with its 95 % interval; None when it is undefined (both
    coders gave one and the same label everywhere)."""
    if len(set(a) | set(b)) < 2:
        return None  # chance agreement is 1: κ is 0/0
    table = np.zeros((2, 2))
    for x, y in zip(a, b, strict=True):
        table[int(x), int(y)] += 1
    with np.errstate(invalid="ignore", divide="ignore"):  # a zero variance: the interval is κ
        result = cohens_kappa(table)
    return float(result.kappa), float(result.kappa_low), float(result.kappa_upp)


def _fmt(k: tuple[float, float, float] | None) -> str:
    return "  n/a" if k is None else f"{k[0]:5.2f} [{k[1]:5.2f}, {k[2]:5.2f}]"


def _table(
    title: str,
    names: Sequence[str],
    gold: Sequence[frozenset[str]],
    second: Sequence[frozenset[str]],
    coder: Sequence[frozenset[str]] | None,
) -> None:
    print(f"\n{title}")
    head = f"  {'label':28} {'gold':>4} {'2nd':>4} {'agree':>6}  {'κ 2nd vs gold':22}"
    print(head + ("  κ coder vs gold" if coder is not None else ""))
    for name in names:
        g = [name in s for s in gold]
        s2 = [name in s for s in second]
        if not any(g) and not any(s2):
            continue
        agree = np.mean([x == y for x, y in zip(g, s2, strict=True)])
        line = f"  {name:28} {sum(g):4d} {sum(s2):4d} {agree:6.0%}  {_fmt(kappa(g, s2)):22}"
        if coder is not None:
            line += f"  {_fmt(kappa(g, [name in c for c in coder]))}"
        print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument(
        "--dump",
        nargs="*",
        type=Path,
        default=[],
        help="coder_cv.py --dump files: the coder's out-of-fold codes on dev turns",
    )
    args = parser.parse_args()
    labels = load_labels(args.file)
    shipped = {t.id: t for t in load_shipped_gold()}
    missing = [x.id for x in labels if x.id not in shipped]
    if missing:
        parser.error(f"{args.file}: {len(missing)} ids not in the shipped gold, e.g. {missing[0]}")
    turns: list[GoldTurn] = [shipped[x.id] for x in labels]
    if any(t.split != "dev" for t in turns):
        parser.error(f"{args.file}: second-coder labels are for dev turns only")
    saved: dict[str, list[BehaviourCode]] = {}
    for path in args.dump:
        try:
            saved.update(_DUMP.validate_json(path.read_bytes()))
        except OSError as exc:
            parser.error(f"{path}: {exc}")
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "the file"
            parser.error(f"{path}: {where}: {first['msg']}")
    coder_codes: list[frozenset[str]] | None = None
    coder_failures: list[frozenset[str]] | None = None
    if args.dump:
        lacking = [t.id for t in turns if t.id not in saved]
        if lacking:
            parser.error(f"the dumps lack {len(lacking)} of the labelled turns, e.g. {lacking[0]}")
        coder_codes = [
            frozenset(
                c.value for c in codebook_rules(set(saved[t.id]), t.therapist, t.phase_kind, t.risk)
            )
            for t in turns
        ]
        coder_failures = [
            failures_from_codes(c, t, t.therapist) for c, t in zip(coder_codes, turns, strict=True)
        ]
    gold_codes = [frozenset(c.value for c in t.codes) for t in turns]
    gold_failures = [frozenset(f.value for f in t.failures) for t in turns]
    print(f"{len(turns)} dev turns, second coder: {args.file.name}")
    _table(
        "behaviour codes",
        CODES,
        gold_codes,
        [frozenset(c.value for c in x.codes) for x in labels],
        coder_codes,
    )
    _table(
        "failures (the coder's: its codes through the scripted judges' rules)",
        FAILURES,
        gold_failures,
        [frozenset(f.value for f in x.failures) for x in labels],
        coder_failures,
    )
    appropriate = [t.appropriate for t in turns]
    second_app = [x.appropriate for x in labels]
    agree = np.mean([a == b for a, b in zip(appropriate, second_app, strict=True)])
    line = f"\nappropriate: agree {agree:.0%}, κ 2nd vs gold {_fmt(kappa(appropriate, second_app))}"
    if coder_codes is not None and coder_failures is not None:
        coder_app = [
            appropriate_from(c, f) for c, f in zip(coder_codes, coder_failures, strict=True)
        ]
        line += f", κ coder vs gold {_fmt(kappa(appropriate, coder_app))}"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
