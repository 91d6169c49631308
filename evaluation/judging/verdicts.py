"""What a judge answers: one :class:`Verdict` per item, or a batch of them keyed by item id.

A batched answer is validated by a model built per set of items (:func:`batch_model`), so the
JSON Schema sent with the call names every item id as a required key. Parsing is tolerant on
purpose: an entry that is missing or does not validate is left out (and later repaired or
recorded as an error row), an unknown key is dropped (and reported), and only an answer with no
valid entry at all fails validation, which lets the gateway's own repair round and output-mode
fallbacks handle answers that are not a batch at all.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from therasim.agents.llm.structured import extract_json
from therasim.agents.types import TolerantOutput
from therasim.evaluation.judging.rubric import RubricItem

__all__ = ["BatchAnswer", "Verdict", "batch_model", "met_of", "read_batch", "split_answer"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_VERDICT_KEYS = frozenset({"reason", "met", "score"})


class Verdict(TolerantOutput):
    """One judge's answer about one rubric item for one unit (a therapist turn or a session)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(
        description="At most two short sentences citing the evidence (longer reasons are trimmed)."
    )
    met: bool | None = Field(
        description="The item's answer; see the polarity rule. null only when it cannot be judged."
    )
    score: int | None = Field(
        default=None,
        ge=1,
        le=5,
        description="1-5 for score items (5 = the best clinical outcome); null for binary items.",
    )

    @field_validator("reason", mode="after")
    @classmethod
    def _two_sentences(cls, value: str) -> str:
        text = " ".join(value.split())
        sentences = _SENTENCE_END.split(text)
        text = " ".join(sentences[:2])
        return text if len(text) <= 400 else text[:399].rstrip() + "…"


@dataclass
class BatchAnswer:
    """A batched answer split by item: valid verdicts, invalid entries (why), unknown keys."""

    verdicts: dict[str, Verdict] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    def missing(self, ids: Iterable[str]) -> list[str]:
        """The ids in ``ids`` with no valid verdict (absent or invalid), in order."""
        return [i for i in ids if i not in self.verdicts]


def split_answer(data: Mapping[str, Any], ids: tuple[str, ...]) -> BatchAnswer:
    """Sort a batched JSON object into valid verdicts, invalid entries and unknown keys.

    A single flat verdict (``{"reason", "met", "score"}``) given for a one-item batch counts as
    that item's verdict: small models often answer that way.
    """
    answer = BatchAnswer()
    if len(ids) == 1 and ids[0] not in data and set(data) & _VERDICT_KEYS:
        data = {ids[0]: dict(data)}
    for key, entry in data.items():
        if key not in ids:
            answer.unknown.append(str(key))
            continue
        try:
            answer.verdicts[key] = Verdict.model_validate(entry)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "entry"
            answer.invalid[key] = f"{where}: {first['msg']}"
    return answer


def read_batch(text: str, ids: tuple[str, ...]) -> BatchAnswer:
    """:func:`split_answer` of the JSON object in a reply (an empty answer if there is none)."""
    try:
        data = json.loads(extract_json(text))
    except ValueError:
        return BatchAnswer()
    return split_answer(data, ids) if isinstance(data, dict) else BatchAnswer()


class _BatchBase(BaseModel):
    """Base of the per-call batch models: tolerant parsing, strict schema (module docstring)."""

    model_config = ConfigDict(populate_by_name=True)
    item_ids: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _keep_valid(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        ids = cls.item_ids
        answer = split_answer(data, ids)
        if not answer.verdicts:
            problems = "; ".join(f"{k}: {v}" for k, v in answer.invalid.items())
            raise ValueError(
                "expected one JSON object keyed by item id ("
                + ", ".join(ids)
                + ") with an object {reason, met, score} for each"
                + (f"; invalid entries: {problems}" if problems else "")
            )
        return {key: verdict.model_dump() for key, verdict in answer.verdicts.items()}

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The schema sent with the call: every item required, as a Verdict, no prose."""
        schema = super().model_json_schema(*args, **kwargs)
        _drop_prose(schema)  # the prompt explains the entries; the schema only constrains them
        schema["required"] = list(cls.item_ids)
        schema["additionalProperties"] = False
        for prop in schema.get("properties", {}).values():
            options = prop.pop("anyOf", None)  # the fields default to None so partial answers parse
            prop.pop("default", None)
            if options:
                prop.update(next(o for o in options if o.get("type") != "null"))
        return schema

    def verdict(self, item_id: str) -> Verdict | None:
        """The verdict for ``item_id`` (None when the answer lacked a valid one)."""
        value = getattr(self, _field_name(item_id), None)
        return value if isinstance(value, Verdict) else None


def _drop_prose(node: Any) -> None:
    """Remove ``title`` and ``description`` keys throughout a JSON Schema (in place)."""
    if isinstance(node, dict):
        for key in ("title", "description"):
            if isinstance(node.get(key), str):
                del node[key]
        for value in node.values():
            _drop_prose(value)
    elif isinstance(node, list):
        for value in node:
            _drop_prose(value)


def _field_name(item_id: str) -> str:
    return f"item_{item_id}"  # item ids may shadow BaseModel attributes ("copy", "json")


@functools.cache
def batch_model(scope: str, ids: tuple[str, ...]) -> type[_BatchBase]:
    """The model a batched answer about ``ids`` validates against (one class per id set)."""
    fields: dict[str, Any] = {
        _field_name(i): (Verdict | None, Field(default=None, alias=i)) for i in ids
    }
    model: type[_BatchBase] = create_model(
        f"{scope.capitalize()}Verdicts", __base__=_BatchBase, **fields
    )
    model.item_ids = ids
    return model


def met_of(item: RubricItem, verdict: Verdict) -> tuple[bool | None, int | None]:
    """``(met, score)`` of a verdict; a score item with ``met`` null takes it from the score."""
    if item.scale == "binary":
        return verdict.met, None
    met = verdict.met
    if met is None and verdict.score is not None:
        # score items: 5 is the best outcome for either polarity
        met = verdict.score >= 4 if item.polarity == "good" else verdict.score <= 2
    return met, verdict.score
