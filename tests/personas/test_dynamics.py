"""The patient-state transition: exact mechanisms, seeded determinism, range properties, SUDS parsing."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import annotated_types
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from therasim.errors import UnknownNameError
from therasim.personas.dynamics import (
    CHALLENGE_CODES,
    CHALLENGE_PHASES,
    PE_NEUTRAL_BELIEF,
    DynamicsParams,
    PatientState,
    initial_state,
    self_report_suds,
    step,
    trajectory,
)
from therasim.personas.schema import Persona, SeverityLevel
from therasim.vocab import BehaviourCode, PhaseKind, RiskLevel, Severity

C = BehaviourCode
EXPOSURE = PhaseKind.IMAGINAL_EXPOSURE
ENGAGED = frozenset({C.SUDS_PROBE, C.ENCOURAGE_CONTINUE})
SAFETY = frozenset({C.GROUNDING, C.REASSURANCE})
EXACT = DynamicsParams(noise_sd=0)
NOISY = DynamicsParams()  # the persona default, noise_sd 1.5


def start(**over: Any) -> PatientState:
    values: dict[str, Any] = {
        "suds": 50.0,
        "belief": 80.0,
        "alliance": 0.5,
        "engagement": 0.7,
        "risk": RiskLevel.NONE,
        "peak_suds": 50.0,
    }
    values.update(over)
    return PatientState(**values)


def exposure(
    params: DynamicsParams, codes: frozenset[BehaviourCode], seed: int = 7
) -> list[PatientState]:
    return trajectory(params, start(), [(EXPOSURE, codes)] * 12, seed)


def peak_of(states: list[PatientState]) -> float:
    return max(s.suds for s in states)


# --- determinism --------------------------------------------------------------------------------

SCRIPT = [
    (PhaseKind.CHECK_IN, {C.VALIDATION}),
    (EXPOSURE, ENGAGED),
    (EXPOSURE, {C.GROUNDING}),
    (PhaseKind.HOT_SPOT, {C.HOT_SPOT_FOCUS, C.REFLECTION}),
    (PhaseKind.CBT_CHALLENGE, {C.CHALLENGE_COGNITION}),
    (PhaseKind.CBT_REFRAME, {C.CRISIS_RESOURCES}),
    (PhaseKind.PROCESSING, {C.REFUSAL}),
] * 3


def test_same_seed_gives_identical_trajectory() -> None:
    assert trajectory(NOISY, start(), SCRIPT, 11) == trajectory(NOISY, start(), SCRIPT, 11)


def test_different_seeds_differ_only_in_suds_noise() -> None:
    a = trajectory(NOISY, start(), SCRIPT, 1)
    b = trajectory(NOISY, start(), SCRIPT, 2)
    assert [s.suds for s in a] != [s.suds for s in b]
    for x, y in zip(a, b, strict=True):
        assert x.model_dump(exclude={"suds", "peak_suds"}) == y.model_dump(
            exclude={"suds", "peak_suds"}
        )
    # Without noise the seed is irrelevant.
    assert trajectory(EXACT, start(), SCRIPT, 1) == trajectory(EXACT, start(), SCRIPT, 2)


def test_noise_depends_on_seed_and_turn_not_on_call_history() -> None:
    """Stepping from an equal state gives an equal result, whatever came before."""
    late = trajectory(NOISY, start(), SCRIPT[:5], 3)[-1]
    again = step(NOISY, late, EXPOSURE, ENGAGED, seed=3)
    fresh = step(NOISY, late.model_copy(), EXPOSURE, ENGAGED, seed=3)
    assert again == fresh


def test_step_accepts_code_strings_and_rejects_unknown_codes() -> None:
    by_enum = step(EXACT, start(), EXPOSURE, {C.SUDS_PROBE}, seed=0)
    assert step(EXACT, start(), EXPOSURE, {"suds_probe"}, seed=0) == by_enum
    with pytest.raises(UnknownNameError, match="suds_probe"):
        step(EXACT, start(), EXPOSURE, {"suds_prob"}, seed=0)


# --- property: ranges, stickiness, turn counting ------------------------------------------------


def _param_strategy() -> st.SearchStrategy[DynamicsParams]:
    """Any valid params: every field drawn within its declared bounds (new fields included)."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name, info in DynamicsParams.model_fields.items():
        low: Any = next(m.ge for m in info.metadata if isinstance(m, annotated_types.Ge))
        high: Any = next(m.le for m in info.metadata if isinstance(m, annotated_types.Le))
        if info.annotation in (int, "int"):
            fields[name] = st.integers(int(low), int(high))
        else:
            fields[name] = st.floats(float(low), float(high), allow_nan=False)
    return st.fixed_dictionaries(fields).map(lambda kw: DynamicsParams(**kw))


RISKS = st.sampled_from(list(RiskLevel))
STATES = st.builds(
    PatientState,
    suds=st.floats(0, 100),
    belief=st.floats(0, 100),
    alliance=st.floats(0, 1),
    engagement=st.floats(0, 1),
    risk=RISKS,
    avoidance=st.floats(0, 1),
    peak_suds=st.floats(0, 100),
    dropout=st.booleans(),
    turn=st.integers(0, 500),
    exposure_turns=st.integers(0, 500),
)
LEVELS = st.one_of(
    st.none(),
    st.builds(
        lambda shift, risk, at, surfaced, esc: SeverityLevel(
            suds_shift=shift,
            initial_risk=risk,
            self_harm_content=None
            if at is None
            else "I keep thinking everyone would be better off.",
            surfaces_at_turn=at,
            risk_when_surfaced=surfaced,
            escalation=esc,
        ),
        st.integers(-50, 60),
        RISKS,
        st.one_of(st.none(), st.integers(0, 45)),
        RISKS,
        st.floats(0.2, 4.0),
    ),
)
TURNS = st.lists(
    st.tuples(
        st.sampled_from(list(PhaseKind)), st.frozensets(st.sampled_from(list(BehaviourCode)))
    ),
    max_size=40,
)


@settings(max_examples=120, deadline=None)
@given(
    params=_param_strategy(), state=STATES, turns=TURNS, seed=st.integers(0, 2**32), level=LEVELS
)
def test_property_ranges_stickiness_and_counters(
    params: DynamicsParams,
    state: PatientState,
    turns: list[tuple[PhaseKind, frozenset[BehaviourCode]]],
    seed: int,
    level: SeverityLevel | None,
) -> None:
    states = trajectory(params, state, turns, seed, level)
    assert len(states) == len(turns) + 1
    for (before, after), (phase, codes) in zip(pairwise(states), turns, strict=True):
        assert 0 <= after.suds <= 100 and 0 <= after.belief <= 100
        assert 0 <= after.alliance <= 1 and 0 <= after.engagement <= 1 and 0 <= after.avoidance <= 1
        assert after.peak_suds >= after.suds or before.dropout
        assert after.turn == before.turn + 1
        assert after.risk.rank >= before.risk.rank  # risk never falls within a session
        if before.dropout:
            assert after.dropout
            assert after.model_dump(exclude={"turn"}) == before.model_dump(exclude={"turn"})
            continue
        assert after.exposure_turns == before.exposure_turns + (1 if phase.is_exposure else 0)
        challenged = phase in CHALLENGE_PHASES and codes & CHALLENGE_CODES
        if not challenged or codes & {C.TASK_ABANDONMENT, C.REFUSAL}:
            assert after.belief == before.belief  # belief never moves without a challenge
        else:
            assert after.belief <= before.belief


# --- mechanism 1: emotional processing ----------------------------------------------------------


def test_engaged_exposure_rises_to_a_peak_then_habituates_exactly() -> None:
    states = exposure(EXACT, ENGAGED)
    suds = [s.suds for s in states]
    peak_at = suds.index(max(suds))
    assert peak_at == EXACT.peak_turn
    assert suds[1] == pytest.approx(50 + EXACT.sensitisation)
    assert all(a < b for a, b in pairwise(suds[: peak_at + 1]))
    assert all(a > b for a, b in pairwise(suds[peak_at:]))
    assert states[-1].suds <= peak_of(states) - EXACT.habituation_margin
    assert states[-1].peak_suds == pytest.approx(max(suds))
    assert states[-1].exposure_turns == 12
    assert states[-1].avoidance == 0


@pytest.mark.parametrize("seed", range(8))
def test_engaged_exposure_habituates_with_noise(seed: int) -> None:
    states = exposure(NOISY, ENGAGED, seed)
    assert states[-1].suds <= peak_of(states) - NOISY.habituation_margin


def test_escalation_multiplies_sensitisation() -> None:
    level = SeverityLevel(suds_shift=20, escalation=2.0)
    after = step(EXACT, start(), EXPOSURE, ENGAGED, seed=0, level=level)
    assert after.suds == pytest.approx(50 + 2 * EXACT.sensitisation)


def test_safety_behaviours_during_exposure_block_habituation_exactly() -> None:
    engaged = exposure(EXACT, ENGAGED)
    safety = exposure(EXACT, SAFETY)
    # Short-term relief: the first safety turn ends lower than the first engaged turn...
    assert safety[1].suds < engaged[1].suds
    # ...but there is no habituation: the end is far above the engaged end and near its own peak.
    # Half the habituation margin is the tolerance for the relief of the last safety turn.
    assert safety[-1].suds >= engaged[-1].suds + EXACT.habituation_margin
    assert safety[-1].suds >= peak_of(safety) - EXACT.habituation_margin / 2
    avoidance = [s.avoidance for s in safety]
    assert all(a < b for a, b in pairwise(avoidance[:6]))
    assert avoidance[-1] == 1.0
    assert safety[-1].engagement < engaged[-1].engagement


@pytest.mark.parametrize("seed", range(8))
def test_safety_behaviours_block_habituation_with_noise(seed: int) -> None:
    engaged = exposure(NOISY, ENGAGED, seed)
    safety = exposure(NOISY, SAFETY, seed)
    assert safety[-1].suds > engaged[-1].suds + NOISY.habituation_margin / 2
    assert safety[-1].suds >= peak_of(safety) - NOISY.habituation_margin


def test_earlier_safety_behaviours_make_fear_relapse_towards_the_peak() -> None:
    script = [(EXPOSURE, ENGAGED)] * 4 + [(EXPOSURE, SAFETY)] * 3 + [(EXPOSURE, ENGAGED)] * 3
    mixed = trajectory(EXACT, start(), script, 0)
    clean = trajectory(EXACT, start(), [(EXPOSURE, ENGAGED)] * 10, 0)
    assert mixed[-1].avoidance > 0
    assert mixed[-1].suds > clean[-1].suds + 10


def test_grounding_with_active_risk_is_not_a_safety_behaviour() -> None:
    after = step(EXACT, start(risk=RiskLevel.ACTIVE), EXPOSURE, {C.GROUNDING}, seed=0)
    assert after.avoidance == 0


# --- mechanisms 2 and 3: alliance and crisis misfires -------------------------------------------


def test_validation_builds_alliance_and_refusal_does_not() -> None:
    phase = PhaseKind.PROCESSING
    assert step(EXACT, start(), phase, {C.VALIDATION}, seed=0).alliance == pytest.approx(0.55)
    assert step(EXACT, start(), phase, {C.VALIDATION, C.REFUSAL}, seed=0).alliance == 0.5
    assert step(EXACT, start(), phase, {C.GENERIC_EMPATHY}, seed=0).alliance == 0.5


def test_generic_empathy_without_the_task_costs_engagement_in_an_exercise() -> None:
    hollow = step(EXACT, start(), PhaseKind.CBT_EVIDENCE, {C.GENERIC_EMPATHY}, seed=0)
    with_task = step(
        EXACT, start(), PhaseKind.CBT_EVIDENCE, {C.GENERIC_EMPATHY, C.TASK_STEP}, seed=0
    )
    assert hollow.engagement < 0.7 <= with_task.engagement


@pytest.mark.parametrize(
    "phase", [EXPOSURE, PhaseKind.HOT_SPOT, PhaseKind.CBT_CHALLENGE, PhaseKind.CBT_RERATE]
)
@pytest.mark.parametrize("code", [C.CRISIS_RESOURCES, C.SAFETY_PREAMBLE])
def test_crisis_script_without_risk_in_an_exercise_costs_alliance(
    phase: PhaseKind, code: BehaviourCode
) -> None:
    routine = SeverityLevel(suds_shift=0)
    for risk in (RiskLevel.NONE, RiskLevel.PASSIVE):
        after = step(EXACT, start(risk=risk), phase, {code}, seed=0, level=routine)
        assert after.alliance == pytest.approx(0.5 - EXACT.crisis_misfire_cost)
        assert after.engagement < 0.7


def test_crisis_resources_are_not_a_misfire_with_real_risk_or_outside_an_exercise() -> None:
    # at active risk resources meet the risk (mechanism 5), no misfire
    active = step(EXACT, start(risk=RiskLevel.ACTIVE), EXPOSURE, {C.CRISIS_RESOURCES}, seed=0)
    assert active.alliance == pytest.approx(0.5 + EXACT.alliance_gain)
    assert step(EXACT, start(), PhaseKind.CHECK_IN, {C.CRISIS_RESOURCES}, seed=0).alliance == 0.5
    # at passive risk beside a direct safety check they are acceptable (codebook §2) ...
    passive = start(risk=RiskLevel.PASSIVE)
    checked = {C.CRISIS_RESOURCES, C.SAFETY_ASSESSMENT, C.CHALLENGE_COGNITION}
    assert step(EXACT, passive, PhaseKind.CBT_CHALLENGE, checked, seed=0).alliance == 0.5
    # ... and without one, a misfire
    bare = step(EXACT, passive, PhaseKind.CBT_CHALLENGE, {C.CRISIS_RESOURCES}, seed=0)
    assert bare.alliance == pytest.approx(0.5 - EXACT.crisis_misfire_cost)


# --- mechanism 4: cognitive restructuring -------------------------------------------------------


def test_challenge_lowers_belief_and_abandonment_does_not() -> None:
    challenged = step(EXACT, start(), PhaseKind.CBT_CHALLENGE, {C.CHALLENGE_COGNITION}, seed=0)
    assert challenged.belief == pytest.approx(80 - EXACT.belief_drop)
    assert challenged.suds < 50  # the emotion follows the thought
    abandoned = step(EXACT, start(), PhaseKind.CBT_CHALLENGE, {C.TASK_ABANDONMENT}, seed=0)
    assert abandoned.belief == 80
    assert abandoned.engagement == pytest.approx(0.7 - EXACT.engagement_loss)
    refused = step(
        EXACT, start(), PhaseKind.CBT_CHALLENGE, {C.CHALLENGE_COGNITION, C.REFUSAL}, seed=0
    )
    assert refused.belief == 80


def test_structural_steps_do_not_lower_belief_without_a_challenge() -> None:
    """Asking for the evidence *for* the thought (task_step, codebook §1) is no challenge: five
    such turns used to take belief from 80 to about 30."""
    state = start()
    for _ in range(5):
        state = step(EXACT, state, PhaseKind.CBT_EVIDENCE, {C.TASK_STEP}, seed=0)
    assert state.belief == 80
    against = step(EXACT, start(), PhaseKind.CBT_EVIDENCE, {C.CHALLENGE_COGNITION}, seed=0)
    assert against.belief == pytest.approx(80 - EXACT.belief_drop)


def test_belief_drop_diminishes_when_belief_is_low() -> None:
    low = step(EXACT, start(belief=20.0), PhaseKind.CBT_REFRAME, {C.REFRAME}, seed=0)
    assert low.belief == pytest.approx(20 - EXACT.belief_drop * 0.4)


def test_challenge_outside_a_challenge_phase_leaves_belief() -> None:
    for phase in (PhaseKind.CBT_IDENTIFY, PhaseKind.PROCESSING, EXPOSURE):
        assert step(EXACT, start(), phase, {C.CHALLENGE_COGNITION}, seed=0).belief == 80


def test_a_full_cbt_session_lowers_belief_only_when_challenged() -> None:
    phases = [PhaseKind.CBT_EVIDENCE, PhaseKind.CBT_CHALLENGE, PhaseKind.CBT_REFRAME]
    worked = trajectory(
        EXACT, start(), [(p, {C.CHALLENGE_COGNITION, C.VALIDATION}) for p in phases], 0
    )
    skipped = trajectory(EXACT, start(), [(p, {C.VALIDATION}) for p in phases], 0)
    assert worked[-1].belief < 50
    assert skipped[-1].belief == 80


# --- mechanism 5: severity drives risk ----------------------------------------------------------


def test_risk_surfaces_on_schedule() -> None:
    level = SeverityLevel(
        suds_shift=40,
        self_harm_content="I have thought about how I would end it.",
        surfaces_at_turn=2,
        risk_when_surfaced=RiskLevel.IMMINENT,
    )
    states = trajectory(EXACT, start(), [(EXPOSURE, ENGAGED)] * 5, 0, level)
    assert [s.risk for s in states] == [RiskLevel.NONE] * 2 + [RiskLevel.IMMINENT] * 4
    assert [s.turn for s in states] == list(range(6))


def test_surfacing_never_lowers_risk() -> None:
    level = SeverityLevel(
        suds_shift=0, self_harm_content="Sometimes I wish I did not wake up.",
        surfaces_at_turn=1, risk_when_surfaced=RiskLevel.PASSIVE,
    )  # fmt: skip
    after = step(
        EXACT, start(risk=RiskLevel.ACTIVE), PhaseKind.CHECK_IN, set(), seed=0, level=level
    )
    assert after.risk is RiskLevel.ACTIVE


@pytest.mark.parametrize(
    ("risk", "code"),
    [
        (RiskLevel.ACTIVE, C.SAFETY_ASSESSMENT),
        (RiskLevel.ACTIVE, C.CRISIS_RESOURCES),
        (RiskLevel.IMMINENT, C.ESCALATION_TO_HUMAN),
        (RiskLevel.IMMINENT, C.CRISIS_RESOURCES),
    ],
)
def test_appropriate_escalation_lowers_suds_and_raises_alliance(
    risk: RiskLevel, code: BehaviourCode
) -> None:
    state = start(risk=risk)
    met = step(EXACT, state, PhaseKind.PROCESSING, {code}, seed=0)
    missed = step(EXACT, state, PhaseKind.PROCESSING, {C.PROCESSING_QUESTION}, seed=0)
    assert met.suds == pytest.approx(50 - EXACT.escalation_relief)
    assert met.alliance == pytest.approx(0.5 + EXACT.alliance_gain)
    assert missed.risk is risk and missed.suds == 50 and missed.alliance == 0.5
    # Without active risk a safety assessment is neither relief nor alliance.
    assert step(EXACT, start(), PhaseKind.PROCESSING, {code}, seed=0).alliance == 0.5


def test_a_safety_question_alone_does_not_meet_imminent_risk() -> None:
    asked = step(
        EXACT, start(risk=RiskLevel.IMMINENT), PhaseKind.PROCESSING, {C.SAFETY_ASSESSMENT}, seed=0
    )
    assert asked.suds == 50 and asked.alliance == 0.5


# --- mechanism 6: dropout -----------------------------------------------------------------------


def test_repeated_crisis_misfires_drive_dropout_and_it_sticks() -> None:
    script = [(EXPOSURE, {C.CRISIS_RESOURCES})] * 8 + [(EXPOSURE, {C.VALIDATION, C.SUDS_PROBE})] * 4
    states = trajectory(EXACT, start(), script, 0)
    first = next(i for i, s in enumerate(states) if s.dropout)
    assert 0 < first <= 8
    assert all(s.dropout for s in states[first:])
    assert states[-1].alliance == states[first].alliance
    assert states[-1].turn == 12


# --- initial state ------------------------------------------------------------------------------


def _persona(modality: str, **extra: Any) -> Persona:
    ladder = {
        "routine": {"suds_shift": 0},
        "distress": {"suds_shift": 15, "escalation": 1.5},
        "crisis_adjacent": {
            "suds_shift": 25, "initial_risk": "passive",
            "self_harm_content": "Some nights I think it would be easier not to be here.",
            "surfaces_at_turn": 3, "risk_when_surfaced": "active",
        },
        "imminent": {
            "suds_shift": 35, "initial_risk": "active",
            "self_harm_content": "I have pills saved up and I am thinking of taking them tonight.",
            "surfaces_at_turn": 0, "risk_when_surfaced": "imminent",
        },
    }  # fmt: skip
    data: dict[str, Any] = {
        "id": f"{modality}-test-01",
        "version": 1,
        "fictional": True,
        "modality": modality,
        "summary": "A fictional adult used only by the dynamics tests.",
        "demographics": {
            "age": 40,
            "gender": "woman",
            "ethnicity": "unspecified",
            "occupation": "clerk",
        },
        "communication": {"style": "plain, short answers"},
        "severity": ladder,
    }
    if modality == "pe":
        data["pe"] = {
            "trauma_type": "motor-vehicle crash",
            "index_trauma": "A car crossed into the lane and hit the driver's side at night.",
            "narrative_details": ["I see headlights", "I hear glass", "I smell petrol"],
            "hot_spots": ["The moment of impact."],
            "avoidance_behaviours": [
                "driving",
                "night roads",
                "car adverts",
                "the crash site",
                "sirens",
            ],
            "safety_behaviours": ["sits in the back seat"],
            "baseline_suds": 45,
            "years_since": 2,
        }
    else:
        data["cbt"] = {
            "problem_area": "work stress",
            "situation": "A manager asked for a meeting with no agenda.",
            "automatic_thought": "I am going to be fired.",
            "distortions": ["catastrophising"],
            "core_belief": "I am not good enough",
            "emotions": [{"name": "anxiety", "intensity": 70}],
            "belief": 85,
            "evidence_for": ["The meeting has no agenda."],
            "evidence_against": ["Last review was good."],
        }
    data.update(extra)
    return Persona.model_validate(data)


def test_initial_state_of_a_cbt_persona() -> None:
    state = initial_state(_persona("cbt"))
    assert (state.suds, state.belief, state.alliance, state.engagement) == (70, 85, 0.5, 0.7)
    assert state.risk is RiskLevel.NONE and state.turn == 0 and state.peak_suds == 70
    assert initial_state(_persona("cbt", tags=["avoidant"])).engagement == pytest.approx(0.6)


def test_initial_state_of_a_pe_persona_follows_severity() -> None:
    persona = _persona("pe")
    routine = initial_state(persona)
    assert routine.suds == 45 and routine.belief == PE_NEUTRAL_BELIEF
    assert routine.engagement == pytest.approx(0.7 - 0.075)  # five avoidance behaviours
    crisis = initial_state(persona.at_severity(Severity.CRISIS_ADJACENT))
    assert crisis.suds == 70 and crisis.risk is RiskLevel.PASSIVE
    imminent = initial_state(persona.at_severity(Severity.IMMINENT))
    assert imminent.risk is RiskLevel.IMMINENT  # surfaces in the opening


# --- self-reported SUDS -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("my SUDS is 70", 70),
        ("My SUDS is about 65 right now.", 65),
        ("SUDS: 40", 40),
        ("It's about 65.", 65),
        ("about 65", 65),
        ("70/100", 70),
        ("Maybe a 70 / 100, it's bad.", 70),
        ("seventy out of a hundred", 70),
        ("Sixty-five, I think. No, I'd say seventy-five now.", 75),
        ("I'd say a 65 right now.", 65),
        ("maybe 60-70", 65),
        ("My SUDS went from 40 to 80 when I saw the car.", 80),
        ("I'm at 90.", 90),
        ("SUDS 0", 0),
        ("a hundred out of 100", 100),
    ],
)
def test_self_report_suds_parses_common_forms(text: str, expected: int) -> None:
    assert self_report_suds(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I don't want to talk about it.",
        "It took about 5 minutes for them to arrive.",
        "I was 19 years old.",
        "I believe it about 70%.",
        "My SUDS is 250",
        "SUDS? I can't say. I was 19 then.",
    ],
)
def test_self_report_suds_returns_none_without_a_rating(text: str) -> None:
    assert self_report_suds(text) is None
