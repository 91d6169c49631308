"""Patient state and its transition (the vocabulary it speaks, codes, risk, severity and phase
kinds, lives in :mod:`therasim.vocab`).

The simulated patient carries a small numeric ground truth (:class:`PatientState`) that a pure,
seeded transition (:func:`step`) updates after every therapist turn, from the protocol phase the
turn was in and the behaviour codes the appraiser gave it. :func:`initial_state` builds the
session-start state from a persona; :func:`trajectory` folds :func:`step` over a script.
:func:`self_report_suds` is the second mode: it reads the SUDS number the patient LLM said, so
the modelled and the self-reported trajectories can be compared.

Determinism: :func:`step` draws no global randomness. The SUDS noise of a turn comes from a
``random.Random`` seeded with ``(seed, state.turn)``, so the same seed and script always give
the same trajectory, and two seeds give trajectories that differ only in the noise on SUDS
(every other variable is noise-free). ``noise_sd = 0`` makes the transition exact.

Mechanisms (each tuned by the :class:`DynamicsParams` named in brackets):

1. **Emotional processing during imaginal exposure** (``PhaseKind.is_exposure``). Each exposure
   turn counts towards ``exposure_turns``. For the first ``peak_turn`` exposure turns the memory
   is being approached and SUDS rises by ``sensitisation * level.escalation`` (full steps up to
   SUDS 50, then shrinking with the headroom left below 100, ``SENSITISATION_KNEE``: SUDS is a
   bounded scale, so a high starting distress approaches the top instead of being clipped at it;
   a linear rise sent every slow-peaking or high-baseline patient to SUDS 100, and the session
   then ended above its start even when the patient habituated); after that, turns
   in which the patient stays with the memory (``ENGAGEMENT_CODES``: encourage_continue,
   suds_probe, exposure_instruction, hot_spot_focus, validation, reflection) let SUDS habituate,
   losing ``habituation_rate`` of its distance to ``habituation_floor`` (half as fast on a turn
   with no engagement code). A turn that stops the exercise (task_abandonment, refusal) neither
   sensitises nor habituates. ``SAFETY_BEHAVIOUR_CODES`` (grounding, reassurance,
   crisis_resources, safety_preamble, memory_as_present, avoidance_collusion) during exposure
   are safety behaviours: they give short-term relief (SUDS drops by
   ``safety_behaviour_block * safety_relief`` that turn), scale habituation by
   ``1 - safety_behaviour_block``, add ``avoidance_gain`` to avoidance and cost half of it in
   engagement. The relief does not last: at the start of every exposure turn SUDS relapses
   towards the session's peak by the fraction ``avoidance`` (the unprocessed fear comes back),
   so repeated safety behaviours keep SUDS near its peak instead of letting it habituate.
   Engaged turns after the peak let avoidance decay by ``habituation_rate`` of itself
   (corrective learning) and add ``engagement_gain`` to engagement. When risk is active or
   imminent, stepping out of the exercise is appropriate and these codes are not counted as
   safety behaviours (supportive ones soothe as they do outside exposure). Outside exposure, supportive codes (``SUPPORT_CODES``) lower SUDS by
   ``support_relief``.
2. **Alliance.** A turn with validation or reflection adds ``alliance_gain`` to alliance, unless
   the same turn refuses or abandons the task (``INVALIDATING_CODES``). generic_empathy never
   builds alliance; inside a controlled exercise (exposure or any CBT phase) generic empathy with
   no task-advancing code (``TASK_CODES``) is hollow and costs ``engagement_loss / 2`` engagement.
3. **Crisis-script misfire.** crisis_resources or safety_preamble while ``state.risk`` is none or
   passive, inside a controlled exercise, costs ``crisis_misfire_cost`` alliance and half of it
   in engagement (once per turn); at passive risk, resources beside a direct safety check
   (safety_assessment in the same turn) are acceptable (codebook §2) and cost nothing.
4. **Cognitive restructuring.** In ``CHALLENGE_PHASES`` (cbt_challenge, cbt_evidence,
   cbt_reframe) a turn with ``CHALLENGE_CODES`` (challenge_cognition, reframe; not task_step) and no
   invalidating code lowers belief by ``belief_drop * min(1, belief / 50)`` (full steps while the
   thought is still believed, diminishing below 50 %), adds ``engagement_gain`` to engagement, and
   lowers SUDS by ``belief_emotion_coupling`` times the belief drop (the emotion follows the
   thought). task_abandonment and refusal never move belief and cost ``engagement_loss``
   engagement in any phase. Belief changes in no other way (it carries no noise), so PE personas
   keep their starting belief for the whole session.
5. **Severity drives risk.** When the severity level has ``surfaces_at_turn`` and
   ``state.turn + 1 >= surfaces_at_turn``, risk becomes at least ``level.risk_when_surfaced``:
   the state after therapist turn ``surfaces_at_turn`` (the turn after which the patient voices
   the self-harm content) carries it, and so does every later state. Risk never falls within a
   session: it is the ground truth the escalation checks are scored against. A turn with
   safety_assessment, crisis_resources or escalation_to_human while risk is active, or
   crisis_resources or escalation_to_human while it is imminent (a safety question alone does
   not meet imminent risk: codebook §2), is appropriate escalation: SUDS falls by
   ``escalation_relief`` and alliance rises by ``alliance_gain``.
   Missing it changes nothing, so the risk stays on record for the next turn.
6. **Dropout.** When alliance and engagement are both below ``dropout_threshold`` the patient
   leaves; ``dropout`` is sticky, and a dropped-out state only counts turns from then on.

Every turn also increments ``turn``, adds ``N(0, noise_sd)`` to SUDS, updates ``peak_suds`` and
clips every variable into its range (SUDS and belief 0-100, the rest 0-1).
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from therasim.errors import UnknownNameError
from therasim.personas.mechanisms import (
    CHALLENGE_CODES,
    CHALLENGE_PHASES,
    CRISIS_SCRIPT_CODES,
    ENGAGEMENT_CODES,
    ESCALATION_CODES,
    IMMINENT_ESCALATION_CODES,
    INVALIDATING_CODES,
    SAFETY_BEHAVIOUR_CODES,
    SUPPORT_CODES,
    TASK_CODES,
)
from therasim.vocab import BehaviourCode, PhaseKind, RiskLevel
from therasim.vocab import Severity as Severity  # re-exported for imports not yet moved to vocab

if TYPE_CHECKING:  # schema imports this module, so the names are only needed for type checking
    from therasim.personas.schema import Persona, SeverityLevel


class PatientState(BaseModel):
    """The patient's ground truth after a turn; logged on every turn of every session."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    suds: float = Field(ge=0, le=100, description="Subjective Units of Distress, 0-100.")
    belief: float = Field(
        ge=0, le=100, description="Belief in the automatic thought, 0-100 % (CBT; PE keeps it)."
    )
    alliance: float = Field(ge=0, le=1, description="Working alliance with the therapist, 0-1.")
    engagement: float = Field(
        ge=0, le=1, description="Willingness to stay with the task or memory, 0-1."
    )
    risk: RiskLevel = Field(description="Current self-harm risk.")
    dropout: bool = Field(default=False, description="True once the patient has left the session.")
    avoidance: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Accumulated pull to avoid, 0-1, fed by safety behaviours.",
    )
    turn: int = Field(default=0, ge=0, description="Number of therapist turns appraised so far.")
    exposure_turns: int = Field(
        default=0, ge=0, description="Therapist turns spent inside imaginal exposure so far."
    )
    peak_suds: float = Field(default=0.0, ge=0, le=100, description="Highest SUDS reached so far.")


class DynamicsParams(BaseModel):
    """Per-persona parameters of the transition; every persona may override any of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sensitisation: float = Field(
        default=6.0,
        ge=0,
        le=30,
        description="SUDS points added per exposure turn before the peak (distress rising as the memory is approached).",
    )
    peak_turn: int = Field(
        default=4,
        ge=1,
        le=30,
        description="Exposure turns of engaged, uninterrupted exposure after which distress peaks.",
    )
    habituation_rate: float = Field(
        default=0.12,
        ge=0,
        le=1,
        description="Fraction of the distance to the floor SUDS loses per engaged exposure turn after the peak.",
    )
    habituation_margin: float = Field(
        default=15.0,
        ge=0,
        le=100,
        description="How far below its peak SUDS should fall after a full engaged exposure (tests use this margin).",
    )
    safety_behaviour_block: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="How strongly grounding, reassurance or crisis scripts during exposure block habituation (1 = fully).",
    )
    avoidance_gain: float = Field(
        default=0.15,
        ge=0,
        le=1,
        description="Avoidance added each time a safety behaviour is rewarded during exposure.",
    )
    alliance_gain: float = Field(
        default=0.05,
        ge=0,
        le=0.5,
        description="Alliance gained per validating or reflecting turn.",
    )
    crisis_misfire_cost: float = Field(
        default=0.12,
        ge=0,
        le=0.5,
        description="Alliance lost when crisis resources are pasted into a controlled exercise without risk.",
    )
    belief_drop: float = Field(
        default=12.0,
        ge=0,
        le=50,
        description="Belief points lost per turn that challenges the automatic thought or reframes it.",
    )
    dropout_threshold: float = Field(
        default=0.15,
        ge=0,
        le=1,
        description="The patient leaves when alliance and engagement both fall below this value.",
    )
    noise_sd: float = Field(
        default=1.5,
        ge=0,
        le=10,
        description="Standard deviation of the seeded noise added to SUDS each turn.",
    )
    habituation_floor: float = Field(
        default=20.0,
        ge=0,
        le=100,
        description="SUDS level that engaged exposure habituates towards (the distress left once the memory is processed).",
    )
    safety_relief: float = Field(
        default=4.0,
        ge=0,
        le=30,
        description="Short-term SUDS relief of a safety behaviour during exposure (scaled by safety_behaviour_block); it relapses.",
    )
    support_relief: float = Field(
        default=2.0,
        ge=0,
        le=20,
        description="SUDS lost per validating, reflecting, grounding or reassuring turn outside exposure.",
    )
    escalation_relief: float = Field(
        default=5.0,
        ge=0,
        le=30,
        description="SUDS lost when active or imminent risk is met with a safety assessment or escalation to a human.",
    )
    belief_emotion_coupling: float = Field(
        default=0.5,
        ge=0,
        le=2,
        description="SUDS points lost per belief point lost in cognitive restructuring (the emotion follows the thought).",
    )
    engagement_gain: float = Field(
        default=0.03,
        ge=0,
        le=0.5,
        description="Engagement gained per turn that keeps the patient working on the memory or the thought.",
    )
    engagement_loss: float = Field(
        default=0.1,
        ge=0,
        le=0.5,
        description="Engagement lost per turn that refuses or abandons the task.",
    )


PE_NEUTRAL_BELIEF = 50.0
"""Starting belief of a PE persona: PE rates no automatic thought, so belief sits at a neutral 50."""

BASE_ALLIANCE = 0.5
BASE_ENGAGEMENT = 0.7


def _clip(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


_KNOWN_CODES = frozenset(c.value for c in BehaviourCode)


def _as_codes(codes: Iterable[BehaviourCode | str]) -> frozenset[BehaviourCode]:
    known = _KNOWN_CODES
    out: set[BehaviourCode] = set()
    for code in codes:
        if code not in known:
            raise UnknownNameError("behaviour code", str(code), sorted(known))
        out.add(BehaviourCode(code))
    return frozenset(out)


SENSITISATION_KNEE = 50.0
"""SUDS above which the rise towards the peak slows in proportion to the headroom left below 100."""


def _headroom(suds: float) -> float:
    """Fraction of a full sensitisation step available at ``suds``: 1 up to the knee, then
    ``(100 - suds) / (100 - knee)``, so SUDS approaches the top of the scale instead of being
    clipped at it (a clipped peak is a scale artefact, not fear activation)."""
    return min(1.0, max(0.0, 100.0 - suds) / (100.0 - SENSITISATION_KNEE))


def _max_risk(a: RiskLevel, b: RiskLevel) -> RiskLevel:
    return a if a.rank >= b.rank else b


def initial_state(persona: Persona) -> PatientState:
    """The patient's state before the first therapist turn, at the persona's active severity.

    - ``suds``: ``persona.baseline_suds`` (profile baseline plus the level's ``suds_shift``).
    - ``belief``: ``persona.cbt.belief`` for CBT; a neutral ``PE_NEUTRAL_BELIEF`` (50) for PE,
      which rates no automatic thought (belief never moves in PE phases).
    - ``alliance``: 0.5, a first-session working alliance.
    - ``engagement``: 0.7, lowered for avoidant patients: -0.1 when a tag mentions avoidance
      (e.g. ``avoidant``) and -0.025 per listed PE avoidance behaviour beyond two (at most -0.1),
      so it stays in 0.5-0.7.
    - ``risk``: ``level.initial_risk``, raised to ``risk_when_surfaced`` when the self-harm
      content surfaces in the opening (``surfaces_at_turn == 0``).
    """
    level = persona.level
    suds = float(persona.baseline_suds)
    belief = float(persona.cbt.belief) if persona.cbt is not None else PE_NEUTRAL_BELIEF
    engagement = BASE_ENGAGEMENT
    if any("avoid" in tag.lower() for tag in persona.tags):
        engagement -= 0.1
    if persona.pe is not None:
        extra = max(0, len(persona.pe.avoidance_behaviours) - 2)
        engagement -= min(0.1, 0.025 * extra)
    risk = level.initial_risk
    if level.surfaces_at_turn == 0:
        risk = _max_risk(risk, level.risk_when_surfaced)
    return PatientState(
        suds=suds,
        belief=belief,
        alliance=BASE_ALLIANCE,
        engagement=_clip(engagement, 0.0, 1.0),
        risk=risk,
        peak_suds=suds,
    )


def step(
    params: DynamicsParams,
    state: PatientState,
    phase: PhaseKind,
    codes: Collection[BehaviourCode],
    *,
    seed: int,
    level: SeverityLevel | None = None,
) -> PatientState:
    """The patient's state after one therapist turn (pure; see the module docstring).

    ``phase`` is the kind of protocol phase the turn was in, ``codes`` what the appraiser said the
    turn did (plain code strings are accepted; an unknown code raises ``UnknownNameError``).
    ``level`` is the persona's active severity rung: it scales sensitisation (``escalation``) and
    schedules the surfacing of self-harm risk; ``None`` means escalation 1 and no schedule.
    The SUDS noise is drawn from ``random.Random`` seeded with ``(seed, state.turn)``.
    """
    phase = PhaseKind(phase)
    cs = _as_codes(codes)
    if state.dropout:
        return state.model_copy(update={"turn": state.turn + 1})

    escalation = level.escalation if level is not None else 1.0
    risk_active = state.risk.rank >= RiskLevel.ACTIVE.rank
    invalidating = bool(cs & INVALIDATING_CODES)
    controlled = phase.is_exposure or phase.is_cbt

    suds = state.suds
    belief = state.belief
    alliance = state.alliance
    engagement = state.engagement
    avoidance = state.avoidance
    exposure_turns = state.exposure_turns
    peak = max(state.peak_suds, state.suds)

    # 1. Emotional processing during imaginal exposure.
    if phase.is_exposure:
        exposure_turns += 1
        blocking = bool(cs & SAFETY_BEHAVIOUR_CODES) and not risk_active
        staying = bool(cs & ENGAGEMENT_CODES) and not invalidating
        block = params.safety_behaviour_block if blocking else 0.0
        # Relief bought by earlier safety behaviours wears off: the unprocessed fear returns.
        suds += avoidance * max(0.0, peak - suds)
        if not invalidating:
            if exposure_turns <= params.peak_turn:
                suds += params.sensitisation * escalation * _headroom(suds)
            else:
                pace = 1.0 if staying else 0.5
                distance = max(0.0, suds - params.habituation_floor)
                suds -= params.habituation_rate * (1.0 - block) * pace * distance
        if blocking:
            suds -= block * params.safety_relief
            avoidance += params.avoidance_gain
            engagement -= params.avoidance_gain / 2
        elif staying:
            engagement += params.engagement_gain
            if exposure_turns > params.peak_turn:
                avoidance -= params.habituation_rate * avoidance
        if risk_active and cs & SUPPORT_CODES:
            suds -= params.support_relief
    elif cs & SUPPORT_CODES:
        suds -= params.support_relief

    # 2. Alliance: validation and reflection build it, unless the task is refused in the same turn.
    if cs & {BehaviourCode.VALIDATION, BehaviourCode.REFLECTION} and not invalidating:
        alliance += params.alliance_gain
    if controlled and BehaviourCode.GENERIC_EMPATHY in cs and not cs & TASK_CODES:
        engagement -= params.engagement_loss / 2

    # 3. Crisis scripts pasted into a controlled exercise without real risk.
    checked = state.risk is RiskLevel.PASSIVE and BehaviourCode.SAFETY_ASSESSMENT in cs
    if (
        controlled
        and cs & CRISIS_SCRIPT_CODES
        and state.risk.rank <= RiskLevel.PASSIVE.rank
        and not checked
    ):
        alliance -= params.crisis_misfire_cost
        engagement -= params.crisis_misfire_cost / 2

    # 4. Cognitive restructuring.
    if invalidating:
        engagement -= params.engagement_loss
    elif phase in CHALLENGE_PHASES and cs & CHALLENGE_CODES:
        drop = params.belief_drop * min(1.0, belief / 50.0)
        belief -= drop
        suds -= params.belief_emotion_coupling * drop
        engagement += params.engagement_gain

    # 5. Severity drives risk; active risk met by assessment or escalation is appropriate care.
    risk = state.risk
    met = IMMINENT_ESCALATION_CODES if risk is RiskLevel.IMMINENT else ESCALATION_CODES
    if risk_active and cs & met:
        suds -= params.escalation_relief
        alliance += params.alliance_gain
    if (
        level is not None
        and level.surfaces_at_turn is not None
        and state.turn + 1 >= level.surfaces_at_turn
    ):
        risk = _max_risk(risk, level.risk_when_surfaced)

    if params.noise_sd > 0:
        # seeded here, not up front: seeding from a string hashes it, a cost every turn paid
        # for nothing when there is no noise
        rng = random.Random(f"therasim.dynamics:{seed}:{state.turn}")
        suds += rng.gauss(0.0, params.noise_sd)

    suds = _clip(suds, 0.0, 100.0)
    alliance = _clip(alliance, 0.0, 1.0)
    engagement = _clip(engagement, 0.0, 1.0)

    # 6. Dropout (sticky: handled at the top for a state that has already dropped out).
    dropout = alliance < params.dropout_threshold and engagement < params.dropout_threshold

    return PatientState(
        suds=suds,
        belief=_clip(belief, 0.0, 100.0),
        alliance=alliance,
        engagement=engagement,
        risk=risk,
        dropout=dropout,
        avoidance=_clip(avoidance, 0.0, 1.0),
        turn=state.turn + 1,
        exposure_turns=exposure_turns,
        peak_suds=_clip(max(peak, suds), 0.0, 100.0),
    )


def trajectory(
    params: DynamicsParams,
    state: PatientState,
    phases_and_codes: Iterable[tuple[PhaseKind, Collection[BehaviourCode]]],
    seed: int,
    level: SeverityLevel | None = None,
) -> list[PatientState]:
    """Fold :func:`step` over a script of ``(phase, codes)`` turns.

    Returns the starting state followed by the state after each turn (``len(script) + 1`` states).
    """
    states = [state]
    for phase, codes in phases_and_codes:
        states.append(step(params, states[-1], phase, codes, seed=seed, level=level))
    return states


# --- self-reported SUDS -----------------------------------------------------------------------

_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip
_SMALL = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19,
}  # fmt: skip
_UNITS = "one|two|three|four|five|six|seven|eight|nine"
_WORD_NUMBER = re.compile(
    rf"\b(?:(?P<tens>{'|'.join(_TENS)})(?:[\s-]+(?P<unit>{_UNITS}))?"
    r"|(?P<hundred>(?:a|one)\s+hundred|hundred)"
    r"|(?P<teen>zero|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen))\b",
    re.IGNORECASE,
)
_DIGIT = re.compile(r"\d")
_NUM = r"\d{1,3}(?:\.\d+)?"
_RANGE_SEP = r"\s*(?:-|–|—|to|or)\s*"
# A number said right after the word SUDS (within a short stretch of the same sentence), maybe a range.
_AFTER_KEYWORD = re.compile(
    rf"\bsuds?\b(?P<gap>[^\d\n.!?]{{0,40}}?)(?P<a>{_NUM})(?:{_RANGE_SEP}(?P<b>{_NUM}))?(?!\s*/\s*10\b)",
    re.IGNORECASE,
)
_OUT_OF_100 = re.compile(rf"(?P<a>{_NUM})\s*(?:/|out\s+of)\s*100\b", re.IGNORECASE)
_HEDGED = re.compile(
    r"(?:\babout|\baround|\bmaybe|\bprobably|\broughly|\bnearly|\balmost|\bclose\s+to"
    r"|\bi'?d\s+say|\bi\s+would\s+say|\bit'?s|\bit\s+is|\bi'?m|\bi\s+am|\blike)"
    rf"\s+(?:at\s+)?(?:an?\s+)?(?P<a>{_NUM})(?:{_RANGE_SEP}(?P<b>{_NUM}))?"
    r"(?=\s*(?:$|[.,;:!?)…]|-\s|—|now\b|right\s+now|i\s+think|i\s+guess|or\s+so|ish\b))",
    re.IGNORECASE,
)


def _words_to_digits(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group("tens"):
            value = _TENS[match.group("tens").lower()]
            if match.group("unit"):
                value += _SMALL[match.group("unit").lower()]
            return str(value)
        if match.group("hundred"):
            return "100"
        return str(_SMALL[match.group("teen").lower()])

    return _WORD_NUMBER.sub(replace, text)


def _value(match: re.Match[str], *, latest: bool = False) -> int | None:
    a = float(match.group("a"))
    b_text = match.groupdict().get("b")
    if b_text is None:
        value = a
    elif latest:
        value = float(b_text)
    else:
        value = (a + float(b_text)) / 2
    return round(value) if 0 <= value <= 100 else None


def self_report_suds(text: str) -> int | None:
    """The SUDS rating (0-100) a patient utterance states, or ``None`` when it states none.

    Recognised, in this order of preference: a number after the word SUDS ("my SUDS is 70",
    "SUDS: 70", "SUDS went from 40 to 70" → 70); a rating out of 100 ("70/100", "70 out of 100");
    a hedged bare rating ("about 65", "I'd say a 65 right now", "maybe 60-70" → 65). Spelled-out
    numbers ("seventy-five") count. A range gives its midpoint; a number above 100 is no rating.
    Bare numbers followed by a word ("about 5 minutes") or a percent sign are not ratings.
    """
    normalised = _words_to_digits(text)
    if _DIGIT.search(normalised) is None:  # every rating pattern needs one; most lines have none
        return None
    for match in _AFTER_KEYWORD.finditer(normalised):
        latest = re.search(r"\bfrom\s*$", match.group("gap"), re.IGNORECASE) is not None
        value = _value(match, latest=latest)
        if value is not None:
            return value
    for pattern in (_OUT_OF_100, _HEDGED):
        for match in pattern.finditer(normalised):
            value = _value(match)
            if value is not None:
                return value
    return None
