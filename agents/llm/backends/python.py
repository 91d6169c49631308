"""``python:package.module:function``: a whole application under test.

The function gets the message list as plain dicts, sync (run in a worker thread) or async, and
returns the reply text (or a dict with ``content``). Any exception it raises is permanent.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect

from pydantic import BaseModel

from therasim.agents.llm.backends.base import BaseBackend, RawCompletion
from therasim.agents.llm.spec import ModelSpec
from therasim.agents.llm.structured import StructuredMode
from therasim.agents.llm.usage import approx_usage
from therasim.agents.types import CompletionRequest
from therasim.errors import ModelError, PermanentModelError


class PythonBackend(BaseBackend):
    """Imports and calls the function a ``python:`` spec names."""

    async def complete(
        self,
        request: CompletionRequest,
        model: ModelSpec,
        mode: StructuredMode | None,
        schema: type[BaseModel] | None,
    ) -> RawCompletion:
        """Import the spec's function and call it with the messages as dicts; its reply as text."""
        module_name, _, func_name = model.name.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), func_name)
        except (ImportError, AttributeError) as exc:
            raise PermanentModelError(
                f"cannot load {model.name}: {exc}", role=request.role, model=model.raw
            ) from exc
        messages = [m.model_dump() for m in request.messages]
        result = (
            fn(messages)
            if inspect.iscoroutinefunction(fn)
            else await asyncio.to_thread(fn, messages)
        )
        if inspect.isawaitable(result):
            result = await result
        text = (
            result
            if isinstance(result, str)
            else str(result.get("content", ""))
            if isinstance(result, dict)
            else str(result)
        )
        return RawCompletion(text, approx_usage(request, text))

    def map_error(self, exc: Exception, role: str, model: str) -> ModelError:
        """The application's exception as a ``PermanentModelError`` (never retried)."""
        # the app's own failure, whatever library it came from: not worth a retry
        return PermanentModelError(f"{type(exc).__name__}: {exc}", role=role, model=model)
