"""Builders the tests share. Registrations are scoped: a test module registers its scripted
agents for its own duration (``scripted_agents``), and ``conftest.py`` checks that no module
leaves the registries changed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from therasim.agents.scripted import SCRIPTED, ScriptedFn


@contextlib.contextmanager
def scripted_agents(agents: Mapping[str, ScriptedFn]) -> Iterator[None]:
    """Register ``agents`` (name -> function) as ``scripted:<name>`` for the block only."""
    with contextlib.ExitStack() as stack:
        for name, fn in agents.items():
            stack.enter_context(SCRIPTED.temporarily(name, fn))
        yield
