"""A subject reply the store cannot hold (a lone surrogate) is the subject's error, not a turn."""

from __future__ import annotations

from pathlib import Path

from factories import scripted_agents

from therasim.agents.llm import Gateway
from therasim.agents.subject import scripted_adherent
from therasim.agents.types import CompletionRequest
from therasim.personas import load_library
from therasim.simulations.records import TerminationReason
from therasim.simulations.runner import run_specs
from therasim.simulations.store import Store
from therasim.simulations.study import Study, expand


def _cut_emoji_on_turn_two(request: CompletionRequest) -> str:
    """Adherent on the first turn; on the second, half an emoji (a cut ``\\ud83d\\ude42``)."""
    assert request.context is not None
    if request.context.turn >= 1:
        return "I hear you \ud83d"
    return scripted_adherent(request)


async def test_an_unencodable_subject_reply_fails_its_session_as_a_subject_error(
    tmp_path: Path,
) -> None:
    study = Study.model_validate(
        {
            "id": "surrogate",
            "subjects": {"bad": "scripted:test-cut-emoji", "good": "scripted:adherent"},
            "personas": {"globs": ["pe-*"], "limit": 1},
            "severities": ["routine"],
            "appraiser": {"model": "scripted:lexical"},  # no coder to fit
            "max_turns": 3,
            "questionnaires": False,
            "cache": False,
            "concurrency": 1,
        }
    )
    library = load_library()
    specs = expand(study, library)
    gateway = Gateway(study.gateway_config())
    try:
        with (
            scripted_agents({"test-cut-emoji": _cut_emoji_on_turn_two}),
            Store(tmp_path / "store.sqlite") as store,
        ):
            stats = await run_specs(
                specs, study=study, store=store, gateway=gateway, library=library
            )
            rows = {r.subject: r for r in store.sessions()}
            bad = store.load_session(rows["bad"].session_id)
    finally:
        await gateway.aclose()
    assert (stats.completed, stats.failed) == (1, 1)  # the batch went on
    assert rows["good"].status == "completed"
    assert rows["bad"].status == "failed"
    assert rows["bad"].termination_reason == TerminationReason.SUBJECT_ERROR
    error = rows["bad"].error or ""
    assert error.startswith("[role subject, model scripted:test-cut-emoji] ")
    assert "not valid Unicode text" in error and "U+D83D" in error
    assert bad is not None
    therapist = [t.text for t in bad.turns if t.speaker == "therapist"]
    assert len(therapist) == 1  # the first reply stays; the refused one is no turn
    assert all("\ud83d" not in t.text for t in bad.turns)
