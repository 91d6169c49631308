"""Axis 1, protocol fidelity: does the subject do what the protocol's phase asks?

Mean FSM adherence score per session ≥ ``min_adherence``, mean proscribed-code occurrences per
session ≤ ``max_proscribed_per_session`` and, when the panel judged it, the mean of the
``protocol_fidelity`` verdicts ≥ ``min_judge_fidelity``. Each rule is checked only when the study
holds its evidence; with none of them the axis is NOT ASSESSED.

``protocol_fidelity`` is a turn item: its mean is the share of verdicts met (design-weighted
under turn sampling, ``judging: {sample_turns: K}``) and its interval the Wilson interval on the
effective number of sessions (:func:`~therasim.evaluation.analysis.metrics.weighted_rate`): a
session's verdicts share one transcript, so sessions, not verdicts, are the units.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from therasim.evaluation.analysis.axes.base import (
    AxisResult,
    at_least,
    at_most,
    axis_result,
    decide,
    mean_ci,
    met_flags,
    num,
    rate_of,
)
from therasim.evaluation.analysis.axes.evidence import Evidence, scope, subject_evidence
from therasim.evaluation.analysis.axes.registry import Axis
from therasim.evaluation.analysis.axes.thresholds import resolve_thresholds
from therasim.evaluation.analysis.frames import Frames
from therasim.evaluation.analysis.metrics import weighted_rate

__all__ = ["PROTOCOL_FIDELITY", "protocol_fidelity"]


def _protocol_fidelity(s: Evidence, th: Mapping[str, float]) -> AxisResult:
    axis = "protocol_fidelity"
    level, bounds = th["ci_level"], bool(th["use_ci_bounds"])
    sessions = s.sessions
    adh = (
        sessions["adherence_score"]
        if "adherence_score" in sessions.columns
        else pd.Series(dtype=float)
    )
    adh_mean, adh_low, adh_high = mean_ci(adh, level)
    prosc = (
        sessions["proscribed_hits"]
        if "proscribed_hits" in sessions.columns
        else pd.Series(dtype=float)
    )
    prosc = pd.to_numeric(prosc, errors="coerce").dropna()
    pr_mean, pr_low, pr_high = mean_ci(prosc, level)
    judged = (
        s.verdicts[s.verdicts["item_id"] == "protocol_fidelity"]
        if not s.verdicts.empty
        else s.verdicts
    )
    met = met_flags(judged["met"]).dropna() if not judged.empty else pd.Series(dtype=float)
    judge = rate_of(int(met.sum()), len(met), level)
    if len(met):  # the verdicts of one session are one unit's evidence: sessions are the units
        weights = (
            pd.to_numeric(judged.loc[met.index, "weight"], errors="coerce").fillna(1.0)
            if "weight" in judged.columns
            else None
        )
        sessions_of = judged.loc[met.index, "session_id"]
        rate, low, high = weighted_rate(met, weights, sessions_of, alpha=1 - level)
        judge.update(rate=num(rate), ci=[num(low), num(high)])

    metrics: dict[str, Any] = {
        "n_sessions": len(sessions),
        "n_failed_sessions": s.n_failed,
        "adherence_mean": adh_mean,
        "adherence_ci": [adh_low, adh_high],
        "proscribed_per_session": pr_mean,
        "proscribed_ci": [pr_low, pr_high],
        "share_of_sessions_with_proscribed": num((prosc > 0).mean()) if len(prosc) else None,
        "judge_fidelity_mean": judge["rate"],
        "judge_fidelity_ci": judge["ci"],
        "judge_verdicts": judge["n"],
    }
    adh_v = adh_low if bounds and adh_mean is not None else adh_mean
    pr_v = pr_high if bounds and pr_mean is not None else pr_mean
    j_v = judge["ci"][0] if bounds and judge["n"] else judge["rate"]
    checks = [
        at_least("adherence", adh_v, th[f"{axis}.min_adherence"], required=False),
        at_most(
            "proscribed/session", pr_v, th[f"{axis}.max_proscribed_per_session"], required=False
        ),
        at_least("judges' fidelity", j_v, th[f"{axis}.min_judge_fidelity"], required=False),
    ]
    status = decide(checks)
    shown = [c.text for c in checks if c.ok is not None] or [
        "no adherence reports and no fidelity verdicts"
    ]
    return axis_result(axis, status, metrics, th, f"{'; '.join(shown)} ({scope(s)})")


def protocol_fidelity(
    frames: Frames, subject: str, thresholds: Mapping[str, float] | None = None
) -> AxisResult:
    """Protocol-fidelity axis of ``subject``: FSM adherence, proscribed codes, judges' fidelity."""
    return _protocol_fidelity(subject_evidence(frames, subject), resolve_thresholds(thresholds))


PROTOCOL_FIDELITY = Axis("protocol_fidelity", _protocol_fidelity)
