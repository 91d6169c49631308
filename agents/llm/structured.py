"""Structured output: the modes tried in order, the schema prompt, JSON extraction and repair.

Modes: ``json_schema`` (the response format), ``json_object`` with the schema (what llama.cpp's
server accepts), ``prompt`` (the schema in a last user message). A backend says which it takes
(:attr:`~therasim.agents.llm.backends.Backend.structured_modes`); the gateway tries them in that
order, the mode that worked for a model first.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from therasim.agents.types import CompletionRequest, Message
from therasim.errors import ModelError

T = TypeVar("T", bound=BaseModel)

StructuredMode = Literal["json_schema", "json_object", "prompt"]
STRUCTURED_MODES: tuple[StructuredMode, ...] = ("json_schema", "json_object", "prompt")


@functools.cache
def schema_json(schema: type[BaseModel]) -> str:
    """``schema``'s JSON Schema, compact."""
    # A JSON Schema costs about a millisecond to build; a study asks for the same few thousands of times.
    return json.dumps(schema.model_json_schema(), separators=(",", ":"))


def schema_dict(schema: type[BaseModel]) -> dict[str, Any]:
    """``schema``'s JSON Schema as a fresh dict."""
    return dict(json.loads(schema_json(schema)))


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> str:
    """The JSON object inside a reply: fenced block, else the outermost braces."""
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    start, end = text.find("{"), text.rfind("}")
    if start == -1 or end <= start:
        raise ValueError("no JSON object in the reply")
    return text[start : end + 1]


def parse_json_into(text: str, schema: type[T]) -> T:
    """The reply's JSON object validated into ``schema`` (``ValueError``/``ValidationError``)."""
    return schema.model_validate_json(extract_json(text))


def looks_like_unsupported_format(exc: ModelError) -> bool:
    """Whether the backend refused the response format itself (try the next mode)."""
    detail = exc.detail.lower()
    return "response_format" in detail or "json_schema" in detail


def order_modes(modes: tuple[StructuredMode, ...], known: str | None) -> list[StructuredMode]:
    """``modes`` in their order, the one known to work for the model first."""
    return sorted(modes, key=lambda mode: mode != known)  # stable: the rest keep their order


def with_schema_prompt(request: CompletionRequest, schema: type[BaseModel]) -> CompletionRequest:
    """``request`` with a last user message asking for JSON that validates against ``schema``."""
    return request.model_copy(update={"messages": (*request.messages, _instruction(schema))})


@functools.lru_cache(maxsize=64)
def _instruction(schema: type[BaseModel]) -> Message:
    return Message(
        role="user",
        content="Answer with one JSON object only, no prose, that validates against this JSON "
        "Schema:\n" + schema_json(schema),
    )


def repair_request(request: CompletionRequest, reply: str, error: Exception) -> CompletionRequest:
    """The one repair round: the invalid reply, the error, and a request for corrected JSON."""
    fix = Message(
        role="user",
        content=(
            "Your last answer was not valid JSON for the required schema. Error: "
            f"{str(error)[:500]}\nReply again with only the corrected JSON object."
        ),
    )
    return request.model_copy(
        update={
            "messages": (*request.messages, Message(role="assistant", content=reply), fix),
        }
    )
