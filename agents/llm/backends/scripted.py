"""``scripted:NAME``: a deterministic built-in from :mod:`therasim.agents.scripted`."""

from __future__ import annotations

from pydantic import BaseModel

from therasim.agents.llm.backends.base import BaseBackend, RawCompletion
from therasim.agents.llm.spec import ModelSpec
from therasim.agents.llm.structured import StructuredMode
from therasim.agents.llm.usage import approx_usage
from therasim.agents.scripted import run_scripted
from therasim.agents.types import CompletionRequest


class ScriptedBackend(BaseBackend):
    """Runs the scripted agent ``model.name``; not cached (it is cheaper than a lookup)."""

    cacheable = False

    async def complete(
        self,
        request: CompletionRequest,
        model: ModelSpec,
        mode: StructuredMode | None,
        schema: type[BaseModel] | None,
    ) -> RawCompletion:
        """The scripted agent's reply, with approximate token counts."""
        text = await run_scripted(model.name, request)
        return RawCompletion(text, approx_usage(request, text))
