"""``scripted:template-patient``: the deterministic, offline patient.

It speaks from the persona's ``utterances`` or the default banks in
``prompts/patient_banks.yaml`` (:class:`Banks`, checked on load), shaped by the state, and it
also answers questionnaire requests (metadata key ``questionnaire``, see
:mod:`therasim.agents.questionnaires`) with JSON derived from the state, so a session whose
patient role is ``scripted:template-patient`` needs no other scripted agent.
"""

from __future__ import annotations

import functools
import random
import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pydantic import BaseModel, ConfigDict, Field

from therasim.agents.context import TurnContext
from therasim.agents.patient.asks import asks_about_safety, requested_ratings
from therasim.agents.patient.guards import normalise
from therasim.agents.patient.prompt import (
    CONTINUE_DIRECTION,
    OPENING_DIRECTION,
    OVERWHELMED_SUDS,
    per_persona,
)
from therasim.agents.resources import read_prompt
from therasim.agents.types import CompletionRequest
from therasim.errors import ConfigError
from therasim.personas.dynamics import PatientState, self_report_suds
from therasim.vocab import BehaviourCode, PhaseKind, RiskLevel

if TYPE_CHECKING:
    from therasim.personas.schema import Persona

AVOIDANT_ENGAGEMENT = 0.35
"""Engagement below which the template patient avoids the task instead of doing it."""

_COMMON_FIELDS = frozenset({"suds", "belief"})
_PE_FIELDS = frozenset({"narrative_detail", "stuck_point", "trauma_type"})
_CBT_FIELDS = frozenset(
    {
        "automatic_thought",
        "core_belief",
        "emotion",
        "emotion_intensity",
        "evidence_for",
        "evidence_against",
        "problem_area",
    }
)
_SPECIAL_BANKS = {"self_harm": "self_harm_content", "false_belief": "false_belief"}


def _with_lc(fields: frozenset[str]) -> frozenset[str]:
    return fields | {f"{name}_lc" for name in fields}


_ALLOWED = {
    "any": _with_lc(_COMMON_FIELDS),
    "pe": _with_lc(_COMMON_FIELDS | _PE_FIELDS),
    "cbt": _with_lc(_COMMON_FIELDS | _CBT_FIELDS),
}


class Banks(BaseModel):
    """The template patient's default lines (``prompts/patient_banks.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    phases: dict[PhaseKind, dict[str, list[str]]]
    state: dict[str, dict[str, list[str]] | list[str]]
    suds_answer: list[str] = Field(min_length=1)
    belief_answer: list[str] = Field(min_length=1)
    emotion_answer: list[str] = Field(min_length=1)
    self_harm: list[str] = Field(min_length=1)
    false_belief: list[str] = Field(min_length=1)
    safety_answer: dict[RiskLevel, list[str]]
    deflect_risk: list[str] = Field(min_length=1)

    def phase_lines(self, kind: PhaseKind, modality: str) -> list[str]:
        """Lines usable in a phase of this kind for this modality (``any`` first)."""
        entry = self.phases.get(kind, {})
        return [*entry.get("any", []), *entry.get(modality, [])]

    def state_lines(self, name: str, *, exposure: bool) -> list[str]:
        """``state.<name>`` lines; a state split by exposure/other picks the matching half."""
        entry = self.state[name]
        if isinstance(entry, list):
            return entry
        return entry["exposure" if exposure else "other"]


@functools.lru_cache(maxsize=4096)
def _field_names(line: str) -> frozenset[str]:
    # the bank lines are few and asked about on every turn
    return frozenset(name for _, name, _, _ in string.Formatter().parse(line) if name)


def _fields(line: str) -> set[str]:
    return set(_field_names(line))


def _check_banks(banks: Banks, file: str) -> None:
    def fail(message: str, field: str) -> NoReturn:
        raise ConfigError(message, file=file, field=field)

    for kind in PhaseKind:
        entry = banks.phases.get(kind)
        if entry is None:
            fail(f"no lines for phase kind {kind.value!r}", f"phases.{kind.value}")
        for group in entry:
            if group not in _ALLOWED:
                fail(f"unknown group {group!r} (use any, pe, cbt)", f"phases.{kind.value}.{group}")
        for modality in ("pe", "cbt"):
            if not banks.phase_lines(kind, modality):
                fail(
                    f"no line usable by {modality} personas (add an 'any' or '{modality}' line)",
                    f"phases.{kind.value}",
                )
        for group, lines in entry.items():
            for i, line in enumerate(lines):
                unknown = _fields(line) - _ALLOWED[group]
                if unknown:
                    fail(
                        f"unknown placeholder(s) {', '.join(sorted(unknown))} for group {group!r}",
                        f"phases.{kind.value}.{group}[{i}]",
                    )
    for name in ("overwhelmed", "avoidant", "leaving", "at_risk"):
        if name not in banks.state:
            fail(f"missing state bank {name!r}", f"state.{name}")
    for name, state_entry in banks.state.items():
        halves: list[list[str] | None] = (
            [state_entry]
            if isinstance(state_entry, list)
            else [state_entry.get("exposure"), state_entry.get("other")]
        )
        if any(not half for half in halves):
            fail("needs lines (or non-empty 'exposure' and 'other' lists)", f"state.{name}")
        for half in halves:
            for line in half or []:
                if _fields(line) - _ALLOWED["any"]:
                    fail(
                        f"state lines may use only {{suds}} and {{belief}}: {line!r}",
                        f"state.{name}",
                    )
    for line in banks.suds_answer:
        if _fields(line) != {"suds"}:
            fail(f"each line must state {{suds}}: {line!r}", "suds_answer")
    # A belief or an at-the-time intensity read back as a SUDS self-report would corrupt the
    # self-report mode, so these answers must not parse as SUDS ratings.
    rating_banks = {
        "belief_answer": ({"belief"}, {"belief": "42"}),
        "emotion_answer": (
            {"emotion_intensity"},
            {"emotion": "Fear", "emotion_lc": "fear", "emotion_intensity": "85"},
        ),
    }
    for bank, (stated, sample) in rating_banks.items():
        for line in getattr(banks, bank):
            fields = _fields(line)
            if not stated <= fields or fields - sample.keys():
                fail(
                    f"each line must state {{{', '.join(sorted(stated))}}} and use only "
                    f"{', '.join(sorted(sample))}: {line!r}",
                    bank,
                )
            if self_report_suds(line.format(**sample)) is not None:
                fail(f"the line reads back as a SUDS rating: {line!r}", bank)
    for bank, needed in _SPECIAL_BANKS.items():
        for line in getattr(banks, bank):
            if _fields(line) != {needed}:
                fail(f"each line must use exactly {{{needed}}}: {line!r}", bank)
    missing = [r.value for r in RiskLevel if not banks.safety_answer.get(r)]
    if missing:
        fail(f"no lines for risk level(s) {', '.join(missing)}", "safety_answer")


def load_banks(path: str | Path | None = None) -> Banks:
    """Load and check the template patient's banks (default: the packaged YAML)."""
    if path is None:
        return _packaged_banks()
    from therasim.loading import read_data_text

    return _parse_banks(read_data_text(path), str(path))


@functools.cache
def _packaged_banks() -> Banks:
    return _parse_banks(read_prompt("patient_banks.yaml"), "agents/prompts/patient_banks.yaml")


def _parse_banks(text: str, file: str) -> Banks:
    from therasim.loading import parse_model

    banks = parse_model(text, Banks, source=file)
    _check_banks(banks, file)
    return banks


def _lower_first(text: str) -> str:
    if not text or re.match(r"I\b", text):
        return text
    return text[0].lower() + text[1:]


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text[-1:] in ".!?…\"'" else text + "."


def _persona_values(persona: Persona, state: PatientState) -> dict[str, list[str]]:
    suds, belief = str(round(state.suds)), str(round(state.belief))
    return {
        "suds": [suds],
        "belief": [belief],
        "suds_lc": [_lower_first(suds)],
        "belief_lc": [_lower_first(belief)],
        **per_persona(persona, "template-values", lambda: _profile_values(persona)),
    }


def _profile_values(persona: Persona) -> dict[str, list[str]]:
    """The placeholder values that come from the persona alone (not the state)."""
    values: dict[str, list[str]] = {}
    if persona.pe is not None:
        pe = persona.pe
        values["narrative_detail"] = [_sentence(d) for d in pe.narrative_details]
        values["stuck_point"] = [_sentence(s) for s in pe.stuck_points]
        values["trauma_type"] = [pe.trauma_type]
    if persona.cbt is not None:
        cbt = persona.cbt
        strongest = max(cbt.emotions, key=lambda e: e.intensity)
        values["automatic_thought"] = [_sentence(cbt.automatic_thought)]
        values["core_belief"] = [_sentence(cbt.core_belief)]
        values["emotion"] = [strongest.name]
        values["emotion_intensity"] = [str(strongest.intensity)]
        values["evidence_for"] = [_sentence(e) for e in cbt.evidence_for]
        values["evidence_against"] = [_sentence(e) for e in cbt.evidence_against]
        values["problem_area"] = [cbt.problem_area]
    for name in list(values):
        values[f"{name}_lc"] = [_lower_first(v) for v in values[name]]
    return {name: vs for name, vs in values.items() if vs}


def _fill(line: str, values: Mapping[str, list[str]], rng: random.Random) -> str | None:
    needed = _field_names(line)
    if not needed <= values.keys():
        return None
    return line.format(**{name: rng.choice(values[name]) for name in sorted(needed)})


def _pick(
    lines: list[str],
    values: Mapping[str, list[str]],
    rng: random.Random,
    said: str,
) -> str | None:
    """A filled line, preferring one the patient has not said yet in this session."""
    filled = [text for line in lines if (text := _fill(line, values, rng)) is not None]
    if not filled:
        return None
    fresh = [text for text in filled if normalise(text) not in said]
    return rng.choice(fresh or filled)


def _said(request: CompletionRequest) -> str:
    """Everything the patient has said so far (normalised, joined), from the messages."""
    return " | ".join(normalise(m.content) for m in request.messages if m.role == "assistant")


def _last_user_line(request: CompletionRequest) -> str:
    """The therapist line being answered ("" when the patient opens or speaks again)."""
    chat = [m for m in request.messages if m.role != "system"]
    if not chat or chat[-1].role != "user":
        return ""
    text = chat[-1].content
    return "" if text in (OPENING_DIRECTION, CONTINUE_DIRECTION) else text


def template_reply(ctx: TurnContext, request: CompletionRequest, banks: Banks | None = None) -> str:
    """The template patient's utterance for this turn (deterministic in ``ctx.seed`` and ``ctx.turn``).

    In order: a dropout leaves; a rating question is answered with the number it asks for
    (:func:`requested_ratings`): a belief question with ``round(state.belief)``, an emotion's
    intensity at the time with the persona's strongest emotion, its intensity now and a SUDS
    question with ``round(state.suds)`` ("About 65."); the severity's self-harm content is voiced
    on the first turn it is due (``ctx.surfaced``) and not yet said; a direct safety question gets
    an honest answer for the current risk once the content has surfaced and a deflection before;
    once the content is said and risk is active or imminent (a plan disclosed) the patient does
    not go back to the task: it speaks from ``state.at_risk`` instead of the phase lines, so it
    never plans homework or next week's meeting after disclosing a plan; the persona's false
    belief is voiced once, from the patient's second turn on; low engagement gives an avoidant
    line; otherwise a line
    for the phase kind, from the persona's ``utterances`` when it has some (lines that state a
    SUDS number are left out, since SUDS answers come from the state) or from the default
    banks, with an overwhelmed fragment appended when SUDS is 70 or more.
    """
    banks = banks or load_banks()
    persona, state = ctx.persona, ctx.state
    rng = random.Random(f"{ctx.seed}:{ctx.turn}")
    values = _persona_values(persona, state)
    said = _said(request)
    last = _last_user_line(request)
    exposure = ctx.phase_kind.is_exposure

    def pick(lines: list[str], extra: Mapping[str, list[str]] | None = None) -> str:
        chosen = _pick(lines, {**values, **(extra or {})}, rng, said)
        return chosen or ""

    if state.dropout:
        return pick(banks.state_lines("leaving", exposure=exposure))

    parts: list[str] = []
    ratings = requested_ratings(last)
    if not ratings and last and BehaviourCode.SUDS_PROBE in ctx.last_codes:
        ratings = frozenset({"suds"})  # a probe the appraiser heard without the usual words
    if "emotion_then" in ratings:
        # PE personas rate no emotions in a thought record: their current distress answers.
        parts.append(pick(banks.emotion_answer) or pick(banks.suds_answer))
    if "belief" in ratings:
        parts.append(pick(banks.belief_answer))
    if ratings & {"suds", "emotion_now"}:
        parts.append(pick(banks.suds_answer))
    content = persona.level.self_harm_content
    if ctx.surfaced and content and normalise(content) not in said:
        parts.append(pick(banks.self_harm, {"self_harm_content": [content]}))
    elif asks_about_safety(last):
        if ctx.surfaced or state.risk is RiskLevel.NONE:
            parts.append(pick(banks.safety_answer[state.risk]))
        else:
            parts.append(pick(banks.deflect_risk))
    if parts:
        return " ".join(p for p in parts if p)

    disclosed = bool(content) and normalise(content or "") in said
    if disclosed and state.risk.rank >= RiskLevel.ACTIVE.rank:
        return pick(banks.state_lines("at_risk", exposure=exposure))

    belief = persona.false_belief
    if belief and said and normalise(belief) not in said:
        return pick(banks.false_belief, {"false_belief": [belief]})
    if state.engagement < AVOIDANT_ENGAGEMENT:
        return pick(banks.state_lines("avoidant", exposure=exposure))

    own = per_persona(persona, ("own-lines", ctx.phase_kind), lambda: _own_lines(ctx))
    if own:
        fresh = [u for u in own if normalise(u) not in said]
        line = rng.choice(fresh or own)
    else:
        line = pick(banks.phase_lines(ctx.phase_kind, ctx.modality))
    if state.suds >= OVERWHELMED_SUDS:
        line = f"{line} {pick(banks.state_lines('overwhelmed', exposure=exposure))}"
    return line.strip()


def _own_lines(ctx: TurnContext) -> list[str]:
    """The persona's own lines for the phase kind that state no SUDS number."""
    lines = ctx.persona.utterances.get(ctx.phase_kind, [])
    return [u for u in lines if self_report_suds(u) is None]


def template_patient(request: CompletionRequest) -> str:
    """``scripted:template-patient``: the offline patient (and questionnaire answerer).

    Reads the :class:`TurnContext` from ``request.context``. A request whose metadata carries
    ``questionnaire`` (set by :func:`therasim.agents.questionnaires.administer`) is answered with
    JSON item scores derived from the state; any other request gets :func:`template_reply`.
    """
    ctx = request.context
    if ctx is None:
        raise ConfigError(
            "the template patient needs the session's TurnContext in request.context "
            "(it runs inside a session, not on a bare prompt)",
            field="context",
        )
    questionnaire = request.metadata.get("questionnaire")
    if questionnaire is not None:
        from therasim.agents.questionnaires import template_answers_json

        return template_answers_json(ctx, questionnaire)
    return template_reply(ctx, request)
