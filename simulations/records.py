"""What a session is asked to be (``SessionSpec``), what it became (``SessionResult``), and the
typed rows the store reads back (``SessionRow``, ``TurnRow``, ``CallRow``, ``CallTotals``,
``VerdictRow``).

A session's id is a hash of its spec, so the same persona × severity × variant × subject ×
seed × repeat always has the same id: a rerun finds it in the store and skips it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from enum import StrEnum
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from therasim.agents.context import Utterance
from therasim.agents.scripted import DEFAULT_OFFLINE_APPRAISER
from therasim.agents.types import CompletionResponse
from therasim.errors import ConfigError, UnknownNameError
from therasim.personas.dynamics import PatientState
from therasim.personas.schema import Persona
from therasim.protocols.adherence import AdherenceReport
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
        """Whether the session ended on an error rather than by design."""
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
        """The subject's display name (its model spec when unnamed)."""
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
    context: list[Utterance] = Field(
        default_factory=list,
        description="What the subject saw before this line that is not a turn of this session "
        "(a battery item's earlier context): judges see it, nothing scores it.",
    )


class QuestionnaireRecord(BaseModel):
    """A questionnaire the patient filled in before or after the session."""

    model_config = ConfigDict(extra="forbid")

    instrument: str
    when: Literal["pre", "post"]
    wording: str
    items: list[int]
    total: int


JUDGE_ROLE_PREFIX = "judge:"


def judge_role(judge: str) -> str:
    """The gateway role of the judge named ``judge`` (``judge:<name>``)."""
    return JUDGE_ROLE_PREFIX + judge


def is_judge_role(role: str) -> bool:
    """A judge's call (stored with the verdicts), not one of the session's own."""
    return role.startswith(JUDGE_ROLE_PREFIX)


class CallRecord(BaseModel):
    """One gateway call made for the session (by the session itself, or by a judge of it)."""

    model_config = ConfigDict(extra="forbid")

    role: str
    model: str
    cached: bool = Field(description="Answered from therasim's response cache (nothing sent).")
    latency_s: float
    input_tokens: int
    cached_input_tokens: int = Field(
        default=0, description="Input tokens the provider served from its prompt cache."
    )
    output_tokens: int
    cost_usd: float | None
    attempts: int

    @classmethod
    def of(cls, response: CompletionResponse) -> CallRecord:
        """The record of one gateway answer."""
        usage = response.usage
        return cls(
            role=response.role,
            model=response.model,
            cached=response.cached,
            latency_s=round(response.latency_s, 4),
            input_tokens=usage.input_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=usage.cost_usd,
            attempts=response.attempts,
        )


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
    adherence: AdherenceReport | None = Field(
        default=None, description="How closely the session followed its protocol (None if failed)."
    )
    prompt_hashes: dict[str, str] = Field(default_factory=dict)
    started: float
    finished: float

    @property
    def therapist_turns(self) -> int:
        """How many therapist turns the session holds."""
        return sum(1 for t in self.turns if t.speaker == "therapist")


M = TypeVar("M", bound=BaseModel)


def trusted(cls: type[M], values: dict[str, Any], fields: set[str] | None = None) -> M:
    """A model from values the store itself wrote and typed, without validating them again.

    The big tables (a 1,000-session study holds ~450,000 verdicts and ~50,000 calls) are read
    for every report; validating each row costs several times reading it, and
    ``model_construct`` more still in pydantic 2 (it walks the fields in Python). ``values``
    must hold every field, already of its declared type; ``tests/simulations/test_store_records.py`` checks
    that trusted rows equal validated ones. ``fields``, the set of ``values``' keys, may be
    shared by every row of a table (pydantic copies it before changing it)."""
    row = cls.__new__(cls)
    _set(row, "__dict__", values)
    _set(row, "__pydantic_fields_set__", set(values) if fields is None else fields)
    _set(row, "__pydantic_extra__", None)
    _set(row, "__pydantic_private__", None)
    return row


_set = object.__setattr__


class _Row(BaseModel):
    """A row read back from the store: frozen, no unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SessionRow(_Row):
    """One row of the store's ``sessions`` table (the session without its turns and calls)."""

    session_id: str
    spec: SessionSpec
    subject: str = Field(description="The subject's name in the study (``SessionSpec.label``).")
    persona: str = Field(description="Base persona id.")
    persona_ref: str = Field(description="id@version of the persona variant used.")
    modality: Literal["pe", "cbt"]
    severity: Severity
    variant: dict[str, Any]
    repeat: int
    status: Literal["completed", "failed"]
    termination_reason: TerminationReason
    error: str | None
    n_turns: int = Field(description="Therapist turns.")
    questionnaires: list[QuestionnaireRecord]
    adherence: AdherenceReport | None
    prompt_hashes: dict[str, str]
    input_tokens: int
    output_tokens: int
    cost_usd: float | None = Field(description="None when some call's price is unknown.")
    started: float
    finished: float
    initial_state: PatientState | None
    habituation_margin: float

    def result(
        self, turns: list[TurnRecord], calls: list[CallRecord] | None = None
    ) -> SessionResult:
        """The stored session rebuilt as a :class:`SessionResult` from this row and its turns
        (and its own calls, when given)."""
        return SessionResult(
            session_id=self.session_id,
            spec=self.spec,
            persona_ref=self.persona_ref,
            modality=self.modality,
            initial_state=self.initial_state,
            habituation_margin=self.habituation_margin,
            status=self.status,
            termination_reason=self.termination_reason,
            error=self.error,
            turns=turns,
            questionnaires=self.questionnaires,
            calls=calls or [],
            adherence=self.adherence,
            prompt_hashes=self.prompt_hashes,
            started=self.started,
            finished=self.finished,
        )


class TurnRow(_Row):
    """One utterance of a stored session."""

    session_id: str
    record: TurnRecord


class CallRow(_Row):
    """One gateway call of a stored session, ``idx`` its position in the session's calls (the
    session's own first, then its judges' calls, role ``judge:<name>``, in the order made)."""

    session_id: str
    idx: int
    role: str
    model: str
    cached: bool
    latency_s: float
    input_tokens: int
    cached_input_tokens: int = 0
    output_tokens: int
    cost_usd: float | None
    attempts: int

    @property
    def record(self) -> CallRecord:
        """The call as the session recorded it."""
        fields = self.__dict__
        return trusted(CallRecord, {name: fields[name] for name in CallRecord.model_fields})


class CallBatch(_Row):
    """Consecutive calls as columns (each list holds one field of every row, in order), as
    :class:`VerdictBatch` is for verdicts: a study judged item by item stores about ten calls a
    therapist turn, so the calls table is as long as the verdicts."""

    session_id: list[str]
    idx: list[int]
    role: list[str]
    model: list[str]
    cached: list[bool]
    latency_s: list[float]
    input_tokens: list[int]
    cached_input_tokens: list[int]
    output_tokens: list[int]
    cost_usd: list[float | None]
    attempts: list[int]

    def __len__(self) -> int:
        return len(self.session_id)


class CallTotals(_Row):
    """One session's calls of one role and model, summed (``Store.call_totals``): what the
    report's cost tables need, without reading a study's every call."""

    session_id: str
    role: str
    model: str
    calls: int
    cache_hits: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    cost_usd: float
    unpriced: int = Field(description="Calls without a known price (their cost counts as 0).")


class VerdictRow(_Row):
    """One judge's verdict on one rubric item for one unit (a turn, or ``turn = -1``: the
    session)."""

    session_id: str
    judge: str
    item_id: str
    turn: int
    met: bool | None = Field(description="None when the item does not apply.")
    score: float | None = None
    reason: str
    prompt_hash: str
    rubric_version: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    weight: float = Field(
        default=1.0,
        gt=0,
        description="Inverse probability that the turn was judged under turn sampling; 1 when "
        "every turn is judged; session items 1.",
    )

    @property
    def scope(self) -> Literal["turn", "session"]:
        """Turn verdicts have a turn number; session verdicts have -1."""
        return "session" if self.turn < 0 else "turn"


_VERDICT_NAMES = tuple(VerdictRow.model_fields)
_VERDICT_SET = set(_VERDICT_NAMES)


class VerdictBatch(_Row):
    """Consecutive verdicts as columns (each list holds one field of every row, in order): how
    the store streams its biggest table, so a reader builds columns without a model per row."""

    session_id: list[str]
    judge: list[str]
    item_id: list[str]
    turn: list[int]
    met: list[bool | None]
    score: list[float | None]
    reason: list[str]
    prompt_hash: list[str]
    rubric_version: list[str]
    model: list[str]
    input_tokens: list[int]
    output_tokens: list[int]
    weight: list[float]

    def __len__(self) -> int:
        return len(self.session_id)

    def rows(self) -> Iterator[VerdictRow]:
        """The batch's verdicts one by one (built from the batch's values, not validated again)."""
        for values in zip(*(getattr(self, name) for name in _VERDICT_NAMES), strict=True):
            yield trusted(VerdictRow, dict(zip(_VERDICT_NAMES, values, strict=True)), _VERDICT_SET)


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
