"""Judge calls are rows of the calls frame (role ``judge:<name>``), written with the verdicts; cached
prompt tokens flow from a provider's answer to the frames; ``judge --replace`` drops the dropped
judges' call rows; the budget counts judging once; the report shows cost per role and per session
(issue 17, points 2 and 5)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from factories import study_file
from fake_openai import FakeOpenAIServer
from rich.console import Console

from therasim.agents.llm import Gateway, GatewayConfig, RoleConfig
from therasim.agents.llm.backends.openai import usage_of
from therasim.agents.llm.usage import Totals
from therasim.evaluation.analysis.frames import frames_to_json, load_frames
from therasim.evaluation.judging.panel import JudgeSpec, PanelOptions, judge_store
from therasim.evaluation.judging.rubric import load_rubrics
from therasim.evaluation.report.console import cost_by_role, print_report
from therasim.pipeline import run_study
from therasim.simulations.budget import JUDGING_SPENT, spent_in_store
from therasim.simulations.records import is_judge_role
from therasim.simulations.store import Store

JUDGES = [
    {"name": "lexical", "model": "scripted:lexical-judge"},
    {"name": "lenient", "model": "scripted:lenient-judge"},
]


def _run(tmp_path: Path, **fields: Any) -> Path:
    """A tiny offline study run to the end; returns its store's path."""
    path = study_file(tmp_path, **fields)
    run_study(path, report=False, console=Console(file=io.StringIO()), show_progress=False)
    return tmp_path / "run" / "sessions.sqlite"


@pytest.mark.parametrize("mode", ["item", "turn"])
def test_judge_calls_are_call_rows_whose_tokens_add_up_to_the_verdicts(
    tmp_path: Path, mode: str
) -> None:
    store_path = _run(tmp_path, judges=JUDGES, judging={"mode": mode})
    with Store(store_path) as store:
        frames = load_frames(store)
        verdicts = list(store.verdicts())
        meta = store.get_meta(JUDGING_SPENT)
        spent = spent_in_store(store)
        sessions = store.session_ids()
        own_calls = {sid: store.load_session(sid).calls for sid in sessions}  # type: ignore[union-attr]
    calls = frames.calls
    judged = calls[calls["role"].map(is_judge_role)]
    assert set(judged["role"]) == {"judge:lexical", "judge:lenient"}
    assert set(judged["model"]) == {"scripted:lexical-judge", "scripted:lenient-judge"}
    if mode == "item":  # one call per verdict
        assert len(judged) == len(verdicts)
    else:  # one call per judge × unit, however many items it answers
        assert len(judged) < len(verdicts)
    # a session's judge calls come after its own, and load_session keeps only its own
    for sid, group in calls.groupby("session_id"):
        own = len(own_calls[str(sid)])
        assert not any(map(is_judge_role, group["role"].iloc[:own]))
        assert all(map(is_judge_role, group["role"].iloc[own:]))
        assert not any(is_judge_role(c.role) for c in own_calls[str(sid)])
    # per session and judge, the call rows' tokens are the verdict rows' tokens
    by_verdicts = pd.DataFrame([v.model_dump() for v in verdicts]).assign(
        role=lambda f: "judge:" + f["judge"]
    )
    for column in ("input_tokens", "output_tokens"):
        want = by_verdicts.groupby(["session_id", "role"])[column].sum()
        got = judged.groupby(["session_id", "role"])[column].sum()
        assert got.sort_index().tolist() == want.sort_index().tolist()
        assert got.sum() > 0
    # the sessions frame: judging's tokens and cost per session, and the totals
    rows = frames.sessions.set_index("session_id")
    per_session = judged.groupby("session_id")["input_tokens"].sum()
    assert rows["judge_input_tokens"].to_dict() == per_session.to_dict()
    assert (rows["judge_calls"] == judged.groupby("session_id").size()).all()
    assert (
        rows["total_tokens"]
        == rows["input_tokens"]
        + rows["output_tokens"]
        + rows["judge_input_tokens"]
        + rows["judge_output_tokens"]
    ).all()
    assert (rows["judge_cost_usd"] == 0.0).all() and (rows["total_cost_usd"] == 0.0).all()
    # the budget: judging counted once, and the stored judge calls agree with its record
    uncached = Totals.sum(c for c in calls.itertuples() if not c.cached)
    judge_uncached = Totals.sum(c for c in judged.itertuples() if not c.cached)
    assert (meta["input_tokens"], meta["output_tokens"]) == (
        judge_uncached.input_tokens,
        judge_uncached.output_tokens,
    )
    assert spent.total_tokens == uncached.total_tokens


def test_the_report_shows_cost_by_role_and_the_export_holds_the_judge_calls(
    tmp_path: Path,
) -> None:
    with Store(_run(tmp_path, judges=JUDGES[:1])) as store:
        frames = load_frames(store)
    table = cost_by_role(frames).set_index("role")
    assert {"subject", "judge:lexical"} <= set(table.index)
    judged = frames.calls[frames.calls["role"] == "judge:lexical"]
    assert table.loc["judge:lexical", "calls"] == len(judged)
    assert table.loc["judge:lexical", "input_tokens"] == judged["input_tokens"].sum()
    out = io.StringIO()
    print_report(frames, Console(file=out, width=160))
    text = out.getvalue()
    assert "Cost by role" in text and "judge:lexical" in text and "Per session" in text
    exported = json.loads(frames_to_json(frames))
    assert any(c["role"] == "judge:lexical" for c in exported["calls"])
    assert all("judge_input_tokens" in s and "total_cost_usd" in s for s in exported["sessions"])


def test_judge_replace_drops_the_dropped_judges_call_rows(tmp_path: Path) -> None:
    from therasim.cli import main

    store_path = _run(tmp_path, judges=JUDGES)
    with Store(store_path) as store:
        before = {c.role for c in store.calls()}
    assert {"judge:lexical", "judge:lenient"} <= before
    judge = ["judge", str(tmp_path / "run"), "--judges", "lexical=scripted:lexical-judge"]
    assert main([*judge, "--replace"]) == 0
    with Store(store_path) as store:
        roles = [c.role for c in store.calls()]
        verdict_judges = store.verdict_judges()
    assert "judge:lenient" not in roles and "judge:lexical" in roles
    assert verdict_judges == {"lexical"}
    assert {r for r in roles if not is_judge_role(r)} == {r for r in before if not is_judge_role(r)}


class _CachingServer(FakeOpenAIServer):
    """A fake provider whose answers say part of the prompt came from its prompt cache."""

    CACHED = 32

    def _answer(self, body: dict[str, Any], outcome: str) -> tuple[str, str]:
        status, text = super()._answer(body, outcome)
        if not status.startswith("200"):
            return status, text
        doc = json.loads(text)
        prompt = doc["usage"]["prompt_tokens"]
        doc["usage"]["prompt_tokens_details"] = {"cached_tokens": min(self.CACHED, prompt)}
        return status, json.dumps(doc)


def test_usage_reads_cached_prompt_tokens_where_the_provider_reports_them() -> None:
    usage = usage_of(
        {
            "prompt_tokens": 100,
            "completion_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 64},
        }
    )
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (100, 64, 7)
    assert usage_of({"prompt_tokens": 10, "prompt_cache_hit_tokens": 4}).cached_input_tokens == 4
    assert usage_of({"prompt_tokens": 10, "completion_tokens": 1}).cached_input_tokens == 0
    broken = {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": "x"}}
    assert usage_of(broken).cached_input_tokens == 0
    assert (
        usage_of(
            {"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 9}}
        ).cached_input_tokens
        == 5
    )


def test_cached_prompt_tokens_flow_from_the_provider_to_the_calls_frame(
    tmp_path: Path, real_requests: None
) -> None:
    store_path = _run(tmp_path, max_turns=2)

    async def judge(server: FakeOpenAIServer) -> int:
        remote = JudgeSpec(name="remote", model=f"openai:fake?base_url={server.base_url}")
        gateway = Gateway(GatewayConfig(roles={remote.role: RoleConfig(model=remote.model)}))
        try:
            with Store(store_path) as store:
                options = PanelOptions(mode="item")
                return await judge_store(store, gateway, load_rubrics(), [remote], options=options)
        finally:
            await gateway.aclose()

    with _CachingServer() as server:
        judged = asyncio.run(judge(server))
        requests = server.calls
    with Store(store_path) as store:
        frames = load_frames(store)
    assert judged == 1
    calls = frames.calls[frames.calls["role"] == "judge:remote"]
    assert len(calls) == requests > 0
    assert (calls["cached_input_tokens"] == _CachingServer.CACHED).all()
    assert (calls["latency_s"] > 0).all() and not calls["cached"].any()
    row = frames.sessions.iloc[0]
    assert row["judge_cached_input_tokens"] == _CachingServer.CACHED * requests
    assert row["cached_input_tokens"] == 0  # the scripted session itself reports none
    by_role = cost_by_role(frames).set_index("role")
    assert by_role.loc["judge:remote", "cached_input_tokens"] == _CachingServer.CACHED * requests
