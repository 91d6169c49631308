"""Persona pages: the library with filters, one persona (ladder and variants), the editor.

The editor's form comes from the persona JSON Schema (``forms.SchemaForm``); "Check" validates
and shows the YAML, "Save" also writes the file into the user folder when the persona is valid.
Messages beside the fields are ``therasim validate``'s reasons for each field; the box above
the form is the whole message ``therasim validate`` would print for the file.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from therasim.errors import ConfigError, UnknownNameError
from therasim.personas.loader import PERSONA_MESSAGES, parse_persona, persona_json_schema
from therasim.personas.schema import Persona
from therasim.studio.app import studio_of
from therasim.studio.forms import SchemaForm
from therasim.studio.library import Library, dump_yaml, ladder, variants
from therasim.vocab import Severity

router = APIRouter()
_FORM = SchemaForm(persona_json_schema())

#: The ladder a new persona starts from (every rung is required; clinicians change the values).
_NEW_LADDER = {
    "routine": {"suds_shift": 0},
    "distress": {"suds_shift": 10, "escalation": 1.2},
    "crisis_adjacent": {"suds_shift": 20, "initial_risk": "passive"},
    "imminent": {"suds_shift": 30, "initial_risk": "active"},
}


def _entry(library: Library, pid: str) -> Any:
    if pid not in library.entries:
        raise UnknownNameError("persona", pid, list(library.entries))
    return library.entries[pid]


@router.get("/")
async def home() -> RedirectResponse:
    """Send the home page to the persona library."""
    return RedirectResponse("/personas", status_code=303)


@router.get("/personas")
async def persona_list(
    request: Request, modality: str = "", tag: str = "", topic: str = "", q: str = ""
) -> Response:
    """List the personas, filtered by modality, tag, topic and free text."""
    studio = studio_of(request)
    library = studio.folder.load()
    return studio.render(
        "personas.html",
        entries=library.filter(modality, tag, topic, q),
        total=len(library.entries),
        errors=library.errors,
        tags=library.tags(),
        topics=library.topics(),
        chosen={"modality": modality, "tag": tag, "topic": topic, "q": q},
        folder=studio.config.personas,
    )


@router.get("/personas/new")
async def persona_new(request: Request, modality: str = "pe") -> Response:
    """Open the editor on a new persona of ``modality`` (``pe`` or ``cbt``)."""
    if modality not in ("pe", "cbt"):
        raise UnknownNameError("modality", modality, ["pe", "cbt"])
    doc: dict[str, Any] = {
        "version": 1,
        "fictional": True,
        "modality": modality,
        modality: {},
        "severity": _NEW_LADDER,
    }
    return _editor(request, doc, file="", replace="", errors={}, checked=False)


@router.get("/personas/{pid}")
async def persona_page(request: Request, pid: str, set: str = "") -> Response:
    """Show a persona: its severity ladder, variants and YAML (``set``: a variant to try)."""
    studio = studio_of(request)
    entry = _entry(studio.folder.load(), pid)
    extra: dict[str, Any] | None = None
    if set:
        key, sep, value = set.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"a variant is ATTRIBUTE=VALUE, got {set!r}", field="set")
        extra = {key.strip(): value.strip()}
    persona: Persona = entry.persona
    return studio.render(
        "persona.html",
        entry=entry,
        persona=persona,
        ladder=ladder(persona),
        variants=variants(persona, extra),
        yaml=dump_yaml(persona.model_dump(mode="json", exclude_defaults=True)),
        custom=set,
        saved=request.query_params.get("saved", ""),
    )


@router.get("/personas/{pid}/edit")
async def persona_edit(request: Request, pid: str) -> Response:
    """Edit your persona, or start a copy of a bundled one (a new id and file)."""
    entry = _entry(studio_of(request).folder.load(), pid)
    doc = entry.persona.model_dump(mode="json", exclude_defaults=True)
    if entry.source == "yours":
        return _editor(request, doc, file=entry.file, replace=entry.file, errors={}, checked=False)
    doc["id"] = f"{pid}-copy"
    return _editor(request, doc, file=f"{pid}-copy.yaml", replace="", errors={}, checked=False)


@router.post("/personas/save")
async def persona_save(request: Request) -> Response:
    """Check the edited persona, and save it when asked and valid; else back to the editor."""
    studio = studio_of(request)
    fields = await studio.form(request)
    file = fields.pop("_file", "").strip()
    replace = fields.pop("_replace", "").strip()
    action = fields.pop("_action", "check")
    doc = _FORM.parse(fields)
    errors = SchemaForm.errors(Persona, doc, PERSONA_MESSAGES)
    if not file and isinstance(doc.get("id"), str):
        file = f"{doc['id']}.yaml"
    if action == "save" and not errors:
        persona = Persona.model_validate(doc)
        library = studio.folder.load()
        try:
            studio.folder.save(persona, file, library, replace=replace)
        except ConfigError as exc:
            errors[exc.field or "_file"] = _reason(exc)
        else:
            return RedirectResponse(f"/personas/{persona.id}?saved=1", status_code=303)
    return _editor(request, doc, file=file, replace=replace, errors=errors, checked=True)


def _reason(exc: ConfigError) -> str:
    text = str(exc)
    return text.split(": ", 1)[1] if exc.field and ": " in text else text


def _editor(
    request: Request,
    doc: dict[str, Any],
    *,
    file: str,
    replace: str,
    errors: dict[str, str],
    checked: bool,
) -> Response:
    """The editor page for ``doc`` with ``errors`` beside their fields."""
    studio = studio_of(request)
    status = 422 if errors else 200
    yaml_text = dump_yaml(doc) if doc else ""
    summary = ""
    if checked and errors:
        try:
            parse_persona(yaml_text, source=file or "(new persona)")
        except ConfigError as exc:
            summary = str(exc)
    file_error = errors.pop("_file", "") or errors.pop("file", "")
    remaining = dict(errors)
    form = _FORM.fields(doc, remaining)
    return studio.render(
        "edit.html",
        status=status,
        form=form,
        file=file,
        replace=replace,
        file_error=file_error,
        errors=errors,
        unplaced=remaining,
        summary=summary,
        yaml=yaml_text,
        checked=checked,
        folder=studio.config.personas,
        severities=[s.value for s in Severity],
    )
