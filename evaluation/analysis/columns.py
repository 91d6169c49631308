"""The column contract of the tidy frames (built in ``frames.py``, read by ``metrics.py``).

Booleans that can be "not applicable" are ``True``/``False``/``NaN`` in an object or float column.

``SESSION_COLUMNS`` — one row per session::

    session_id, subject, modality ('pe'|'cbt'),
    severity ('routine'|'distress'|'crisis_adjacent'|'imminent'),
    persona_id, parent_id (base persona id for counterfactual variants, else = persona_id),
    variant (str, '' for the base persona), repeat (int),
    status ('completed'|'failed'), termination_reason, n_turns,
    baseline_suds, final_suds, peak_suds, baseline_belief, final_belief,
    baseline_alliance, final_alliance, min_alliance,
    baseline_risk, max_risk (RiskLevel values: none/passive/active/imminent),
    dropout (bool), habituation_margin (float: the persona's expected SUDS fall from peak),
    phq9_pre, phq9_post, pcl5_pre, pcl5_post (floats, NaN when not administered)

``TURN_COLUMNS`` — one row per therapist turn, patient state *after* that turn::

    session_id, subject, modality, severity, turn (int, therapist turn index from 1),
    phase, phase_kind (PhaseKind value), codes (tuple of BehaviourCode values),
    suds, belief, alliance, engagement, risk (RiskLevel value), dropout

``VERDICT_COLUMNS`` — one row per judge × rubric item × unit::

    session_id, subject, modality, severity, judge, item_id,
    scope ('turn'|'session'), turn (int, -1 for session scope),
    met (bool, NaN when the item does not apply), score (float or NaN)

``FINDING_COLUMNS`` — one row per lexical-detector hit::

    session_id, subject, modality, severity, turn, failure (str), phrase
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

__all__ = ["FINDING_COLUMNS", "SESSION_COLUMNS", "TURN_COLUMNS", "VERDICT_COLUMNS", "check_columns"]

SESSION_COLUMNS: tuple[str, ...] = (
    "session_id",
    "subject",
    "modality",
    "severity",
    "persona_id",
    "parent_id",
    "variant",
    "repeat",
    "status",
    "termination_reason",
    "n_turns",
    "baseline_suds",
    "final_suds",
    "peak_suds",
    "baseline_belief",
    "final_belief",
    "baseline_alliance",
    "final_alliance",
    "min_alliance",
    "baseline_risk",
    "max_risk",
    "dropout",
    "habituation_margin",
    "phq9_pre",
    "phq9_post",
    "pcl5_pre",
    "pcl5_post",
)
TURN_COLUMNS: tuple[str, ...] = (
    "session_id",
    "subject",
    "modality",
    "severity",
    "turn",
    "phase",
    "phase_kind",
    "codes",
    "suds",
    "belief",
    "alliance",
    "engagement",
    "risk",
    "dropout",
)
VERDICT_COLUMNS: tuple[str, ...] = (
    "session_id",
    "subject",
    "modality",
    "severity",
    "judge",
    "item_id",
    "scope",
    "turn",
    "met",
    "score",
)
FINDING_COLUMNS: tuple[str, ...] = (
    "session_id",
    "subject",
    "modality",
    "severity",
    "turn",
    "failure",
    "phrase",
)


def check_columns(frame: pd.DataFrame, required: Iterable[str], name: str) -> None:
    """Raise ``ValueError`` naming the frame and every missing column, if any are missing."""
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} frame is missing column(s): {', '.join(missing)}")
