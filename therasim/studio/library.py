"""The studio's persona library: the bundled personas plus the clinician's folder.

The bundled library is read once; the user folder is read again on every request (a clinician
edits files beside the studio). Ids must be unique across both, as ``therasim validate`` and
``load_library`` require: a user file whose id is already taken is listed as an error and left
out, never silently preferred.

Saving writes only inside the user folder: the file name is checked as a relative path with no
``..`` part, and the resolved target (symlinks followed) must still be inside the folder. The
text written is the YAML dump of a persona that validated, read back with ``load_persona`` after
writing, so a saved file always validates.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from therasim.errors import ConfigError
from therasim.personas.dynamics import initial_state
from therasim.personas.loader import collect_library, library_files, load_persona, parse_persona
from therasim.personas.schema import Persona
from therasim.vocab import Severity

#: First lines of a file the studio writes.
HEADER = "# Fictional, synthetic patient for simulation; not based on any real person.\n"

#: Counterfactual variants previewed on a persona page (those of ``studies/demographic.yaml``).
PREVIEW_VARIANTS: tuple[dict[str, Any], ...] = (
    {"age": 72},
    {"gender": "woman"},
    {"gender": "man"},
    {"ethnicity": "Nigerian"},
    {"code_mixing": "Spanish words for family and feelings"},
)


@dataclass
class Entry:
    """One persona of the library and where it came from."""

    persona: Persona
    source: str  # "bundled" or "yours"
    file: str = ""  # relative to the user folder, for "yours"

    @property
    def topic(self) -> str:
        """The persona's trauma type (PE) or problem area (CBT), for filtering."""
        p = self.persona
        return p.pe.trauma_type if p.pe else p.cbt.problem_area if p.cbt else ""


@dataclass
class Library:
    """The personas a page can use, and the user files that did not load."""

    entries: dict[str, Entry]
    errors: list[ConfigError] = field(default_factory=list)

    def personas(self) -> dict[str, Persona]:
        """The loaded personas by id."""
        return {pid: e.persona for pid, e in self.entries.items()}

    def filter(
        self, modality: str = "", tag: str = "", topic: str = "", text: str = ""
    ) -> list[Entry]:
        """Entries matching every given criterion (topic and text: case-insensitive substring)."""
        out = []
        for entry in sorted(self.entries.values(), key=lambda e: e.persona.id):
            p = entry.persona
            if modality and p.modality != modality:
                continue
            if tag and tag not in p.tags:
                continue
            if topic and topic.casefold() not in entry.topic.casefold():
                continue
            if text and text.casefold() not in f"{p.id} {p.summary}".casefold():
                continue
            out.append(entry)
        return out

    def tags(self) -> list[str]:
        """Every tag in the library, sorted."""
        return sorted({t for e in self.entries.values() for t in e.persona.tags})

    def topics(self) -> list[str]:
        """Every topic in the library, sorted."""
        return sorted({e.topic for e in self.entries.values() if e.topic})


class PersonaFolder:
    """The bundled library and the user's folder of persona files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        bundled, errors = collect_library(None)
        if errors:  # a broken install: say so rather than show a partial library
            raise errors[0]
        self.bundled = bundled
        # run from a checkout, ./personas is the package itself: its library is not "yours"
        self._bundled_files = {str(Path(str(f)).resolve()) for f in library_files(None)}

    def load(self) -> Library:
        """The library now: bundled personas, then every valid user file with a new id."""
        entries = {pid: Entry(p, "bundled") for pid, p in self.bundled.items()}
        errors: list[ConfigError] = []
        if self.folder.is_dir():
            for path in sorted(self.folder.rglob("*.yaml")):
                if str(path.resolve()) in self._bundled_files:
                    continue
                if not self._inside(path):
                    errors.append(ConfigError("points outside the personas folder", file=str(path)))
                    continue
                try:
                    persona = load_persona(path)
                except ConfigError as exc:
                    errors.append(exc)
                    continue
                rel = path.relative_to(self.folder).as_posix()
                if persona.id in entries:
                    other = entries[persona.id]
                    where = "the bundled library" if other.source == "bundled" else other.file
                    errors.append(
                        ConfigError(
                            f"duplicate persona id: also defined in {where}; ids must be unique "
                            "across the library (left out here)",
                            file=str(path),
                            object_id=persona.id,
                            field="id",
                        )
                    )
                    continue
                entries[persona.id] = Entry(persona, "yours", rel)
        return Library(entries, errors)

    # ---- saving

    def _inside(self, path: Path) -> bool:
        root = self.folder.resolve()
        try:
            path.resolve().relative_to(root)
        except ValueError:
            return False
        return True

    def target(self, name: str) -> Path:
        """The user-folder path a relative file name points at; ``ConfigError`` if it would leave
        the folder (absolute, ``..``, a symlink out) or is not a ``.yaml`` file name."""
        pure = PurePosixPath(name.replace("\\", "/"))
        if not name or pure.is_absolute() or ".." in pure.parts or name.startswith("~"):
            raise ConfigError("must be a file name inside your personas folder", field="file")
        if pure.suffix != ".yaml" or any(part.startswith(".") for part in pure.parts):
            raise ConfigError(
                "must be a visible .yaml file name (e.g. my-persona.yaml)", field="file"
            )
        path = self.folder.joinpath(*pure.parts)
        if not self._inside(path):  # resolves symlinks, dangling ones included
            raise ConfigError("points outside your personas folder", field="file")
        return path

    def save(self, persona: Persona, name: str, library: Library, *, replace: str = "") -> Path:
        """Write ``persona`` as ``name`` in the user folder and return its path.

        ``replace`` is the file being edited (its own id may be kept). ``ConfigError`` naming
        the field for an id taken elsewhere, a file name outside the folder, or an existing
        file that is not the one being edited."""
        path = self.target(name)
        owner = library.entries.get(persona.id)
        if owner is not None and not (owner.source == "yours" and owner.file == replace):
            where = "the bundled library" if owner.source == "bundled" else owner.file
            raise ConfigError(
                f"the id {persona.id!r} is already used by {where}; choose another id",
                field="id",
            )
        rel = path.relative_to(self.folder).as_posix()
        if path.exists() and rel != replace:
            raise ConfigError(f"{rel} exists already; choose another file name", field="file")
        text = dump_persona(persona)
        parse_persona(text, source=rel)  # what is written validates
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self._inside(path.parent):
            raise ConfigError("points outside your personas folder", field="file")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".studio-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        load_persona(path)
        return path


def dump_persona(persona: Persona) -> str:
    """The persona as the YAML file the studio writes (defaults left out)."""
    return HEADER + dump_yaml(persona.model_dump(mode="json", exclude_defaults=True))


def dump_yaml(data: Any) -> str:
    """YAML for people: keys in schema order, unicode kept."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def ladder(persona: Persona) -> list[dict[str, Any]]:
    """The severity ladder: each rung's starting state and what surfaces when."""
    rows = []
    for level in Severity:
        variant = persona.at_severity(level)
        state = initial_state(variant)
        rung = variant.level
        rows.append(
            {
                "level": level.value,
                "suds": round(state.suds),
                "belief": round(state.belief),
                "alliance": state.alliance,
                "engagement": state.engagement,
                "risk": str(state.risk),
                "escalation": rung.escalation,
                "surfaces_at_turn": rung.surfaces_at_turn,
                "risk_when_surfaced": str(rung.risk_when_surfaced),
                "self_harm_content": rung.self_harm_content,
            }
        )
    return rows


def variants(persona: Persona, extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Counterfactual variants: the preview set plus ``extra``; each with its id, the changes it
    makes (none: a no-op, skipped by studies) and the rewritten summary, or its error."""
    out = []
    for change in [*PREVIEW_VARIANTS, *([extra] if extra else [])]:
        row: dict[str, Any] = {"change": change}
        try:
            changed = persona.counterfactual_changes(**change)
            row["changed"] = changed
            if changed:
                variant = persona.counterfactual(**change)
                row["id"] = variant.id
                row["summary"] = variant.summary
        except ConfigError as exc:
            row["error"] = str(exc)
        out.append(row)
    return out
