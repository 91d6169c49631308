"""``local`` / ``local:/path/to/model.gguf``: the bundled model on loopback.

The OpenAI-compatible path, pointed at the llama-cpp-python server that
:func:`therasim.agents.local.ensure_local_server` starts and warms. ``start`` does that in a
worker thread before the first timed call (start-up and warm-up take seconds and block); the
gateway sends a local model one call at a time and does not retry its timeouts (``local``).
"""

from __future__ import annotations

import asyncio

from therasim.agents.llm.backends.openai import Endpoint, OpenAIBackend
from therasim.agents.llm.spec import ModelSpec
from therasim.errors import ModelError


class LocalBackend(OpenAIBackend):
    """The OpenAI-compatible backend on a llama.cpp server this process owns."""

    local = True

    def __init__(self) -> None:
        super().__init__()
        self._starting = asyncio.Lock()

    async def start(self, model: ModelSpec, role: str) -> None:
        """Start and warm ``model``'s server in a worker thread (once; concurrent calls wait).

        Run inside a call's timeout, the blocking start froze the event loop and counted toward
        the first call's time.
        """
        if model.raw in self._endpoints:
            return
        async with self._starting:
            if model.raw in self._endpoints:
                return
            try:
                await asyncio.to_thread(self.endpoint, model, role)
            except ModelError as exc:
                raise type(exc)(exc.detail, role=role, model=model.raw) from exc

    def _resolve(self, model: ModelSpec, role: str) -> Endpoint:
        from therasim.agents.local import ensure_local_server

        server = ensure_local_server(model.name or None)
        return Endpoint(f"{server.base_url}/chat/completions", server.model_alias, "sk-local", True)

    async def aclose(self) -> None:
        """Close the HTTP session and renew the start lock for the next event loop."""
        await super().aclose()
        self._starting = asyncio.Lock()  # asyncio locks bind to the loop that used them
