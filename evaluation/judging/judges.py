"""The panel's judges and options: who judges, how (item by item or batched), and which turns."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from therasim.errors import UnknownNameError
from therasim.evaluation.judging.prompts import PROMPT_VARIANTS

if TYPE_CHECKING:
    from therasim.simulations.study import JudgingSpec

__all__ = ["JudgeSpec", "JudgingMode", "PanelOptions", "default_judges", "scripted_judges"]

JudgingMode = Literal["item", "turn"]


class JudgeSpec(BaseModel):
    """One judge of the panel; it calls the gateway in role ``judge:<name>``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_.-]*$",
        description="Judge name; the gateway role is 'judge:<name>' and verdict rows carry it.",
    )
    model: str | None = Field(
        default=None,
        description="Model spec for this judge; null = the gateway config's 'judge:<name>' or 'judge' role.",
    )
    temperature: float = Field(default=0.0, ge=0, le=2, description="Sampling temperature.")
    seed: int | None = Field(
        default=0, description="Seed sent with every call (part of the cache key)."
    )
    prompt_variant: str = Field(
        default="default",
        description=f"Extra instruction in the template: one of {', '.join(PROMPT_VARIANTS)}.",
    )

    @field_validator("prompt_variant", mode="after")
    @classmethod
    def _known_variant(cls, value: str) -> str:
        if value not in PROMPT_VARIANTS:
            raise UnknownNameError("prompt variant", value, list(PROMPT_VARIANTS))
        return value

    @property
    def role(self) -> str:
        """The gateway role, ``judge:<name>``."""
        return f"judge:{self.name}"


def default_judges() -> list[JudgeSpec]:
    """Three judges whose models come from the gateway config (roles judge:a, judge:b, judge:c).

    They differ by prompt variant (default, strict, clinician); give each role its own model in
    the gateway config for a panel of three different models, as in the paper.
    """
    return [
        JudgeSpec(name="a", prompt_variant="default"),
        JudgeSpec(name="b", prompt_variant="strict"),
        JudgeSpec(name="c", prompt_variant="clinician"),
    ]


def scripted_judges() -> list[JudgeSpec]:
    """The offline panel: the lexical, lenient and harsh scripted judges."""
    return [
        JudgeSpec(name="lexical", model="scripted:lexical-judge"),
        JudgeSpec(name="lenient", model="scripted:lenient-judge"),
        JudgeSpec(name="harsh", model="scripted:harsh-judge"),
    ]


class PanelOptions(BaseModel):
    """Mode, sampling, bounds and thresholds of the panel (defaults are therasim's own choices).

    ``max_turns_judged`` (the former even-spread cap) is accepted as another name for
    ``sample_turns`` with no seed; see :mod:`therasim.evaluation.judging.sampling`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: JudgingMode = Field(
        default="turn",
        description="'turn': one call per judge × therapist turn (every applicable turn item; "
        "items its answer lacks are then asked one at a time) and one per judge × session. "
        "'item': one call per judge × item × unit.",
    )
    sample_turns: int | None = Field(
        default=None,
        ge=1,
        description="Judge turn items on at least this many therapist turns per session: every "
        "turn flagging risk or a failure, the rest stratified by phase; null = every turn.",
    )
    sample_seed: int | None = Field(
        default=None,
        description="Seed of the draw inside each phase; null = turns spread evenly instead.",
    )
    window: int = Field(
        default=4, ge=0, le=50, description="Previous utterances a turn item sees (K)."
    )
    max_reply_chars: int = Field(
        default=3000, ge=200, description="The judged reply is clipped to this many characters."
    )
    max_context_chars: int = Field(
        default=600, ge=50, description="Each context utterance is clipped to this many characters."
    )
    summary_first: int = Field(
        default=4, ge=0, description="Opening utterances in a session summary."
    )
    summary_last: int = Field(
        default=6, ge=0, description="Closing utterances in a session summary."
    )
    summary_chars: int = Field(
        default=400, ge=50, description="Each summary utterance is clipped to this many characters."
    )
    summary_points: int = Field(
        default=40, ge=2, description="SUDS values shown at most (evenly thinned beyond)."
    )
    max_excerpts: int = Field(
        default=8, ge=0, description="Notable therapist sentences (resources, false-belief echoes)."
    )
    max_persona_chars: int = Field(
        default=1200, ge=100, description="Persona facts are clipped to this many characters."
    )
    max_tokens: int = Field(
        default=200,
        ge=16,
        description="Output budget of one verdict (a batched call gets this per item asked).",
    )
    high_suds: float = Field(
        default=50.0,
        ge=0,
        le=100,
        description="SUDS at or above which grounding in exposure is premature (scripted judges).",
    )
    session_concurrency: int = Field(
        default=8, ge=1, description="Sessions judged at once by judge_store."
    )

    @model_validator(mode="before")
    @classmethod
    def _old_cap(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_turns_judged" in data:
            data = dict(data)
            cap = data.pop("max_turns_judged")
            if data.get("sample_turns") not in (None, cap):
                raise ValueError("give sample_turns or its old name max_turns_judged, not both")
            data["sample_turns"] = cap
        return data

    @property
    def max_turns_judged(self) -> int | None:
        """The former name of :attr:`sample_turns`."""
        return self.sample_turns

    @classmethod
    def from_study(cls, judging: JudgingSpec | None, **overrides: Any) -> PanelOptions:
        """The options a study's ``judging:`` block asks for (``overrides`` on top)."""
        fields: dict[str, Any] = {}
        if judging is not None:
            fields = {
                "mode": judging.mode,
                "sample_turns": judging.sample_turns,
                "sample_seed": judging.seed,
            }
        return cls(**{**fields, **overrides})
