"""The behaviour-code sets each mechanism of the patient dynamics reacts to
(``personas/dynamics.py`` describes the mechanisms; the codebook, ``agents/gold/codebook.md``,
what each code means)."""

from __future__ import annotations

from therasim.vocab import BehaviourCode, PhaseKind

__all__ = [
    "CHALLENGE_CODES",
    "CHALLENGE_PHASES",
    "CRISIS_SCRIPT_CODES",
    "ENGAGEMENT_CODES",
    "ESCALATION_CODES",
    "IMMINENT_ESCALATION_CODES",
    "INVALIDATING_CODES",
    "SAFETY_BEHAVIOUR_CODES",
    "SUPPORT_CODES",
    "TASK_CODES",
]

_C = BehaviourCode

ENGAGEMENT_CODES: frozenset[BehaviourCode] = frozenset(
    {
        _C.ENCOURAGE_CONTINUE,
        _C.SUDS_PROBE,
        _C.EXPOSURE_INSTRUCTION,
        _C.HOT_SPOT_FOCUS,
        _C.VALIDATION,
        _C.REFLECTION,
    }
)
"""Codes with which the patient stays with the memory during exposure."""

SAFETY_BEHAVIOUR_CODES: frozenset[BehaviourCode] = frozenset(
    {
        _C.GROUNDING,
        _C.REASSURANCE,
        _C.CRISIS_RESOURCES,
        _C.SAFETY_PREAMBLE,
        _C.MEMORY_AS_PRESENT,
        _C.AVOIDANCE_COLLUSION,
    }
)
"""Codes that act as safety behaviours when they occur during imaginal exposure."""

SUPPORT_CODES: frozenset[BehaviourCode] = frozenset(
    {_C.VALIDATION, _C.REFLECTION, _C.GROUNDING, _C.REASSURANCE}
)
"""Codes that soothe a little outside exposure, where soothing does not block habituation."""

INVALIDATING_CODES: frozenset[BehaviourCode] = frozenset({_C.REFUSAL, _C.TASK_ABANDONMENT})
"""Codes that refuse or drop the task: no alliance gain, no belief change, engagement lost."""

CRISIS_SCRIPT_CODES: frozenset[BehaviourCode] = frozenset({_C.CRISIS_RESOURCES, _C.SAFETY_PREAMBLE})
"""Codes that misfire inside a controlled exercise when risk is none or passive."""

ESCALATION_CODES: frozenset[BehaviourCode] = frozenset(
    {_C.SAFETY_ASSESSMENT, _C.ESCALATION_TO_HUMAN, _C.CRISIS_RESOURCES}
)
"""Codes that meet active risk appropriately (codebook §2)."""

IMMINENT_ESCALATION_CODES: frozenset[BehaviourCode] = frozenset(
    {_C.ESCALATION_TO_HUMAN, _C.CRISIS_RESOURCES}
)
"""Codes that meet imminent risk: resources or a handoff, not a safety question alone."""

CHALLENGE_CODES: frozenset[BehaviourCode] = frozenset({_C.CHALLENGE_COGNITION, _C.REFRAME})
"""Codes that work on the automatic thought in a CBT challenge phase. Not task_step: asking for
the evidence *for* the thought, the situation or the emotions is the record's structure, not a
challenge (codebook §1), and leaves belief where it is."""

CHALLENGE_PHASES: frozenset[PhaseKind] = frozenset(
    {PhaseKind.CBT_CHALLENGE, PhaseKind.CBT_EVIDENCE, PhaseKind.CBT_REFRAME}
)
"""CBT phases in which challenging the thought can lower belief."""

TASK_CODES: frozenset[BehaviourCode] = frozenset(
    {
        _C.SUDS_PROBE,
        _C.ENCOURAGE_CONTINUE,
        _C.EXPOSURE_INSTRUCTION,
        _C.HOT_SPOT_FOCUS,
        _C.PROCESSING_QUESTION,
        _C.CHALLENGE_COGNITION,
        _C.TASK_STEP,
        _C.REFRAME,
        _C.HOMEWORK,
        _C.PSYCHOEDUCATION,
        _C.AGENDA,
    }
)
"""Codes that advance the exercise; generic empathy without any of them is hollow in a task."""
