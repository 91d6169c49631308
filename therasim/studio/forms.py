"""A form from a JSON Schema, and the form's values back to the document the schema describes.

Generic over the schema pydantic exports (``$ref``/``$defs``, ``anyOf`` with null, enums,
``const``, arrays of strings or objects, objects keyed by an enum such as the severity ladder).
Every input is named by the document path pydantic reports errors at (``severity.routine.
suds_shift``, ``pe.narrative_details.0``), so a validation error lands beside its field.

Values are parsed only as far as the schema's type says (an integer field's text becomes an
``int`` when it is one); anything else is passed on as typed, so pydantic reports it with the
same message ``therasim validate`` prints. Lists always get one blank row to add an item;
blank rows are dropped. Fields whose description starts with ``Derived:`` are not shown: they
are never written by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from therasim.loading import describe_error

PRESENT = "__present"  # the checkbox of an optional section


@dataclass
class FormField:
    """One input or group of the form (``kind``: text, textarea, number, select, checkbox,
    object, section (an optional object), list, map)."""

    path: str
    label: str
    kind: str
    description: str = ""
    required: bool = False
    value: str = ""
    checked: bool = False
    options: list[str] = field(default_factory=list)
    placeholder: str = ""
    children: list[FormField] = field(default_factory=list)
    error: str = ""
    step: str = ""


class SchemaForm:
    """Builds fields from a JSON Schema and parses submitted values back into a document."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = schema
        self.defs: Mapping[str, Any] = schema.get("$defs", {})

    # ---- schema helpers

    def _node(self, node: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
        """The node with its ``$ref`` resolved, and whether null is also allowed."""
        nullable = False
        if "anyOf" in node:
            options = [o for o in node["anyOf"] if o.get("type") != "null"]
            nullable = len(options) < len(node["anyOf"])
            if len(options) == 1:
                node = {**{k: v for k, v in node.items() if k != "anyOf"}, **options[0]}
        if "$ref" in node:
            target = self.defs[node["$ref"].rsplit("/", 1)[-1]]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return node, nullable

    def _kind(self, node: Mapping[str, Any]) -> str:
        if ("const" in node and isinstance(node["const"], bool)) or node.get("type") == "boolean":
            return "checkbox"
        if "enum" in node:
            return "select"
        kind = node.get("type")
        if kind == "object":
            if "properties" in node:
                return "object"
            if isinstance(node.get("additionalProperties"), dict) and "propertyNames" in node:
                return "map"
            return "skip"  # free-form objects (derived 'changes') have no form
        if kind == "array":
            return "list"
        if kind in ("integer", "number"):
            return "number"
        if kind == "string":
            return "textarea" if node.get("minLength", 0) >= 10 else "text"
        return "skip"

    def _map_keys(self, node: Mapping[str, Any]) -> list[str]:
        names, _ = self._node(node["propertyNames"])
        return [str(k) for k in names.get("enum", [])]

    @staticmethod
    def _derived(node: Mapping[str, Any]) -> bool:
        return str(node.get("description", "")).startswith("Derived:")

    # ---- document -> fields

    def fields(self, doc: Mapping[str, Any], errors: dict[str, str] | None = None) -> FormField:
        """The form for ``doc``; each message of ``errors`` (path -> text) is set on its field
        and removed, so what is left had no field to sit beside."""
        errors = {} if errors is None else errors
        return self._build(self.schema, doc, "", "", True, errors)

    def _build(
        self,
        raw: Mapping[str, Any],
        value: Any,
        path: str,
        label: str,
        required: bool,
        errors: dict[str, str],
    ) -> FormField:
        node, nullable = self._node(raw)
        kind = self._kind(node)
        out = FormField(
            path=path,
            label=label or str(node.get("title", "")),
            kind=kind,
            description=str(raw.get("description") or node.get("description") or ""),
            required=required,
            error=errors.pop(path, ""),
        )
        if kind == "object":
            if nullable:
                out.kind = "section"
                out.checked = isinstance(value, Mapping)
            data = value if isinstance(value, Mapping) else {}
            needed = set(node.get("required", []))
            for key, sub in node["properties"].items():
                if self._derived(sub):
                    continue
                child = self._build(sub, data.get(key), _join(path, key), "", key in needed, errors)
                if child.kind != "skip":
                    child.label = child.label or key
                    out.children.append(child)
        elif kind == "map":
            data = value if isinstance(value, Mapping) else {}
            needed = set(node.get("required", []))
            for key in self._map_keys(node):
                child = self._build(
                    node["additionalProperties"], data.get(key), _join(path, key), key,
                    key in needed, errors,
                )  # fmt: skip
                out.children.append(child)
        elif kind == "list":
            items = list(value) if isinstance(value, list) else []
            item_schema = node.get("items", {})
            for i, item in enumerate([*items, None]):
                child = self._build(
                    item_schema, item, _join(path, str(i)), f"{i + 1}", False, errors
                )
                out.children.append(child)
            out.placeholder = f"at least {node['minItems']}" if node.get("minItems") else ""
        else:
            default = node.get("default")
            out.placeholder = "" if default is None else str(default)
            if kind == "checkbox":
                out.checked = value is True
            else:
                out.value = "" if value is None else str(value)
            if kind == "select":
                out.options = [str(o) for o in node["enum"]]
            if kind == "number":
                out.step = "1" if node.get("type") == "integer" else "any"
                bounds = [f"{k} {node[k]:g}" for k in ("minimum", "maximum") if k in node]
                out.placeholder = out.placeholder or ", ".join(bounds)
        return out

    # ---- form values -> document

    def parse(self, form: Mapping[str, str]) -> dict[str, Any]:
        """The document the submitted ``form`` values describe (see the module docstring)."""
        present, doc = self._parse(self.schema, form, "", True)
        return doc if present and isinstance(doc, dict) else {}

    def _parse(
        self, raw: Mapping[str, Any], form: Mapping[str, str], path: str, required: bool
    ) -> tuple[bool, Any]:
        node, nullable = self._node(raw)
        kind = self._kind(node)
        if kind == "skip":
            return False, None
        if kind in ("object", "map"):
            if kind == "object" and nullable and form.get(_join(path, PRESENT)) != "on":
                return False, None
            needed = set(node.get("required", []))
            subs = (
                [(k, s) for k, s in node["properties"].items() if not self._derived(s)]
                if kind == "object"
                else [(k, node["additionalProperties"]) for k in self._map_keys(node)]
            )
            out = {}
            for key, sub in subs:
                ok, value = self._parse(sub, form, _join(path, key), key in needed)
                if ok:
                    out[key] = value
            return bool(out) or required or nullable, out
        if kind == "list":
            items = []
            for i in range(_max_index(form, path) + 1):
                ok, value = self._parse(node.get("items", {}), form, _join(path, str(i)), False)
                if ok and value not in ({}, []):
                    items.append(value)
            return bool(items) or required, items
        if kind == "checkbox":
            return True, form.get(path) == "on"
        text = form.get(path, "").strip()
        if not text:
            return False, None
        if node.get("type") == "integer":
            return True, _number(text, int)
        if node.get("type") == "number":
            return True, _number(text, float)
        return True, text

    # ---- validation

    @staticmethod
    def errors(
        model: type[BaseModel],
        doc: Mapping[str, Any],
        overrides: Mapping[tuple[str, ...], str] | None = None,
    ) -> dict[str, str]:
        """Field path -> message (``therasim validate``'s words) for every problem of ``doc``;
        empty when it validates. Several problems at one path are joined."""
        try:
            model.model_validate(doc)
        except ValidationError as exc:
            out: dict[str, str] = {}
            for err in exc.errors():
                path = ".".join(str(p) for p in err["loc"])
                message = describe_error(err, model, overrides)
                out[path] = f"{out[path]}; {message}" if path in out else message
            return out
        return {}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _max_index(form: Mapping[str, str], path: str) -> int:
    """The highest list index submitted under ``path`` (-1 for none)."""
    prefix = f"{path}."
    found = -1
    for name in form:
        if name.startswith(prefix):
            head = name[len(prefix) :].split(".", 1)[0]
            if head.isdigit() and len(head) <= 4:
                found = max(found, int(head))
    return found


def _number(text: str, kind: type) -> Any:
    try:
        value = kind(text)
    except ValueError:
        if kind is int:
            try:
                as_float = float(text)
            except ValueError:
                return text
            return int(as_float) if as_float.is_integer() else as_float
        return text
    return value
