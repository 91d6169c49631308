"""``FunctionBackend``: a Python callable as a backend, to script a model in tests.

    backend = FunctionBackend(lambda request: '{"met": true, "reason": "ok"}')
    gateway = Gateway(config, backends={"openai": backend})  # openai:* specs now call it

The callable gets the :class:`CompletionRequest` (sync, called inline, or async) and returns the
reply text, or a :class:`RawCompletion` to report usage. What it raises goes through the
gateway's error handling: a ``ModelError`` as is (raise ``RateLimited`` to test a retry), any
other exception as :func:`~therasim.agents.llm.backends.base.map_client_error` classes it (an
unknown one as permanent). Every call is kept in ``calls`` with its structured-output mode.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from pydantic import BaseModel

from therasim.agents.llm.backends.base import BaseBackend, RawCompletion
from therasim.agents.llm.spec import ModelSpec
from therasim.agents.llm.structured import STRUCTURED_MODES, StructuredMode
from therasim.agents.llm.usage import approx_usage
from therasim.agents.types import CompletionRequest

Reply: TypeAlias = str | RawCompletion
ReplyFn: TypeAlias = Callable[[CompletionRequest], Reply | Awaitable[Reply]]


class FunctionBackend(BaseBackend):
    """A backend that calls ``fn`` (see the module docstring); offline and not real by default."""

    def __init__(
        self,
        fn: ReplyFn,
        *,
        real: bool = False,
        cacheable: bool = True,
        local: bool = False,
        structured_modes: tuple[StructuredMode, ...] = STRUCTURED_MODES,
    ) -> None:
        self.fn = fn
        self.real = real
        self.cacheable = cacheable
        self.local = local
        self.structured_modes = structured_modes
        self.calls: list[tuple[CompletionRequest, StructuredMode | None]] = []

    async def complete(
        self,
        request: CompletionRequest,
        model: ModelSpec,
        mode: StructuredMode | None,
        schema: type[BaseModel] | None,
    ) -> RawCompletion:
        """Record the call, then answer with ``fn(request)`` (awaited when it is a coroutine)."""
        self.calls.append((request, mode))
        result = self.fn(request)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, RawCompletion):
            return result
        return RawCompletion(result, approx_usage(request, result))
