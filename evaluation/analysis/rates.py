"""Cells, flags and rates: the base every metric module builds on.

A *cell* is ``CELL = ("subject", "modality", "severity")`` unless a function is told otherwise; a
*unit* of judgement is ``UNIT_KEY = (session_id, turn, item_id)``. The helpers here turn the
frames' "bool or NaN" flags into floats and back, group rows by cell and sort cells with severity
along its ladder; ``wilson_interval`` and ``rate_table`` give a flag's rate per cell with its
Wilson interval (``statsmodels``). Re-exported by :mod:`therasim.evaluation.analysis.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from therasim.evaluation.analysis.columns import check_columns
from therasim.vocab import severity_rank

__all__ = ["CELL", "UNIT_KEY", "rate_table", "wilson_interval"]

CELL: tuple[str, ...] = ("subject", "modality", "severity")
UNIT_KEY: tuple[str, ...] = ("session_id", "turn", "item_id")


def as_float(values: pd.Series) -> pd.Series:
    """``True``/``False``/``NaN``/``None``/``pd.NA`` (any dtype) → ``1.0``/``0.0``/``NaN``."""

    def one(v: Any) -> float:
        if v is None or v is pd.NA:
            return math.nan
        return float(v)

    return pd.Series([one(v) for v in values], index=values.index, dtype="float64")


def as_flag(values: pd.Series) -> pd.Series:
    """Float 1/0/NaN → object ``True``/``False``/``NaN`` (the contract's "bool or NaN")."""
    return pd.Series(
        [math.nan if pd.isna(v) else bool(v) for v in values], index=values.index, dtype=object
    )


def sort_cells(frame: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Sort by the cell columns, severity in ladder order rather than alphabetically."""
    keys = [c for c in by if c in frame.columns]
    if not keys or frame.empty:
        return frame.reset_index(drop=True)

    def key(col: pd.Series) -> pd.Series:
        if col.name == "severity":
            return col.map(severity_rank)
        return col.astype(str)

    return frame.sort_values(keys, key=key, kind="stable").reset_index(drop=True)


def groups(frame: pd.DataFrame, by: Sequence[str]) -> Iterable[tuple[dict[str, Any], pd.DataFrame]]:
    """Yield ``(cell values, sub-frame)``; one group holding everything when ``by`` is empty."""
    if not by:
        yield {}, frame
        return
    for values, sub in frame.groupby(list(by), dropna=False, sort=False):
        tup = values if isinstance(values, tuple) else (values,)
        yield dict(zip(by, tup, strict=True)), sub


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for ``successes`` out of ``n`` (statsmodels ``proportion_confint``).

    ``(NaN, NaN)`` when ``n == 0``. The bounds are snapped to contain the observed rate and to stay
    in [0, 1], because statsmodels' floating-point result can miss 0 or 1 by one ulp.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    low, high = proportion_confint(successes, n, alpha=alpha, method="wilson")
    rate = successes / n
    return (max(0.0, min(float(low), rate)), min(1.0, max(float(high), rate)))


def rate_table(
    df: pd.DataFrame, flag_col: str, by: Sequence[str] = CELL, alpha: float = 0.05
) -> pd.DataFrame:
    """Rate of a boolean flag per cell with a Wilson interval.

    Rows whose flag is NaN (not applicable) are excluded from ``n``. Columns:
    ``*by, successes, n, rate, ci_low, ci_high``.
    """
    check_columns(df, [*by, flag_col], "input")
    flags = as_float(df[flag_col])
    frame = df.assign(_flag=flags)[flags.notna()]
    rows = []
    for cell, sub in groups(frame, by):
        k, n = int(sub["_flag"].sum()), len(sub)
        low, high = wilson_interval(k, n, alpha)
        rows.append(
            {
                **cell,
                "successes": k,
                "n": n,
                "rate": k / n if n else math.nan,
                "ci_low": low,
                "ci_high": high,
            }
        )
    if not by and not rows:
        rows.append(
            {"successes": 0, "n": 0, "rate": math.nan, "ci_low": math.nan, "ci_high": math.nan}
        )
    out = pd.DataFrame(rows, columns=[*by, "successes", "n", "rate", "ci_low", "ci_high"])
    return sort_cells(out, by)
