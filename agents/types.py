"""Data that crosses the gateway: messages, requests, responses, usage.

Kept apart from ``agents/llm/`` so that scripted agents and tests can build requests without
pulling in the backends.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from therasim.agents.context import TurnContext


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str


@functools.lru_cache(maxsize=8192)
def chat_message(role: Literal["system", "user", "assistant"], content: str) -> Message:
    """The (frozen, so shareable) message: a session resends its whole transcript every turn,
    and building those messages afresh each time was a measurable share of a turn's CPU."""
    return Message(role=role, content=content)


#: A prime stride, so a repeat's seed does not land on a neighbouring turn's (seed * 1000 + turn).
_REPEAT_SEED_STRIDE = 1_000_003


class CompletionRequest(BaseModel):
    """One call through the gateway.

    ``role`` picks the model from configuration (``subject``, ``patient``, ``appraiser``,
    ``judge:<name>``); ``model`` overrides it for one call (``therasim ask``). ``context`` (the
    session's :class:`TurnContext`) and ``metadata`` (extra keys, e.g. a questionnaire or a rubric
    item) are read only by scripted backends; neither is sent to a model nor part of the cache key
    (which holds ``seed``/``repeat``/``messages``). The context travels as the object itself:
    dumping a persona to JSON and validating it back on every scripted call cost a tenth of a
    turn's CPU in large studies (``benchmarks/``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: str
    messages: tuple[Message, ...]
    model: str | None = None
    temperature: float = 0.7
    max_tokens: int = 256
    seed: int | None = None
    repeat: int = 0
    stop: tuple[str, ...] = ()
    context: TurnContext | None = Field(default=None, exclude=True, repr=False)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(
        cls, role: str, messages: list[dict[str, str]] | list[Message], **kwargs: Any
    ) -> CompletionRequest:
        """Build a request from plain ``{"role", "content"}`` dicts or messages."""
        msgs = tuple(m if isinstance(m, Message) else Message.model_validate(m) for m in messages)
        return cls(role=role, messages=msgs, **kwargs)

    @property
    def sampling_seed(self) -> int | None:
        """The seed a backend sends: ``seed``, moved by ``repeat``. A seeded backend (llama.cpp,
        vLLM) gives the same sample for the same seed, so a repeat that sent ``seed`` unchanged
        was the rejected answer again, not a fresh sample."""
        if self.seed is None or not self.repeat:
            return self.seed
        return self.seed + _REPEAT_SEED_STRIDE * self.repeat

    def cache_key(self, model_spec: str, extra: dict[str, Any] | None = None) -> str:
        """Stable hash of everything that determines a backend's answer."""
        payload = {
            "model": model_spec,
            "messages": [m.model_dump() for m in self.messages],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "repeat": self.repeat,
            "stop": list(self.stop),
            **(extra or {}),
        }
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()


class Usage(BaseModel):
    """Tokens and cost of one call (cost in USD, None when the price is unknown).

    ``cached_input_tokens`` is the part of ``input_tokens`` the provider served from its prompt
    cache, where it reports one (0 otherwise): it shows whether a judge's fixed prompt prefix
    hits the cache."""

    model_config = ConfigDict(extra="forbid")

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    cached_input_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


class CompletionResponse(BaseModel):
    """What the gateway returns for one call."""

    model_config = ConfigDict(extra="forbid")

    text: str
    role: str
    model: str
    usage: Usage = Field(default_factory=Usage)
    cached: bool = False
    latency_s: float = 0.0
    attempts: int = 1
    structured_mode: str | None = None


class TolerantOutput(BaseModel):
    """Base of models that LLMs fill through structured output.

    The JSON Schema still says ``additionalProperties: false`` (it guides the model), but an
    answer that adds a key such as "rationale" or "confidence" should not cost a repair round:
    unknown keys are dropped before validation.
    """

    @model_validator(mode="before")
    @classmethod
    def _ignore_unknown_keys(cls, data: object) -> object:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k in cls.model_fields}
        return data
