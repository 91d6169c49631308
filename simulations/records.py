"""What a session is asked to be (``SessionSpec``) and what it became (``SessionResult``).

A session's id is a hash of its spec, so the same persona × severity × variant × subject ×
seed × repeat always has the same id: a rerun finds it in the store and skips it.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from therasim.agents.scripted import DEFAULT_OFFLINE_APPRAISER
from therasim.errors import ConfigError, UnknownNameError
from therasim.personas.dynamics import PatientState
from therasim.personas.schema import Persona
from therasim.vocab import Severity


class TerminationReason(StrEnum):
    """Why a session ended (tau2-bench style: every session names one)."""

    PROTOCOL_COMPLETE = "protocol_complete"
    CRISIS_HANDOFF = "crisis_handoff"
    MAX_TURNS = "max_turns"
    BUDGET_EXHAUSTED = "budget_exhausted"
    PATIENT_DROPOUT = "patient_dropout"
    SUBJECT_ERROR = "subject_error"
    PATIENT_ERROR = "patient_error"
    APPRAISER_ERROR = "appraiser_error"
    QUESTIONNAIRE_ERROR = "questionnaire_error"
    INTERNAL_ERROR = "internal_error"

    @property
    def is_error(self) -> bool:
        return self.value.endswith("_error")

    @property
    def is_complete(self) -> bool:
        """The session ran to a natural end: stored as completed (errors and a spent budget
        leave it failed, so a rerun redoes it)."""
        return not self.is_error and self is not TerminationReason.BUDGET_EXHAUSTED


class SessionSpec(BaseModel):
    """One cell of a study: everything that determines a session."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    persona: str = Field(description="Base persona id.")
    persona_version: int = Field(ge=1)
    severity: Severity
    variant: dict[str, Any] = Field(
        default_factory=dict, description="Counterfactual demographic changes."
    )
    subject: str = Field(description="Model spec of the model under test.")
    subject_name: str = Field(
        default="", description="The subject's name in the study (defaults to the spec)."
    )
    subject_prompt: str = Field(
        default="protocol",
        description="'protocol' (therapist prompt of the protocol), 'raw' (no system prompt) or the prompt text.",
    )
    patient: str = "scripted:template-patient"
    appraiser: str = DEFAULT_OFFLINE_APPRAISER
    protocol: str
    max_turns: int = Field(default=20, ge=1, le=200)
    seed: int = 0
    repeat: int = Field(default=0, ge=0)
    questionnaires: bool = True
    questionnaire_wording: Literal["neutral", "primed"] = "neutral"

    @property
    def session_id(self) -> str:
        """Stable id: the first 16 hex digits of the spec's canonical JSON hash."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        return self.subject_name or self.subject


class TurnRecord(BaseModel):
    """One utterance of a session, with the patient's ground-truth state after it."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0, description="Position in the transcript, from 0.")
    speaker: Literal["therapist", "patient"]
    text: str
    turn: int = Field(
        ge=0, description="Therapist turn number this utterance belongs to (0 = before the first)."
    )
    phase: str = Field(description="Protocol phase the utterance was made in.")
    phase_kind: str
    codes: list[str] = Field(default_factory=list, description="Behaviour codes (therapist turns).")
    evidence: list[dict[str, str]] = Field(default_factory=list)
    state: PatientState
    latency_s: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    attempts: int = 1
    self_reported_suds: int | None = None


class QuestionnaireRecord(BaseModel):
    """A questionnaire the patient filled in before or after the session."""

    model_config = ConfigDict(extra="forbid")

    instrument: str
    when: Literal["pre", "post"]
    wording: str
    items: list[int]
    total: int


class CallRecord(BaseModel):
    """One gateway call made for the session."""

    model_config = ConfigDict(extra="forbid")

    role: str
    model: str
    cached: bool
    latency_s: float
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    attempts: int


class SessionResult(BaseModel):
    """A finished session: written to the store in one transaction."""

    model_config = ConfigDict(extra="forbid")

    session_id: str
    spec: SessionSpec
    persona_ref: str = Field(description="id@version of the persona variant used.")
    modality: Literal["pe", "cbt"]
    initial_state: PatientState | None = Field(
        default=None, description="The patient's state before the first turn."
    )
    habituation_margin: float = Field(
        default=15.0, description="The persona's expected SUDS fall in exposure."
    )
    status: Literal["completed", "failed"]
    termination_reason: TerminationReason
    error: str | None = None
    turns: list[TurnRecord] = Field(default_factory=list)
    questionnaires: list[QuestionnaireRecord] = Field(default_factory=list)
    calls: list[CallRecord] = Field(default_factory=list)
    adherence: dict[str, Any] = Field(default_factory=dict)
    prompt_hashes: dict[str, str] = Field(default_factory=dict)
    started: float
    finished: float

    @property
    def therapist_turns(self) -> int:
        return sum(1 for t in self.turns if t.speaker == "therapist")


def resolve_persona(spec: SessionSpec, library: dict[str, Persona]) -> Persona:
    """The persona variant a spec names: base persona → counterfactual → severity."""
    try:
        base = library[spec.persona]
    except KeyError:
        raise UnknownNameError("persona", spec.persona, list(library)) from None
    if base.version != spec.persona_version:
        raise ConfigError(
            f"the study asks for version {spec.persona_version}, the library has {base.version}",
            object_id=spec.persona,
            field="version",
        )
    variant = base.counterfactual(**spec.variant) if spec.variant else base
    return variant.at_severity(spec.severity)
