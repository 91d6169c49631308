"""The shared vocabulary every layer speaks: behaviour codes, risk levels, the severity ladder
and phase kinds, with their order.

Personas, protocols, agents, simulations and evaluation all import these from here, so a code or
a rung is defined once; ``rank`` gives the order that comparisons (``risk >= active``) and
ordered categoricals in the frames use.
"""

from __future__ import annotations

from enum import StrEnum


class BehaviourCode(StrEnum):
    """What one therapist turn does. The appraiser emits these; dynamics and detectors consume them."""

    VALIDATION = "validation"
    REFLECTION = "reflection"
    SUDS_PROBE = "suds_probe"
    ENCOURAGE_CONTINUE = "encourage_continue"
    EXPOSURE_INSTRUCTION = "exposure_instruction"
    HOT_SPOT_FOCUS = "hot_spot_focus"
    PROCESSING_QUESTION = "processing_question"
    HOMEWORK = "homework"
    AGENDA = "agenda"
    GROUNDING = "grounding"
    REASSURANCE = "reassurance"
    CRISIS_RESOURCES = "crisis_resources"
    SAFETY_PREAMBLE = "safety_preamble"
    SAFETY_ASSESSMENT = "safety_assessment"
    CHALLENGE_COGNITION = "challenge_cognition"
    TASK_STEP = "task_step"
    REFRAME = "reframe"
    PSYCHOEDUCATION = "psychoeducation"
    TASK_ABANDONMENT = "task_abandonment"
    MEMORY_AS_PRESENT = "memory_as_present"
    REFUSAL = "refusal"
    ESCALATION_TO_HUMAN = "escalation_to_human"
    AVOIDANCE_COLLUSION = "avoidance_collusion"
    MISINFORMATION = "misinformation"
    GENERIC_EMPATHY = "generic_empathy"


class RiskLevel(StrEnum):
    """Self-harm risk the patient currently carries, ordered from none to imminent."""

    NONE = "none"
    PASSIVE = "passive"
    ACTIVE = "active"
    IMMINENT = "imminent"

    @property
    def rank(self) -> int:
        """Position on the ladder (none = 0), for comparing levels."""
        return list(RiskLevel).index(self)


class Severity(StrEnum):
    """The severity ladder every persona resolves at (DOMAIN.md: the study's four levels)."""

    ROUTINE = "routine"
    DISTRESS = "distress"
    CRISIS_ADJACENT = "crisis_adjacent"
    IMMINENT = "imminent"

    @property
    def rank(self) -> int:
        """Position on the ladder (routine = 0), for comparing levels."""
        return list(Severity).index(self)


class PhaseKind(StrEnum):
    """What a protocol phase is clinically; the dynamics react to the kind, not the phase id."""

    CHECK_IN = "check_in"
    HOMEWORK_REVIEW = "homework_review"
    ORIENTATION = "orientation"
    IMAGINAL_EXPOSURE = "imaginal_exposure"
    HOT_SPOT = "hot_spot"
    PROCESSING = "processing"
    IN_VIVO_ASSIGNMENT = "in_vivo_assignment"
    WRAP_UP = "wrap_up"
    CBT_SITUATION = "cbt_situation"
    CBT_IDENTIFY = "cbt_identify"
    CBT_EVIDENCE = "cbt_evidence"
    CBT_CHALLENGE = "cbt_challenge"
    CBT_REFRAME = "cbt_reframe"
    CBT_RERATE = "cbt_rerate"

    @property
    def is_exposure(self) -> bool:
        """Whether the phase is an exposure phase (imaginal exposure or hot spot)."""
        return self in (PhaseKind.IMAGINAL_EXPOSURE, PhaseKind.HOT_SPOT)

    @property
    def is_cbt(self) -> bool:
        """Whether the phase belongs to a CBT protocol."""
        return self.value.startswith("cbt_")


_RISK_RANKS = {r.value: i for i, r in enumerate(RiskLevel)}
_SEVERITY_RANKS = {s.value: i for i, s in enumerate(Severity)}


def risk_rank(value: object, default: int = 0) -> int:
    """The rank of a risk level given as enum or text (``default`` for anything else, e.g. a
    missing value in a frame)."""
    return _RISK_RANKS.get(str(value), default)


def severity_rank(value: object, default: int = len(Severity)) -> int:
    """The rank of a severity rung given as enum or text (unknown rungs sort last)."""
    return _SEVERITY_RANKS.get(str(value), default)


SEVERITY_ORDER: tuple[str, ...] = tuple(s.value for s in Severity)
RISK_ORDER: tuple[str, ...] = tuple(r.value for r in RiskLevel)

__all__ = [
    "RISK_ORDER",
    "SEVERITY_ORDER",
    "BehaviourCode",
    "PhaseKind",
    "RiskLevel",
    "Severity",
    "risk_rank",
    "severity_rank",
]
