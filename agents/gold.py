"""Gold turns: therapist replies labelled by hand, the yardstick for coders and judges.

One JSONL line is one therapist turn with its context (modality, phase kind, severity, the
patient's risk before the turn), the patient line it answers, the reply, and the labels a trained
coder gives it under ``agents/gold/codebook.md``: behaviour codes, failures, and whether the reply
is appropriate. ``agents/gold/gold.schema.json`` is the exported JSON Schema
(:func:`gold_json_schema`); :func:`load_gold` names the file, line and field on every error.

The shipped set (``agents/gold/*.jsonl``) carries a fixed ``split``: whatever trains or tunes a
coder reads ``dev`` only (:func:`dev_turns`); ``test`` is for measurement.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from therasim.errors import ConfigError
from therasim.loading import read_data_text, validation_error
from therasim.vocab import BehaviourCode, PhaseKind, RiskLevel, Severity

GOLD_DIR = Path(__file__).parent / "gold"
GOLD_SCHEMA_FILE = GOLD_DIR / "gold.schema.json"

Split = Literal["dev", "test"]


class Failure(StrEnum):
    """The failure taxonomy (DOMAIN.md), named as the ``failures`` rubric names its items."""

    PREMATURE_GROUNDING = "premature_grounding"
    FALSE_REASSURANCE = "false_reassurance"
    CRISIS_RESOURCE_INSERTION = "crisis_resource_insertion"
    MEMORY_AS_PRESENT = "memory_as_present"
    SAFETY_PREAMBLE = "safety_preamble"
    TASK_ABANDONMENT = "task_abandonment"
    REFUSED_CHALLENGE = "refused_challenge"
    MISSING_ESCALATION = "missing_escalation"


class GoldTurn(BaseModel):
    """One labelled therapist turn (the format of every line of a gold JSONL file)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra={"title": "therasim gold turn"}
    )

    id: str = Field(min_length=1, description="Unique id of the turn across all gold files.")
    modality: Literal["pe", "cbt"] = Field(description="The therapy: 'pe' or 'cbt'.")
    phase_kind: PhaseKind = Field(description="What the active protocol phase is clinically.")
    severity: Severity = Field(description="The persona's severity rung for the session.")
    risk: RiskLevel = Field(description="The patient's self-harm risk just before the turn.")
    patient: str = Field(description="The patient's line the therapist answers.")
    therapist: str = Field(description="The therapist's reply being coded (may be empty).")
    codes: list[BehaviourCode] = Field(
        description="Behaviour codes a trained coder gives the reply (codebook.md), each once."
    )
    failures: list[Failure] = Field(description="Failures the reply commits (codebook.md).")
    appropriate: bool = Field(
        description="Whether a protocol-adherent therapist could have said this here."
    )
    hard: bool = Field(default=False, description="A boundary case (codebook.md, 'hard cases').")
    note: str | None = Field(default=None, description="Why the labels are what they are.")
    split: Split | None = Field(
        default=None, description="'dev' (may train or tune a coder) or 'test' (measure only)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> GoldTurn:
        for name, values in (("codes", self.codes), ("failures", self.failures)):
            if len(set(values)) != len(values):
                raise ValueError(f"{name} lists a value twice")
        if self.failures and self.appropriate:
            raise ValueError("a turn with failures cannot be appropriate")
        return self


def gold_json_schema() -> dict[str, Any]:
    """The JSON Schema of one gold line (written to ``agents/gold/gold.schema.json``)."""
    from therasim.loading import json_schema_of

    return json_schema_of(GoldTurn, "therasim gold turn")


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (json keeps the last one silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def load_gold(paths: Iterable[str | Path]) -> list[GoldTurn]:
    """Every turn of the given JSONL files; ``ConfigError`` naming file, line and field.

    Blank lines are skipped; ids must be unique across all files.
    """
    turns: list[GoldTurn] = []
    seen: dict[str, str] = {}
    for path in paths:
        path = Path(path)
        text = read_data_text(path)  # size, binary and UTF-8 checks
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                data = json.loads(line, object_pairs_hook=_refuse_duplicate_keys)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"invalid JSON: {exc.msg}", file=where) from None
            except _DuplicateKey as exc:
                raise ConfigError(f"the key {exc.key!r} appears twice", file=where) from None
            except RecursionError:
                raise ConfigError("is nested too deeply to be a gold turn", file=where) from None
            try:
                turn = GoldTurn.model_validate_json(line, strict=True)  # "yes" is no bool
            except ValidationError as exc:
                raise validation_error(exc, GoldTurn, file=where, doc=data) from None
            if turn.id in seen:
                raise ConfigError(
                    f"duplicate id (first at {seen[turn.id]})", file=where, field="id"
                )
            seen[turn.id] = where
            turns.append(turn)
    return turns


def shipped_gold_files() -> list[Path]:
    """The gold files shipped with therasim, in name order."""
    return sorted(GOLD_DIR.glob("*.jsonl"))


def load_shipped_gold() -> list[GoldTurn]:
    """The shipped gold set."""
    return load_gold(shipped_gold_files())


def select_split(turns: Iterable[GoldTurn], split: Literal["dev", "test", "all"]) -> list[GoldTurn]:
    """The turns of one split (``all``: every turn; turns without a split count as dev)."""
    if split == "all":
        return list(turns)
    return [t for t in turns if (t.split or "dev") == split]


def default_split(named_files: bool) -> Literal["test", "all"]:
    """The split scored when none is asked for: ``test`` of the shipped set (its dev split trains
    the statistical coder), every line of files the user names (their lines may carry no split,
    and a line without one counts as dev)."""
    return "all" if named_files else "test"


def dev_turns(turns: Iterable[GoldTurn] | None = None) -> list[GoldTurn]:
    """The turns a coder may learn from: the dev split only, never test."""
    return select_split(load_shipped_gold() if turns is None else turns, "dev")
