"""The registry of ``scripted:<name>`` backends: deterministic, offline agents.

Scripted agents are features, not test doubles: reference therapists are control arms, the
template patient and lexical appraiser make a fully offline pipeline, scripted judges calibrate
the panel. Each is a function of the request (its messages and ``metadata``) returning the reply
text, registered under a name::

    @register_scripted("echo")
    def echo(request: CompletionRequest) -> str:
        return request.messages[-1].content
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable

from therasim.agents.types import CompletionRequest
from therasim.errors import UnknownNameError

ScriptedFn = Callable[[CompletionRequest], "str | Awaitable[str]"]

_REGISTRY: dict[str, ScriptedFn] = {}

#: The default offline appraiser of studies, ``simulate`` and ``therasim calibrate``: the
#: statistical coder trained on the gold dev split (``agents/statcoder.py``).
DEFAULT_OFFLINE_APPRAISER = "scripted:statistical"

# Modules that register built-in scripted agents on import; loaded lazily so that importing the
# gateway stays cheap. Higher layers (evaluation's scripted judges) register when imported.
_BUILTIN_MODULES = (
    "therasim.agents.subject",
    "therasim.agents.patient",
    "therasim.agents.appraiser",
    "therasim.agents.statcoder",
)


def register_scripted(name: str) -> Callable[[ScriptedFn], ScriptedFn]:
    """Register ``fn`` as the backend ``scripted:<name>``."""

    def decorate(fn: ScriptedFn) -> ScriptedFn:
        _REGISTRY[name] = fn
        return fn

    return decorate


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a module not written yet must not break the rest
            if exc.name != module:
                raise


def scripted_names() -> list[str]:
    """Every registered scripted agent's name."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_scripted(name: str) -> ScriptedFn:
    """Look a scripted agent up by name, with a "did you mean" error."""
    if name not in _REGISTRY:
        _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError("scripted agent", name, list(_REGISTRY)) from None


async def run_scripted(name: str, request: CompletionRequest) -> str:
    """Call a scripted agent, sync or async."""
    result = get_scripted(name)(request)
    if inspect.isawaitable(result):
        result = await result
    return str(result)
