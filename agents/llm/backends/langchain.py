"""``PROVIDER:MODEL`` (``anthropic:…``, ``ollama:…``, …): LangChain's ``init_chat_model``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from therasim.agents.llm.backends.base import BaseBackend, RawCompletion
from therasim.agents.llm.spec import ModelSpec
from therasim.agents.llm.structured import StructuredMode
from therasim.agents.llm.usage import approx_usage
from therasim.agents.types import CompletionRequest, Message, Usage
from therasim.errors import PermanentModelError


class LangChainBackend(BaseBackend):
    """A LangChain chat model per spec, built on first use; structured output through
    ``with_structured_output`` (``json_schema``), else the schema prompt.

    The provider SDK's exceptions (Anthropic, Google, Mistral, Bedrock, …; none imported here)
    are classed by :func:`~therasim.agents.llm.backends.base.map_client_error`: by the HTTP
    status they carry, else by a well-known transient class name, so a provider's 429 or 5xx
    is retried like OpenAI's.
    """

    real = True
    structured_modes: tuple[StructuredMode, ...] = ("json_schema", "prompt")

    def __init__(self) -> None:
        self._clients: dict[str, Any] = {}

    def _client(self, model: ModelSpec, role: str) -> Any:
        key = model.raw
        if key not in self._clients:
            from langchain.chat_models import init_chat_model

            try:
                self._clients[key] = init_chat_model(model.name, model_provider=model.backend)
            except Exception as exc:
                raise PermanentModelError(
                    f"LangChain cannot build {model.raw}: {exc}", role=role, model=model.raw
                ) from exc
        return self._clients[key]

    async def complete(
        self,
        request: CompletionRequest,
        model: ModelSpec,
        mode: StructuredMode | None,
        schema: type[BaseModel] | None,
    ) -> RawCompletion:
        """One reply from the chat model (``with_structured_output`` for ``json_schema``)."""
        client = self._client(model, request.role)
        kwargs: dict[str, Any] = {
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        }
        if schema is not None and mode == "json_schema":
            # the sampling settings go to with_structured_output, which passes them on to the
            # model (a structured runnable drops them at invoke time); a provider whose method
            # takes none gets its defaults
            settings = {k: v for k, v in kwargs.items() if v is not None}
            try:
                runnable = client.with_structured_output(schema, include_raw=True, **settings)
            except (TypeError, ValueError):
                runnable = client.with_structured_output(schema, include_raw=True)
            out = await runnable.ainvoke(_to_langchain(request.messages))
            raw = out["raw"]
            parsed = out.get("parsed")
            text = parsed.model_dump_json() if isinstance(parsed, BaseModel) else _content_text(raw)
            return RawCompletion(text, _usage_of(raw, request))
        message = await client.ainvoke(_to_langchain(request.messages), **kwargs)
        return RawCompletion(_content_text(message), _usage_of(message, request))

    async def aclose(self) -> None:
        """Drop the chat models (rebuilt on the next call)."""
        self._clients.clear()


def _to_langchain(messages: tuple[Message, ...]) -> list[tuple[str, str]]:
    kinds = {"system": "system", "user": "human", "assistant": "ai"}
    return [(kinds[m.role], m.content) for m in messages]


def _content_text(message: Any) -> str:
    content = getattr(message, "content", message)
    if isinstance(content, list):
        return "".join(
            part.get("text", "") if isinstance(part, dict) else str(part) for part in content
        )
    return str(content)


def _usage_of(message: Any, request: CompletionRequest) -> Usage:
    meta = getattr(message, "usage_metadata", None)
    if meta:
        return Usage(
            input_tokens=int(meta.get("input_tokens", 0)),
            output_tokens=int(meta.get("output_tokens", 0)),
        )
    return approx_usage(request, _content_text(message))
