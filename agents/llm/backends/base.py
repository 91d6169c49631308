"""The one seam between the gateway and a model: the :class:`Backend` protocol.

A backend answers one request (``complete``) and says what the gateway may do around it: whether
it is real (blocked while real requests are off), whether its answers are cached, which
structured-output modes it takes, whether it is a ``local`` server (warmed before timed calls,
one call at a time, timeouts not retried, a default ``max_tokens``), and how its library's
exceptions map onto :mod:`therasim.errors`. Retries, limits, timeouts, the cache and accounting
stay in the gateway.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

from therasim.agents.llm.spec import ModelSpec
from therasim.agents.llm.structured import StructuredMode
from therasim.agents.types import CompletionRequest, Usage
from therasim.errors import (
    ModelConnectionError,
    ModelError,
    ModelTimeout,
    PermanentModelError,
    RateLimited,
    ServerError,
)


@dataclass
class RawCompletion:
    """A backend's answer before the gateway prices, caches and wraps it."""

    text: str
    usage: Usage


class Backend(Protocol):
    """What the gateway calls; one instance per backend name and gateway."""

    #: refuses to run while :func:`~therasim.agents.llm.allow_model_requests` is off
    real: bool
    #: answers go to the response cache (scripted agents are cheaper than a lookup)
    cacheable: bool
    #: a model served on this machine, one generation at a time (see the package docstring)
    local: bool
    #: the structured-output modes it takes, in the order to try them
    structured_modes: tuple[StructuredMode, ...]

    async def start(self, model: ModelSpec, role: str) -> None:
        """Get ``model`` ready before the first timed call (a no-op for most backends)."""
        ...

    def interruptible(self, model: ModelSpec) -> bool:
        """Whether a call to ``model`` can be stopped by the gateway's timeout (False: the call
        never yields to the event loop, so the gateway does not arm a timer for it)."""
        ...

    async def complete(
        self,
        request: CompletionRequest,
        model: ModelSpec,
        mode: StructuredMode | None,
        schema: type[BaseModel] | None,
    ) -> RawCompletion:
        """One answer; ``mode`` and ``schema`` are set for structured calls."""
        ...

    def map_error(self, exc: Exception, role: str, model: str) -> ModelError:
        """A library's exception (not already a ``ModelError``) as a therasim error."""
        ...

    async def aclose(self) -> None:
        """Release clients; the backend stays usable (it reopens on the next call)."""
        ...


class BaseBackend:
    """Defaults for a backend: not real, cached, prompt-only structured output, library errors
    mapped by :func:`map_client_error`."""

    real: bool = False
    cacheable: bool = True
    local: bool = False
    structured_modes: tuple[StructuredMode, ...] = ("prompt",)

    async def start(self, model: ModelSpec, role: str) -> None:
        """No set-up by default."""
        return None

    def interruptible(self, model: ModelSpec) -> bool:
        """Calls yield while they wait, by default."""
        return True

    async def complete(
        self,
        request: CompletionRequest,
        model: ModelSpec,
        mode: StructuredMode | None,
        schema: type[BaseModel] | None,
    ) -> RawCompletion:
        """One answer; every backend implements this."""
        raise NotImplementedError

    def map_error(self, exc: Exception, role: str, model: str) -> ModelError:
        """The exception mapped by :func:`map_client_error`."""
        return map_client_error(exc, role, model)

    async def aclose(self) -> None:
        """Nothing to release by default."""
        return None


#: Exception class names (anywhere in the class's MRO) that mean "worth a retry" in the SDKs
#: LangChain providers use: Anthropic, Google (api_core, genai), Mistral, Cohere, Groq,
#: Bedrock (botocore), Ollama, httpx. Matched by name so no optional package is imported.
_TRANSIENT_NAMES: dict[str, type[ModelError]] = {
    **dict.fromkeys(
        (
            "RateLimitError",
            "RateLimitExceeded",
            "ResourceExhausted",  # google.api_core: 429
            "TooManyRequests",
            "TooManyRequestsError",  # cohere
            "ThrottlingException",  # bedrock
        ),
        RateLimited,
    ),
    **dict.fromkeys(
        (
            "APITimeoutError",
            "TimeoutException",  # httpx
            "Timeout",
            "DeadlineExceeded",  # google.api_core: 504
            "ReadTimeout",
            "ConnectTimeout",
            "TimeoutError",
        ),
        ModelTimeout,
    ),
    **dict.fromkeys(
        ("APIConnectionError", "ConnectError", "ConnectionError"), ModelConnectionError
    ),
    **dict.fromkeys(
        (
            "InternalServerError",
            "InternalServerException",
            "ServiceUnavailable",  # google.api_core: 503
            "ServiceUnavailableError",
            "ServiceUnavailableException",
            "OverloadedError",  # anthropic: 529
            "ServerError",  # google.genai: 5xx
            "BadGateway",
            "GatewayTimeout",
        ),
        ServerError,
    ),
}


def http_status_of(exc: BaseException) -> int | None:
    """The HTTP status an SDK's exception carries, if any: ``status_code`` (Anthropic, Cohere,
    Ollama, OpenAI-style SDKs), ``response.status_code`` (httpx), ``code`` (Google) or
    ``status`` (aiohttp); botocore's ``response`` dict too. Never raises."""

    def attr(obj: object, name: str) -> object:
        try:  # some SDKs' properties raise when unset (httpx's ``request``)
            return getattr(obj, name, None)
        except Exception:
            return None

    response = attr(exc, "response")
    if isinstance(response, dict):  # botocore ClientError
        meta = response.get("ResponseMetadata")
        nested: object = meta.get("HTTPStatusCode") if isinstance(meta, dict) else None
    else:
        nested = attr(response, "status_code") if response is not None else None
    for value in (attr(exc, "status_code"), nested, attr(exc, "code"), attr(exc, "status")):
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return value
    return None


def error_for_status(status: int, message: str, role: str, model: str) -> ModelError:
    """The therasim error for an HTTP error status: 429 → ``RateLimited``, 408 →
    ``ModelTimeout``, 5xx → ``ServerError``, anything else → ``PermanentModelError``."""
    if status == 429:
        return RateLimited(message, role=role, model=model)
    if status == 408:
        return ModelTimeout(message, role=role, model=model)
    if status >= 500:
        return ServerError(message, role=role, model=model)
    return PermanentModelError(message, role=role, model=model)


def map_status_or_name(exc: BaseException, role: str, model: str) -> ModelError | None:
    """An exception of a library therasim does not import, classed by the HTTP status it
    carries (429 → ``RateLimited``, 408 → ``ModelTimeout``, 5xx → ``ServerError``, other
    4xx → ``PermanentModelError``), else by a well-known transient class name in its MRO;
    None when neither says anything."""
    msg = f"{type(exc).__name__}: {exc}"
    status = http_status_of(exc)
    if status is not None and status >= 400:
        return error_for_status(status, msg, role, model)
    for cls in type(exc).__mro__:
        kind = _TRANSIENT_NAMES.get(cls.__name__)
        if kind is not None:
            return kind(msg, role=role, model=model)
    return None


def map_client_error(exc: BaseException, role: str, model: str) -> ModelError:
    """Translate an HTTP client's or LangChain provider's exception into the therasim tree.

    The types of the libraries therasim ships with (openai, httpx, aiohttp) are matched by
    type; any other (a LangChain provider's SDK: Anthropic, Google, Mistral, Bedrock, …) by
    :func:`map_status_or_name`, so its 429s and 5xx are retried like OpenAI's; what neither
    recognises is permanent.
    """
    import aiohttp
    import httpx
    import openai

    msg = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, openai.RateLimitError):
        return RateLimited(msg, role=role, model=model)
    if isinstance(
        exc,
        openai.APITimeoutError
        | httpx.TimeoutException
        | asyncio.TimeoutError
        | aiohttp.ServerTimeoutError,
    ):
        return ModelTimeout(msg, role=role, model=model)
    if isinstance(
        exc, openai.APIConnectionError | httpx.ConnectError | aiohttp.ClientConnectionError
    ):
        return ModelConnectionError(msg, role=role, model=model)
    if isinstance(exc, openai.InternalServerError | aiohttp.ClientPayloadError):
        return ServerError(msg, role=role, model=model)
    # any other status (openai.APIStatusError: 408, 5xx, other 4xx) goes by the status it carries
    return map_status_or_name(exc, role, model) or PermanentModelError(msg, role=role, model=model)
