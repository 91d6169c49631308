"""The study budget caps spending: no new session once spent, in-flight sessions stop at the
next turn boundary (``budget_exhausted``), judging stops too, and a rerun with more budget
finishes the work (issue 12, item 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from factories import largest_turn, study_file

from therasim.agents.llm import Gateway
from therasim.agents.llm.usage import Totals
from therasim.errors import BudgetExhausted
from therasim.evaluation.judging.panel import JudgeSpec, judge_store
from therasim.evaluation.judging.rubric import load_rubrics
from therasim.personas import load_library
from therasim.simulations.budget import JUDGING_SPENT, BudgetMeter, spent_in_store
from therasim.simulations.records import TerminationReason
from therasim.simulations.runner import RunStats, run_specs
from therasim.simulations.store import Store
from therasim.simulations.study import Study, expand

CONCURRENCY = 4


def _study(max_tokens: int | None, **kw: Any) -> Study:
    return Study.model_validate(
        {
            "id": "budget",
            "subjects": {"a": "scripted:adherent"},
            "personas": {"globs": ["pe-*", "cbt-*"], "limit": 4},
            "severities": ["routine", "distress"],
            "max_turns": 8,
            "questionnaires": False,
            "concurrency": CONCURRENCY,
            "cache": False,
            "budget": {"max_tokens": max_tokens} if max_tokens else {},
            **kw,
        }
    )


async def _run(study: Study, store: Store) -> tuple[RunStats, int]:
    library = load_library()
    gateway = Gateway(study.gateway_config())
    try:
        stats = await run_specs(
            expand(study, library), study=study, store=store, gateway=gateway, library=library
        )
        return stats, gateway.accounting.total().total_tokens
    finally:
        await gateway.aclose()


async def test_the_budget_caps_spending_to_one_turn_per_session_in_flight(tmp_path: Path) -> None:
    with Store(tmp_path / "free.sqlite") as store:
        _, unlimited = await _run(_study(None), store)
    limit = unlimited // 3
    with Store(tmp_path / "s.sqlite") as store:
        stats, spent = await _run(_study(limit), store)
        reasons = {
            r.session_id: (r.status, r.termination_reason, r.n_turns) for r in store.sessions()
        }
        largest = largest_turn(store)
    assert stats.budget_exhausted
    assert limit <= spent <= limit + CONCURRENCY * largest  # overshoot ≤ one turn per session
    assert stats.not_started > 0  # no new session started once spent
    assert len(reasons) == stats.completed + stats.failed  # what started is stored whole
    stopped = [v for v in reasons.values() if v[1] == TerminationReason.BUDGET_EXHAUSTED]
    assert stopped, "an in-flight session stops at the next turn boundary"
    assert all(status == "failed" and turns < 2 * 8 for status, _, turns in stopped)


async def test_a_rerun_with_more_budget_redoes_the_stopped_sessions(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        first, _ = await _run(_study(3000), store)
    assert first.budget_exhausted
    with Store(path) as store:
        again, _ = await _run(_study(3000), store)  # nothing left to spend: nothing starts
        assert again.completed == 0 and again.not_started == again.to_run
        final, _ = await _run(_study(None), store)
        rows = store.sessions()
    assert not final.budget_exhausted
    assert all(r.status == "completed" for r in rows)
    assert len(rows) == final.total


async def test_judging_stops_when_the_budget_is_spent_and_keeps_what_it_judged(
    tmp_path: Path,
) -> None:
    with Store(tmp_path / "s.sqlite") as store:
        await _run(_study(None), store)
        sessions = len(store.session_ids(status="completed"))
        gateway = Gateway(_study(None).gateway_config())
        checks = iter(range(1_000))
        try:
            with pytest.raises(BudgetExhausted, match="left unjudged") as caught:
                await judge_store(
                    store,
                    gateway,
                    load_rubrics(),
                    [JudgeSpec(name="lexical", model="scripted:lexical-judge")],
                    over_budget=lambda: next(checks) >= 3,
                )
        finally:
            await gateway.aclose()
        judged = {r.session_id for r in store.verdicts()}
    assert caught.value.done == len(judged) == 3 < sessions


async def test_the_meter_counts_earlier_runs_and_only_uncached_calls(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as store:
        await _run(_study(None), store)
        calls = [c for c in store.calls() if not c.cached]
        stored = sum(c.input_tokens + c.output_tokens for c in calls)
        assert spent_in_store(store).total_tokens == stored
        assert spent_in_store(store).cost_usd == 0.0
        store.set_meta(JUDGING_SPENT, {"tokens": 120, "cost_usd": 0.5})  # a store from before
        assert spent_in_store(store).total_tokens == stored + 120
        assert spent_in_store(store).cost_usd == 0.5
        gateway = Gateway(_study(None).gateway_config())
        meter = BudgetMeter(_study(stored + 121).budget, gateway, before=spent_in_store(store))
        assert not meter.exhausted()
        meter.before = meter.before + Totals(output_tokens=1)
        assert meter.exhausted()
        with pytest.raises(BudgetExhausted, match=f"{stored + 121:,} of {stored + 121:,} tokens"):
            meter.check()
        await gateway.aclose()


def _study_file(tmp_path: Path, budget: dict[str, Any]) -> Path:
    return study_file(
        tmp_path,
        id="budgeted",
        personas={"globs": ["pe-*"], "limit": 2},
        max_turns=6,
        judges=[{"name": "lexical", "model": "scripted:lexical-judge"}],
        budget=budget,
    )


def test_the_dry_run_counts_judging_and_compares_with_the_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from therasim.cli import main
    from therasim.pipeline import study_estimate
    from therasim.simulations.study import load_study

    path = _study_file(tmp_path, {"max_tokens": 1000})
    study = load_study(path)
    item = study.model_copy(update={"judging": study.judging.model_copy(update={"mode": "item"})})
    est = study_estimate(item)
    judge = est.per_role["judge:lexical"]
    assert judge["calls"] > 0 and judge["tokens"] == judge["calls"] * 860
    assert est.tokens == sum(e["tokens"] for e in est.per_role.values())
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "judge:lexical" in out and "exceeds the budget (1,000 tokens)" in out
    # a real run refuses to start without --yes, and starts with it
    assert main(["run", str(path), "--no-report"]) == 2
    assert "--yes" in capsys.readouterr().out
    assert not (tmp_path / "run" / "sessions.sqlite").exists()
    assert main(["run", str(path), "--no-report", "--yes"]) in (0, 3)
    assert "budget spent" in capsys.readouterr().out


def test_a_budget_the_estimate_fits_needs_no_yes(tmp_path: Path) -> None:
    from therasim.cli import main

    path = _study_file(tmp_path, {"max_tokens": 10_000_000})
    assert main(["run", str(path), "--no-report"]) == 0


def test_the_dry_run_counts_one_batched_call_per_turn_in_turn_mode(tmp_path: Path) -> None:
    from therasim.pipeline import JUDGE_BATCH_PROMPT_TOKENS, JUDGE_REPLY_TOKENS, study_estimate
    from therasim.simulations.study import load_study

    turn = load_study(_study_file(tmp_path, {"max_tokens": 10_000_000}))
    assert turn.judging.mode == "turn"  # the default
    by_turn = study_estimate(turn).per_role["judge:lexical"]
    item = turn.model_copy(update={"judging": turn.judging.model_copy(update={"mode": "item"})})
    by_item = study_estimate(item).per_role["judge:lexical"]
    sessions = 2  # two PE personas at one severity, one repeat
    # at most one call per therapist turn (max_turns 6) plus one per session
    assert sessions <= by_turn["calls"] <= sessions * (6 + 1) < by_item["calls"]
    answers = by_item["calls"]  # every item still gets an answer, inside fewer calls
    assert by_turn["tokens"] == (
        by_turn["calls"] * JUDGE_BATCH_PROMPT_TOKENS + answers * JUDGE_REPLY_TOKENS
    )
    sampled = turn.model_copy(
        update={"judging": turn.judging.model_copy(update={"sample_turns": 2})}
    )
    assert study_estimate(sampled).per_role["judge:lexical"]["calls"] <= sessions * (2 + 1)


async def test_more_processes_than_sessions_leave_no_budget_idle(tmp_path: Path) -> None:
    """The budget is shared among the workers that get sessions: two sessions and four
    processes must finish as one process does when the budget covers them (it was split four
    ways, and both sessions stopped budget_exhausted at about half of it)."""
    two = {"personas": {"globs": ["pe-*"], "limit": 1}}
    with Store(tmp_path / "free.sqlite") as store:
        _, needed = await _run(_study(None, **two), store)
    with Store(tmp_path / "s.sqlite") as store:
        stats, _ = await _run(_study(int(needed * 1.2), processes=4, **two), store)
        rows = store.sessions()
    assert len(rows) == 2 and stats.completed == 2 and not stats.budget_exhausted
    assert all(r.termination_reason is not TerminationReason.BUDGET_EXHAUSTED for r in rows)


async def test_workers_share_one_budget_so_an_early_finisher_strands_none(tmp_path: Path) -> None:
    """Three sessions over two processes: one worker gets two, the other one. A budget that
    covers all three must let all three finish (divided in two halves, the worker with two
    sessions had about 0.55 of what it needed and stopped budget_exhausted, while the other's
    half went unspent)."""
    three = {"personas": {"globs": ["pe-*"], "limit": 3}, "severities": ["routine"]}
    with Store(tmp_path / "free.sqlite") as store:
        _, needed = await _run(_study(None, **three), store)
        costs = sorted(Totals.sum(store.load_session(r.session_id).calls).total_tokens
                       for r in store.sessions())  # fmt: skip
    assert len(costs) == 3 and costs[0] + costs[1] > 0.55 * 1.1 * needed  # a half would not do
    with Store(tmp_path / "s.sqlite") as store:
        stats, _ = await _run(_study(int(needed * 1.1), processes=2, **three), store)
        rows = store.sessions()
        spent = store.uncached_totals().total_tokens
    assert stats.completed == 3 and not stats.budget_exhausted and stats.not_started == 0
    assert all(r.termination_reason is not TerminationReason.BUDGET_EXHAUSTED for r in rows)
    assert spent == needed  # the same sessions, the same calls
