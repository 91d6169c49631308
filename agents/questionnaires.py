"""Pre/post self-report questionnaires filled in by the simulated patient: PHQ-9 and PCL-5.

The PHQ-9 (depression, 9 items 0-3, total 0-27) is given to every persona; the PCL-5 (PTSD,
20 items 0-4, total 0-80) to PE personas. Item texts, response scales, the instruction wordings
and the template patient's item weights are data in ``agents/prompts/questionnaires.yaml``.

:func:`administer` asks the ``patient`` role for structured output: one JSON object with the list
of item scores, validated for length and range (the gateway repairs or falls back through its
structured-output modes). The patient model gets its persona and current state as the system
prompt and, when there is one, the session transcript inside the questionnaire message, so a
post-test can reflect the session.

Wordings. ``neutral`` (the default) asks the patient to answer as they feel right now.
``primed`` reproduces EmoAgent's post-test instruction to focus on the other party's "tone,
invalidation, or criticism", a bias towards finding deterioration (DOMAIN.md). It exists only to
measure that bias against a neutral arm and is never used unless a study asks for it. The two
prompts differ only in the instruction paragraph (``questionnaire_prompt``); EmoAgent primed the
post-test alone, so a reproduction passes ``wording="primed"`` with ``when="post"`` only.

Offline answers. ``scripted:template-patient`` recognises the request's ``metadata["questionnaire"]``
and answers from the state (:func:`template_answers`): every item scores
``round(max_score * SUDS/100 * template_weight)``, and the PHQ-9's item 9 (thoughts of being
better off dead) scores the risk level (none 0, passive 1, active 2, imminent 3). Post minus pre
therefore tracks the change in the modelled state. The template patient ignores the wording: it
is not suggestible, so a primed arm shows a bias only with an LLM patient.

Questionnaire requests use temperature 0: a questionnaire is a measurement, and its variation
should come from the state and the transcript, not from sampling.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from therasim.agents.context import TurnContext, Utterance
from therasim.agents.patient import describe_persona, describe_profile, describe_state
from therasim.agents.resources import read_prompt
from therasim.agents.types import CompletionRequest, CompletionResponse, Message
from therasim.errors import ConfigError, UnknownNameError
from therasim.vocab import RiskLevel

if TYPE_CHECKING:
    from therasim.agents.llm import BoundGateway, Gateway

Instrument = Literal["phq9", "pcl5"]
When = Literal["pre", "post"]
Wording = Literal["neutral", "primed"]

DEFAULT_WORDING: Wording = "neutral"

_RISK_SCORE = {RiskLevel.NONE: 0, RiskLevel.PASSIVE: 1, RiskLevel.ACTIVE: 2, RiskLevel.IMMINENT: 3}
_RISK_WORDS = {
    RiskLevel.NONE: "none",
    RiskLevel.PASSIVE: "passive thoughts of not wanting to be alive, no plan",
    RiskLevel.ACTIVE: "thoughts of ending your life and of how",
    RiskLevel.IMMINENT: "a plan and a time to end your life",
}

_SYSTEM = """You are the patient described below, filling in a self-report questionnaire. The patient is
fictional, a synthetic character; answer every item as this patient would, in character.

# Who you are

{persona}

# Your clinical picture

{profile}

# How you feel right now

{state}
- Thoughts of self-harm: {risk}.
"""


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Item(_Data):
    """One questionnaire item."""

    text: str = Field(min_length=3, description="The item's standard wording.")
    template_weight: float = Field(
        default=1.0, ge=0, le=2, description="Shapes the template patient's answer only."
    )
    risk_item: bool = Field(
        default=False, description="Answered from the risk level by the template patient."
    )


class Band(_Data):
    """An interpretation range: totals up to ``max`` (after the previous band) get ``label``."""

    max: int = Field(ge=0)
    label: str


class InstrumentSpec(_Data):
    """A questionnaire: stem, response scale (index = score), items, interpretation bands."""

    title: str
    modalities: list[Literal["pe", "cbt"]] = Field(min_length=1)
    stem: str
    scale: list[str] = Field(min_length=2, description="Response labels; the index is the score.")
    items: list[Item] = Field(min_length=1)
    bands: list[Band] = Field(default_factory=list)

    @property
    def max_score(self) -> int:
        """The highest score of one item."""
        return len(self.scale) - 1

    @property
    def max_total(self) -> int:
        """The highest possible total."""
        return self.max_score * len(self.items)

    def band(self, total: int) -> str | None:
        """The interpretation label of a total, if bands are defined."""
        for band in self.bands:
            if total <= band.max:
                return band.label
        return None


class QuestionnaireData(_Data):
    """The contents of ``questionnaires.yaml``."""

    wordings: dict[Wording, str]
    instruments: dict[Instrument, InstrumentSpec]

    @model_validator(mode="after")
    def _complete(self) -> QuestionnaireData:
        for name in ("neutral", "primed"):
            if name not in self.wordings:
                raise ValueError(f"wordings: missing {name!r}")
        for name in ("phq9", "pcl5"):
            if name not in self.instruments:
                raise ValueError(f"instruments: missing {name!r}")
        return self


_FILE = "agents/prompts/questionnaires.yaml"


@functools.cache
def load_questionnaires() -> QuestionnaireData:
    """The packaged questionnaire data, validated (``ConfigError`` naming the file otherwise)."""
    from therasim.loading import parse_model

    return parse_model(read_prompt("questionnaires.yaml"), QuestionnaireData, source=_FILE)


def instrument_spec(instrument: str) -> InstrumentSpec:
    """One instrument's spec; ``UnknownNameError`` for a name that is not phq9 or pcl5."""
    instruments = load_questionnaires().instruments
    if instrument not in instruments:
        raise UnknownNameError("questionnaire", instrument, list(instruments))
    return instruments[instrument]


def instruments_for(modality: str) -> list[Instrument]:
    """The instruments a persona of this modality fills in (PHQ-9 always; PCL-5 for PE)."""
    data = load_questionnaires()
    return [name for name, spec in data.instruments.items() if modality in spec.modalities]


@functools.cache
def answer_model(instrument: Instrument) -> type[BaseModel]:
    """The structured-output schema: ``{"items": [...]}`` with exactly n scores in 0..max."""
    spec = instrument_spec(instrument)
    n = len(spec.items)
    # Any: a type built at run time from data, which mypy cannot check statically
    items_type: Any = Annotated[
        list[Annotated[int, Field(ge=0, le=spec.max_score)]],
        Field(
            min_length=n,
            max_length=n,
            description=f"{n} item scores in item order, each 0-{spec.max_score}.",
        ),
    ]
    model: type[BaseModel] = create_model(
        f"{instrument.upper()}Answers",
        # extra keys (a model's "comment") are ignored rather than failing a valid answer
        __config__=ConfigDict(extra="ignore"),
        items=(items_type, ...),
    )
    return model


def _render_transcript(transcript: list[Utterance]) -> str:
    return "\n".join(
        f"{'Therapist' if u.speaker == 'therapist' else 'You'}: {u.text}" for u in transcript
    )


def questionnaire_prompt(
    instrument: Instrument,
    *,
    wording: Wording = DEFAULT_WORDING,
    transcript: list[Utterance] | None = None,
) -> str:
    """The questionnaire message. Wordings differ only in the instruction paragraph."""
    data = load_questionnaires()
    spec = instrument_spec(instrument)
    if wording not in data.wordings:
        raise UnknownNameError("questionnaire wording", wording, list(data.wordings))
    parts = [spec.title]
    if transcript:
        parts.append("The session you just had:\n" + _render_transcript(transcript))
    parts.append(data.wordings[wording].strip())
    parts.append(spec.stem)
    parts.append(
        "Answer each item with a number: "
        + "; ".join(f"{score} = {label}" for score, label in enumerate(spec.scale))
        + "."
    )
    parts.append("\n".join(f"{i}. {item.text}" for i, item in enumerate(spec.items, start=1)))
    parts.append(
        f'Reply with one JSON object only, {{"items": [...]}}, holding exactly {len(spec.items)} '
        f"integers from 0 to {spec.max_score} in item order."
    )
    return "\n\n".join(parts)


def questionnaire_system_prompt(ctx: TurnContext) -> str:
    """The patient's identity and current state, without the per-turn conversation rules."""
    return _SYSTEM.format(
        persona=describe_persona(ctx.persona),
        profile=describe_profile(ctx.persona, ctx.state),
        state=describe_state(ctx),
        risk=_RISK_WORDS[ctx.state.risk],
    ).strip()


class QuestionnaireResult(BaseModel):
    """One filled-in questionnaire."""

    model_config = ConfigDict(extra="forbid")

    instrument: Instrument
    when: When
    wording: Wording
    items: list[int] = Field(description="Item scores in item order.")
    total: int = Field(ge=0, description="Sum of the item scores.")
    band: str | None = Field(default=None, description="The instrument's interpretation label.")
    response: CompletionResponse = Field(description="The gateway response that gave the answers.")

    @model_validator(mode="after")
    def _consistent(self) -> QuestionnaireResult:
        spec = instrument_spec(self.instrument)
        if len(self.items) != len(spec.items):
            raise ValueError(
                f"{self.instrument} has {len(spec.items)} items, got {len(self.items)}"
            )
        if any(not 0 <= score <= spec.max_score for score in self.items):
            raise ValueError(f"{self.instrument} item scores must be 0-{spec.max_score}")
        if self.total != sum(self.items):
            raise ValueError("total must be the sum of the item scores")
        return self


async def administer(
    gateway: Gateway | BoundGateway,
    ctx: TurnContext,
    transcript: list[Utterance],
    instrument: Instrument,
    *,
    when: When,
    wording: Wording = DEFAULT_WORDING,
) -> QuestionnaireResult:
    """Have the patient fill in ``instrument`` now (``when`` is recorded, and passed to scripted agents).

    Raises ``ConfigError`` when the instrument is not given to the persona's modality (the PCL-5
    to a CBT persona), ``UnknownNameError`` for an unknown instrument or wording, and
    ``StructuredOutputError`` when the patient model gives no valid answer even after repair.
    """
    spec = instrument_spec(instrument)
    if ctx.modality not in spec.modalities:
        raise ConfigError(
            f"{instrument} is given to {', '.join(spec.modalities)} personas, not {ctx.modality}",
            object_id=ctx.persona.id,
            field="instrument",
        )
    prompt = questionnaire_prompt(instrument, wording=wording, transcript=transcript)
    request = CompletionRequest(
        role="patient",
        messages=(
            Message(role="system", content=questionnaire_system_prompt(ctx)),
            Message(role="user", content=prompt),
        ),
        context=ctx,
        metadata={"questionnaire": {"instrument": instrument, "when": when, "wording": wording}},
        seed=ctx.seed * 1000 + ctx.turn,
        temperature=0.0,
        max_tokens=400,
    )
    parsed, response = await gateway.structured(request, answer_model(instrument))
    items = [int(score) for score in parsed.model_dump()["items"]]
    total = sum(items)
    return QuestionnaireResult(
        instrument=instrument,
        when=when,
        wording=wording,
        items=items,
        total=total,
        band=spec.band(total),
        response=response,
    )


def template_answers(ctx: TurnContext, instrument: Instrument) -> list[int]:
    """The template patient's item scores, from the state (see the module docstring)."""
    spec = instrument_spec(instrument)
    top = spec.max_score
    level = ctx.state.suds / 100.0
    scores = []
    for item in spec.items:
        if item.risk_item:
            scores.append(min(top, _RISK_SCORE[ctx.state.risk]))
        else:
            scores.append(max(0, min(top, round(top * level * item.template_weight))))
    return scores


def template_answers_json(ctx: TurnContext, questionnaire: dict[str, Any]) -> str:
    """``template_answers`` as the JSON a structured request expects."""
    instrument = questionnaire.get("instrument")
    if instrument not in ("phq9", "pcl5"):
        raise UnknownNameError("questionnaire", str(instrument), ["phq9", "pcl5"])
    return json.dumps({"items": template_answers(ctx, instrument)})
