"""``scripted:NAME``: a deterministic built-in from :mod:`therasim.agents.scripted`."""

from __future__ import annotations

import inspect

from pydantic import BaseModel

from therasim.agents.llm.backends.base import BaseBackend, RawCompletion
from therasim.agents.llm.spec import ModelSpec
from therasim.agents.llm.structured import StructuredMode
from therasim.agents.llm.usage import approx_usage
from therasim.agents.scripted import get_scripted
from therasim.agents.types import CompletionRequest


class ScriptedBackend(BaseBackend):
    """Runs the scripted agent ``model.name``; not cached (it is cheaper than a lookup).

    An agent seen to answer synchronously (every built-in) runs without the gateway's timer:
    a call that never yields cannot be interrupted, and arming the timer three times a turn was
    a measurable share of the runner's CPU. An agent whose answer is awaitable keeps it.
    """

    cacheable = False

    def __init__(self) -> None:
        self._synchronous: set[str] = set()

    def interruptible(self, model: ModelSpec) -> bool:
        """False once ``model``'s agent has answered without an awaitable."""
        return model.name not in self._synchronous

    async def complete(
        self,
        request: CompletionRequest,
        model: ModelSpec,
        mode: StructuredMode | None,
        schema: type[BaseModel] | None,
    ) -> RawCompletion:
        """The scripted agent's reply, with approximate token counts."""
        result = get_scripted(model.name)(request)
        if inspect.isawaitable(result):
            self._synchronous.discard(model.name)
            result = await result
        else:
            self._synchronous.add(model.name)
        text = str(result)
        return RawCompletion(text, approx_usage(request, text))
