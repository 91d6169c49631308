"""Reading data files: one strict YAML reader and one ``load_model(path, Model)`` for every kind.

Every data file (persona, protocol, study, rubric, thresholds, lexicon, cues, banks) is read the
same way: size, binary and UTF-8 checks; YAML with duplicate keys refused and alias bombs
measured, never expanded; then pydantic; and every fault is one ``ConfigError`` naming the file,
the object's id and the field path, with a reason a clinician can act on.
"""

from __future__ import annotations

import json
import os
import re
import reprlib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from therasim.errors import ConfigError, clip, did_you_mean

__all__ = [
    "MAX_DATA_FILE_BYTES",
    "MAX_YAML_DEPTH",
    "YAMLLimitError",
    "check_yaml_limits",
    "describe_error",
    "json_schema_of",
    "load_model",
    "load_yaml",
    "parse_model",
    "read_data_file",
    "read_data_text",
    "render_json_schema",
    "validation_error",
    "yaml_reason",
]

M = TypeVar("M", bound=BaseModel)

_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 4
_repr.maxlevel = 2


# --------------------------------------------------------------------------------------------
# YAML


#: Limits on every YAML document therasim reads. The shipped files stay far below them (the
#: largest is 75 kB, 720 values, 6 levels deep); beyond them a file is a mistake or an attack
#: (a "billion laughs" alias bomb expands a 1 kB file into 10**9 strings), refused before any
#: value is built.
MAX_DATA_FILE_BYTES = 4_000_000
MAX_YAML_VALUES = 100_000  # nodes after alias expansion
MAX_YAML_CHARS = 2 * MAX_DATA_FILE_BYTES  # scalar characters after alias expansion
MAX_YAML_DEPTH = 50  # nested mappings/lists


class YAMLLimitError(yaml.YAMLError):
    """A YAML document is over one of the limits above; ``problem`` says which, in plain words.

    A ``yaml.YAMLError`` so that every caller that already turns YAML errors into a
    ``ConfigError`` naming its file handles it too.
    """

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem

    def __str__(self) -> str:
        return self.problem


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def check_yaml_limits(root: yaml.Node) -> None:
    """Raise ``YAMLLimitError`` if the composed document ``root`` is too big or too deep once
    its aliases are expanded, or refers to itself.

    Walks each distinct node once (iteratively: deep documents cannot exhaust the stack) and
    sums the expanded sizes bottom-up, so a bomb is measured, never expanded.
    """
    values: dict[int, int] = {}
    chars: dict[int, int] = {}
    height: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            kids = _children(node)
            values[key] = 1 + sum(values[id(k)] for k in kids)
            chars[key] = (len(node.value) if isinstance(node, yaml.ScalarNode) else 0) + sum(
                chars[id(k)] for k in kids
            )
            height[key] = 1 + max((height[id(k)] for k in kids), default=0)
            line = node.start_mark.line + 1
            if height[key] > MAX_YAML_DEPTH:
                raise YAMLLimitError(
                    f"nested more than {MAX_YAML_DEPTH} levels deep (from line {line}); data "
                    "files are much flatter"
                )
            if values[key] > MAX_YAML_VALUES:
                raise YAMLLimitError(
                    f"expands to more than {MAX_YAML_VALUES:,} values (from line {line}; YAML "
                    "aliases such as *name repeat what they point to): refused as an alias bomb "
                    "or a mistake"
                )
            if chars[key] > MAX_YAML_CHARS:
                raise YAMLLimitError(
                    f"expands to more than {MAX_YAML_CHARS:,} characters of text (from line "
                    f"{line}, counting what YAML aliases repeat)"
                )
            continue
        if key in values:  # a node seen before: an alias, already measured
            continue
        if key in on_path:
            raise YAMLLimitError(
                f"a YAML alias refers to a value that contains it (line {node.start_mark.line + 1})"
            )
        on_path.add(key)
        stack.append((node, True))
        stack.extend((kid, False) for kid in _children(node))


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """``SafeLoader`` that refuses duplicate keys (plain YAML keeps the last one silently) and
    documents over the size, alias-expansion and depth limits (``check_yaml_limits``).

    On libyaml's parser where PyYAML has it: the pure-Python one took most of a finished
    study's rerun (the persona library is read on every command).
    """

    def get_single_data(self) -> Any:
        """The document's data, checked against the limits between composing and building."""
        node = self.get_single_node()
        if node is None:
            return None
        check_yaml_limits(node)
        return self.construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[tuple[str, str], yaml.Node] = {}
        for key_node, _ in node.value:
            # Only scalar keys can be compared without constructing them; merge keys ('<<') may
            # legitimately be overridden, so they are not checked.
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"the key {clip(key_node.value, 80)!r} appears twice (first on line "
                        f"{seen[key].start_mark.line + 1})",
                        key_node.start_mark,
                    )
                seen[key] = key_node
        return cast(dict[Any, Any], super().construct_mapping(node, deep=deep))


def load_yaml(text: str) -> Any:
    """One YAML document, read safely: duplicate keys refused, and ``YAMLLimitError`` (a
    ``yaml.YAMLError``) for text over ``MAX_DATA_FILE_BYTES`` or a document over the
    alias-expansion and depth limits."""
    if len(text) > MAX_DATA_FILE_BYTES:
        raise YAMLLimitError(
            f"is {len(text):,} characters long; data files are at most {MAX_DATA_FILE_BYTES:,}"
        )
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects


def read_data_text(path: str | Path) -> str:
    """A data file's text; ``ConfigError`` naming the file if it is unreadable, over
    ``MAX_DATA_FILE_BYTES``, binary or not UTF-8 (size checked before the file is read whole)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            raw = fh.read(MAX_DATA_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("no such file", file=str(path)) from None
    except IsADirectoryError:
        raise ConfigError("is a folder, not a data file", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot be read: {exc.strerror or exc}", file=str(path)) from None
    if len(raw) > MAX_DATA_FILE_BYTES:
        raise ConfigError(
            f"is {max(size, len(raw)):,} bytes; data files are at most {MAX_DATA_FILE_BYTES:,}",
            file=str(path),
        )
    if b"\0" in raw:
        raise ConfigError("is a binary file, not YAML text", file=str(path))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"is not UTF-8 text (invalid byte at offset {exc.start})", file=str(path)
        ) from None


def read_data_file(path: str | Path) -> Any:
    """A YAML data file (study, rubric, thresholds, lexicon, cues) as Python data.

    Every fault is a ``ConfigError`` naming the file: unreadable, too large, binary or not UTF-8,
    invalid YAML, a duplicate key, or a document over the alias-expansion or depth limits.
    """
    path = Path(path)
    text = read_data_text(path)
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_reason(exc), file=str(path)) from None
    except RecursionError:
        raise ConfigError("is nested too deeply to be a data file", file=str(path)) from None


def yaml_reason(exc: yaml.YAMLError) -> str:
    """A YAML fault in plain words, with its line and column."""
    if isinstance(exc, YAMLLimitError):
        return exc.problem
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    if "nesting depth" in problem:  # libyaml's own cap, at 1,000 levels
        return f"nested too deeply{where}: data files allow at most {MAX_YAML_DEPTH} levels"
    if isinstance(exc, yaml.constructor.ConstructorError) and mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"  # e.g. a duplicate key
    return (
        f"not valid YAML{where}: {problem}. Check the indentation, and put text containing "
        f"': ' or starting with a special character in quotes"
    )


_ID_LINE = re.compile(r"^id:\s*['\"]?([A-Za-z0-9_.~-]+)", re.MULTILINE)


def _id_of(doc: Any, text: str) -> str | None:
    if isinstance(doc, Mapping):
        value = doc.get("id")
        return value if isinstance(value, str) and value else None
    # The YAML did not parse: a top-level 'id:' line still tells the reader which object it is.
    match = _ID_LINE.search(text)
    return match.group(1) if match else None


# --------------------------------------------------------------------------------------------
# Pydantic errors in words


def _models_in(annotation: Any) -> tuple[list[type[BaseModel]], int]:
    """The pydantic models a field may hold, and how many list-index or dict-key steps precede them."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation], 0
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        found = [result for result in map(_models_in, args) if result[0]]
        return found[0] if len(found) == 1 else ([], 0)
    if origin in (list, tuple, set, frozenset, Sequence) and args:
        models, steps = _models_in(args[0])
        return models, steps + 1
    if origin in (dict, Mapping) and len(args) == 2:
        models, steps = _models_in(args[1])
        return models, steps + 1
    return [], 0


def _model_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model that ``loc`` points into (to list its fields or describe one of them)."""
    model: type[BaseModel] | None = root
    skip = 0
    for part in loc:
        if skip:  # a list index or dict key between a field and the model it contains
            skip -= 1
            continue
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        models, skip = _models_in(model.model_fields[part].annotation)
        model = models[0] if len(models) == 1 else None
    return None if skip else model


def _owner_and_field(
    root: type[BaseModel], loc: tuple[int | str, ...]
) -> tuple[type[BaseModel] | None, str | None]:
    if not loc or not isinstance(loc[-1], str):
        return None, None
    return _model_at(root, loc[:-1]), loc[-1]


def describe_error(
    error: ErrorDetails,
    root: type[BaseModel],
    overrides: Mapping[tuple[str, ...], str] | None = None,
) -> str:
    """One pydantic error in words a clinician can act on: what is wrong, what is allowed,
    and the field's own description. ``overrides`` maps a field path to a fixed reason."""
    loc = tuple(error["loc"])
    kind = error["type"]
    msg = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    # files are validated as JSON (strict): say it in YAML's words
    msg = msg.replace("a valid array", "a valid list").replace("be an object", "be a mapping")
    owner, name = _owner_and_field(root, loc)
    field_info = owner.model_fields.get(name) if owner is not None and name else None

    if kind == "missing":
        reason = "is required but missing"
    elif kind == "enum" and isinstance(error.get("input"), str):
        allowed = re.findall(r"'([^']*)'", str((error.get("ctx") or {}).get("expected", "")))
        close = did_you_mean(error["input"], allowed, n=1, cutoff=0.6)
        reason = f"{_repr.repr(error['input'])} is not allowed" + (f"; {close}" if close else "")
        # "did you mean 'x'?" ends a sentence already
        return reason + (
            f"{' ' if close else '. '}Allowed: {', '.join(allowed)}" if allowed else ""
        )
    elif kind == "extra_forbidden":
        allowed = sorted(owner.model_fields) if owner is not None else []
        close = did_you_mean(str(name), allowed, n=1, cutoff=0.6) if name else ""
        reason = "is not a field here (the schema forbids unknown fields)"
        if close:
            reason += f"; {close}"
        if allowed:
            reason += f"{' ' if close else '. '}Allowed here: {', '.join(allowed)}"
        return reason
    elif overrides and tuple(map(str, loc)) in overrides:
        reason = overrides[tuple(map(str, loc))]
    else:
        reason = f"{msg} (you wrote {_repr.repr(error.get('input'))})"
    if field_info is not None and field_info.description:
        reason += f". This field: {field_info.description}"
    return reason


def _entry_id(doc: Any, loc: tuple[int | str, ...]) -> str | None:
    """The ``id`` of the innermost list entry on the path to a failing field (a rubric item,
    a protocol phase), so a message can name it."""
    found = None
    node = doc
    for part in loc:
        if isinstance(node, Mapping) and isinstance(part, str):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            if isinstance(node, Mapping) and isinstance(node.get("id"), str):
                found = node["id"]
        else:
            break
    return found


def validation_error(
    exc: ValidationError,
    root: type[BaseModel],
    *,
    file: str | None,
    doc: Any = None,
    object_id: str | None = None,
    overrides: Mapping[tuple[str, ...], str] | None = None,
) -> ConfigError:
    """Every problem of a failed validation in one ``ConfigError`` naming file, id and field."""
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        field = ".".join(str(part) for part in loc) or "(top level)"
        problems.append((_entry_id(doc, loc), field, describe_error(err, root, overrides)))
    if len(problems) == 1:
        entry, field, reason = problems[0]
        return ConfigError(reason, file=file, object_id=entry or object_id, field=field)
    lines = "\n".join(
        f"  - {f'{entry!r}, ' if entry else ''}{field}: {reason}"
        for entry, field, reason in problems
    )
    return ConfigError(f"{len(problems)} problems:\n{lines}", file=file, object_id=object_id)


def parse_model(
    text: str,
    model: type[M],
    *,
    source: str = "<string>",
    overrides: Mapping[tuple[str, ...], str] | None = None,
) -> M:
    """Validate one YAML document into ``model``; ``source`` names it in error messages.

    ``ConfigError`` for any problem: YAML syntax, an empty document, a document that is not a
    mapping, or any schema violation (all of them listed in one error).
    """
    try:
        doc = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_reason(exc), file=source, object_id=_id_of(None, text)) from None
    except RecursionError:
        raise ConfigError("the YAML is nested too deeply to read", file=source) from None
    if doc is None:
        raise ConfigError("the file is empty; it should hold one mapping of fields", file=source)
    if not isinstance(doc, dict):
        raise ConfigError(
            f"the file should hold one mapping of fields (id: ..., ...), "
            f"but it holds a {type(doc).__name__}: {_repr.repr(doc)}",
            file=source,
            object_id=_id_of(None, text),
        )
    object_id = _id_of(doc, text)
    try:
        # strict, as JSON: `true`, `yes` or "34" for a number is an error, not 1 or 34 (the
        # JSON Schemas editors use say so too), while names still read as enum values
        return model.model_validate_json(json.dumps(doc, allow_nan=True), strict=True)
    except ValidationError as exc:
        raise validation_error(
            exc, model, file=source, doc=doc, object_id=object_id, overrides=overrides
        ) from None
    except ConfigError as exc:  # raised by a validator that checks more than one field
        raise ConfigError(str(exc), file=source, object_id=object_id) from None
    except RecursionError:
        raise ConfigError(
            "the document refers to itself (YAML anchors) too deeply",
            file=source,
            object_id=object_id,
        ) from None


def load_model(
    path: str | Path, model: type[M], *, overrides: Mapping[tuple[str, ...], str] | None = None
) -> M:
    """Read and validate one YAML data file into ``model`` (see ``parse_model``)."""
    path = Path(path)
    return parse_model(read_data_text(path), model, source=str(path), overrides=overrides)


# --------------------------------------------------------------------------------------------
# JSON Schemas


def json_schema_of(model: type[BaseModel], title: str) -> dict[str, Any]:
    """A data-file model's JSON Schema (draft 2020-12), as the ``*.schema.json`` files hold it."""
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = title
    return schema


def render_json_schema(schema: Mapping[str, Any]) -> str:
    """The schema as stored on disk: sorted keys, indent 2, trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
