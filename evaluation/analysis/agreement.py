"""Agreement of the judge panel: Krippendorff's α, per-judge bias, and the units it split on.

A *unit* of judgement is ``(session_id, turn, item_id)`` and the judges are the raters. α comes
from the ``krippendorff`` package; a missing or inapplicable verdict (NaN) is missing data.
Re-exported by :mod:`therasim.evaluation.analysis.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import krippendorff
import numpy as np
import pandas as pd

from therasim.evaluation.analysis.columns import check_columns
from therasim.evaluation.analysis.rates import CELL, UNIT_KEY, as_float, groups, sort_cells

__all__ = [
    "agreement_table",
    "alpha_from_counts",
    "disagreements",
    "judge_bias",
    "krippendorff_alpha",
]


def _reliability_matrix(verdicts: pd.DataFrame, value: str) -> pd.DataFrame:
    """Judges × units matrix of ``value`` (NaN where a judge gave none or the item did not apply)."""
    frame = verdicts.assign(_value=as_float(verdicts[value]))
    frame = frame[frame["_value"].notna()]
    dupes = frame.duplicated([*UNIT_KEY, "judge"])
    if dupes.any():
        first = frame.loc[dupes, [*UNIT_KEY, "judge"]].iloc[0].to_dict()
        raise ValueError(f"verdicts hold more than one {value!r} per judge and unit, e.g. {first}")
    return frame.pivot(index="judge", columns=list(UNIT_KEY), values="_value")


def krippendorff_alpha(
    verdicts: pd.DataFrame,
    item_id: str | None = None,
    level: Literal["nominal", "ordinal", "interval", "ratio"] = "nominal",
    value: str = "met",
) -> float:
    """Krippendorff's α of the judge panel, via the ``krippendorff`` package.

    The reliability matrix has one row per judge and one column per unit
    ``(session_id, turn, item_id)``; a missing verdict or an inapplicable one (NaN) is missing
    data, which α handles. ``item_id`` restricts to one rubric item; ``value`` picks the column
    rated (``met`` for the binary verdicts, ``score`` with ``level="interval"`` for scores).

    Returns NaN when α is undefined: no unit rated by two judges, or no variation at all in the
    values (every pairable verdict identical — perfect agreement, but α is 0/0 by construction;
    see ``agreement_table``'s ``agreement`` column for the raw share).
    """
    check_columns(verdicts, [*UNIT_KEY, "judge", value], "verdicts")
    frame = verdicts if item_id is None else verdicts[verdicts["item_id"] == item_id]
    matrix = _reliability_matrix(frame, value)
    data = matrix.to_numpy(dtype="float64")
    if data.size == 0:
        return math.nan
    pairable = (~np.isnan(data)).sum(axis=0) >= 2
    observed = np.unique(data[:, pairable][~np.isnan(data[:, pairable])])
    if not pairable.any() or observed.size < 2:
        return math.nan
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))


def alpha_from_counts(
    counts: np.ndarray,
    domain: np.ndarray,
    level: Literal["nominal", "ordinal", "interval", "ratio"] = "nominal",
) -> float:
    """Krippendorff's α from a units × values matrix of counts (how many judges gave each value
    of ``domain``, sorted, in each unit), via the ``krippendorff`` package's ``value_counts``.

    Given the units in the order :func:`krippendorff_alpha`'s reliability matrix has them (sorted
    by unit key, every unit with an applicable verdict) and ``domain`` the values present, this is
    the matrix the package derives from that reliability matrix, so α is the same number, and
    NaN in the same cases (no unit rated by two judges; one value only among those units). It
    needs neither the judges × units matrix nor a verdict per row: the report builds the counts
    with one grouping of the verdicts frame."""
    if counts.size == 0:
        return math.nan
    pairable = counts.sum(axis=1) >= 2
    observed = (counts[pairable] > 0).any(axis=0)
    if not pairable.any() or observed.sum() < 2:
        return math.nan
    return float(
        krippendorff.alpha(value_counts=counts, value_domain=domain, level_of_measurement=level)
    )


def _unit_summary(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Per unit with ≥ 2 applicable verdicts: judges, how many said met, who said what.

    Vectorised (one groupby): a study's verdict frame has tens of thousands of rows.
    """
    frame = verdicts.assign(_met=as_float(verdicts["met"]))
    frame = frame[frame["_met"].notna()]
    if frame.empty:
        return pd.DataFrame()
    keys = list(UNIT_KEY)
    extra = [c for c in ("scope", *CELL) if c in frame.columns]
    grouped = frame.groupby(keys, sort=False)
    out = grouped.agg(
        n_judges=("_met", "size"), n_met=("_met", "sum"), **{c: (c, "first") for c in extra}
    )
    out = out[out["n_judges"] >= 2].copy()
    out["n_met"] = out["n_met"].astype(int)
    out["share_met"] = out["n_met"] / out["n_judges"]
    out["majority_share"] = (
        np.maximum(out["n_met"], out["n_judges"] - out["n_met"]) / out["n_judges"]
    )
    frame = frame.assign(judge=frame["judge"].astype(str))

    def judges_with(value: float) -> pd.Series:
        said = (
            frame[frame["_met"] == value]
            .groupby(keys, sort=False)["judge"]
            .agg(lambda s: tuple(sorted(s)))
        )
        return said.reindex(out.index).map(lambda v: v if isinstance(v, tuple) else ())

    out["judges_met"] = judges_with(1.0)
    out["judges_not_met"] = judges_with(0.0)
    columns = [
        *keys,
        *extra,
        "n_judges",
        "n_met",
        "share_met",
        "majority_share",
        "judges_met",
        "judges_not_met",
    ]
    return out.reset_index()[columns]


def agreement_table(
    verdicts: pd.DataFrame,
    by: Sequence[str] = (),
    level: Literal["nominal", "ordinal", "interval", "ratio"] = "nominal",
    value: str = "met",
) -> pd.DataFrame:
    """Krippendorff's α per rubric item and overall (``item_id == "overall"``), per ``by`` cell.

    Columns: ``*by, item_id, alpha, agreement, n_units, n_judges``. ``n_units`` counts pairable
    units (rated by ≥ 2 judges); ``agreement`` is the share of those where every judge gave the
    same ``met`` (reported beside α because α is undefined when nobody ever disagrees on a
    constant value).
    """
    check_columns(verdicts, [*by, *UNIT_KEY, "judge", value, "met"], "verdicts")
    rows = []
    for cell, sub in groups(verdicts, by):
        items: list[str | None] = [*sorted(sub["item_id"].astype(str).unique()), None]
        for item in items:
            part = sub if item is None else sub[sub["item_id"].astype(str) == item]
            units = _unit_summary(part)
            rows.append(
                {
                    **cell,
                    "item_id": "overall" if item is None else item,
                    "alpha": krippendorff_alpha(part, level=level, value=value),
                    "agreement": float((units["majority_share"] == 1.0).mean())
                    if len(units)
                    else math.nan,
                    "n_units": len(units),
                    "n_judges": part["judge"].nunique(),
                }
            )
    out = pd.DataFrame(rows, columns=[*by, "item_id", "alpha", "agreement", "n_units", "n_judges"])
    return sort_cells(out, by) if by else out


# --------------------------------------------------------------------------- 3. judges


def judge_bias(verdicts: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Per-judge mean of ``met`` and its difference from the panel mean, per ``by`` cell.

    The panel mean is the unweighted mean of the judges' means, so each judge weighs the same
    whatever its number of applicable verdicts and the biases within a cell sum to zero.
    Columns: ``*by, judge, mean, panel_mean, bias, n``.
    """
    check_columns(verdicts, [*by, "judge", "met"], "verdicts")
    met = as_float(verdicts["met"])
    keep = met.notna().to_numpy()
    # the columns read only: a copy of every column of ~450,000 verdicts is ~100 MB
    frame = verdicts.loc[keep, list(dict.fromkeys([*by, "judge"]))].assign(_met=met[keep])
    rows = []
    for cell, sub in groups(frame, by):
        per_judge = sub.groupby("judge", sort=True)["_met"].agg(["mean", "size"])
        panel = float(per_judge["mean"].mean())
        for judge, row in per_judge.iterrows():
            rows.append(
                {
                    **cell,
                    "judge": judge,
                    "mean": float(row["mean"]),
                    "panel_mean": panel,
                    "bias": float(row["mean"]) - panel,
                    "n": int(row["size"]),
                }
            )
    out = pd.DataFrame(rows, columns=[*by, "judge", "mean", "panel_mean", "bias", "n"])
    return sort_cells(out, [*by, "judge"])


def disagreements(verdicts: pd.DataFrame, threshold: float = 1.0) -> pd.DataFrame:
    """Units where the judges split, most split first.

    A unit (``session_id, turn, item_id`` with ≥ 2 applicable verdicts) is listed when the share
    of judges on its majority side is below ``threshold``: the default 1.0 lists every
    non-unanimous unit; 0.7 lists only 2–1-or-closer splits of a three-judge panel, and so on.
    Sorted by ``majority_share`` ascending, then by unit. Columns: the unit key, ``scope`` and the
    cell columns when present, ``n_judges, n_met, share_met, majority_share, judges_met,
    judges_not_met``.
    """
    check_columns(verdicts, [*UNIT_KEY, "judge", "met"], "verdicts")
    units = _unit_summary(verdicts)
    if units.empty:
        return units
    split = units[units["majority_share"] < threshold]
    return split.sort_values(["majority_share", *UNIT_KEY], kind="stable").reset_index(drop=True)
