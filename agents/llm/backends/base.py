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


def map_client_error(exc: BaseException, role: str, model: str) -> ModelError:
    """Translate an HTTP client's or LangChain provider's exception into the therasim tree."""
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
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code >= 500:
            return ServerError(msg, role=role, model=model)
        if exc.status_code == 429:
            return RateLimited(msg, role=role, model=model)
        return PermanentModelError(msg, role=role, model=model)
    return PermanentModelError(msg, role=role, model=model)
