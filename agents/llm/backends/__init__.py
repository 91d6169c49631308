"""Backends behind the one :class:`Backend` protocol, and the registry the gateway looks them up in.

==============  ==========================================================================
``openai``      :class:`OpenAIBackend`: any OpenAI-compatible endpoint, one aiohttp POST
``local``       :class:`LocalBackend`: the same, on the llama.cpp server therasim runs
``scripted``    :class:`ScriptedBackend`: a deterministic built-in agent
``python``      :class:`PythonBackend`: a function of the message list (an app under test)
LangChain       :class:`LangChainBackend`, one name per provider (``anthropic``, ``ollama``, …)
==============  ==========================================================================

:class:`FunctionBackend` wraps a callable for tests (``Gateway(config, backends={...})``).
"""

from __future__ import annotations

from collections.abc import Callable

from therasim.agents.llm.backends.base import (
    Backend,
    BaseBackend,
    RawCompletion,
    map_client_error,
)
from therasim.agents.llm.backends.function import FunctionBackend
from therasim.agents.llm.backends.langchain import LangChainBackend
from therasim.agents.llm.backends.local import LocalBackend
from therasim.agents.llm.backends.openai import OpenAIBackend
from therasim.agents.llm.backends.python import PythonBackend
from therasim.agents.llm.backends.scripted import ScriptedBackend
from therasim.agents.llm.spec import LANGCHAIN_PROVIDERS
from therasim.errors import UnknownNameError

BackendFactory = Callable[[], Backend]


class BackendRegistry:
    """Backend name (a spec's prefix) → factory; each gateway makes its own instances."""

    def __init__(self) -> None:
        self._factories: dict[str, BackendFactory] = {}

    def register(self, name: str, factory: BackendFactory) -> None:
        """Make ``factory`` the backend of ``name:…`` specs."""
        self._factories[name] = factory

    def names(self) -> list[str]:
        """Every registered backend name."""
        return sorted(self._factories)

    def create(self, name: str) -> Backend:
        """A new instance of backend ``name``; ``UnknownNameError`` with "did you mean" otherwise."""
        try:
            factory = self._factories[name]
        except KeyError:
            raise UnknownNameError("backend", name, self.names()) from None
        return factory()


def builtin_backends() -> BackendRegistry:
    """The registry of the built-in backends, registered one by one."""
    registry = BackendRegistry()
    registry.register("openai", OpenAIBackend)
    registry.register("local", LocalBackend)
    registry.register("scripted", ScriptedBackend)
    registry.register("python", PythonBackend)
    for provider in LANGCHAIN_PROVIDERS:
        registry.register(provider, LangChainBackend)
    return registry


__all__ = [
    "Backend",
    "BackendFactory",
    "BackendRegistry",
    "BaseBackend",
    "FunctionBackend",
    "LangChainBackend",
    "LocalBackend",
    "OpenAIBackend",
    "PythonBackend",
    "RawCompletion",
    "ScriptedBackend",
    "builtin_backends",
    "map_client_error",
]
