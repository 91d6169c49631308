"""Loading personas from YAML, selecting them for a study, and exporting the JSON Schema.

Every problem with a persona file surfaces as one ``ConfigError`` whose message names the file,
the persona id (when the document has one) and the field path (``severity.imminent.surfaces_at_turn``),
with a reason a clinician can act on. Several problems in one file are listed in one error;
``load_library`` likewise lists every bad file at once, so one ``therasim validate`` run shows all.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

from therasim.errors import ConfigError, UnknownNameError
from therasim.loading import (
    MAX_DATA_FILE_BYTES,
    YAMLLimitError,
    check_yaml_limits,
    json_schema_of,
    load_yaml,
    parse_model,
    read_data_file,
    read_data_text,
    render_json_schema,
)
from therasim.personas.schema import Persona

__all__ = [
    "MAX_DATA_FILE_BYTES",
    "PERSONA_MESSAGES",
    "SCHEMA_COMMENT",
    "YAMLLimitError",
    "check_yaml_limits",
    "collect_library",
    "export_json_schema",
    "library_files",
    "load_library",
    "load_persona",
    "load_yaml",
    "parse_persona",
    "persona_json_schema",
    "read_data_file",
    "read_data_text",
    "render_json_schema",
    "select_personas",
]

#: First line of every shipped persona file, so YAML-aware editors validate against the schema.
SCHEMA_COMMENT = "# yaml-language-server: $schema=../../persona.schema.json"

SCHEMA_FILE = Path(__file__).with_name("persona.schema.json")
MODALITIES = ("pe", "cbt")
#: Reasons worded for clinicians where pydantic's own would mislead (used by the studio too).
PERSONA_MESSAGES: dict[tuple[str, ...], str] = {
    ("fictional",): "must be true: personas describe synthetic patients, never real people"
}


# --------------------------------------------------------------------------------------------
# Loading


def parse_persona(text: str, source: str = "<string>") -> Persona:
    """Validate one persona given as YAML text; ``source`` names it in error messages.

    Raises ``ConfigError`` for any problem: YAML syntax, an empty document, a document that is
    not a mapping, or any schema violation (all of them listed in one error).
    """
    return parse_model(text, Persona, source=source, overrides=PERSONA_MESSAGES)


def load_persona(path: str | Path) -> Persona:
    """Read and validate one persona YAML file.

    Raises ``ConfigError`` naming the file, the persona id and the field path for any problem,
    including a missing or unreadable file.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            "is a folder, not a persona file (use load_library for folders)", file=str(path)
        )
    if not path.exists():
        raise ConfigError("no such persona file", file=str(path))
    text = read_data_text(path)  # size, binary and encoding checked before parsing
    return parse_persona(text, source=str(path))


def _packaged_library() -> Traversable:
    return resources.files("therasim.personas") / "library"


def library_files(
    paths: Iterable[str | Path] | str | Path | None = None,
) -> list[Path | Traversable]:
    """The persona files ``load_library`` would read, in load order.

    With ``paths=None``: every ``*.yaml`` under the packaged ``library/pe`` and ``library/cbt``.
    Otherwise each path is a file (taken as is) or a folder (every ``*.yaml`` below it).
    """
    if paths is None:
        root = _packaged_library()
        found: list[Path | Traversable] = []
        for modality in MODALITIES:
            folder = root / modality
            if folder.is_dir():
                found.extend(
                    sorted(
                        (f for f in folder.iterdir() if f.name.endswith(".yaml") and f.is_file()),
                        key=lambda f: f.name,
                    )
                )
        return found
    files: list[Path | Traversable] = []
    for raw in [paths] if isinstance(paths, str | Path) else paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*.yaml") if p.is_file()))
        elif path.exists():
            files.append(path)
        else:
            raise ConfigError("no such persona file or folder", file=str(path))
    return files


def _read(file: Path | Traversable) -> Persona:
    if isinstance(file, Path):
        return load_persona(file)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot be read: {exc}", file=str(file)) from None
    return parse_persona(text, source=str(file))


def collect_library(
    paths: Iterable[str | Path] | str | Path | None = None,
) -> tuple[dict[str, Persona], list[ConfigError]]:
    """Load every persona it can and return them with one ``ConfigError`` per bad file.

    For reporting tools (``therasim validate``) that want to show every problem; a duplicate id
    is an error for the second file, naming both.
    """
    personas: dict[str, Persona] = {}
    origin: dict[str, str] = {}
    errors: list[ConfigError] = []
    for file in library_files(paths):
        try:
            persona = _read(file)
        except ConfigError as exc:
            errors.append(exc)
            continue
        if persona.id in personas:
            errors.append(
                ConfigError(
                    f"duplicate persona id: defined in both {origin[persona.id]} and {file}; "
                    f"ids must be unique across the library",
                    file=str(file),
                    object_id=persona.id,
                    field="id",
                )
            )
            continue
        personas[persona.id] = persona
        origin[persona.id] = str(file)
    return personas, errors


def load_library(paths: Iterable[str | Path] | str | Path | None = None) -> dict[str, Persona]:
    """Load a persona library as ``{id: Persona}``.

    By default every ``*.yaml`` under the packaged ``personas/library/{pe,cbt}/``; otherwise the
    given files and folders. Raises one ``ConfigError`` listing every bad file (a single bad
    file's error is raised as is), including duplicate ids across files.
    """
    personas, errors = collect_library(paths)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        body = "\n\n".join(str(e) for e in errors)
        raise ConfigError(f"{len(errors)} persona files are invalid:\n\n{body}")
    return personas


# --------------------------------------------------------------------------------------------
# Selecting


def select_personas(
    library: Mapping[str, Persona],
    ids: Iterable[str] = (),
    globs: Iterable[str] = (),
    modality: str | None = None,
    tags: Iterable[str] = (),
) -> list[Persona]:
    """Choose personas for a study, sorted by id.

    ``ids`` and ``globs`` (``fnmatch`` patterns on the id, e.g. ``pe-combat-*``) are united; with
    neither, every persona is a candidate. Candidates are then kept only if they match
    ``modality`` (``"pe"`` or ``"cbt"``) and carry *all* of ``tags``.

    Raises ``UnknownNameError`` for an id not in the library and for an unknown modality, and
    ``ConfigError`` for a glob that matches no id at all (almost always a typo; a silent empty
    study is worse).
    """
    ids, globs, wanted_tags = list(ids), list(globs), set(tags)
    known = sorted(library)
    if modality is not None and modality not in MODALITIES:
        raise UnknownNameError("modality", modality, list(MODALITIES))
    chosen: set[str] = set()
    for persona_id in ids:
        if persona_id not in library:
            raise UnknownNameError("persona", persona_id, known)
        chosen.add(persona_id)
    for pattern in globs:
        matched = fnmatch.filter(known, pattern)
        if not matched:
            raise ConfigError(
                f"the persona pattern {pattern!r} matches no persona id ({len(known)} known)"
            )
        chosen.update(matched)
    if not ids and not globs:
        chosen = set(known)
    return [
        library[pid]
        for pid in sorted(chosen)
        if (modality is None or library[pid].modality == modality)
        and wanted_tags.issubset(library[pid].tags)
    ]


# --------------------------------------------------------------------------------------------
# JSON Schema


def persona_json_schema() -> dict[str, Any]:
    """The persona JSON Schema, as written to ``persona.schema.json``."""
    return json_schema_of(Persona, "therasim persona")


def export_json_schema(path: str | Path | None = None) -> dict[str, Any]:
    """Write the persona JSON Schema (default: ``personas/persona.schema.json``) and return it.

    Persona files point at it from their first line (``SCHEMA_COMMENT``) so YAML-aware
    editors validate while a clinician types.
    """
    schema = persona_json_schema()
    target = Path(path) if path is not None else SCHEMA_FILE
    target.write_text(render_json_schema(schema), encoding="utf-8")
    return schema
