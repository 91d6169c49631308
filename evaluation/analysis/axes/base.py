"""What every axis shares: its status and result, the pass rules, and number formatting.

An axis is ``PASS``, ``FAIL`` or ``NOT_ASSESSED`` (no evidence). A pass rule is a :class:`Check`
(``at_least`` / ``at_most`` a threshold, tolerant of float noise); :func:`decide` turns an axis'
checks into its status, and :func:`axis_result` attaches the axis' thresholds and its FDA / EU
AI Act mapping. Metrics hold None, never NaN, so that they serialise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from therasim.evaluation.analysis.axes.thresholds import axis_info
from therasim.evaluation.analysis.metrics import wilson_interval
from therasim.evaluation.analysis.rates import as_float

__all__ = ["AxisResult", "Check", "Status", "at_least", "at_most", "axis_result", "decide"]

# Threshold comparisons tolerate float noise: 0.7 - 0.5 is 0.19999999999999996, not 0.2.
EPS = 1e-9


class Status(StrEnum):
    """An axis' (or a subject's) readiness status."""

    PASS = "PASS"
    FAIL = "FAIL"
    NOT_ASSESSED = "NOT_ASSESSED"

    @property
    def label(self) -> str:
        """Human wording: ``NOT ASSESSED`` with a space."""
        return self.value.replace("_", " ")


@dataclass(frozen=True)
class AxisResult:
    """One axis of one subject's verdict."""

    axis: str
    status: Status
    metrics: dict[str, Any]
    thresholds: dict[str, float]
    evidence: str
    fda: str
    eu_ai_act: str


def num(x: Any) -> float | None:
    """A float, or None for missing/NaN (metrics hold None, never NaN, so they serialise)."""
    if x is None or x is pd.NA:
        return None
    v = float(x)
    return None if math.isnan(v) else v


def fmt(x: float | None, digits: int = 2) -> str:
    """``x`` with ``digits`` decimals, or ``n/a``."""
    return "n/a" if x is None else f"{x:.{digits}f}"


def compared(value: float, threshold: float) -> tuple[str, str]:
    """Value and threshold printed with enough digits to differ when they do (0.697 is not
    shown as 0.70 beside a threshold of 0.70)."""
    for digits in (2, 3, 4):
        shown = fmt(value, digits), fmt(threshold, digits)
        if shown[0] != shown[1] or abs(value - threshold) <= EPS:
            return shown
    return fmt(value, 4), fmt(threshold, 4)


def met_flags(values: pd.Series) -> pd.Series:
    """Verdicts' ``met`` (bool, None or NA) as floats 1/0/NaN (``rates.as_float``)."""
    return as_float(values)


def code_set(value: Any) -> frozenset[str]:
    """A turn's behaviour codes, whether stored as a tuple or as comma/space-separated text."""
    if isinstance(value, str):
        return frozenset(c for c in re.split(r"[,\s]+", value) if c)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return frozenset()
    return frozenset(str(c) for c in value)


def rate_of(k: int, n: int, level: float) -> dict[str, Any]:
    """``k`` of ``n`` as a rate with its Wilson interval at ``level`` (None when ``n`` is 0)."""
    low, high = wilson_interval(k, n, alpha=1 - level)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci": [num(low), num(high)]}


def mean_ci(values: pd.Series, level: float) -> tuple[float | None, float | None, float | None]:
    """Mean with a t interval; the interval collapses to the mean when every value is equal."""
    x = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
    if len(x) == 0:
        return None, None, None
    mean = float(x.mean())
    if len(x) < 2:
        return mean, None, None
    if np.ptp(x) == 0:
        return mean, mean, mean
    low, high = stats.t.interval(level, len(x) - 1, loc=mean, scale=stats.sem(x))
    return mean, float(low), float(high)


@dataclass(frozen=True)
class Check:
    """One pass rule of an axis; ``ok`` is None when the study holds no evidence for it."""

    ok: bool | None
    text: str
    required: bool = True


def at_least(label: str, value: float | None, threshold: float, required: bool = True) -> Check:
    """The rule ``value ≥ threshold`` (no evidence when ``value`` is None)."""
    if value is None:
        return Check(None, f"{label} n/a", required)
    ok = value >= threshold - EPS
    v, t = compared(value, threshold)
    return Check(ok, f"{label} {v} {'≥' if ok else '<'} {t}", required)


def at_most(label: str, value: float | None, threshold: float, required: bool = True) -> Check:
    """The rule ``value ≤ threshold`` (no evidence when ``value`` is None)."""
    if value is None:
        return Check(None, f"{label} n/a", required)
    ok = value <= threshold + EPS
    v, t = compared(value, threshold)
    return Check(ok, f"{label} {v} {'≤' if ok else '>'} {t}", required)


def decide(checks: Sequence[Check]) -> Status:
    """FAIL if any check fails; NOT ASSESSED if a required check (or every check) lacks
    evidence; PASS otherwise."""
    if any(c.ok is False for c in checks):
        return Status.FAIL
    if any(c.required and c.ok is None for c in checks) or all(c.ok is None for c in checks):
        return Status.NOT_ASSESSED
    return Status.PASS


def _axis_thresholds(axis: str, th: Mapping[str, float]) -> dict[str, float]:
    prefix = f"{axis}."
    out = {k[len(prefix) :]: v for k, v in th.items() if k.startswith(prefix)}
    out["use_ci_bounds"] = th["use_ci_bounds"]
    out["ci_level"] = th["ci_level"]
    return out


def axis_result(
    axis: str,
    status: Status,
    metrics: dict[str, Any],
    th: Mapping[str, float],
    evidence: str,
) -> AxisResult:
    """An axis' result, with its own thresholds (prefix dropped) and its regulatory mapping."""
    info = axis_info(axis)
    return AxisResult(
        axis=axis,
        status=status,
        metrics=metrics,
        thresholds=_axis_thresholds(axis, th),
        evidence=evidence,
        fda=info["fda"],
        eu_ai_act=info["eu_ai_act"],
    )
