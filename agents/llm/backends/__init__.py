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
from therasim.registry import Registry

BackendFactory = Callable[[], Backend]


class BackendRegistry(Registry[BackendFactory]):
    """Backend name (a spec's prefix) → factory; each gateway makes its own instances."""

    def __init__(self, builtins: Callable[[], None] | None = None) -> None:
        super().__init__("backend", builtins=builtins)

    def create(self, name: str) -> Backend:
        """A new instance of backend ``name``; ``UnknownNameError`` with "did you mean" otherwise."""
        return self.get(name)()


def _register_builtins(registry: BackendRegistry) -> None:
    registry.add("openai", OpenAIBackend)
    registry.add("local", LocalBackend)
    registry.add("scripted", ScriptedBackend)
    registry.add("python", PythonBackend)
    for provider in LANGCHAIN_PROVIDERS:
        registry.add(provider, LangChainBackend)


def builtin_backends() -> BackendRegistry:
    """A fresh registry holding just the built-in backends."""
    registry = BackendRegistry()
    _register_builtins(registry)
    return registry


#: The process's backends: the built-ins, plus any a ``therasim.plugins`` entry point adds
#: (``BACKENDS.add("myserver", MyBackend)``); model specs are checked against it.
BACKENDS: BackendRegistry = BackendRegistry(builtins=lambda: _register_builtins(BACKENDS))


__all__ = [
    "BACKENDS",
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
