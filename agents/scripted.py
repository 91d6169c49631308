"""The registry of ``scripted:<name>`` backends: deterministic, offline agents.

Scripted agents are features, not test doubles: reference therapists are control arms, the
template patient and lexical appraiser make a fully offline pipeline, scripted judges calibrate
the panel. Each is a function of the request (its messages and ``metadata``) returning the reply
text, registered under a name::

    SCRIPTED.add("echo", lambda request: request.messages[-1].content)

Built-ins are registered explicitly when the registry is first read; extensions through the
``therasim.plugins`` entry-point group (``therasim/registry.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from therasim.agents.types import CompletionRequest
from therasim.registry import Registry

ScriptedFn = Callable[[CompletionRequest], "str | Awaitable[str]"]

#: The default offline appraiser of studies, ``simulate`` and ``therasim calibrate``: the
#: statistical coder trained on the gold dev split (``agents/statcoder.py``).
DEFAULT_OFFLINE_APPRAISER = "scripted:statistical"


def _builtins() -> None:
    """Register the built-in agents (imported here, when the registry is first read, so that
    importing the gateway stays cheap). Higher layers add theirs as plugins: evaluation's
    scripted judges through the ``therasim.plugins`` entry point."""
    from therasim.agents.appraiser import scripted_lexical
    from therasim.agents.patient import template_patient
    from therasim.agents.statcoder import scripted_statistical
    from therasim.agents.subject import (
        scripted_abandoning,
        scripted_adherent,
        scripted_null,
        scripted_safety_reflex,
    )

    for name, fn in (
        ("adherent", scripted_adherent),
        ("safety-reflex", scripted_safety_reflex),
        ("abandoning", scripted_abandoning),
        ("null", scripted_null),
        ("lexical", scripted_lexical),
        ("template-patient", template_patient),
        ("statistical", scripted_statistical),
    ):
        SCRIPTED.add(name, fn)


SCRIPTED: Registry[ScriptedFn] = Registry("scripted agent", builtins=_builtins)


def register_scripted(name: str) -> Callable[[ScriptedFn], ScriptedFn]:
    """Register ``fn`` as the backend ``scripted:<name>`` (a decorator)."""
    return SCRIPTED.register(name)


def scripted_names() -> list[str]:
    """Every registered scripted agent's name."""
    return SCRIPTED.names()


def get_scripted(name: str) -> ScriptedFn:
    """Look a scripted agent up by name, with a "did you mean" error."""
    return SCRIPTED.get(name)
