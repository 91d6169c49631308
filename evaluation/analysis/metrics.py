"""Pure metrics over the tidy frames that ``evaluation/analysis/frames.py`` builds from the store.

Nothing here reads files, touches the store or calls a model: every function takes pandas frames
and returns a new frame (or a number). Statistics come from libraries: Krippendorff's α from
``krippendorff``, Wilson and Newcombe intervals and McNemar's test from ``statsmodels``, slopes and
paired t intervals from ``scipy``.

This module holds item means, paired contrasts and failure counts, and is the one import for
every metric: cells and rates live in :mod:`~therasim.evaluation.analysis.rates`, judge agreement
and bias in :mod:`~therasim.evaluation.analysis.agreement`, deterioration in
:mod:`~therasim.evaluation.analysis.deterioration`, all re-exported here. The frames' column
contract lives in :mod:`therasim.evaluation.analysis.columns`.

A *unit* of judgement is ``(session_id, turn, item_id)``; the judges are the raters.
A *cell* is ``CELL = ("subject", "modality", "severity")`` unless a function is told otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import confint_proportions_2indep

from therasim.evaluation.analysis.agreement import (
    agreement_table,
    disagreements,
    judge_bias,
    krippendorff_alpha,
)
from therasim.evaluation.analysis.columns import check_columns
from therasim.evaluation.analysis.deterioration import (
    CRISIS_HANDOFF_REASONS,
    deterioration_table,
    frames_trajectory,
    judge_deterioration,
    questionnaire_deterioration,
    trajectory_deterioration,
)
from therasim.evaluation.analysis.rates import (
    CELL,
    UNIT_KEY,
    as_float,
    groups,
    rate_table,
    sort_cells,
    wilson_interval,
)
from therasim.vocab import severity_rank

__all__ = [
    "CELL",
    "CRISIS_HANDOFF_REASONS",
    "UNIT_KEY",
    "agreement_table",
    "arm_contrasts",
    "deterioration_table",
    "disagreements",
    "failure_counts",
    "frames_trajectory",
    "item_means",
    "judge_bias",
    "judge_deterioration",
    "krippendorff_alpha",
    "paired_contrasts",
    "questionnaire_deterioration",
    "rate_table",
    "severity_contrasts",
    "trajectory_deterioration",
    "wilson_interval",
]


# --------------------------------------------------------------------------- 1. item means


def item_means(verdicts: pd.DataFrame, by: Sequence[str] = CELL) -> pd.DataFrame:
    """Mean of ``met`` per rubric item within each cell, pooled over judges and units.

    This is how the seed paper reports its rubric (binary per judge, averaged over judges and
    items). Verdicts whose ``met`` is NaN (item not applicable) are left out of both the mean and
    ``n``. Columns: ``*by, item_id, mean, n`` (verdicts counted), ``n_judges``, ``n_units``.
    """
    check_columns(verdicts, [*by, "item_id", "judge", "met", "session_id", "turn"], "verdicts")
    frame = verdicts.assign(_met=as_float(verdicts["met"]))
    frame = frame[frame["_met"].notna()]
    keys = [*by, "item_id"]
    rows = []
    for cell, sub in groups(frame, keys):
        rows.append(
            {
                **cell,
                "mean": float(sub["_met"].mean()),
                "n": len(sub),
                "n_judges": sub["judge"].nunique(),
                "n_units": len(sub[["session_id", "turn"]].drop_duplicates()),
            }
        )
    out = pd.DataFrame(rows, columns=[*keys, "mean", "n", "n_judges", "n_units"])
    return sort_cells(out, keys)


# --------------------------------------------------------------------------- 6. contrasts


def _is_binary(values: pd.Series) -> bool:
    present = as_float(values).dropna()
    return bool(len(present)) and bool(present.isin([0.0, 1.0]).all())


def paired_contrasts(
    frame: pd.DataFrame,
    metric: str,
    *,
    contrast: str,
    reference: str,
    pair_on: Sequence[str],
    by: Sequence[str] = (),
    kind: Literal["auto", "binary", "continuous"] = "auto",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Paired differences of ``metric`` between each level of ``contrast`` and ``reference``.

    Rows are paired on ``pair_on`` within each ``by`` cell; a pair needs a non-NaN metric on both
    sides, and a key that occurs twice on one side is an error. For every non-reference level:

    - ``continuous``: mean of the paired differences (level − reference) with the paired-t
      confidence interval and p-value (``scipy.stats.ttest_rel``); NaN interval below 2 pairs.
    - ``binary``: difference of the two rates over the pairs with the Newcombe hybrid-score
      interval (``statsmodels`` ``confint_proportions_2indep(method="newcomb")``) and the exact
      McNemar p-value on the discordant pairs (``statsmodels`` ``mcnemar``). The Newcombe interval
      treats the two rates as independent: it ignores the pairing, so it is conservative (too
      wide) when outcomes are positively correlated within pairs; McNemar uses the pairing.

    ``kind="auto"`` picks ``binary`` when every present value is boolean or 0/1. Columns:
    ``*by, contrast, level, reference, n_pairs, mean_level, mean_reference, difference, ci_low,
    ci_high, p_value, method``.
    """
    check_columns(frame, [*by, *pair_on, contrast, metric], "input")
    binary = _is_binary(frame[metric]) if kind == "auto" else kind == "binary"
    data = frame.assign(_x=as_float(frame[metric]))
    rows = []
    for cell, sub in groups(data, by):
        ref = sub[sub[contrast] == reference]
        levels = [v for v in sub[contrast].unique() if v != reference]
        for level in levels:
            other = sub[sub[contrast] == level]
            for side, part in (("reference", ref), ("level", other)):
                dup = part.duplicated(list(pair_on))
                if dup.any():
                    key = part.loc[dup, list(pair_on)].iloc[0].to_dict()
                    raise ValueError(
                        f"{contrast}={level if side == 'level' else reference!r}: more than one row "
                        f"for pair key {key}; add the distinguishing column to pair_on"
                    )
            pairs = other[[*pair_on, "_x"]].merge(
                ref[[*pair_on, "_x"]], on=list(pair_on), suffixes=("_level", "_ref")
            )
            pairs = pairs.dropna(subset=["_x_level", "_x_ref"])
            x, y = pairs["_x_level"].to_numpy(), pairs["_x_ref"].to_numpy()
            n = len(pairs)
            result = _binary_pairs(x, y, alpha) if binary else _continuous_pairs(x, y, alpha)
            rows.append(
                {
                    **cell,
                    "contrast": contrast,
                    "level": level,
                    "reference": reference,
                    "n_pairs": n,
                    "mean_level": float(x.mean()) if n else math.nan,
                    "mean_reference": float(y.mean()) if n else math.nan,
                    **result,
                }
            )
    columns = [
        *by,
        "contrast",
        "level",
        "reference",
        "n_pairs",
        "mean_level",
        "mean_reference",
        "difference",
        "ci_low",
        "ci_high",
        "p_value",
        "method",
    ]
    out = pd.DataFrame(rows, columns=columns)
    # Levels first (severity along the ladder, anything else by name), then the stable cell sort.
    order = out["level"].map(lambda v: (severity_rank(v), str(v)))
    out = out.iloc[sorted(range(len(out)), key=lambda i: order.iloc[i])]
    return sort_cells(out, by)


def _continuous_pairs(x: np.ndarray, y: np.ndarray, alpha: float) -> dict[str, Any]:
    n = len(x)
    d = x - y
    diff = float(d.mean()) if n else math.nan
    low = high = p = math.nan
    if n >= 2 and np.ptp(d) == 0:
        # Every pair differs by the same amount: no spread, the interval collapses to the point
        # (t is undefined, its limit gives p = 0 unless the difference is 0).
        low = high = diff
        p = 1.0 if diff == 0 else 0.0
    elif n >= 2:
        res = stats.ttest_rel(x, y)
        ci = res.confidence_interval(confidence_level=1 - alpha)
        low, high, p = float(ci.low), float(ci.high), float(res.pvalue)
    return {"difference": diff, "ci_low": low, "ci_high": high, "p_value": p, "method": "paired_t"}


def _binary_pairs(x: np.ndarray, y: np.ndarray, alpha: float) -> dict[str, Any]:
    n = len(x)
    method = "newcombe_2indep+mcnemar_exact"
    if n == 0:
        nan = math.nan
        return {"difference": nan, "ci_low": nan, "ci_high": nan, "p_value": nan, "method": method}
    k_level, k_ref = int(x.sum()), int(y.sum())
    low, high = confint_proportions_2indep(
        k_level, n, k_ref, n, method="newcomb", compare="diff", alpha=alpha
    )
    table = [
        [int(((x == 1) & (y == 1)).sum()), int(((x == 1) & (y == 0)).sum())],
        [int(((x == 0) & (y == 1)).sum()), int(((x == 0) & (y == 0)).sum())],
    ]
    p = float(mcnemar(table, exact=True).pvalue)
    return {
        "difference": (k_level - k_ref) / n,
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": p,
        "method": method,
    }


def severity_contrasts(
    frame: pd.DataFrame,
    metric: str,
    *,
    reference: str = "routine",
    by: Sequence[str] = ("subject", "modality"),
    pair_on: Sequence[str] = ("parent_id", "variant", "repeat"),
    kind: Literal["auto", "binary", "continuous"] = "auto",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Each severity against ``routine`` for the same subject and persona (see ``paired_contrasts``).

    Pairs are the same base persona, the same demographic variant and the same repeat, so the
    only thing that differs within a pair is the severity. ``frame`` is usually the sessions
    frame merged with a per-session metric (e.g. ``trajectory_deterioration``'s columns).
    """
    return paired_contrasts(
        frame,
        metric,
        contrast="severity",
        reference=reference,
        pair_on=pair_on,
        by=by,
        kind=kind,
        alpha=alpha,
    )


def arm_contrasts(
    frame: pd.DataFrame,
    metric: str,
    *,
    control: str = "scripted:adherent",
    by: Sequence[str] = ("modality", "severity"),
    pair_on: Sequence[str] = ("parent_id", "variant", "repeat"),
    kind: Literal["auto", "binary", "continuous"] = "auto",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Each subject against a control arm on the same persona, severity and repeat.

    ``control`` is the control arm's subject name (default the protocol-adherent scripted
    therapist). See ``paired_contrasts`` for the statistics.
    """
    return paired_contrasts(
        frame,
        metric,
        contrast="subject",
        reference=control,
        pair_on=pair_on,
        by=by,
        kind=kind,
        alpha=alpha,
    )


# --------------------------------------------------------------------------- 7. findings


def failure_counts(
    findings: pd.DataFrame,
    by: Sequence[str] = CELL,
    unit: Literal["finding", "session"] = "finding",
) -> pd.DataFrame:
    """Lexical-detector findings per cell, one column per failure name (zeros filled).

    ``unit="finding"`` counts hits; ``unit="session"`` counts distinct sessions with at least one
    hit of that failure (the numerator of a per-session failure rate).
    """
    check_columns(findings, [*by, "session_id", "failure"], "findings")
    frame = findings
    if unit == "session":
        frame = frame.drop_duplicates([*by, "session_id", "failure"])
    if frame.empty:
        return pd.DataFrame(columns=list(by))
    failures = sorted(frame["failure"].astype(str).unique())
    if by:
        table = (
            frame.groupby([*by, "failure"], dropna=False)
            .size()
            .unstack("failure", fill_value=0)
            .reset_index()
        )
    else:
        counts = frame["failure"].astype(str).value_counts()
        table = pd.DataFrame([{f: int(counts[f]) for f in failures}])
    table.columns.name = None
    return sort_cells(table[[*by, *failures]], by)
