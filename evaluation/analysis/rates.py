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
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from therasim.evaluation.analysis.columns import check_columns
from therasim.vocab import severity_rank

__all__ = [
    "CELL",
    "UNIT_KEY",
    "Groups",
    "group_numbers",
    "group_rows",
    "rate_table",
    "wilson_interval",
]

CELL: tuple[str, ...] = ("subject", "modality", "severity")
UNIT_KEY: tuple[str, ...] = ("session_id", "turn", "item_id")


def as_float(values: pd.Series) -> pd.Series:
    """``True``/``False``/``NaN``/``None``/``pd.NA`` (any dtype) → ``1.0``/``0.0``/``NaN``.

    Vectorised: a verdicts frame holds ~450,000 ``met`` values at 1,000 sessions. Every missing
    value (``pd.isna``) becomes NaN and every other one ``float(v)``, as a loop over the values
    would give (a value ``float`` rejects raises)."""
    if values.dtype == object or isinstance(values.dtype, pd.CategoricalDtype):
        data = values.to_numpy(dtype=object)
        missing = pd.isna(data)
        out = np.full(len(data), np.nan)
        present = ~missing
        out[present] = data[present].astype(np.float64)
    else:
        out = values.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.Series(out, index=values.index, dtype="float64")


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


def _key_codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes ``>= 0`` of ``values`` in its sort order (NaN last, a value of its own) and
    the value of each code (some codes may go unused): a Categorical's codes as they are,
    small integers offset from their minimum, anything else through ``pd.factorize`` (whose
    hash table is sized by the number of rows, so it is kept for the columns that need it)."""
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        codes = values.cat.codes.to_numpy()
        levels = np.asarray(dtype.categories, dtype=object)
        if (codes < 0).any():
            codes = np.where(codes < 0, len(levels), codes.astype(np.int64))
            levels = np.append(levels, np.nan).astype(object)
        return codes, levels
    if pd.api.types.is_integer_dtype(dtype) and len(values):
        numbers = values.to_numpy()
        low, high = int(numbers.min()), int(numbers.max())
        if high - low <= 4 * len(numbers) + 1024:
            return numbers - low, np.arange(low, high + 1).astype(object)
    codes, uniques = pd.factorize(values, sort=True, use_na_sentinel=False)
    return codes, np.asarray(uniques, dtype=object)


@dataclass(frozen=True)
class Groups:
    """The groups of some key columns (:func:`group_numbers`): ``number`` holds each row's group,
    ``0 … len(groups)-1``; the groups' key values are decoded only when asked for."""

    number: np.ndarray
    codes: np.ndarray  # each group's combined key code
    levels: tuple[np.ndarray, ...]  # each key column's value of each code

    def __len__(self) -> int:
        return len(self.codes)

    def column(self, k: int) -> np.ndarray:
        """Key column ``k``'s value of every group (an object array)."""
        sizes = [max(len(level), 1) for level in self.levels]
        code = self.codes // math.prod(sizes[k + 1 :]) % sizes[k]
        level = self.levels[k]
        return level[code] if len(level) else code.astype(object)

    def key_values(self) -> list[tuple[Any, ...]]:
        """Every group's key values, as tuples."""
        columns = [self.column(k) for k in range(len(self.levels))]
        return list(zip(*columns, strict=True))


def group_numbers(columns: Sequence[pd.Series]) -> Groups:
    """The groups ``groupby(columns, dropna=False, sort=True)`` forms over the key ``columns``
    (NaN a value of its own, last), numbered in that order (each key's own order: a
    Categorical's categories, else its values).

    It copies no frame and builds no sub-frame per group: a few integer arrays the length of the
    columns at most (the verdicts frame of a 1,000-session study has ~450,000 rows)."""
    n = len(columns[0]) if columns else 0
    combined = np.zeros(n, dtype=np.int64)
    levels = []
    for values in columns:
        codes, level = _key_codes(values)
        combined *= max(len(level), 1)
        combined += codes
        levels.append(level)
        del codes
    space = math.prod(max(len(level), 1) for level in levels)
    if space <= max(4 * n, 1 << 16):  # a flag per possible key: no sort
        present = np.zeros(space, dtype=bool)
        present[combined] = True
        found = np.flatnonzero(present)
        renumber = np.zeros(space, dtype=np.int32 if len(found) < 2**31 else np.int64)
        renumber[found] = np.arange(len(found))
        del present
        number = renumber[combined]
        del renumber
    else:
        found, number = np.unique(combined, return_inverse=True)
    return Groups(number.reshape(-1), found, tuple(levels))


def group_rows(number: np.ndarray, groups: int) -> list[np.ndarray]:
    """The row positions of each group ``0 … groups-1`` of ``number`` (``group_numbers``), in
    row order within a group."""
    order = np.argsort(number, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(number, minlength=groups))])
    return [order[bounds[g] : bounds[g + 1]] for g in range(groups)]


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
