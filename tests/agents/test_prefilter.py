"""The shortcuts of a turn give what the long way gives.

The lexicon's RE2 prefilter only skips codes that cannot match, so the lexical appraisal equals
searching every code's rules; the statistical coder's cue index equals searching every cue in
file order; the per-persona prompt texts and the cached prompts equal building them afresh.
"""

from __future__ import annotations

import random
import re
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from therasim.agents.appraiser import (
    Appraisal,
    Lexicon,
    lexical_appraisal,
)
from therasim.agents.appraiser_prompt import appraiser_system_prompt
from therasim.agents.context import TurnContext, Utterance
from therasim.agents.cuematch import Prefilter, loosen
from therasim.agents.gold import load_shipped_gold
from therasim.agents.patient import build_system_prompt, template_reply
from therasim.agents.patient import prompt as patient_prompt
from therasim.agents.patient.template import _persona_values
from therasim.agents.subject import therapist_system_prompt
from therasim.agents.types import CompletionRequest, Message
from therasim.personas import Persona, load_library
from therasim.personas.dynamics import initial_state
from therasim.vocab import BehaviourCode, PhaseKind, RiskLevel

KINDS: list[PhaseKind | None] = [None, *PhaseKind]


def long_way(text: str, kind: PhaseKind | None) -> Appraisal:
    """``lexical_appraisal`` searching every code's rules, as it did before the prefilter."""

    def every_rule(self: Lexicon, kind: PhaseKind | None, haystack: str) -> list[object]:
        return list(self.matchers(kind))

    with mock.patch.object(Lexicon, "candidates", every_rule):
        return lexical_appraisal(text, phase_kind=kind)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    gold = load_shipped_gold()
    lines = [t.therapist for t in gold] + [t.patient for t in gold if t.patient]
    rng = random.Random(7)
    words = " ".join(lines).split()
    salad = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) for _ in range(400)]
    return lines[::4] + salad + ["", "  ", "ER", "er", "Go to the ER now.", "A&E", "ſ K"]


def test_the_lexicon_prefilter_skips_only_codes_that_cannot_match(texts: list[str]) -> None:
    for kind in KINDS:
        for text in texts[:: 3 if kind else 1]:
            assert lexical_appraisal(text, phase_kind=kind) == long_way(text, kind), (kind, text)


#: pieces of replies around the lexicon's phrases, and characters that fold unusually
PIECES = [
    *[
        "you",
        "'re",
        "’re",
        "safe",
        "breath",
        "breathing",
        "0",
        "100",
        "how",
        "distressed",
        "stop",
        "here",
        "let's",
        "911",
        "988",
    ],
    *["ER", "er", "crisis", "line", "ground", "feet", "floor", "?", ".", "ß", "İ", "K", "notice"],
    " ",
    "\u00a0",
    "\n",
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=14).map("".join), st.sampled_from(KINDS))
def test_the_lexicon_prefilter_on_generated_text(text: str, kind: PhaseKind | None) -> None:
    assert lexical_appraisal(text, phase_kind=kind) == long_way(text, kind)


def test_a_long_text_skips_the_prefilter() -> None:
    prefilter = Prefilter([[re.compile("a")], [re.compile("b")]])
    assert prefilter.candidates("x") == []
    assert prefilter.candidates("x" * (Prefilter.MAX_TEXT + 1)) == [0, 1]
    text = "safe " * 5000 + "I'd like you to call 988 now."
    assert lexical_appraisal(text) == long_way(text, None)


def test_a_pattern_without_an_re2_form_is_always_a_candidate() -> None:
    backreference = re.compile(r"(\w)\1", re.IGNORECASE)
    prefilter = Prefilter([[re.compile("never")], [backreference]])
    assert prefilter.candidates("nothing here") == [1]


def test_a_case_sensitive_group_stays_case_sensitive() -> None:
    pattern = re.compile(r"\b(?:go to (?:the )?(?-i:ER))\b", re.IGNORECASE)
    assert "(?-i:" in loosen(pattern)
    prefilter = Prefilter([[pattern]])
    assert prefilter.candidates("go to the er, she said") == []
    assert prefilter.candidates("Go to the ER now") == [0]


def test_the_cue_index_equals_searching_every_cue(texts: list[str]) -> None:
    from therasim.agents.statcoder import _cue_spans, load_cues

    cues = load_cues()
    for text in texts:
        expected: dict[str, str] = {}
        for code, regexes in cues.items():
            for regex in regexes:
                match = regex.search(text)
                if match and match.end() > match.start():
                    expected[code] = match.group(0)
                    break
        found = _cue_spans(text)
        assert found == expected, text
        assert list(found) == list(expected)


GUARD_LINES = [
    "As an AI language model, I can't pretend to be a patient.",
    "I'm just an assistant, but how does that make you feel?",
    "Let’s try a slow breathing exercise together.",
    "I would recommend that you speak to a professional.",
    "What evidence do you have for that?",
    "Honestly I'm not sure. It was the smell of the smoke, I think.",
]


@pytest.mark.parametrize("name", ["character_break", "role_reversal"])
def test_the_gated_guards_equal_searching_with_re(texts: list[str], name: str) -> None:
    from therasim.agents.patient import guards

    gated = {
        "character_break": guards._CHARACTER_BREAK_RE,
        "role_reversal": guards._ROLE_REVERSAL_RE,
    }
    pattern = gated[name]
    hits = 0
    for text in [*texts, *GUARD_LINES]:
        plain = guards._straight(text)
        expected = pattern.pattern.search(plain)
        found = pattern.search(plain)
        assert (found and found.group(0)) == (expected and expected.group(0)), text
        hits += expected is not None
    assert hits >= 3  # the comparison saw matching lines, not only misses


# --------------------------------------------------------------------------- prompt caches


@pytest.fixture(scope="module")
def library() -> dict[str, Persona]:
    return load_library()


def context(persona: Persona, kind: PhaseKind, *, turn: int = 3, belief: float = 60) -> TurnContext:
    state = initial_state(persona).model_copy(update={"belief": belief, "risk": RiskLevel.PASSIVE})
    return TurnContext(
        session_id="s",
        modality=persona.modality,
        persona=persona,
        protocol_id="p",
        phase=kind.value,
        phase_kind=kind,
        phase_goal="a goal",
        therapist_guidance="guidance",
        patient_guidance="patient guidance",
        turn=turn,
        state=state,
        last_codes=(BehaviourCode.SUDS_PROBE,),
        seed=5,
    )


def test_the_patient_prompt_and_lines_do_not_depend_on_the_persona_cache(
    library: dict[str, Persona],
) -> None:
    transcript = [
        Utterance(speaker="therapist", text="How distressed are you, 0 to 100?"),
    ]
    for persona_id in ("pe-combat-01", "cbt-sleep-01"):
        persona = library[persona_id].at_severity("crisis_adjacent")
        for kind in (PhaseKind.CHECK_IN, list(PhaseKind)[-1]):
            for belief in (80.0, 35.0):
                ctx = context(persona, kind, belief=belief)
                request = CompletionRequest(
                    role="patient",
                    messages=(Message(role="user", content=transcript[0].text),),
                    context=ctx,
                )
                cached = (
                    build_system_prompt(ctx, transcript),
                    _persona_values(persona, ctx.state),
                    template_reply(ctx, request),
                )
                patient_prompt._PER_PERSONA.clear()
                fresh = (
                    build_system_prompt(ctx, transcript),
                    _persona_values(persona, ctx.state),
                    template_reply(ctx, request),
                )
                assert cached == fresh
                assert f"{round(belief)}" in cached[0] or persona.cbt is None


def test_a_persona_entry_is_never_served_to_another_persona(library: dict[str, Persona]) -> None:
    first = library["cbt-sleep-01"].at_severity("routine")
    second = first.model_copy(update={"summary": "someone else entirely"})
    assert patient_prompt.per_persona(first, "k", lambda: "first") == "first"
    assert patient_prompt.per_persona(second, "k", lambda: "second") == "second"
    assert patient_prompt.per_persona(first, "k", lambda: "again") == "first"


def test_cached_system_prompts_follow_the_phase(library: dict[str, Persona]) -> None:
    persona = library["pe-combat-01"]
    prompts = set()
    for kind in PhaseKind:
        ctx = context(persona, kind)
        assert appraiser_system_prompt(ctx) == appraiser_system_prompt(ctx.model_copy())
        assert f"{kind.value}" in appraiser_system_prompt(ctx)
        prompts.add(therapist_system_prompt(ctx))
        assert therapist_system_prompt(ctx, "phase {phase} {{x}}") == f"phase {kind.value} {{x}}"
    assert len(prompts) == len(PhaseKind)
