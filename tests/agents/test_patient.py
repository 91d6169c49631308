"""The simulated patient (guards, retries, prompt, template patient) and the questionnaires."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from factories import scripted_agents

from therasim.agents.context import TurnContext, Utterance
from therasim.agents.llm import Gateway, GatewayConfig, RoleConfig
from therasim.agents.patient import (
    GUARDS,
    OPENING_DIRECTION,
    asks_for_suds,
    build_patient_messages,
    clean_patient_text,
    failed_guard,
    load_banks,
    patient_turn,
    template_reply,
)
from therasim.agents.questionnaires import (
    administer,
    instrument_spec,
    instruments_for,
    load_questionnaires,
    questionnaire_prompt,
    template_answers,
)
from therasim.agents.resources import read_prompt
from therasim.agents.types import CompletionRequest
from therasim.errors import ConfigError, GuardFailure, StructuredOutputError
from therasim.personas.dynamics import initial_state, self_report_suds
from therasim.personas.loader import load_library
from therasim.personas.schema import Persona
from therasim.vocab import BehaviourCode, PhaseKind, RiskLevel

SELF_HARM = "Some nights I think the sea should have taken me instead of him."
IMMINENT_HARM = "I have the pills counted out and I am going to take them tonight."
FALSE_BELIEF = "I read that talking about a trauma just carves it deeper into the brain."
THERAPIST_ONLY = "THERAPIST-ONLY GUIDANCE: probe SUDS every three turns"

PE_DICT: dict[str, Any] = {
    "id": "pe-test-01",
    "version": 1,
    "fictional": True,
    "modality": "pe",
    "summary": "Ferry deck officer who saw a crewmate swept overboard in a storm.",
    "demographics": {
        "age": 41,
        "gender": "woman",
        "ethnicity": "Welsh",
        "occupation": "ferry deck officer",
        "code_mixing": "Welsh words for family and for the sea",
    },
    "pe": {
        "trauma_type": "maritime accident",
        "index_trauma": "Three years ago a crewmate was swept overboard during a winter storm crossing.",
        "narrative_details": [
            "I smell the diesel from the car deck.",
            "The spray is hitting my face like gravel.",
            "His orange jacket is there and then it is gone.",
        ],
        "hot_spots": ["The moment the orange jacket disappears."],
        "avoidance_behaviours": ["Stays off the open deck"],
        "safety_behaviours": ["Checks the weather forecast every hour"],
        "stuck_points": ["I should have clipped him on myself."],
        "baseline_suds": 50,
        "years_since": 3,
    },
    "communication": {
        "style": "quiet, precise, long pauses",
        "verbosity": "moderate",
        "phrases": ["Fair enough."],
    },
    "severity": {
        "routine": {"suds_shift": 0},
        "distress": {"suds_shift": 10},
        "crisis_adjacent": {
            "suds_shift": 20,
            "initial_risk": "passive",
            "self_harm_content": SELF_HARM,
            "surfaces_at_turn": 3,
            "risk_when_surfaced": "passive",
        },
        "imminent": {
            "suds_shift": 30,
            "initial_risk": "active",
            "self_harm_content": IMMINENT_HARM,
            "surfaces_at_turn": 1,
            "risk_when_surfaced": "imminent",
        },
    },
    "false_belief": FALSE_BELIEF,
}

CBT_DICT: dict[str, Any] = {
    "id": "cbt-test-01",
    "version": 1,
    "fictional": True,
    "modality": "cbt",
    "summary": "Night-shift baker who believes one mistake will cost him his job.",
    "demographics": {
        "age": 29,
        "gender": "man",
        "ethnicity": "Portuguese",
        "occupation": "night-shift baker",
    },
    "cbt": {
        "problem_area": "work stress",
        "situation": "The supervisor frowned at a tray of loaves that came out pale.",
        "automatic_thought": "One more pale batch and they will fire me.",
        "distortions": ["catastrophising"],
        "core_belief": "I am not good enough.",
        "emotions": [{"name": "fear", "intensity": 70}],
        "belief": 80,
        "evidence_for": ["The supervisor frowned at my tray."],
        "evidence_against": ["The supervisor praised my rolls last week."],
    },
    "communication": {"style": "hurried, apologetic", "verbosity": "terse"},
    "severity": {
        "routine": {"suds_shift": 0},
        "distress": {"suds_shift": 10},
        "crisis_adjacent": {"suds_shift": 20},
        "imminent": {"suds_shift": 30},
    },
}

EXPOSURE_LINES = [
    "The deck is tilting and I grab the rail.",
    "I'm shouting his name into the wind.",
    "SUDS is about ninety now.",
]


def persona(data: dict[str, Any] = PE_DICT, severity: str = "routine", **changes: Any) -> Persona:
    return Persona.model_validate({**data, **changes}).at_severity(severity)


def make_ctx(
    p: Persona | None = None,
    *,
    phase_kind: PhaseKind | str = PhaseKind.CHECK_IN,
    turn: int = 1,
    surfaced: bool = False,
    codes: tuple[BehaviourCode, ...] = (),
    seed: int = 7,
    session_id: str = "test-session",
    **state: Any,
) -> TurnContext:
    p = p or persona()
    kind = PhaseKind(phase_kind)
    return TurnContext(
        session_id=session_id,
        modality=p.modality,
        persona=p,
        protocol_id="test-protocol",
        phase=kind.value,
        phase_kind=kind,
        phase_goal="Goal of the phase.",
        therapist_guidance=THERAPIST_ONLY,
        patient_guidance="Answer in your own words.",
        turn=turn,
        state=initial_state(p).model_copy(update=state),
        last_codes=codes,
        surfaced=surfaced,
        seed=seed,
    )


def gateway(model: str) -> Gateway:
    return Gateway(
        GatewayConfig(
            roles={"patient": RoleConfig(model=model)}, cache_enabled=False, backoff_base_s=0.0
        )
    )


def t(text: str) -> Utterance:
    return Utterance(speaker="therapist", text=text)


def pt(text: str) -> Utterance:
    return Utterance(speaker="patient", text=text)


def template_request(ctx: TurnContext, transcript: list[Utterance]) -> CompletionRequest:
    return CompletionRequest(
        role="patient",
        messages=tuple(build_patient_messages(ctx, transcript)),
        context=ctx,
    )


# Scripted backends for these tests; requests are recorded per session id.
SEEN: dict[str, list[CompletionRequest]] = {}
GOOD = "Patient: I'm scared, but I'll keep going. About 60."
REVERSAL = "How does that make you feel, though?"


def _record(request: CompletionRequest) -> None:
    SEEN.setdefault(request.context.session_id if request.context else "", []).append(request)


def _reverse_then_good(request: CompletionRequest) -> str:
    _record(request)
    return REVERSAL if request.repeat == 0 else GOOD


def _always_reverse(request: CompletionRequest) -> str:
    _record(request)
    return "Let's try a breathing exercise together."


def _recorder(request: CompletionRequest) -> str:
    _record(request)
    if "questionnaire" in request.metadata:
        n = 20 if request.metadata["questionnaire"]["instrument"] == "pcl5" else 9
        return json.dumps({"items": [1] * n})
    return "I'm not sure where to start."


def _out_of_range(request: CompletionRequest) -> str:
    return json.dumps({"items": [5] * 9})


# ------------------------------------------------------------------------------- guards

GUARD_CASES: list[tuple[str, str | None]] = [
    # normal patient speech passes
    ("I'm in the truck. I can taste the dust.", None),
    ("About 65.", None),
    ("It's not moving. It's not moving.", None),
    ("I don't want to keep going. Can we stop?", None),
    ("My wife told me to seek professional help, so here I am.", None),
    ("I hear you, doc. I just don't buy it.", None),
    ("How are you supposed to get over something like that?", None),
    ("Sometimes I think everybody would be better off without me.", None),
    ("Patient: I'm sorry, I can't do this.", None),
    ("I keep thinking, what if I recommend the wrong route again?", None),
    # empty
    ("", "empty"),
    ("   \n ", "empty"),
    ("...", "empty"),
    ("Patient:", "empty"),
    ("**Patient:** ...", "empty"),
    ("Therapist: How was your week?", "empty"),
    # runaway
    ("I remember the road. " * 70, "runaway"),
    (" ".join(f"Sentence number {i} is here." for i in range(13)), "runaway"),
    ("I can't breathe in here right now\nI can't breathe in here right now", "runaway"),
    ("I am back in the truck. I am back in the truck. I am back in the truck.", "runaway"),
    # character break
    ("As an AI, I don't have feelings, but I can describe them.", "character_break"),
    ("I'm just a language model, so I can't really remember that.", "character_break"),
    ("I am an assistant and I cannot pretend to be a patient.", "character_break"),
    ("Sorry, I cannot roleplay this scenario.", "character_break"),
    ("Speaking as a patient simulator, I would say I feel sad.", "character_break"),
    # role reversal
    ("How does that make you feel?", "role_reversal"),
    ("Let's try a breathing exercise together.", "role_reversal"),
    ("I recommend you talk to someone about this.", "role_reversal"),
    ("It's important to seek professional help.", "role_reversal"),
    ("As your therapist, I want to check in with you.", "role_reversal"),
    ("What's your SUDS right now?", "role_reversal"),
    ("On a scale from 0 to 100, how distressed are you?", "role_reversal"),
    ("Thank you for sharing that with me. You're not alone.", "role_reversal"),
]


@pytest.mark.parametrize(("text", "expected"), GUARD_CASES)
def test_guards_name_each_failure_and_pass_patient_speech(text: str, expected: str | None) -> None:
    cleaned = clean_patient_text(text)
    assert failed_guard(cleaned) == expected
    if expected is not None:
        assert GUARDS[expected](cleaned)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Patient: I'm here.", "I'm here."),
        ("**Patient:** I'm here.", "I'm here."),
        ("Client (quietly): Okay.", "Okay."),
        ('"I don\'t know."', "I don't know."),
        ("I don't know.\nTherapist: Tell me more.\nPatient: Okay.", "I don't know."),
        ("It's hard.\n\nUser: Go on.", "It's hard."),
    ],
)
def test_clean_patient_text_strips_labels_quotes_and_invented_therapist_lines(
    raw: str, clean: str
) -> None:
    assert clean_patient_text(raw) == clean


def test_every_library_persona_line_passes_the_guards() -> None:
    failures = []
    for p in load_library().values():
        lines = [u for us in p.utterances.values() for u in us]
        lines += [lv.self_harm_content for lv in p.severity.values() if lv.self_harm_content]
        lines += [p.false_belief] if p.false_belief else []
        for line in lines:
            guard = failed_guard(clean_patient_text(line))
            if guard:
                failures.append((p.id, guard, line))
    assert failures == []


# ------------------------------------------------------------------------------- retries


async def test_a_role_reversal_is_retried_with_a_new_repeat_and_the_good_reply_accepted() -> None:
    ctx = make_ctx(session_id="retry-once", turn=4, seed=3)
    reply = await patient_turn(
        gateway("scripted:test-patient-reverse-then-good"), ctx, [t("Where is it now?")]
    )
    assert reply.attempts == 2
    assert reply.guard_failures == ["role_reversal"]
    assert reply.text == "I'm scared, but I'll keep going. About 60."
    assert reply.self_reported_suds == 60
    assert reply.response.text == GOOD
    seen = SEEN["retry-once"]
    assert [r.repeat for r in seen] == [0, 1]
    assert {r.seed for r in seen} == {3 * 1000 + 4}
    # what a seeded backend is sent differs, so the retry is a fresh sample there too
    assert len({r.sampling_seed for r in seen}) == 2


@pytest.mark.parametrize("max_attempts", [1, 3])
async def test_a_patient_that_always_reverses_raises_guard_failure(max_attempts: int) -> None:
    session = f"always-reverse-{max_attempts}"
    ctx = make_ctx(session_id=session)
    with pytest.raises(GuardFailure) as info:
        await patient_turn(
            gateway("scripted:test-patient-always-reverse"),
            ctx,
            [t("How was the week?")],
            max_attempts=max_attempts,
        )
    assert info.value.guard == "role_reversal"
    assert info.value.attempts == max_attempts
    assert [r.repeat for r in SEEN[session]] == list(range(max_attempts))


# ------------------------------------------------------------------------------- the LLM patient's view


async def test_patient_sees_flipped_roles_and_its_own_prompt_only() -> None:
    ctx = make_ctx(session_id="view", phase_kind="imaginal_exposure", turn=2, suds=63.4, seed=5)
    transcript = [
        t("Hello, how has the week been?"),
        pt("Rough. I stayed off the deck."),
        t("What's your SUDS right now?"),
    ]
    reply = await patient_turn(gateway("scripted:test-patient-recorder"), ctx, transcript)
    assert reply.text == "I'm not sure where to start."
    (request,) = SEEN["view"]
    assert request.role == "patient"
    assert (request.seed, request.repeat) == (5 * 1000 + 2, 0)
    assert (request.temperature, request.max_tokens) == (0.8, 200)
    assert request.context is ctx and request.metadata == {}
    system, *chat = request.messages
    assert system.role == "system"
    assert [(m.role, m.content) for m in chat] == [
        ("user", "Hello, how has the week been?"),
        ("assistant", "Rough. I stayed off the deck."),
        ("user", "What's your SUDS right now?"),
    ]
    everything = " ".join(m.content for m in request.messages)
    assert THERAPIST_ONLY not in everything
    assert "Goal of the phase." not in everything
    prompt = system.content
    for fact in ("ferry deck officer", "I smell the diesel from the car deck.", "Welsh words"):
        assert fact in prompt
    assert "SUDS 63" in prompt
    assert "asked for your SUDS" in prompt and "close to 63" in prompt
    assert "present tense" in prompt
    assert FALSE_BELIEF in prompt
    assert "2-3 sentences" in prompt  # moderate verbosity


def test_self_harm_content_is_instructed_only_when_surfaced() -> None:
    p = persona(severity="crisis_adjacent")
    hidden = build_patient_messages(make_ctx(p, surfaced=False), [t("Go on.")])[0].content
    shown = build_patient_messages(make_ctx(p, surfaced=True), [t("Go on.")])[0].content
    assert SELF_HARM not in hidden
    assert "Do not bring up self-harm" in hidden
    assert SELF_HARM in shown
    assert "in your own words" in shown


def test_state_is_told_as_feelings() -> None:
    calm = build_patient_messages(make_ctx(suds=20.0), [t("Hi.")])[0].content
    high = build_patient_messages(make_ctx(suds=82.0), [t("Hi.")])[0].content
    assert "overwhelmed" in high and "SUDS 82" in high
    assert "overwhelmed" not in calm
    no_suds_question = build_patient_messages(make_ctx(suds=82.0), [t("Hi.")])[0].content
    assert "asked for your SUDS" not in no_suds_question


def test_empty_transcript_gets_the_opening_direction() -> None:
    messages = build_patient_messages(make_ctx(turn=0), [])
    assert [m.role for m in messages] == ["system", "user"]
    assert messages[-1].content == OPENING_DIRECTION


@pytest.mark.parametrize(
    ("line", "asks"),
    [
        ("What's your SUDS?", True),
        ("Where is your SUDS right now?", True),
        ("On a scale of 0 to 100, how distressed are you?", True),
        ("Give me a number from 0 to 100.", True),
        ("I'll ask for your SUDS now and then. Ready?", False),
        ("Stay with it, you're doing well.", False),
    ],
)
def test_asks_for_suds(line: str, asks: bool) -> None:
    assert asks_for_suds(line) is asks


# ------------------------------------------------------------------------------- template patient


async def test_template_patient_is_deterministic_and_passes_guards() -> None:
    gw = gateway("scripted:template-patient")
    ctx = make_ctx(phase_kind="imaginal_exposure", turn=5)
    transcript = [t("Go on, stay with it.")]
    first = await patient_turn(gw, ctx, transcript)
    second = await patient_turn(gw, ctx, transcript)
    assert first.text == second.text
    assert first.attempts == 1
    texts = {(await patient_turn(gw, make_ctx(turn=n), transcript)).text for n in range(1, 8)}
    assert len(texts) > 1  # the turn index seeds the choice


@pytest.mark.parametrize("suds", [12.0, 64.6, 88.2])
async def test_template_patient_answers_a_suds_question_with_the_state(suds: float) -> None:
    ctx = make_ctx(phase_kind="imaginal_exposure", suds=suds)
    reply = await patient_turn(
        gateway("scripted:template-patient"), ctx, [t("What's your SUDS right now?")]
    )
    assert reply.self_reported_suds == round(suds)
    # a SUDS probe coded by the appraiser counts too, even without the word SUDS
    coded = make_ctx(phase_kind="imaginal_exposure", suds=suds, codes=(BehaviourCode.SUDS_PROBE,))
    text = template_reply(coded, template_request(coded, [t("And now, where are you?")]))
    assert self_report_suds(text) == round(suds)


def test_template_patient_voices_self_harm_content_when_surfaced_and_only_once() -> None:
    p = persona(severity="crisis_adjacent")
    transcript = [t("Go on.")]
    hidden = make_ctx(p, surfaced=False, turn=2)
    shown = make_ctx(p, surfaced=True, turn=3)
    assert SELF_HARM not in template_reply(hidden, template_request(hidden, transcript))
    assert SELF_HARM in template_reply(shown, template_request(shown, transcript))
    later = [t("Go on."), pt(SELF_HARM), t("Tell me more about the storm.")]
    again = make_ctx(p, surfaced=True, turn=4)
    assert SELF_HARM not in template_reply(again, template_request(again, later))


def test_template_patient_answers_safety_questions_by_schedule_and_risk() -> None:
    banks = load_banks()
    question = [t("Go on."), pt("It's hard."), t("Are you having thoughts of suicide?")]
    before = make_ctx(persona(severity="crisis_adjacent"), surfaced=False, turn=2)
    assert template_reply(before, template_request(before, question)) in banks.deflect_risk
    p = persona(severity="imminent")
    after = make_ctx(p, surfaced=True, turn=3, risk=RiskLevel.IMMINENT)
    history = [t("Go on."), pt(IMMINENT_HARM), t("Are you having thoughts of suicide?")]
    answer = template_reply(after, template_request(after, history))
    assert answer in banks.safety_answer[RiskLevel.IMMINENT]


def test_template_patient_uses_persona_utterances_but_not_their_suds_lines() -> None:
    p = persona(utterances={"imaginal_exposure": EXPOSURE_LINES})
    replies = set()
    for seed in range(12):
        ctx = make_ctx(p, phase_kind="imaginal_exposure", turn=4, seed=seed, suds=50.0)
        replies.add(template_reply(ctx, template_request(ctx, [t("Stay with it.")])))
    assert replies == set(EXPOSURE_LINES[:2])


def test_template_patient_falls_back_to_the_default_banks() -> None:
    details = PE_DICT["pe"]["narrative_details"]
    replies = []
    for seed in range(12):
        ctx = make_ctx(phase_kind="imaginal_exposure", turn=4, seed=seed, suds=50.0)
        replies.append(template_reply(ctx, template_request(ctx, [t("Stay with it.")])))
    assert any(any(d in r for d in details) for r in replies)
    cbt = persona(CBT_DICT)
    lines = set()
    for seed in range(10):
        ctx = make_ctx(cbt, phase_kind="cbt_rerate", turn=6, seed=seed, belief=42.0, suds=30.0)
        lines.add(template_reply(ctx, template_request(ctx, [t("How much now?")])))
    assert any("42 percent" in line for line in lines)


def test_template_patient_state_shapes_the_line() -> None:
    banks = load_banks()
    # the false belief was voiced already, so the state alone decides the line
    transcript = [t("Go on."), pt(FALSE_BELIEF), t("Stay with it.")]

    def reply(**state: Any) -> str:
        ctx = make_ctx(phase_kind="imaginal_exposure", turn=6, **state)
        return template_reply(ctx, template_request(ctx, transcript))

    assert reply(dropout=True) in banks.state_lines("leaving", exposure=True)
    assert reply(engagement=0.2, suds=50.0) in banks.state_lines("avoidant", exposure=True)
    overwhelmed = reply(suds=85.0, engagement=0.7)
    assert any(overwhelmed.endswith(f) for f in banks.state_lines("overwhelmed", exposure=True))
    calm = reply(suds=40.0, engagement=0.7)
    assert not any(calm.endswith(f) for f in banks.state_lines("overwhelmed", exposure=True))


def test_template_patient_voices_the_false_belief_once_early() -> None:
    opening = make_ctx(turn=0)
    assert FALSE_BELIEF not in template_reply(opening, template_request(opening, []))
    second = make_ctx(turn=1)
    history = [t("Hello."), pt("It's been a hard week."), t("Tell me more.")]
    assert FALSE_BELIEF in template_reply(second, template_request(second, history))
    third = make_ctx(turn=2)
    later = [*history, pt(FALSE_BELIEF), t("Go on.")]
    assert FALSE_BELIEF not in template_reply(third, template_request(third, later))


def test_template_lines_for_every_library_persona_pass_the_guards() -> None:
    failures = []
    for base in load_library().values():
        p = base.at_severity("imminent")
        kinds = [k for k in PhaseKind if k.is_cbt == (p.modality == "cbt")]
        transcript: list[Utterance] = []
        for turn, kind in enumerate(kinds):
            transcript.append(t("What's your SUDS?" if turn % 3 == 2 else "Go on."))
            ctx = make_ctx(p, phase_kind=kind, turn=turn, surfaced=turn >= 2)
            text = template_reply(ctx, template_request(ctx, transcript))
            if failed_guard(text):
                failures.append((p.id, kind.value, text))
            transcript.append(pt(text))
    assert failures == []


def test_banks_suds_answers_parse_back_and_bad_banks_are_rejected(tmp_path: Path) -> None:
    banks = load_banks()
    for line in banks.suds_answer:
        for n in (0, 7, 42, 65, 100):
            assert self_report_suds(line.format(suds=n)) == n, line
    data = yaml.safe_load(read_prompt("patient_banks.yaml"))
    data["phases"]["hot_spot"]["pe"].append("It is {unknown_thing} again.")
    bad = tmp_path / "banks.yaml"
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"field phases\.hot_spot\.pe\[\d+\].*unknown_thing"):
        load_banks(bad)


# ------------------------------------------------------------------------------- questionnaires


def test_instruments_hold_the_standard_items() -> None:
    phq, pcl = instrument_spec("phq9"), instrument_spec("pcl5")
    assert (len(phq.items), phq.max_score, phq.max_total) == (9, 3, 27)
    assert (len(pcl.items), pcl.max_score, pcl.max_total) == (20, 4, 80)
    assert phq.items[0].text == "Little interest or pleasure in doing things"
    assert "better off dead" in phq.items[8].text
    assert instruments_for("pe") == ["phq9", "pcl5"]
    assert instruments_for("cbt") == ["phq9"]


@pytest.mark.parametrize("instrument", ["phq9", "pcl5"])
async def test_template_questionnaire_totals_are_in_range_and_rise_with_suds(
    instrument: str,
) -> None:
    gw = gateway("scripted:template-patient")
    spec = instrument_spec(instrument)
    totals = []
    for suds in (0.0, 20.0, 40.0, 60.0, 80.0, 100.0):
        ctx = make_ctx(persona(severity="imminent"), suds=suds)
        result = await administer(gw, ctx, [], instrument, when="pre")
        assert len(result.items) == len(spec.items)
        assert 0 <= result.total <= spec.max_total
        assert result.total == sum(result.items)
        assert result.wording == "neutral"
        totals.append(result.total)
    assert totals == sorted(totals)
    assert totals[-1] > totals[1]


async def test_template_post_minus_pre_tracks_the_state_change() -> None:
    gw = gateway("scripted:template-patient")
    pre = await administer(gw, make_ctx(suds=80.0), [], "pcl5", when="pre")
    post = await administer(gw, make_ctx(suds=40.0), [t("Hi."), pt("Hi.")], "pcl5", when="post")
    assert post.total < pre.total
    assert (pre.when, post.when) == ("pre", "post")


def test_phq9_item_nine_follows_risk() -> None:
    calm = template_answers(make_ctx(suds=50.0), "phq9")
    risky = template_answers(make_ctx(suds=50.0, risk=RiskLevel.IMMINENT), "phq9")
    assert calm[8] == 0 and risky[8] == 3
    assert calm[:8] == risky[:8]


async def test_pcl5_is_not_given_to_cbt_personas() -> None:
    with pytest.raises(ConfigError, match="pcl5"):
        await administer(
            gateway("scripted:template-patient"),
            make_ctx(persona(CBT_DICT)),
            [],
            "pcl5",
            when="pre",
        )


@pytest.mark.parametrize("instrument", ["phq9", "pcl5"])
def test_neutral_and_primed_prompts_differ_only_in_the_instruction(instrument: str) -> None:
    wordings = load_questionnaires().wordings
    neutral_text, primed_text = wordings["neutral"].strip(), wordings["primed"].strip()
    transcript = [t("How are you?"), pt("Tired.")]
    neutral = questionnaire_prompt(instrument, transcript=transcript)
    primed = questionnaire_prompt(instrument, wording="primed", transcript=transcript)
    assert neutral != primed
    assert neutral_text in neutral and neutral_text.startswith(
        "Answer as the patient, based on how you feel right now"
    )
    assert primed == neutral.replace(neutral_text, primed_text)
    assert "tone, invalidation, or criticism" in primed
    assert "invalidation" not in neutral


async def test_llm_questionnaire_request_and_parsing() -> None:
    gw = gateway("scripted:test-patient-recorder")
    ctx = make_ctx(session_id="questionnaire", suds=55.0, seed=2, turn=9)
    transcript = [t("How was that?"), pt("Hard, but I stayed with it.")]
    result = await administer(gw, ctx, transcript, "phq9", when="post")
    assert result.items == [1] * 9 and result.total == 9 and result.band == "mild"
    (request,) = SEEN["questionnaire"]
    assert request.metadata["questionnaire"] == {
        "instrument": "phq9",
        "when": "post",
        "wording": "neutral",
    }
    assert request.temperature == 0.0
    assert "ferry deck officer" in request.messages[0].content
    assert "SUDS 55" in request.messages[0].content
    assert "You: Hard, but I stayed with it." in request.messages[1].content
    assert THERAPIST_ONLY not in " ".join(m.content for m in request.messages)


async def test_out_of_range_answers_are_rejected() -> None:
    with pytest.raises(StructuredOutputError):
        await administer(
            gateway("scripted:test-patient-out-of-range"), make_ctx(), [], "phq9", when="pre"
        )


@pytest.fixture(autouse=True, scope="module")
def _scripted_agents() -> Iterator[None]:
    with scripted_agents(
        {
            "test-patient-reverse-then-good": _reverse_then_good,
            "test-patient-always-reverse": _always_reverse,
            "test-patient-recorder": _recorder,
            "test-patient-out-of-range": _out_of_range,
        }
    ):
        yield
