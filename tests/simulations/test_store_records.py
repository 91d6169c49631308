"""The store reads typed rows back (sessions, turns, calls, verdicts, adherence), frames are built
from them with the column contract and ordered Categoricals, and tokens and costs are summed in
one place (``Totals``)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from therasim.agents.llm.usage import RoleUsage, Totals
from therasim.evaluation.analysis.columns import (
    CALL_COLUMNS,
    FINDING_COLUMNS,
    ORDERED,
    PHASE_KIND_ORDER,
    SESSION_COLUMNS,
    SESSION_EXTRA_COLUMNS,
    TURN_COLUMNS,
    VERDICT_COLUMNS,
    VERDICT_EXTRA_COLUMNS,
    with_ordered_categories,
)
from therasim.evaluation.analysis.frames import load_frames
from therasim.personas.dynamics import PatientState
from therasim.protocols.adherence import AdherenceReport
from therasim.simulations.budget import JUDGING_SPENT, spent_in_store
from therasim.simulations.records import (
    CallRecord,
    CallRow,
    QuestionnaireRecord,
    SessionResult,
    SessionRow,
    SessionSpec,
    TerminationReason,
    TurnRecord,
    VerdictBatch,
    VerdictRow,
    trusted,
)
from therasim.simulations.store import Store
from therasim.vocab import RISK_ORDER, SEVERITY_ORDER, PhaseKind, RiskLevel, Severity

ADHERENCE = AdherenceReport(
    protocol="pe-imaginal-session@1",
    turns=2,
    phase_order=["check_in", "imaginal_exposure"],
    canonical_path=["check_in", "imaginal_exposure", "wrap_up"],
    final_phase="imaginal_exposure",
    reached_terminal=False,
    skipped_phases=["wrap_up"],
    regressions=[],
    proscribed_hits=[],
    proscribed_codes={},
    risk_exempted=[],
    missing_expected={},
    interrupted_phases=["imaginal_exposure"],
    suds_probe_every=3,
    probe_gaps=[],
    components={"phases": 0.5},
    adherence_score=0.5,
)
CALLS = [
    CallRecord(
        role="subject",
        model="m1",
        cached=False,
        latency_s=0.5,
        input_tokens=100,
        output_tokens=20,
        cost_usd=0.25,
        attempts=1,
    ),
    CallRecord(
        role="patient",
        model="m2",
        cached=True,
        latency_s=0.0,
        input_tokens=7,
        output_tokens=3,
        cost_usd=0.0,
        attempts=1,
    ),
    CallRecord(
        role="appraiser",
        model="m3",
        cached=False,
        latency_s=0.1,
        input_tokens=40,
        output_tokens=5,
        cost_usd=None,
        attempts=2,
    ),
]


def _state(suds: float, risk: RiskLevel) -> PatientState:
    return PatientState(suds=suds, belief=60, alliance=0.6, engagement=0.7, risk=risk)


def _session(severity: Severity, *, failed: bool = False) -> SessionResult:
    spec = SessionSpec(
        persona="pe-combat-01",
        persona_version=1,
        severity=severity,
        subject="scripted:adherent",
        subject_name="adherent",
        protocol="pe-imaginal-session",
    )
    kinds = [PhaseKind.CHECK_IN, PhaseKind.IMAGINAL_EXPOSURE]
    risks = [RiskLevel.PASSIVE, RiskLevel.NONE]
    turns = []
    for i in range(4):
        turns.append(
            TurnRecord(
                index=i,
                speaker="therapist" if i % 2 == 0 else "patient",
                text=f"line {i}",
                turn=i // 2 + 1,
                phase=kinds[i // 2].value,
                phase_kind=kinds[i // 2].value,
                codes=["validation"] if i % 2 == 0 else [],
                state=_state(40 + 10 * i, risks[i // 2]),
            )
        )
    return SessionResult(
        session_id=spec.session_id,
        spec=spec,
        persona_ref="pe-combat-01@1",
        modality="pe",
        initial_state=_state(35, RiskLevel.NONE),
        status="failed" if failed else "completed",
        termination_reason=TerminationReason.SUBJECT_ERROR
        if failed
        else TerminationReason.MAX_TURNS,
        error="boom" if failed else None,
        turns=turns,
        questionnaires=[
            QuestionnaireRecord(
                instrument="phq9", when="pre", wording="neutral", items=[1], total=9
            )
        ],
        calls=CALLS,
        adherence=None if failed else ADHERENCE,
        prompt_hashes={"subject": "abc"},
        started=1.0,
        finished=2.0,
    )


def _verdict(session_id: str, turn: int, met: bool | None) -> VerdictRow:
    return VerdictRow(
        session_id=session_id,
        judge="lexical",
        item_id="acknowledgment",
        turn=turn,
        met=met,
        score=None if met is None else 1.0,
        reason="r",
        prompt_hash="h",
        rubric_version="pe@1/1",
        model="scripted:lexical-judge",
        input_tokens=3,
        output_tokens=1,
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "s.sqlite")


def test_a_saved_session_reads_back_as_equal_typed_models(store: Store) -> None:
    saved = [_session(Severity.IMMINENT), _session(Severity.ROUTINE, failed=True)]
    for result in saved:
        store.save_session(result)
    for result in saved:
        assert store.load_session(result.session_id) == result
    rows = store.sessions()
    assert all(isinstance(r, SessionRow) for r in rows)
    assert [r.session_id for r in rows] == sorted(r.session_id for r in saved)
    by_id = {r.session_id: r for r in rows}
    done = by_id[saved[0].session_id]
    assert done.adherence == ADHERENCE and isinstance(done.adherence, AdherenceReport)
    assert by_id[saved[1].session_id].adherence is None
    assert done.severity is Severity.IMMINENT and done.subject == "adherent"
    assert done.termination_reason is TerminationReason.MAX_TURNS
    assert (done.input_tokens, done.output_tokens, done.cost_usd) == (147, 28, None)
    turns = [t for t in store.turns() if t.session_id == saved[0].session_id]
    assert [t.record for t in turns] == saved[0].turns
    calls = list(store.calls(saved[0].session_id))
    assert [c.record for c in calls] == CALLS and [c.idx for c in calls] == [0, 1, 2]
    with pytest.raises(Exception, match="frozen"):
        done.n_turns = 3  # type: ignore[misc]


def test_verdicts_round_trip_as_rows_and_batches(store: Store) -> None:
    result = _session(Severity.DISTRESS)
    store.save_session(result)
    rows = [_verdict(result.session_id, t, met) for t, met in ((-1, None), (1, True), (2, False))]
    assert store.save_verdicts(rows) == 3
    assert list(store.verdicts()) == rows
    (batch,) = store.verdict_batches()
    assert isinstance(batch, VerdictBatch) and len(batch) == 3
    assert batch.met == [None, True, False] and batch.turn == [-1, 1, 2]
    assert [r.scope for r in store.verdicts()] == ["session", "turn", "turn"]
    # a mapping is validated on the way in: met 0/1 is read back as a bool
    store.save_verdicts([{**rows[1].model_dump(), "turn": 3, "met": 0}])
    assert [v.met for v in store.verdicts()][-1] is False


def test_trusted_rows_equal_validated_rows() -> None:
    values = _verdict("s", 1, True).model_dump()
    assert trusted(VerdictRow, dict(values)) == VerdictRow.model_validate(values)
    call = {"session_id": "s", "idx": 0, **CALLS[0].model_dump()}
    row = trusted(CallRow, dict(call))
    assert row == CallRow.model_validate(call) and row.record == CALLS[0]


def test_frames_follow_the_contract_with_ordered_categoricals(store: Store) -> None:
    first, second = _session(Severity.IMMINENT), _session(Severity.ROUTINE, failed=True)
    for result in (first, second):
        store.save_session(result)
    store.save_verdicts([_verdict(first.session_id, 1, True)])
    frames = load_frames(store)
    assert list(frames.sessions.columns) == [*SESSION_COLUMNS, *SESSION_EXTRA_COLUMNS]
    assert list(frames.turns.columns) == [*TURN_COLUMNS, "text"]
    assert list(frames.verdicts.columns) == [*VERDICT_COLUMNS, *VERDICT_EXTRA_COLUMNS]
    assert list(frames.calls.columns) == list(CALL_COLUMNS)
    assert list(frames.findings.columns) == list(FINDING_COLUMNS)
    expected = {
        "sessions": ("severity", "baseline_risk", "max_risk"),
        "turns": ("severity", "phase_kind", "risk"),
        "utterances": ("severity",),
        "verdicts": ("severity",),
        "findings": ("severity",),
    }
    for name, columns in expected.items():
        frame = frames.as_dict()[name]
        for column in columns:
            dtype = frame[column].dtype
            assert isinstance(dtype, pd.CategoricalDtype) and dtype.ordered, (name, column)
            assert tuple(dtype.categories) == ORDERED[column], (name, column)
    assert ORDERED["severity"] == SEVERITY_ORDER and ORDERED["risk"] == RISK_ORDER
    assert ORDERED["phase_kind"] == PHASE_KIND_ORDER
    sessions = frames.sessions.set_index("session_id")
    assert sessions.loc[first.session_id, "max_risk"] == "passive"
    assert sessions.loc[first.session_id, "adherence_score"] == 0.5
    assert math.isnan(sessions.loc[second.session_id, "adherence_score"])
    # a session without an adherence report has unknown counts, not zero proscribed codes
    assert sessions.loc[first.session_id, ["proscribed_hits", "skipped_phases"]].tolist() == [0, 1]
    for column in ("proscribed_hits", "skipped_phases", "regressions"):
        assert math.isnan(sessions.loc[second.session_id, column]), column
    assert sessions["severity"].max() == "imminent"  # the ladder's order, not the alphabet's
    assert list(frames.turns["risk"]) == ["passive", "none"] * 2
    assert (frames.turns["risk"] > "none").sum() == 2
    assert frames.verdicts["met"].tolist() == [True]
    assert frames.calls["cached"].tolist() == [False, True, False] * 2


def test_ordered_categories_keep_values_outside_the_vocabulary() -> None:
    frame = with_ordered_categories(pd.DataFrame({"phase_kind": ["wrap_up", "new_kind", None]}))
    dtype = frame["phase_kind"].dtype
    assert isinstance(dtype, pd.CategoricalDtype)
    assert list(dtype.categories) == [*PHASE_KIND_ORDER, "new_kind"]
    assert frame["phase_kind"].tolist()[:2] == ["wrap_up", "new_kind"]


def test_token_totals_come_from_one_place_and_equal_the_sum_over_calls(store: Store) -> None:
    totals = Totals.sum(CALLS)
    assert totals == Totals(147, 28, 0.25, unpriced=1)
    assert totals.total_tokens == sum(c.input_tokens + c.output_tokens for c in CALLS)
    assert totals.known_cost is None and Totals.sum(CALLS[:2]).known_cost == 0.25
    assert Totals.sum([RoleUsage(input_tokens=2, output_tokens=1, cost_usd=0.5)]) == Totals(
        2, 1, 0.5
    )
    assert Totals.sum([totals, totals]) == totals + totals
    assert (totals + totals) - totals == totals
    result = _session(Severity.ROUTINE)
    store.save_session(result)
    (row,) = store.sessions()
    assert (row.input_tokens, row.output_tokens, row.cost_usd) == (147, 28, totals.known_cost)
    uncached = [c for c in store.calls() if not c.cached]
    assert store.uncached_totals() == Totals.sum(uncached) == Totals(140, 25, 0.25, unpriced=1)
    store.set_meta(JUDGING_SPENT, {"input_tokens": 5, "output_tokens": 2, "cost_usd": 1.0})
    assert spent_in_store(store) == store.uncached_totals() + Totals(5, 2, 1.0)
    frames = load_frames(store, with_findings=False)
    assert int(frames.calls["input_tokens"].sum()) == row.input_tokens
    assert int(frames.sessions["output_tokens"].sum()) == totals.output_tokens


def _judge_call(judge: str, tokens: int, cached: int = 0) -> CallRecord:
    return CallRecord(
        role=f"judge:{judge}",
        model="scripted:lexical-judge",
        cached=False,
        latency_s=0.01,
        input_tokens=tokens,
        cached_input_tokens=cached,
        output_tokens=1,
        cost_usd=0.0,
        attempts=1,
    )


def test_judge_calls_are_saved_with_their_verdicts_after_the_sessions_own(store: Store) -> None:
    result = _session(Severity.ROUTINE)
    store.save_session(result)
    sid = result.session_id
    store.save_verdicts([_verdict(sid, 1, True)], {sid: [_judge_call("lexical", 10, cached=4)]})
    rows = list(store.calls(sid))
    assert [c.idx for c in rows] == [0, 1, 2, 3]
    assert rows[-1].role == "judge:lexical" and rows[-1].cached_input_tokens == 4
    assert store.load_session(sid) == result  # the session's own calls only
    assert store.uncached_totals() == Totals.sum(c for c in CALLS if not c.cached)
    # re-judging replaces that judge's call rows; another judge's are kept
    store.save_verdicts(
        [_verdict(sid, 1, False), {**_verdict(sid, 1, True).model_dump(), "judge": "other"}],
        {sid: [_judge_call("lexical", 20), _judge_call("lexical", 30), _judge_call("other", 5)]},
    )
    judged = [(c.role, c.input_tokens) for c in store.calls(sid) if c.role.startswith("judge:")]
    assert judged == [("judge:lexical", 20), ("judge:lexical", 30), ("judge:other", 5)]
    assert store.delete_verdicts(["other"]) == 1
    assert [c.role for c in store.calls(sid)][3:] == ["judge:lexical"] * 2
    frames = load_frames(store, with_findings=False)
    row = frames.sessions.iloc[0]
    assert (row["judge_calls"], row["judge_input_tokens"], row["judge_output_tokens"]) == (2, 50, 2)
    assert row["total_tokens"] == 147 + 28 + 52 and math.isnan(row["total_cost_usd"])


def test_a_store_from_before_cached_prompt_tokens_opens_and_reads(tmp_path: Path) -> None:
    import sqlite3

    from therasim.simulations.store import SCHEMA

    path = tmp_path / "old.sqlite"
    result = _session(Severity.ROUTINE)
    with Store(path) as store:
        store.save_session(result)
    old = sqlite3.connect(path)  # rebuild the calls table as it was before the column
    old.executescript(
        "CREATE TABLE old_calls AS SELECT session_id, idx, role, model, cached, latency_s,"
        " input_tokens, output_tokens, cost_usd, attempts FROM calls;"
        " DROP TABLE calls; ALTER TABLE old_calls RENAME TO calls;"
    )
    old.close()
    assert "cached_input_tokens INTEGER NOT NULL DEFAULT 0" in SCHEMA
    with Store(path) as store:
        calls = list(store.calls())
        assert [c.record for c in calls] == CALLS and all(c.cached_input_tokens == 0 for c in calls)
        frames = load_frames(store, with_findings=False)
    assert frames.calls["cached_input_tokens"].tolist() == [0, 0, 0]
    assert frames.sessions["cached_input_tokens"].tolist() == [0]


def test_a_verdicts_design_weight_round_trips_to_rows_batches_and_frames(store: Store) -> None:
    result = _session(Severity.DISTRESS)
    store.save_session(result)
    sampled = _verdict(result.session_id, 2, True).model_copy(update={"weight": 2.5})
    rows = [_verdict(result.session_id, -1, None), _verdict(result.session_id, 1, False), sampled]
    store.save_verdicts(rows)
    assert [v.weight for v in store.verdicts()] == [1.0, 1.0, 2.5]
    (batch,) = store.verdict_batches()
    assert batch.weight == [1.0, 1.0, 2.5]
    store.save_verdicts([{**sampled.model_dump(exclude={"weight"}), "turn": 3}])  # a mapping
    assert [v.weight for v in store.verdicts()][-1] == 1.0  # defaults to 1
    frames = load_frames(store, with_findings=False)
    assert frames.verdicts["weight"].tolist() == [1.0, 1.0, 2.5, 1.0]
    assert frames.verdicts["weight"].dtype == "float64"
    with pytest.raises(ValueError):
        VerdictRow.model_validate({**sampled.model_dump(), "weight": 0})


def test_a_store_from_before_verdict_weights_opens_and_reads_weight_one(tmp_path: Path) -> None:
    import sqlite3

    from therasim.simulations.store import SCHEMA

    path = tmp_path / "old.sqlite"
    result = _session(Severity.ROUTINE)
    with Store(path) as store:
        store.save_session(result)
        store.save_verdicts([_verdict(result.session_id, t, True) for t in (-1, 1)])
    old = sqlite3.connect(path)  # rebuild the verdicts table as it was before the column
    old.executescript(
        "CREATE TABLE old_verdicts AS SELECT session_id, judge, item_id, turn, met, score, reason,"
        " prompt_hash, rubric_version, model, input_tokens, output_tokens FROM verdicts;"
        " DROP TABLE verdicts; ALTER TABLE old_verdicts RENAME TO verdicts;"
    )
    old.close()
    assert "weight REAL NOT NULL DEFAULT 1" in SCHEMA
    with Store(path) as store:
        assert [v.weight for v in store.verdicts()] == [1.0, 1.0]
        store.save_verdicts(
            [_verdict(result.session_id, 2, False).model_copy(update={"weight": 3.0})]
        )
        assert [v.weight for v in store.verdicts()] == [1.0, 1.0, 3.0]
        frames = load_frames(store, with_findings=False)
    assert frames.verdicts["weight"].tolist() == [1.0, 1.0, 3.0]


def test_a_re_run_session_keeps_its_first_attempts_spending_in_the_budget(store: Store) -> None:
    """Saving a session again replaces its rows; what the failed attempt sent stays counted."""
    failed, done = _session(Severity.ROUTINE, failed=True), _session(Severity.ROUTINE)
    assert failed.session_id == done.session_id
    uncached = Totals.sum(c for c in CALLS if not c.cached)  # 140 in, 25 out, $0.25 known
    store.save_session(failed)
    assert spent_in_store(store) == uncached
    store.save_session(done)
    assert len(store.session_ids()) == 1
    assert store.replaced_spending().total_tokens == uncached.total_tokens
    spent = spent_in_store(store)
    assert (spent.input_tokens, spent.output_tokens) == (280, 50)
    assert spent.cost_usd == pytest.approx(0.5)
