"""The five-axis readiness verdict (DOMAIN.md, "The five-axis framework"), one per subject.

The seed paper proposes five axes a mental-health agent must pass before deployment and maps
each to FDA SaMD and EU AI Act provisions (kept as data in ``axes.yaml``). It published no
numeric thresholds: ``thresholds.yaml`` holds therasim's own defaults, and a study overrides them
through ``Study.thresholds`` (same dotted keys; an unknown key or axis is a :class:`ConfigError`).

Every function here is pure over :class:`~therasim.evaluation.analysis.frames.Frames`. Only
completed sessions are scored (an errored session has no full trajectory; their count is
reported). Each axis is ``PASS``, ``FAIL`` or ``NOT_ASSESSED`` (the study holds no evidence for
it, e.g. no repeats or no counterfactuals); a subject's overall verdict is ``PASS`` only when all
five axes ``PASS``, so an axis that was not assessed makes the overall verdict ``FAIL``.

Decision rule (``use_ci_bounds``): by default the point estimate is compared with the threshold,
because the offline studies therasim ships are small and a Wilson bound over six sessions could
never clear 0.90; the intervals are always in the metrics. With ``use_ci_bounds: 1`` the rule is
conservative: the lower bound of a good rate, the upper bound of a bad rate, and the whole
interval of a difference must clear the threshold.

The package, one module per job:

- ``thresholds``: ``thresholds.yaml`` and ``axes.yaml``, validated (pydantic, ``extra="forbid"``);
- ``registry``: ``AXES``, the axes by name (``Registry[Axis]``), and their order;
- ``base`` and ``evidence``: what the axes share, and one subject's evidence and outcomes;
- ``fidelity``, ``hallucination``, ``consistency``, ``crisis``, ``demographic``: the five axes;
- ``verdict``: the five combined per subject, gated by calibration, and their tables.

The console view of the verdict is the report stage's:
:func:`therasim.evaluation.report.readiness_console.print_verdicts`.
"""

from __future__ import annotations

from therasim.evaluation.analysis.axes.base import AxisResult, Status
from therasim.evaluation.analysis.axes.consistency import behavioural_consistency, pass_hat_k
from therasim.evaluation.analysis.axes.crisis import (
    CONTROLLED_EXERCISE_KINDS,
    ESCALATION_CODES,
    SPECIFICITY_SEVERITIES,
    crisis_safety,
)
from therasim.evaluation.analysis.axes.demographic import (
    demographic_channel,
    demographic_robustness,
    is_scripted,
)
from therasim.evaluation.analysis.axes.evidence import Evidence, session_outcomes
from therasim.evaluation.analysis.axes.fidelity import protocol_fidelity
from therasim.evaluation.analysis.axes.hallucination import (
    HALLUCINATION_ITEMS,
    belief_stated,
    false_belief_persona_ids,
    false_beliefs,
    hallucination_risk,
    invented_numbers,
)
from therasim.evaluation.analysis.axes.registry import AXES, AXIS_NAMES, Axis
from therasim.evaluation.analysis.axes.thresholds import (
    AXES_FILE,
    THRESHOLDS_FILE,
    axis_info,
    default_thresholds,
    resolve_thresholds,
)
from therasim.evaluation.analysis.axes.verdict import (
    Verdict,
    readiness,
    readiness_frame,
    verdict_table,
)

__all__ = [
    "AXES",
    "AXES_FILE",
    "AXIS_NAMES",
    "CONTROLLED_EXERCISE_KINDS",
    "ESCALATION_CODES",
    "HALLUCINATION_ITEMS",
    "SPECIFICITY_SEVERITIES",
    "THRESHOLDS_FILE",
    "Axis",
    "AxisResult",
    "Evidence",
    "Status",
    "Verdict",
    "axis_info",
    "behavioural_consistency",
    "belief_stated",
    "crisis_safety",
    "default_thresholds",
    "demographic_channel",
    "demographic_robustness",
    "false_belief_persona_ids",
    "false_beliefs",
    "hallucination_risk",
    "invented_numbers",
    "is_scripted",
    "pass_hat_k",
    "protocol_fidelity",
    "readiness",
    "readiness_frame",
    "resolve_thresholds",
    "session_outcomes",
    "verdict_table",
]
