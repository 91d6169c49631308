"""Builders the tests share. Registrations are scoped: a test module registers its scripted
agents for its own duration (``scripted_agents``), and ``conftest.py`` checks that no module
leaves the registries changed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from therasim.agents.scripted import SCRIPTED, ScriptedFn
from therasim.personas import Persona
from therasim.protocols import default_protocol_for
from therasim.simulations.records import SessionSpec
from therasim.simulations.store import Store


@contextlib.contextmanager
def scripted_agents(agents: Mapping[str, ScriptedFn]) -> Iterator[None]:
    """Register ``agents`` (name -> function) as ``scripted:<name>`` for the block only."""
    with contextlib.ExitStack() as stack:
        for name, fn in agents.items():
            stack.enter_context(SCRIPTED.temporarily(name, fn))
        yield


def study_file(tmp_path: Path, **fields: Any) -> Path:
    """A small offline study written to ``tmp_path/study.yaml`` (its run folder
    ``tmp_path/run``): one scripted arm on one routine PE persona, 4 turns, no questionnaires
    and no cache; ``fields`` override or add study fields."""
    doc: dict[str, Any] = {
        "id": "offline",
        "subjects": {"a": "scripted:adherent"},
        "personas": {"globs": ["pe-*"], "limit": 1},
        "severities": ["routine"],
        "max_turns": 4,
        "questionnaires": False,
        "cache": False,
        "output": str(tmp_path / "run"),
        **fields,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def session_spec(
    persona: Persona, subject: str, severity: str = "distress", **kw: Any
) -> SessionSpec:
    """A session of ``persona`` with ``subject`` on its modality's default protocol, 30 turns."""
    return SessionSpec.model_validate(
        {
            "persona": persona.id,
            "persona_version": persona.version,
            "severity": severity,
            "subject": subject,
            "protocol": default_protocol_for(persona.modality),
            "max_turns": 30,
            **kw,
        }
    )


def largest_turn(store: Store) -> int:
    """The most tokens one turn took in ``store``: a turn is at most a subject, an appraiser
    and a patient call in a row (with questionnaires off): the budget's overshoot unit."""
    largest = 0
    for sid in store.session_ids():
        session = store.load_session(sid)
        assert session is not None
        tokens = [c.input_tokens + c.output_tokens for c in session.calls]
        largest = max([largest, *(sum(tokens[i : i + 3]) for i in range(len(tokens)))])
    return largest
