"""``executor: {kind: ray}`` on a local Ray cluster: the same store as the local executor, a
killed worker loses nothing, the budget caps spending, and without Ray the study fails fast
naming the extra.

The Ray tests share one ``ray.init(num_cpus=2)`` (module fixture; select them with ``-m ray``).
They are skipped when Ray is not installed; CI installs the extra (``make``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from factories import largest_turn

from therasim.agents.llm import Gateway
from therasim.errors import ConfigError
from therasim.personas import load_library
from therasim.simulations.records import TerminationReason
from therasim.simulations.runner import RunStats, executor_override, run_specs
from therasim.simulations.store import Store
from therasim.simulations.study import Study, expand, load_study

pytestmark = [pytest.mark.ray, pytest.mark.slow]

QUICKSTART = Path(__file__).resolve().parents[2] / "studies" / "quickstart.yaml"

# A ``python:`` subject that kills its own worker process (os._exit: no exception, no cleanup)
# the first time any session calls it, then answers like a therapist. The marker file makes
# "the first time" hold across processes: the retried session, on a restarted worker, goes on.
KILLER = """
import os
from pathlib import Path


def reply(messages):
    marker = Path(os.environ["THERASIM_TEST_KILL_MARKER"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return "Let's stay with that memory a little longer. What do you notice right now?"
"""

# A ``python:`` subject slow enough (0.1 s a reply) that the driver's half-second budget reads
# see the spending grow while sessions are still in flight.
SLOW = """
import time


def reply(messages):
    time.sleep(0.1)
    return "Stay with it. What happens next, and how high is it now, out of 100?"
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One local Ray cluster for the module; the workers can import the killer subject."""
    ray = pytest.importorskip("ray")
    modules = tmp_path_factory.mktemp("ray-modules")
    (modules / "ray_killer_subject.py").write_text(KILLER)
    (modules / "ray_slow_subject.py").write_text(SLOW)
    marker = modules / "killed"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        runtime_env={
            "env_vars": {"PYTHONPATH": str(modules), "THERASIM_TEST_KILL_MARKER": str(marker)}
        },
    )
    try:
        yield modules
    finally:
        ray.shutdown()


def _quickstart(**update: Any) -> Study:
    """The quickstart study, one persona per modality: 16 offline sessions. The lexical
    appraiser stands in for the statistical coder, which trains for ~15 s in a fresh home."""
    study = load_study(QUICKSTART)
    doc = study.model_dump(mode="json") | {
        "personas": {"globs": ["pe-*", "cbt-*"], "limit": 1},
        "appraiser": {"model": "scripted:lexical"},
        "cache": False,
        "calibration": None,
    }
    return Study.model_validate(doc | update)


async def _run(study: Study, store_path: Path) -> RunStats:
    library = load_library()
    gateway = Gateway(study.gateway_config())
    try:
        with Store(store_path) as store:
            return await run_specs(
                expand(study, library), study=study, store=store, gateway=gateway, library=library
            )
    finally:
        await gateway.aclose()


def _contents(store_path: Path) -> dict[str, Any]:
    """Everything stored per session except wall-clock times (when, and how long calls took)."""
    with Store(store_path) as store:
        rows = store.sessions()
        sessions = {r.session_id: r.model_dump(exclude={"started", "finished"}) for r in rows}
        turns: dict[str, list[Any]] = {}
        for t in store.turns():
            turns.setdefault(t.session_id, []).append(t.record.model_dump(exclude={"latency_s"}))
        calls: dict[str, list[Any]] = {}
        for c in store.calls():
            calls.setdefault(c.session_id, []).append(c.model_dump(exclude={"latency_s"}))
    assert len(sessions) == len(rows), "a session was stored twice"
    return {"sessions": sessions, "turns": turns, "calls": calls}


async def test_ray_stores_what_the_local_executor_stores(cluster: Path, tmp_path: Path) -> None:
    local = _quickstart()
    ray_study = _quickstart(executor={"kind": "ray", "address": "local", "workers": 2})
    local_stats = await _run(local, tmp_path / "local.sqlite")
    ray_stats = await _run(ray_study, tmp_path / "ray.sqlite")
    assert ray_stats.completed == local_stats.completed == 16
    assert (ray_stats.failed, ray_stats.retried) == (0, 0)
    assert ray_stats.turns == local_stats.turns
    assert ray_stats.usage.total_tokens == local_stats.usage.total_tokens
    stored_local, stored_ray = (
        _contents(tmp_path / "local.sqlite"),
        _contents(tmp_path / "ray.sqlite"),
    )
    assert set(stored_ray["sessions"]) == {s.session_id for s in expand(local, load_library())}
    assert stored_ray == stored_local  # same ids, rows, transcripts, patient states and calls
    # a rerun on Ray skips every stored session (resume is the driver's)
    again = await _run(ray_study, tmp_path / "ray.sqlite")
    assert (again.skipped, again.completed) == (16, 0)


async def test_a_killed_worker_loses_no_session(
    cluster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = cluster / "killed"
    assert not marker.exists()
    doc = {
        "subjects": {"killer": "python:ray_killer_subject:reply"},
        "max_turns": 4,
        "questionnaires": False,
        "concurrency": 8,
    }
    ray_stats = await _run(
        _quickstart(**doc, executor={"kind": "ray", "workers": 2}), tmp_path / "ray.sqlite"
    )
    assert marker.exists(), "no worker was killed"
    assert int(marker.read_text()) != os.getpid()  # a worker process died, not this one
    assert ray_stats.retried >= 1
    assert (ray_stats.completed, ray_stats.failed) == (4, 0)
    # the same study on the local executor (the marker is there: nothing dies) stores the same
    monkeypatch.syspath_prepend(str(cluster))
    monkeypatch.setenv("THERASIM_TEST_KILL_MARKER", str(marker))
    await _run(_quickstart(**doc), tmp_path / "local.sqlite")
    stored_ray, stored_local = (
        _contents(tmp_path / "ray.sqlite"),
        _contents(tmp_path / "local.sqlite"),
    )
    assert len(stored_ray["sessions"]) == 4  # every session stored, and once
    assert stored_ray == stored_local


async def test_a_session_that_always_kills_its_worker_is_stored_failed(
    cluster: Path, tmp_path: Path
) -> None:
    """Run ``max_retries`` + 1 times, then stored as failed with the reason; the other session
    finishes. One session at a time, so no other session shares the dying worker."""
    (cluster / "always_killer.py").write_text(
        "import os\n\ndef reply(messages):\n    os._exit(1)\n"
    )
    study = _quickstart(
        subjects={"killer": "python:always_killer:reply", "adherent": "scripted:adherent"},
        personas={"ids": ["pe-bereavement-01"]},
        severities=["routine"],
        max_turns=3,
        questionnaires=False,
        concurrency=1,
        executor={"kind": "ray", "workers": 2, "max_retries": 0},
    )
    stats = await _run(study, tmp_path / "s.sqlite")
    with Store(tmp_path / "s.sqlite") as store:
        rows = {r.subject: r for r in store.sessions()}
    assert len(rows) == 2
    assert rows["adherent"].status == "completed"
    killed = rows["killer"]
    assert killed.status == "failed" and killed.termination_reason.value == "internal_error"
    assert (
        killed.error and "worker running this session died on each of its 1 attempt" in killed.error
    )
    assert (stats.completed, stats.failed, stats.retried) == (1, 1, 1)


async def test_the_budget_caps_spending_on_ray(
    cluster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once spent, no session starts and those in flight stop at their next turn
    (``budget_exhausted``); a rerun without the budget then stores exactly what the local
    executor stores. The workers charge the budget's ledger at every turn, so the overshoot is
    one turn per session in flight, as on the local executor."""
    doc: dict[str, Any] = {
        "subjects": {"slow": "python:ray_slow_subject:reply"},
        "repeats": 4,
        "max_turns": 8,
        "questionnaires": False,
        "concurrency": 4,
    }
    monkeypatch.syspath_prepend(str(cluster))
    unlimited = await _run(_quickstart(**doc), tmp_path / "local.sqlite")
    limit = unlimited.usage.total_tokens // 5
    ray_doc = doc | {"executor": {"kind": "ray", "workers": 2}}
    path = tmp_path / "ray.sqlite"
    stats = await _run(_quickstart(**ray_doc, budget={"max_tokens": limit}), path)
    with Store(path) as store:
        rows = store.sessions()
        spent = store.uncached_totals().total_tokens
        largest = largest_turn(store)
    assert stats.budget_exhausted
    assert stats.not_started > 0  # no new session once spent
    assert len(rows) == stats.completed + stats.failed  # what started is stored, once
    assert limit <= spent <= limit + doc["concurrency"] * largest  # one turn per session
    stopped = [r for r in rows if r.termination_reason == TerminationReason.BUDGET_EXHAUSTED]
    assert stopped and all(r.status == "failed" for r in stopped)
    # a rerun with no budget redoes the stopped and unstarted sessions only
    final = await _run(_quickstart(**ray_doc), path)
    assert final.skipped == stats.completed
    assert _contents(path) == _contents(tmp_path / "local.sqlite")


def test_without_ray_the_study_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from therasim.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    study = _quickstart(executor={"kind": "ray"})
    with pytest.raises(ConfigError, match=r"pip install 'therasim\[ray\]'"):
        asyncio.run(_run(study, tmp_path / "s.sqlite"))
    with Store(tmp_path / "s.sqlite") as store:
        assert store.count() == 0
    # the command line fails before anything runs, a dry run included
    assert main(["run", str(QUICKSTART), "--executor", "ray", "--dry-run"]) != 0
    assert "therasim[ray]" in capsys.readouterr().err
    with executor_override("local"):  # and --executor local runs a ray study here
        stats = asyncio.run(
            _run(_quickstart(executor={"kind": "ray"}, max_turns=2), tmp_path / "l.sqlite")
        )
    assert stats.completed == 16
