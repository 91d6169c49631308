"""Battery items: the model, and reading and writing item files (JSONL or CSV).

A :class:`BatteryItem` is one single-turn unit of the seed paper's design: persona (with
variant), severity, phase kind, a short preceding context and the patient line to answer.
``battery_item.schema.json`` beside this file is its JSON Schema; :func:`load_items` reads a
user's file and names the file, the line and the field of a bad row. Generation and answering
live in ``simulations/battery.py``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from therasim.errors import ConfigError, UnknownNameError, did_you_mean
from therasim.loading import read_data_text, validation_error
from therasim.personas.dynamics import PatientState
from therasim.personas.schema import Persona
from therasim.protocols import ProtocolGraph, default_protocol_for, load_protocol
from therasim.vocab import PhaseKind, RiskLevel, Severity

__all__ = ["BatteryItem", "ContextLine", "load_items", "persona_of", "phase_of", "write_items"]


class ContextLine(BaseModel):
    """One utterance of an item's preceding context."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    speaker: Literal["therapist", "patient"]
    text: str


class BatteryItem(BaseModel):
    """One single-turn item: the patient line a model must answer, and where it stands."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@~=-]*$", description="Unique item id.")
    persona: str = Field(description="Base persona id (the library's).")
    variant: dict[str, Any] = Field(
        default_factory=dict, description="Demographic counterfactual, e.g. {age: 70}."
    )
    severity: Severity
    phase_kind: PhaseKind
    phase: str | None = Field(
        default=None, description="Protocol phase id; default: the first phase of that kind."
    )
    turn: int = Field(default=0, ge=0, description="Therapist turns before the patient line.")
    context: list[ContextLine] = Field(
        default_factory=list, description="The transcript before the patient line, oldest first."
    )
    patient_line: str = Field(min_length=1, description="The line the model under test answers.")
    expected_risk: RiskLevel | None = Field(
        default=None, description="The patient's risk at the line (the state's, if generated)."
    )
    state: PatientState | None = Field(
        default=None,
        description="The patient's state before the reply; default: the persona's initial "
        "state at the severity, with expected_risk.",
    )
    source: Literal["generated", "imported"] = "imported"


def write_items(items: Iterable[BatteryItem], path: Path) -> None:
    """Items as JSONL (the import format)."""
    lines = [item.model_dump_json(exclude_defaults=True) for item in items]
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


_CSV_JSON_COLUMNS = ("variant", "context", "state")


def _csv_rows(text: str) -> Iterable[tuple[int, dict[str, Any]]]:
    """CSV rows as (line, document): empty cells left out; ``variant``, ``context`` and
    ``state`` cells hold JSON (``context`` may also be lines of ``speaker: text``)."""
    reader = csv.DictReader(io.StringIO(text))
    line = reader.line_num + 1
    for row in reader:
        doc: dict[str, Any] = {}
        for name, cell in row.items():
            if name is None or cell is None or not cell.strip():
                continue
            doc[name.strip()] = cell.strip()
        for name in _CSV_JSON_COLUMNS:
            if name in doc:
                doc[name] = _csv_cell(name, doc[name])
        yield line, doc
        line = reader.line_num + 1


def _csv_cell(name: str, cell: str) -> Any:
    try:
        return json.loads(cell)
    except json.JSONDecodeError:
        if name != "context":
            return cell  # validation names the field
        lines = []
        for part in cell.splitlines():
            speaker, _, said = part.partition(":")
            lines.append({"speaker": speaker.strip().lower(), "text": said.strip()})
        return lines


def _jsonl_rows(text: str, file: str) -> Iterable[tuple[int, Any]]:
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield n, json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON ({exc.msg})", file=f"{file}, line {n}") from None


def load_items(path: str | Path, library: dict[str, Persona] | None = None) -> list[BatteryItem]:
    """Read a JSONL or CSV item file; every fault names the file, the line and the field.

    With ``library`` each item's persona (and variant, and phase kind against the persona's
    default protocol) is checked too. Item ids must be unique.
    """
    path = Path(path)
    text = read_data_text(path)
    file = str(path)
    rows = _csv_rows(text) if path.suffix.lower() == ".csv" else _jsonl_rows(text, file)
    items: list[BatteryItem] = []
    seen: dict[str, int] = {}
    for line, doc in rows:
        where = f"{file}, line {line}"
        if not isinstance(doc, dict):
            raise ConfigError("each line should hold one JSON object (an item)", file=where)
        try:
            item = BatteryItem.model_validate(doc)
        except ValidationError as exc:
            raise validation_error(
                exc, BatteryItem, file=where, doc=doc, object_id=doc.get("id")
            ) from None
        if item.id in seen:
            raise ConfigError(
                f"duplicate item id (first on line {seen[item.id]})",
                file=where,
                object_id=item.id,
                field="id",
            )
        seen[item.id] = line
        if library is not None:
            _check_item(item, library, where)
        items.append(item)
    if not items:
        raise ConfigError("the item file holds no items", file=file)
    return items


def _check_item(item: BatteryItem, library: dict[str, Persona], where: str) -> None:
    """The item's persona, variant and phase exist; errors name the file, line and field."""
    if item.persona not in library:
        hint = did_you_mean(item.persona, library)
        raise ConfigError(
            f"unknown persona {item.persona!r}" + (f"; {hint}" if hint else ""),
            file=where,
            object_id=item.id,
            field="persona",
        )
    try:
        persona = persona_of(item, library)
        graph = load_protocol(default_protocol_for(persona.modality))
        phase_of(item, graph)
    except UnknownNameError as exc:  # an unknown phase id
        raise ConfigError(str(exc), file=where, object_id=item.id, field="phase") from None
    except ConfigError as exc:
        field = "variant" if exc.field == "demographics" else exc.field
        reason = str(exc).rsplit(": ", 1)[-1] if exc.field else str(exc)
        raise ConfigError(reason, file=where, object_id=item.id, field=field) from None


def persona_of(item: BatteryItem, library: dict[str, Persona]) -> Persona:
    """The item's persona, with its variant and severity applied."""
    base = library.get(item.persona)
    if base is None:
        raise UnknownNameError("persona", item.persona, list(library))
    variant = base.counterfactual(**item.variant) if item.variant else base
    return variant.at_severity(item.severity)


def phase_of(item: BatteryItem, graph: ProtocolGraph) -> str:
    """The protocol phase the item is asked in: its own, else the first of its phase kind."""
    if item.phase is not None:
        phase = graph.phase(item.phase)  # ConfigError for an unknown id
        if phase.kind is not item.phase_kind:
            raise ConfigError(
                f"phase {item.phase!r} is a {phase.kind.value} phase, not {item.phase_kind.value}",
                field="phase",
            )
        return item.phase
    order = [*graph.canonical_path, *graph.phase_ids]
    for phase_id in order:
        if graph.phase(phase_id).kind is item.phase_kind:
            return phase_id
    raise ConfigError(
        f"protocol {graph.id!r} has no {item.phase_kind.value} phase", field="phase_kind"
    )
