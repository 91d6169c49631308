"""Rubrics as data: the items judges answer, loaded from ``evaluation/rubrics/*.yaml``.

A rubric is a list of items; each item is one question a judge answers about one therapist turn
(``scope: turn``) or about a whole session (``scope: session``). The polarity says how to read
``met``:

- ``good``: ``met=true`` is the good outcome (the reply acknowledged the patient, ...);
- ``failure``: ``met=true`` means the failure occurred (premature grounding happened, ...).

Whether an item applies is decided in code, before any judge is called (see
:func:`item_applies`): its ``modality`` (``pe``, ``cbt`` or ``any``), its ``phases`` (phase kinds
of the turn; empty means every phase; session items take none) and its optional
``applies_when`` condition. Conditions are clauses joined by ``and``, each ``VAR OP VALUE`` with
``OP`` one of ``>= > <= < == !=``:

- ``risk`` — a :class:`RiskLevel` compared by rank (none < passive < active < imminent);
- ``suds`` — a number 0–100;
- ``severity`` — the session's :class:`Severity`, compared along the ladder;
- ``patient_turns`` — patient utterances so far (e.g. ``patient_turns>=1``: the patient has
  said something the reply could answer).

For a turn the values are the patient's state just before the reply (what the therapist was
answering) and the patient utterances before it; for a session, ``risk`` is the highest risk
reached, ``suds`` the peak SUDS and ``patient_turns`` every patient utterance.

Item ids are unique across every rubric loaded together (verdicts are keyed by item id).
Every problem with a rubric file is one :class:`ConfigError` naming the file, the item and the
field path.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from therasim.errors import ConfigError, UnknownNameError, did_you_mean
from therasim.loading import parse_model, read_data_text
from therasim.vocab import RISK_ORDER, SEVERITY_ORDER, PhaseKind, risk_rank, severity_rank

__all__ = [
    "Condition",
    "Rubric",
    "RubricItem",
    "item_applies",
    "load_rubric",
    "load_rubrics",
    "parse_condition",
    "parse_rubric",
    "rubric_files",
]

Polarity = Literal["good", "failure"]
Scale = Literal["binary", "score_1_5"]
Scope = Literal["turn", "session"]
Modality = Literal["pe", "cbt", "any"]

_ITEM_ID = r"^[a-z][a-z0-9_]*$"

# --------------------------------------------------------------------------- conditions

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_CLAUSE = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|==|!=|>|<)\s*([A-Za-z0-9_.]+)\s*$")
CONDITION_VARIABLES = ("risk", "suds", "severity", "patient_turns")


@dataclass(frozen=True)
class Clause:
    """One ``VAR OP VALUE`` comparison of an ``applies_when`` condition."""

    variable: str
    op: str
    value: float

    def holds(self, values: Mapping[str, Any]) -> bool:
        """Whether the clause holds for ``values`` (a missing variable makes it false)."""
        raw = values.get(self.variable)
        if raw is None:
            return False
        current = _rank(self.variable, raw)
        return current is not None and _OPS[self.op](current, self.value)


@dataclass(frozen=True)
class Condition:
    """A parsed ``applies_when``: every clause must hold."""

    text: str
    clauses: tuple[Clause, ...]

    def holds(self, values: Mapping[str, Any]) -> bool:
        """Whether every clause holds for ``values`` (``risk``, ``suds``, ``severity``)."""
        return all(c.holds(values) for c in self.clauses)


def _rank(variable: str, value: Any) -> float | None:
    text = str(getattr(value, "value", value))
    if variable == "risk":
        rank = risk_rank(text, -1)
        return None if rank < 0 else float(rank)
    if variable == "severity":
        rank = severity_rank(text, -1)
        return None if rank < 0 else float(rank)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def parse_condition(text: str) -> Condition:
    """Parse ``"risk>=active and suds>50"``; ``ValueError`` with a readable reason on a bad one."""
    clauses = []
    for part in re.split(r"\s+and\s+", text.strip()):
        match = _CLAUSE.match(part)
        if match is None:
            raise ValueError(
                f"cannot read {part!r}: write VAR OP VALUE (e.g. 'risk>=active'), clauses joined by 'and'"
            )
        variable, op, raw = match.groups()
        if variable not in CONDITION_VARIABLES:
            close = did_you_mean(variable, CONDITION_VARIABLES, n=1, cutoff=0.6)
            hint = f"; {close}" if close else ""
            raise ValueError(
                f"unknown variable {variable!r}{hint} (known: {', '.join(CONDITION_VARIABLES)})"
            )
        value = _rank(variable, raw)
        if value is None:
            known = {"risk": list(RISK_ORDER), "severity": list(SEVERITY_ORDER)}.get(variable)
            allowed = ", ".join(known) if known else "a number"
            raise ValueError(f"{variable} cannot be compared with {raw!r} (allowed: {allowed})")
        clauses.append(Clause(variable=variable, op=op, value=value))
    return Condition(text=text.strip(), clauses=tuple(clauses))


# --------------------------------------------------------------------------- models


class RubricItem(BaseModel):
    """One question a judge answers about one therapist turn or one session."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(
        pattern=_ITEM_ID,
        description="Unique id across all rubrics, lower case with '_', e.g. 'premature_grounding'.",
    )
    version: int = Field(ge=1, description="Bumped whenever the question's meaning changes.")
    text: str = Field(
        min_length=20,
        description=(
            "The question the judge answers. For polarity 'good' phrase it so that met=true is the "
            "good outcome; for polarity 'failure' so that met=true means the failure occurred. Say "
            "which, explicitly."
        ),
    )
    brief: str | None = Field(
        default=None,
        min_length=20,
        max_length=240,
        description=(
            "The question in one line, for batched judging (one call rates every item of a "
            "turn, so the rubric is listed whole): same meaning as 'text', without the polarity "
            "sentence (the prompt labels each item GOOD or FAILURE). Null: 'text' is used."
        ),
    )
    polarity: Polarity = Field(
        description="'good': met=true is good. 'failure': met=true means the failure occurred."
    )
    scale: Scale = Field(
        default="binary",
        description="'binary' (met only) or 'score_1_5' (met plus a 1-5 score; 5 is best for 'good' items).",
    )
    scope: Scope = Field(
        description="'turn': judged on each therapist turn. 'session': judged once per session."
    )
    modality: Modality = Field(description="Sessions it applies to: 'pe', 'cbt' or 'any'.")
    phases: list[PhaseKind] = Field(
        default_factory=list,
        description="Phase kinds (of the judged turn) the item applies to; empty = every phase. Turn items only.",
    )
    applies_when: str | None = Field(
        default=None,
        description=(
            "Optional condition, e.g. 'risk>=active' or 'risk<active and suds>=50'; variables risk, "
            "suds, severity, patient_turns. Turn items read the state just before the reply; "
            "session items the maximum risk and the peak SUDS."
        ),
    )

    @field_validator("phases", mode="after")
    @classmethod
    def _phases_fit(cls, value: list[PhaseKind], info: ValidationInfo) -> list[PhaseKind]:
        if value and info.data.get("scope") == "session":
            raise ValueError("session items are judged once per session: leave phases empty")
        modality = info.data.get("modality")
        wrong = [
            p.value
            for p in value
            if (modality == "pe" and p.is_cbt) or (modality == "cbt" and p.is_exposure)
        ]
        if wrong:
            raise ValueError(f"phase kind(s) {', '.join(wrong)} never occur in {modality} sessions")
        if len(set(value)) != len(value):
            raise ValueError("a phase kind is listed twice")
        return value

    @field_validator("applies_when", mode="after")
    @classmethod
    def _condition_parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_condition(value)
        return value

    @property
    def condition(self) -> Condition | None:
        """The parsed ``applies_when`` (None when the item always applies)."""
        return parse_condition(self.applies_when) if self.applies_when else None


class Rubric(BaseModel):
    """A versioned set of rubric items, one YAML file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=_ITEM_ID, description="Rubric id, e.g. 'pe'; the file is <id>.yaml.")
    version: int = Field(ge=1, description="Bumped whenever an item is added, removed or changed.")
    description: str = Field(default="", description="What the rubric covers, for people.")
    items: list[RubricItem] = Field(min_length=1, description="The items, in report order.")

    @field_validator("items", mode="after")
    @classmethod
    def _unique_ids(cls, value: list[RubricItem]) -> list[RubricItem]:
        seen: set[str] = set()
        for item in value:
            if item.id in seen:
                raise ValueError(f"item id {item.id!r} appears twice")
            seen.add(item.id)
        return value

    def version_of(self, item: RubricItem) -> str:
        """``<rubric>@<rubric version>/<item version>``: stored with every verdict."""
        return f"{self.id}@{self.version}/{item.version}"


# --------------------------------------------------------------------------- applicability


def item_applies(
    item: RubricItem,
    *,
    modality: str,
    phase_kind: str | None = None,
    values: Mapping[str, Any] | None = None,
) -> bool:
    """Whether ``item`` applies to a turn in ``phase_kind`` (None for a session) of a session.

    ``values`` holds the condition variables (``risk``, ``suds``, ``severity``,
    ``patient_turns``); an item with a
    condition does not apply when a variable it needs is missing.
    """
    if not item_fits(
        item, modality=modality, phase_kind=phase_kind if item.scope == "turn" else None
    ):
        return False
    condition = item.condition
    return condition is None or condition.holds(values or {})


def item_fits(item: RubricItem, *, modality: str, phase_kind: str | None = None) -> bool:
    """Whether ``item`` is asked of a turn in ``phase_kind`` (None: of the session) of a
    ``modality`` session, its condition aside: what :func:`item_applies` checks first, and what
    cost estimates count before the patient's state is known."""
    if item.modality not in ("any", modality) or (item.scope == "turn") != (phase_kind is not None):
        return False
    return not item.phases or phase_kind in {p.value for p in item.phases}


# --------------------------------------------------------------------------- loading


def parse_rubric(text: str, source: str = "<string>") -> Rubric:
    """Validate one rubric given as YAML text; ``source`` names it in error messages."""
    return parse_model(text, Rubric, source=source)


def load_rubric(path: str | Path) -> Rubric:
    """Read and validate one rubric YAML file."""
    path = Path(path)
    rubric = parse_rubric(read_data_text(path), source=str(path))
    if path.stem != rubric.id:
        raise ConfigError(
            f"the rubric id {rubric.id!r} must match the file name ({path.stem}.yaml)",
            file=str(path),
            object_id=rubric.id,
            field="id",
        )
    return rubric


def _packaged() -> Traversable:
    return resources.files("therasim.evaluation") / "rubrics"


def rubric_files() -> dict[str, Traversable]:
    """The packaged rubric files by id (file stem)."""
    return {
        f.name.removesuffix(".yaml"): f
        for f in sorted(_packaged().iterdir(), key=lambda f: f.name)
        if f.name.endswith(".yaml") and f.is_file()
    }


def _read_packaged(rubric_id: str, file: Traversable) -> Rubric:
    rubric = parse_rubric(file.read_text(encoding="utf-8"), source=str(file))
    if rubric.id != rubric_id:
        raise ConfigError(
            f"the rubric id {rubric.id!r} must match the file name ({rubric_id}.yaml)",
            file=str(file),
            object_id=rubric.id,
            field="id",
        )
    return rubric


def load_rubrics(
    ids: Iterable[str] | None = None, *, paths: Iterable[str | Path] = ()
) -> list[Rubric]:
    """The packaged rubrics (all, or those named in ``ids``) plus any rubric files in ``paths``.

    Raises ``UnknownNameError`` for an unknown id and ``ConfigError`` when two rubrics share an
    id or an item id (verdicts are keyed by item id, so item ids must be unique).
    """
    files = rubric_files()
    wanted = list(files) if ids is None else list(ids)
    rubrics = []
    for rubric_id in wanted:
        if rubric_id not in files:
            raise UnknownNameError("rubric", rubric_id, list(files))
        rubrics.append(_read_packaged(rubric_id, files[rubric_id]))
    rubrics.extend(load_rubric(p) for p in paths)
    seen_rubrics: set[str] = set()
    seen_items: dict[str, str] = {}
    for rubric in rubrics:
        if rubric.id in seen_rubrics:
            raise ConfigError("two rubrics have this id", object_id=rubric.id, field="id")
        seen_rubrics.add(rubric.id)
        for item in rubric.items:
            if item.id in seen_items:
                raise ConfigError(
                    f"item id also used by rubric {seen_items[item.id]!r}; item ids must be unique",
                    object_id=f"{rubric.id}/{item.id}",
                    field="id",
                )
            seen_items[item.id] = rubric.id
    return rubrics
