"""Turn sampling's design weights: the sampler's inverse inclusion probabilities, carried by the
verdict rows into the store and the frames, and the weighted item means, whose intervals
count sessions, not verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from statsmodels.stats.proportion import proportion_confint
from test_panel import make_session, scripted_gateway

from therasim.evaluation.analysis import metrics as m
from therasim.evaluation.analysis.frames import load_frames
from therasim.evaluation.judging.detectors import therapist_turns
from therasim.evaluation.judging.panel import JudgeSpec, PanelOptions, judge_session
from therasim.evaluation.judging.rubric import load_rubrics
from therasim.evaluation.judging.sampling import flagged, sample_turns, weighted_sample
from therasim.simulations.records import SessionResult
from therasim.simulations.store import Store
from therasim.vocab import RiskLevel

RUBRICS = load_rubrics()
LEXICAL = JudgeSpec(name="lexical", model="scripted:lexical-judge")


def _session(
    phases: list[str], grounding: set[int], passive: frozenset[int] | set[int] = frozenset()
) -> SessionResult:
    """A PE session whose therapist turn ``t`` (from 1) is in ``phases[t - 1]``, coded
    ``grounding`` when ``t`` is in ``grounding`` (a flagging code), with passive risk after each
    turn in ``passive`` (which flags that turn and the next)."""
    base = make_session(
        len(phases), "Stay with the memory. What is your SUDS now?", ["encourage_continue"]
    )
    turns = []
    for record in base.turns:
        phase = phases[max(record.turn, 1) - 1]
        update: dict[str, Any] = {"phase": phase, "phase_kind": phase}
        if record.turn in passive:
            update["state"] = record.state.model_copy(update={"risk": RiskLevel.PASSIVE})
        if record.turn in grounding and record.speaker == "therapist":
            update["codes"] = ["grounding"]
        turns.append(record.model_copy(update=update))
    return base.model_copy(update={"turns": turns})


#: Ten turns: orientation 1-4, exposure 5-10; grounding at 2, passive risk after 7 (so 7, 8).
TEN = _session(["orientation"] * 4 + ["imaginal_exposure"] * 6, grounding={2}, passive={7})


# --------------------------------------------------------------------------- the sampler


def test_design_weights_of_a_hand_built_session() -> None:
    turns = list(therapist_turns(TEN))
    assert {t.record.turn for t in turns if flagged(t)} == {2, 7, 8}
    # unflagged: orientation {1, 3, 4} (N=3), exposure {5, 6, 9, 10} (N=4); K=6 leaves 3 draws,
    # shared 1 + 2 (largest remainder); evenly spread without a seed: turn 4, turns 5 and 10.
    sample = weighted_sample(turns, 6, None, TEN.session_id)
    assert {s.turn.record.turn: s.weight for s in sample} == {
        2: 1.0, 7: 1.0, 8: 1.0, 4: 3 / 1, 5: 4 / 2, 10: 4 / 2,
    }  # fmt: skip
    assert [s.turn for s in sample] == sample_turns(turns, 6, None, TEN.session_id)
    # a seeded draw: the same turns as sample_turns, the same weights per phase
    seeded = weighted_sample(turns, 6, 11, TEN.session_id)
    assert [s.turn for s in seeded] == sample_turns(turns, 6, 11, TEN.session_id)
    by_phase: dict[str, list[float]] = {}
    for s in seeded:
        if not flagged(s.turn):
            by_phase.setdefault(s.turn.record.phase, []).append(s.weight)
    assert by_phase == {"orientation": [3.0], "imaginal_exposure": [2.0, 2.0]}
    assert sum(s.weight for s in seeded) == len(turns)  # the sample stands for every turn
    # no sampling: every turn, weight 1
    for k in (None, 10, 12):
        everything = weighted_sample(turns, k, 3, TEN.session_id)
        assert [s.turn for s in everything] == turns
        assert {s.weight for s in everything} == {1.0}


@st.composite
def _sessions(draw: st.DrawFn) -> tuple[SessionResult, int, int | None]:
    n = draw(st.integers(1, 24))
    phases = draw(
        st.lists(
            st.sampled_from(["orientation", "imaginal_exposure", "processing"]),
            min_size=n,
            max_size=n,
        )
    )
    grounding = draw(st.sets(st.integers(1, n), max_size=n))
    passive = draw(st.sets(st.integers(1, n), max_size=3))
    k = draw(st.integers(1, n + 1))
    seed = draw(st.none() | st.integers(0, 1000))
    return _session(phases, grounding, passive), k, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_sessions())
def test_kept_unflagged_weights_of_a_phase_sum_to_its_unflagged_turns(
    case: tuple[SessionResult, int, int | None],
) -> None:
    session, k, seed = case
    turns = list(therapist_turns(session))
    sample = weighted_sample(turns, k, seed, session.session_id)
    assert [s.turn for s in sample] == sample_turns(turns, k, seed, session.session_id)
    kept = {s.turn.position: s.weight for s in sample}
    assert all(kept.get(t.position) == 1.0 for t in turns if flagged(t))  # always, weight 1
    assert all(w >= 1.0 for w in kept.values())
    for phase in {t.record.phase for t in turns}:
        unflagged = [t for t in turns if t.record.phase == phase and not flagged(t)]
        weights = [kept[t.position] for t in unflagged if t.position in kept]
        if weights:  # a phase given no draw has nothing to stand for it (see the module doc)
            assert sum(weights) == pytest.approx(len(unflagged))
            assert len(set(weights)) == 1


# --------------------------------------------------------------------------- item means


def _frame(rows: list[tuple[str, int, bool, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"subject": "A", "modality": "pe", "severity": "routine", "item_id": "ack",
             "judge": "j", "session_id": sid, "turn": turn, "met": met, "weight": w}
            for sid, turn, met, w in rows
        ]
    )  # fmt: skip


FIVE = _frame(
    [("s1", 1, True, 1.0), ("s1", 2, False, 3.0), ("s2", 1, True, 2.0), ("s2", 2, False, 1.0),
     ("s2", 3, True, 1.0)]
)  # fmt: skip


def test_item_means_is_the_weighted_mean_and_the_plain_mean_without_sampling() -> None:
    (row,) = m.item_means(FIVE).to_dict("records")
    assert row["mean"] == pytest.approx(
        (1 * 1 + 0 * 3 + 1 * 2 + 0 * 1 + 1 * 1) / (1 + 3 + 2 + 1 + 1)
    )
    assert (row["n"], row["n_judges"], row["n_units"]) == (5, 1, 5)
    assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    unweighted = m.item_means(FIVE.assign(weight=1.0))
    assert unweighted["mean"].tolist() == [3 / 5]
    # all weights 1 and no weight column at all are the same table: existing figures do not move
    pd.testing.assert_frame_equal(unweighted, m.item_means(FIVE.drop(columns="weight")))


def _wilson(rate: float, units: float) -> tuple[float, float]:
    low, high = proportion_confint(rate * units, units, method="wilson")
    return (float(low), float(high))


def test_the_interval_is_wilson_on_the_sessions_not_the_verdicts() -> None:
    y = FIVE["met"].astype(float).to_numpy()
    w = FIVE["weight"].to_numpy()
    rate, low, high = m.weighted_rate(y, w, FIVE["session_id"])
    assert rate == pytest.approx(float(np.average(y, weights=w)))
    # two sessions of total weight 4 each: two units, whatever the five verdicts say
    assert (low, high) == pytest.approx(_wilson(rate, 2.0))
    # sessions of unequal weight count as fewer: Kish's (sum W)^2 / sum W^2 = 16 / 10
    uneven = FIVE.assign(weight=[1.0, 3.0, 1.0, 1.0, 1.0])  # totals 4 and 3
    rate, low, high = m.weighted_rate(y, uneven["weight"], uneven["session_id"])
    assert (low, high) == pytest.approx(_wilson(rate, 49 / 25))


def test_sampling_weights_do_not_narrow_the_interval() -> None:
    # six sessions; the sampled turns (weight 3) carry the sessions' differences
    rows = []
    for i, sampled in enumerate([True, False, True, True, False, False], start=1):
        sid = f"s{i}"
        rows += [(sid, 1, True, 1.0), (sid, 2, False, 1.0)]
        rows += [(sid, 3, sampled, 3.0), (sid, 4, sampled, 3.0)]
    frame = _frame(rows)
    weighted = m.item_means(frame).iloc[0]
    plain = m.item_means(frame.assign(weight=1.0)).iloc[0]
    assert weighted["mean"] == pytest.approx(0.5) == plain["mean"]
    for row in (weighted, plain):  # six sessions of equal weight: six units either way
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(_wilson(0.5, 6.0))


def test_one_session_counts_once_and_so_do_alike_verdicts() -> None:
    one = FIVE[FIVE["session_id"] == "s2"]
    row = m.item_means(one.assign(weight=1.0)).iloc[0]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(_wilson(2 / 3, 1.0))
    row = m.item_means(one).iloc[0]  # weighted: still one session
    assert row["mean"] == pytest.approx(3 / 4)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(_wilson(3 / 4, 1.0))
    alike = m.item_means(FIVE.assign(met=True)).iloc[0]  # every verdict met: two sessions' worth
    assert alike["mean"] == 1.0
    assert (alike["ci_low"], alike["ci_high"]) == m.wilson_interval(2, 2)


def test_many_alike_verdicts_of_few_sessions_are_few_units() -> None:
    # the review's case: 2 sessions × 100 turns × 3 judges, all met, then one unmet
    y = np.ones(600)
    two = np.repeat(["s1", "s2"], 300)
    ten = np.repeat([f"s{i}" for i in range(10)], 60)
    assert m.weighted_rate(y, None, two) == (1.0, *m.wilson_interval(2, 2))
    assert m.weighted_rate(y, None, ten) == (1.0, *m.wilson_interval(10, 10))
    assert m.wilson_interval(2, 2)[0] == pytest.approx(0.34238, abs=1e-5)
    assert m.wilson_interval(10, 10)[0] == pytest.approx(0.72247, abs=1e-5)
    flipped = y.copy()
    flipped[0] = 0.0
    for clusters in (two, ten):
        _, low_all, high_all = m.weighted_rate(y, None, clusters)
        rate, low, high = m.weighted_rate(flipped, None, clusters)
        assert rate == pytest.approx(599 / 600)
        assert low < low_all and high <= high_all


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.booleans(), st.sampled_from([1.0, 1.0, 1.5, 3.0, 40.0])),
        min_size=1,
        max_size=40,
    ),
    st.integers(0, 39),
    st.booleans(),
)
def test_an_unmet_verdict_in_place_of_a_met_one_never_raises_a_bound(
    draws: list[tuple[int, bool, float]], pick: int, weighted: bool
) -> None:
    met = np.array([float(d[1]) for d in draws])
    assume(met.any())
    weights = np.array([d[2] for d in draws]) if weighted else None
    sessions = np.array([f"s{d[0]}" for d in draws], dtype=object)
    i = np.flatnonzero(met)[pick % int(met.sum())]
    worse = met.copy()
    worse[i] = 0.0
    rate, low, high = m.weighted_rate(met, weights, sessions)
    rate2, low2, high2 = m.weighted_rate(worse, weights, sessions)
    assert rate2 < rate and low2 <= low and high2 <= high


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.booleans(), st.floats(1.0, 50.0)), min_size=1, max_size=30
    )
)
def test_the_weighted_mean_and_its_interval_stay_in_the_unit_interval(
    draws: list[tuple[int, bool, float]],
) -> None:
    frame = _frame([(f"s{s}", i, met, w) for i, (s, met, w) in enumerate(draws)])
    (row,) = m.item_means(frame).to_dict("records")
    assert 0.0 <= row["ci_low"] <= row["mean"] <= row["ci_high"] <= 1.0
    met = frame["met"].astype(float)
    assert met.min() - 1e-12 <= row["mean"] <= met.max() + 1e-12


# --------------------------------------------------------------------------- the panel


@pytest.mark.parametrize("mode", ["item", "turn"])
async def test_a_sampled_session_stores_its_turns_weights(mode: str, tmp_path: Path) -> None:
    options = PanelOptions(mode=mode, sample_turns=6, sample_seed=5)
    rows = await judge_session(scripted_gateway(), TEN, RUBRICS, [LEXICAL], options=options)
    turns = list(therapist_turns(TEN))
    expected = {s.turn.record.turn: s.weight for s in weighted_sample(turns, 6, 5, TEN.session_id)}
    turn_rows = [r for r in rows if r["turn"] >= 0]
    assert turn_rows and {r["turn"] for r in turn_rows} == set(expected)
    assert all(r["weight"] == expected[r["turn"]] for r in turn_rows)
    assert {r["weight"] for r in turn_rows if r["turn"] in (2, 7, 8)} == {1.0}
    assert {r["weight"] for r in turn_rows} > {1.0}  # sampled turns weigh more than 1
    assert {r["weight"] for r in rows if r["turn"] < 0} == {1.0}  # session items
    with Store(tmp_path / "s.sqlite") as store:
        store.save_session(TEN)
        store.save_verdicts(rows)
        stored = {(v.item_id, v.turn): v.weight for v in store.verdicts()}
        frames = load_frames(store, with_findings=False)
    assert stored == {(r["item_id"], r["turn"]): r["weight"] for r in rows}
    assert sorted(frames.verdicts["weight"]) == sorted(r["weight"] for r in rows)
    means = m.item_means(frames.verdicts)
    assert means[["ci_low", "ci_high"]].notna().all().all()


async def test_an_unsampled_session_has_every_weight_one() -> None:
    rows = await judge_session(scripted_gateway(), TEN, RUBRICS, [LEXICAL])
    assert rows and {r["weight"] for r in rows} == {1.0}


def test_the_fidelity_axis_weighs_sampled_fidelity_verdicts() -> None:
    from test_axes import reflex_and_adherent, verdict

    from therasim.evaluation.analysis import axes as ax

    f = reflex_and_adherent()
    picked = [
        (sid, turn, met, w)
        for sid, turns in (
            ("adherent-0", [(1, True, 1.0), (2, False, 3.0)]),
            ("adherent-1", [(1, True, 1.0), (3, False, 2.0), (4, True, 2.0)]),
        )
        for turn, met, w in turns
    ]
    rows = [
        {**verdict(sid, "adherent", "j1", "protocol_fidelity", met, n=turn), "weight": w}
        for sid, turn, met, w in picked
    ]
    f.verdicts = pd.DataFrame(rows)
    sampled = ax.protocol_fidelity(f, "adherent").metrics
    mean, low, high = m.weighted_rate(
        [float(r[2]) for r in picked], [r[3] for r in picked], [r[0] for r in picked], 0.05
    )
    assert sampled["judge_fidelity_mean"] == pytest.approx(mean) == pytest.approx(4 / 9)
    assert sampled["judge_fidelity_ci"] == pytest.approx([low, high])
    # every turn judged: the plain share, its interval still on the two sessions, not on the
    # five verdicts (with or without a weight column)
    for plain_rows in (
        pd.DataFrame(rows).assign(weight=1.0),
        pd.DataFrame(rows).drop(columns="weight"),
    ):
        f.verdicts = plain_rows
        plain = ax.protocol_fidelity(f, "adherent").metrics
        assert plain["judge_fidelity_mean"] == pytest.approx(3 / 5)
        units = 5**2 / (2**2 + 3**2)  # Kish's effective number of the two sessions (2 + 3 verdicts)
        low, high = proportion_confint(3 / 5 * units, units, alpha=0.05, method="wilson")
        assert plain["judge_fidelity_ci"] == pytest.approx([low, high])
        assert plain["judge_fidelity_ci"][0] < m.wilson_interval(3, 5)[0]
