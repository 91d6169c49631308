"""The readiness verdict: the five axes of every subject, gated by calibration, and its tables.

A subject's overall verdict is ``PASS`` only when all five axes ``PASS``, so an axis that was not
assessed makes it ``FAIL``. An axis whose coder or judge panel is below its calibration threshold
(``gate``) is NOT ASSESSED whatever its metrics, which stay in the result. The axes are looked up
in the :data:`~therasim.evaluation.analysis.axes.registry.AXES` registry.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import pandas as pd

from therasim.evaluation.analysis.axes.base import AxisResult, Status
from therasim.evaluation.analysis.axes.evidence import subject_evidence
from therasim.evaluation.analysis.axes.registry import AXES, AXIS_NAMES
from therasim.evaluation.analysis.axes.thresholds import resolve_thresholds
from therasim.evaluation.analysis.frames import Frames

__all__ = ["Verdict", "readiness", "readiness_frame", "verdict_table"]


@dataclass(frozen=True)
class Verdict:
    """One subject's readiness: every axis, and ``overall`` PASS only when all five PASS."""

    subject: str
    axes: list[AxisResult]
    overall: Status = field(init=False)

    def __post_init__(self) -> None:
        ok = len(self.axes) == len(AXIS_NAMES) and all(a.status is Status.PASS for a in self.axes)
        object.__setattr__(self, "overall", Status.PASS if ok else Status.FAIL)

    def axis(self, name: str) -> AxisResult:
        """The result of axis ``name``."""
        for a in self.axes:
            if a.axis == name:
                return a
        raise KeyError(name)

    @property
    def note(self) -> str:
        """Why the overall verdict is what it is, in one line."""
        if self.overall is Status.PASS:
            return "all five axes pass"
        failed = [a.axis for a in self.axes if a.status is Status.FAIL]
        missing = [a.axis for a in self.axes if a.status is Status.NOT_ASSESSED]
        parts = []
        if failed:
            parts.append("failed: " + ", ".join(failed))
        if missing:
            parts.append(
                "not assessed: " + ", ".join(missing) + " (an axis not assessed cannot pass)"
            )
        return "; ".join(parts)


def readiness(
    frames: Frames,
    thresholds: Mapping[str, float] | None = None,
    *,
    false_belief_personas: Iterable[str] | Mapping[str, str] | None = None,
    gate: Mapping[str, str] | None = None,
    noop_pairs: int | None = None,
) -> list[Verdict]:
    """The five-axis verdict of every subject in ``frames.sessions``, sorted by subject.

    ``thresholds`` are overrides merged over the defaults (pass ``Study.thresholds``).
    ``false_belief_personas`` are the ids of personas with a seeded false belief
    (:func:`false_belief_persona_ids`), or id -> the belief (:func:`false_beliefs`), in which
    case only sessions where the patient stated it are probes; without them the probe check is
    skipped and clinical misinformation counts only through the hallucination rate.
    ``gate`` maps axes to the reason they cannot be assessed (a coder, a code the axis reads or a
    judge panel below its calibration threshold,
    ``therasim.evaluation.judging.calibration_scores.readiness_gate``): such an axis is
    NOT ASSESSED whatever its metrics, which stay in the result.
    ``noop_pairs`` is the study's count of skipped no-op counterfactual pairs
    (``therasim.simulations.study.Expansion``), named in the demographic axis' evidence.
    """
    th = resolve_thresholds(thresholds)
    axes = [AXES.get(name) for name in AXIS_NAMES]
    verdicts = []
    for subject in sorted(frames.sessions["subject"].astype(str).unique()):
        evidence = subject_evidence(
            frames, subject, false_belief_personas=false_belief_personas, noop_pairs=noop_pairs
        )
        results = [_gated(axis.score(evidence, th), gate) for axis in axes]
        verdicts.append(Verdict(subject=subject, axes=results))
    return verdicts


def _gated(result: AxisResult, gate: Mapping[str, str] | None) -> AxisResult:
    if not gate or result.axis not in gate:
        return result
    return replace(
        result,
        status=Status.NOT_ASSESSED,
        evidence=f"calibration: {gate[result.axis]} (measured: {result.evidence})",
    )


def readiness_frame(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    """The verdict for export: one row per subject and axis, then the subject's ``overall`` row
    (its evidence says why); columns ``subject, axis, status, evidence``."""
    rows = []
    for v in verdicts:
        rows += [
            {"subject": v.subject, "axis": a.axis, "status": a.status.value, "evidence": a.evidence}
            for a in v.axes
        ]
        rows.append(
            {"subject": v.subject, "axis": "overall", "status": v.overall.value, "evidence": v.note}
        )
    return pd.DataFrame(rows, columns=["subject", "axis", "status", "evidence"])


def verdict_table(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    """One row per subject × axis: ``subject, axis, status, evidence, fda, eu_ai_act, overall,
    metrics`` (JSON text, so the table exports to CSV and parquet), ``thresholds`` (JSON)."""
    rows = [
        {
            "subject": v.subject,
            "axis": a.axis,
            "status": a.status.value,
            "evidence": a.evidence,
            "fda": a.fda,
            "eu_ai_act": a.eu_ai_act,
            "overall": v.overall.value,
            "metrics": json.dumps(a.metrics, sort_keys=True, default=str),
            "thresholds": json.dumps(a.thresholds, sort_keys=True),
        }
        for v in verdicts
        for a in v.axes
    ]
    columns = [
        "subject",
        "axis",
        "status",
        "evidence",
        "fda",
        "eu_ai_act",
        "overall",
        "metrics",
        "thresholds",
    ]
    return pd.DataFrame(rows, columns=columns)
