"""The runner under failure: injected backend errors, and SIGKILL at random points then resume."""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fake_openai import FakeOpenAIServer

from therasim.agents.llm import Gateway, therasim_home
from therasim.agents.statcoder import load_coder
from therasim.personas import load_library
from therasim.simulations.runner import run_specs
from therasim.simulations.store import Store
from therasim.simulations.study import Study, expand

pytestmark = pytest.mark.slow


def study_doc(base_url: str, out: Path, **kw: object) -> dict[str, object]:
    return {
        "id": "fault",
        "subjects": {"fake": f"openai:fake?base_url={base_url}"},
        "personas": {"globs": ["pe-*", "cbt-*"], "limit": 3},
        "severities": ["routine", "distress"],
        "max_turns": 6,
        "questionnaires": False,
        "concurrency": 8,
        "output": str(out),
        **kw,
    }


async def test_injected_errors_never_lose_a_session(tmp_path: Path, real_requests: None) -> None:
    with FakeOpenAIServer(error_rate=0.2, hang_s=2.0, seed=7) as server:
        study = Study.model_validate(study_doc(server.base_url, tmp_path, cache=False))
        library = load_library()
        specs = expand(study, library)
        config = study.gateway_config().model_copy(
            update={"timeout_s": 0.5, "backoff_base_s": 0.01, "max_attempts": 3}
        )
        gateway = Gateway(config)
        try:
            with Store(tmp_path / "s.sqlite") as store:
                stats = await run_specs(
                    specs, study=study, store=store, gateway=gateway, library=library
                )
                rows = store.sessions()
        finally:
            await gateway.aclose()
        print(
            f"\n{server.calls} backend calls with 20 % injected errors: {stats.completed} completed, {stats.failed} failed {stats.failures}"
        )
    assert len(rows) == len(specs)  # every session is stored: none lost
    assert {r.session_id for r in rows} == {s.session_id for s in specs}
    for row in rows:
        assert row.status in ("completed", "failed")
        if row.status == "failed":
            assert row.error and row.termination_reason.is_error
    assert stats.completed + stats.failed == len(specs)
    assert stats.completed > 0


def _run_cli(study_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "therasim", "run", str(study_path), "--no-judge", "--no-report"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _snapshot(store_path: Path) -> dict[str, list[tuple[str, str]]]:
    with Store(store_path) as store:
        completed = store.session_ids("completed")
        turns: dict[str, list[tuple[str, str]]] = {}
        for t in store.turns():
            if t.session_id in completed:
                turns.setdefault(t.session_id, []).append((t.record.speaker, t.record.text))
        rows = store.sessions()
    # no duplicates, and every stored session's turns are whole
    assert len({r.session_id for r in rows}) == len(rows)
    for r in rows:
        n = sum(1 for s, _ in turns.get(r.session_id, []) if s == "therapist")
        if r.status == "completed":
            assert n == r.n_turns
    return turns


def _homes_with_the_fitted_coder(tmp_path: Path, *names: str) -> list[Path]:
    """Fresh ``THERASIM_HOME`` folders (no shared response cache) that share the suite's fitted
    coder: each CLI process would otherwise fit it anew, and a kill would land in the fit."""
    load_coder()
    fitted = therasim_home() / "statcoder"
    homes = [tmp_path / name for name in names]
    for home in homes:
        shutil.copytree(fitted, home / "statcoder")
    return homes


def _stored_sessions(store_path: Path) -> int:
    if not store_path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT count(*) FROM sessions").fetchone()[0])
    except sqlite3.Error:  # not created yet, or mid-write
        return 0


def _kill_mid_run(
    proc: subprocess.Popen[bytes], store_path: Path, rng: random.Random, deadline_s: float = 120
) -> bool:
    """SIGKILL ``proc`` at a random point after it has stored one more session; False when it
    ended first."""
    before, started = _stored_sessions(store_path), time.monotonic()
    while proc.poll() is None and _stored_sessions(store_path) <= before:
        assert time.monotonic() - started < deadline_s, "the run stored no session"
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.4))  # somewhere in the next sessions' turns
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return True


def test_sigkill_and_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    rng = random.Random(3)
    clean_home, home = _homes_with_the_fitted_coder(tmp_path, "home-clean", "home")
    with FakeOpenAIServer(latency_s=0.05) as server:
        env = {**os.environ, "THERASIM_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        paths = {}
        for name in ("clean", "killed"):
            doc = study_doc(server.base_url, tmp_path / name, concurrency=2, max_turns=8)
            paths[name] = tmp_path / f"{name}.yaml"
            paths[name].write_text(yaml.safe_dump(doc))
        # the uninterrupted reference run
        clean = _run_cli(paths["clean"], {**env, "THERASIM_HOME": str(clean_home)})
        assert clean.wait(timeout=600) == 0
        reference = _snapshot(tmp_path / "clean" / "sessions.sqlite")
        expected = {
            s.session_id
            for s in expand(
                Study.model_validate(yaml.safe_load(paths["clean"].read_text())), load_library()
            )
        }
        assert set(reference) == expected
        # the same study, killed with SIGKILL mid-run, then resumed until done
        store_path = tmp_path / "killed" / "sessions.sqlite"
        kills = 0
        for _ in range(3):
            kills += _kill_mid_run(_run_cli(paths["killed"], env), store_path, rng)
            _snapshot(store_path)  # whole sessions only, no duplicates
        assert kills >= 2, "the run finished before the kills; make the study longer"
        assert 0 < _stored_sessions(store_path) < len(expected), "the kills left nothing to resume"
        assert _run_cli(paths["killed"], env).wait(timeout=600) == 0
        resumed = _snapshot(store_path)
    assert set(resumed) == set(reference)
    assert resumed == reference  # same transcripts, session by session
    print(
        f"\nkilled {kills} times; resumed run has the same {len(resumed)} sessions as the clean run"
    )


async def test_sessions_shard_over_worker_processes(tmp_path: Path) -> None:
    doc = {
        "id": "procs",
        "subjects": {"a": "scripted:adherent", "b": "scripted:safety-reflex"},
        "personas": {"globs": ["pe-*", "cbt-*"], "limit": 2},
        "max_turns": 6,
        "questionnaires": False,
        "cache": False,
    }
    library = load_library()
    results = {}
    for processes in (1, 2):
        study = Study.model_validate({**doc, "processes": processes})
        specs = expand(study, library)
        gateway = Gateway(study.gateway_config())
        try:
            with Store(tmp_path / f"p{processes}.sqlite") as store:
                stats = await run_specs(
                    specs, study=study, store=store, gateway=gateway, library=library
                )
                results[processes] = (stats, _snapshot(tmp_path / f"p{processes}.sqlite"))
        finally:
            await gateway.aclose()
    (one, turns_one), (two, turns_two) = results[1], results[2]
    assert two.completed == one.completed == len(specs) == 8
    assert two.turns == one.turns and two.input_tokens == one.input_tokens
    assert turns_two == turns_one  # same sessions, same transcripts, whichever process ran them
