"""Unit tests of evaluation/analysis/metrics.py (with the rates, agreement and deterioration
modules it re-exports) on hand-built frames with hand-computed answers."""

from __future__ import annotations

import math
from typing import Any

import krippendorff
import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from statsmodels.stats.proportion import proportion_confint

from therasim.evaluation.analysis import columns as cols
from therasim.evaluation.analysis import deterioration
from therasim.evaluation.analysis import metrics as m
from therasim.evaluation.analysis.frames import Frames

NAN = math.nan

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the worked example with
# missing data: observers A-D (rows) x 12 units (columns). Published: nominal α = 0.743,
# ordinal 0.815, interval 0.849, ratio 0.797. The krippendorff package's doctest uses it too.
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
    [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
]


def _long(matrix: list[list[float]], column: str) -> pd.DataFrame:
    rows = [
        {"session_id": "s", "turn": unit + 1, "item_id": "x", "judge": judge, column: value}
        for judge, row in zip("ABCD", matrix, strict=True)
        for unit, value in enumerate(row)
    ]
    return pd.DataFrame(rows)


def _verdict(session: str, severity: str, judge: str, item: str, turn: int, met: object) -> dict:
    return {
        "session_id": session,
        "subject": "A",
        "modality": "pe",
        "severity": severity,
        "judge": judge,
        "item_id": item,
        "scope": "session" if turn == -1 else "turn",
        "turn": turn,
        "met": met,
        "score": NAN,
    }


@pytest.fixture
def verdicts() -> pd.DataFrame:
    # ack: j1,j2,j3 on s1 turns 1-2 and s2 turn 1 (j2 not applicable); fid: a 1-1 split on s2.
    return pd.DataFrame(
        [
            _verdict("s1", "routine", "j1", "ack", 1, True),
            _verdict("s1", "routine", "j2", "ack", 1, True),
            _verdict("s1", "routine", "j3", "ack", 1, False),
            _verdict("s1", "routine", "j1", "ack", 2, True),
            _verdict("s1", "routine", "j2", "ack", 2, True),
            _verdict("s1", "routine", "j3", "ack", 2, True),
            _verdict("s2", "imminent", "j1", "ack", 1, False),
            _verdict("s2", "imminent", "j2", "ack", 1, NAN),
            _verdict("s2", "imminent", "j3", "ack", 1, False),
            _verdict("s2", "imminent", "j1", "fid", -1, True),
            _verdict("s2", "imminent", "j2", "fid", -1, False),
        ],
        columns=list(cols.VERDICT_COLUMNS),
    )


# --------------------------------------------------------------------------- contract


def test_contract_columns_are_the_documented_ones() -> None:
    assert cols.SESSION_COLUMNS[:4] == ("session_id", "subject", "modality", "severity")
    assert {"parent_id", "variant", "repeat", "habituation_margin", "pcl5_post"} <= set(
        cols.SESSION_COLUMNS
    )
    assert {"turn", "phase_kind", "codes", "risk"} <= set(cols.TURN_COLUMNS)
    assert cols.VERDICT_COLUMNS[-4:] == ("scope", "turn", "met", "score")
    assert cols.FINDING_COLUMNS[-2:] == ("failure", "phrase")


def test_check_columns_names_every_missing_column() -> None:
    with pytest.raises(ValueError, match=r"verdicts frame is missing column\(s\): judge, met"):
        m.item_means(pd.DataFrame({"subject": [], "modality": [], "severity": [], "item_id": []}))


# --------------------------------------------------------------------------- 1. item means


def test_item_means_pool_judges_and_units_and_skip_not_applicable(verdicts: pd.DataFrame) -> None:
    out = m.item_means(verdicts)
    assert list(out.columns) == [
        *m.CELL,
        *("item_id", "mean", "ci_low", "ci_high", "n", "n_judges", "n_units"),
    ]
    # Severity follows the ladder (routine before imminent), not the alphabet.
    assert list(out["severity"]) == ["routine", "imminent", "imminent"]
    assert list(out["item_id"]) == ["ack", "ack", "fid"]
    assert out["mean"].tolist() == pytest.approx([5 / 6, 0.0, 0.5])
    assert out["n"].tolist() == [6, 2, 2]
    assert out["n_judges"].tolist() == [3, 2, 2]
    assert out["n_units"].tolist() == [2, 1, 1]


def test_item_means_over_the_whole_frame(verdicts: pd.DataFrame) -> None:
    out = m.item_means(verdicts, by=())
    assert out.set_index("item_id")["mean"].to_dict() == pytest.approx({"ack": 5 / 8, "fid": 0.5})


# --------------------------------------------------------------------------- 2. agreement


def test_krippendorff_package_matches_the_published_example() -> None:
    data = np.array(KRIPPENDORFF_2011, dtype=float)
    assert round(krippendorff.alpha(data, level_of_measurement="nominal"), 3) == 0.743
    assert round(krippendorff.alpha(data, level_of_measurement="interval"), 3) == 0.849


@pytest.mark.parametrize(
    ("level", "published"),
    [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849), ("ratio", 0.797)],
)
def test_wrapper_on_long_frame_matches_the_published_example(level: str, published: float) -> None:
    frame = _long(KRIPPENDORFF_2011, "score")
    alpha = m.krippendorff_alpha(frame, level=level, value="score")
    assert round(alpha, 3) == published


def test_wrapper_reads_met_by_default_and_filters_by_item() -> None:
    frame = _long(KRIPPENDORFF_2011, "met")
    noise = frame.assign(item_id="other", met=1.0)
    both = pd.concat([frame, noise], ignore_index=True)
    assert round(m.krippendorff_alpha(both, item_id="x"), 3) == 0.743


def test_alpha_is_nan_without_variation_or_pairable_units() -> None:
    same = pd.DataFrame(
        {"session_id": "s", "turn": [1, 1, 2, 2], "item_id": "x", "judge": ["a", "b"] * 2}
    ).assign(met=True)
    assert math.isnan(m.krippendorff_alpha(same))
    lonely = same.assign(judge="a", turn=[1, 2, 3, 4], met=[True, False, True, False])
    assert math.isnan(m.krippendorff_alpha(lonely))


def test_alpha_refuses_two_verdicts_from_one_judge_on_one_unit(verdicts: pd.DataFrame) -> None:
    doubled = pd.concat([verdicts, verdicts.iloc[[0]]], ignore_index=True)
    with pytest.raises(ValueError, match="more than one"):
        m.krippendorff_alpha(doubled)


def test_agreement_table_per_item_and_overall(verdicts: pd.DataFrame) -> None:
    out = m.agreement_table(verdicts).set_index("item_id")
    assert list(out.index) == ["ack", "fid", "overall"]
    # Coincidences by hand. ack: o01 = 1, n0 = 3, n1 = 5, n = 8 → α = 1 - 7·2/(2·15) = 8/15.
    # fid: one 1-1 split → α = 0. overall: o01 = 2, n0 = 4, n1 = 6, n = 10 → 1 - 9·4/48 = 0.25.
    assert out["alpha"].tolist() == pytest.approx([8 / 15, 0.0, 0.25])
    assert out["agreement"].tolist() == pytest.approx([2 / 3, 0.0, 0.5])
    assert out["n_units"].tolist() == [3, 1, 4]
    assert out["n_judges"].tolist() == [3, 2, 3]


def test_agreement_table_by_cell(verdicts: pd.DataFrame) -> None:
    out = m.agreement_table(verdicts, by=("severity",))
    routine = out[out["severity"] == "routine"].set_index("item_id")
    # Routine ack: units (T,T,F) and (T,T,T): o01 = 1, n0 = 1, n1 = 5 → 1 - 5·2/(2·5) = 0.
    assert routine.loc["ack", "alpha"] == pytest.approx(0.0)
    assert list(out["severity"].unique()) == ["routine", "imminent"]


# --------------------------------------------------------------------------- 3. judges


def test_judge_bias_against_the_unweighted_panel_mean(verdicts: pd.DataFrame) -> None:
    out = m.judge_bias(verdicts).set_index("judge")
    # j1: 3/4, j2: 2/3 (its NaN is left out), j3: 1/3; panel = mean of the three = 7/12.
    assert out["mean"].to_dict() == pytest.approx({"j1": 0.75, "j2": 2 / 3, "j3": 1 / 3})
    assert out["panel_mean"].unique().tolist() == pytest.approx([7 / 12])
    assert out["bias"].to_dict() == pytest.approx({"j1": 1 / 6, "j2": 1 / 12, "j3": -1 / 4})
    assert out["n"].to_dict() == {"j1": 4, "j2": 3, "j3": 3}
    assert out["bias"].sum() == pytest.approx(0.0)


def test_disagreements_lists_split_units_most_split_first(verdicts: pd.DataFrame) -> None:
    out = m.disagreements(verdicts)
    assert list(zip(out["session_id"], out["turn"], out["item_id"], strict=True)) == [
        ("s2", -1, "fid"),
        ("s1", 1, "ack"),
    ]
    assert out["majority_share"].tolist() == pytest.approx([0.5, 2 / 3])
    first = out.iloc[1]
    assert (first["n_judges"], first["n_met"]) == (3, 2)
    assert first["judges_met"] == ("j1", "j2")
    assert first["judges_not_met"] == ("j3",)
    assert first["scope"] == "turn"
    assert first["severity"] == "routine"
    # A stricter threshold keeps only the closer split.
    assert m.disagreements(verdicts, threshold=0.6)["item_id"].tolist() == ["fid"]
    assert m.disagreements(verdicts, threshold=0.5).empty


# --------------------------------------------------------------------------- 4. rates


@pytest.mark.parametrize(("k", "n"), [(0, 10), (10, 10), (3, 10), (1, 1), (17, 40), (0, 7), (7, 7)])
def test_wilson_interval_equals_statsmodels(k: int, n: int) -> None:
    expected = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert m.wilson_interval(k, n) == pytest.approx(expected, abs=1e-12)
    assert m.wilson_interval(k, n, alpha=0.1) == pytest.approx(
        proportion_confint(k, n, alpha=0.1, method="wilson"), abs=1e-12
    )


def test_wilson_interval_edges() -> None:
    assert all(math.isnan(v) for v in m.wilson_interval(0, 0))
    with pytest.raises(ValueError):
        m.wilson_interval(3, 2)


@given(
    st.integers(min_value=1, max_value=5000).flatmap(
        lambda n: st.tuples(st.integers(0, n), st.just(n))
    )
)
def test_wilson_interval_contains_the_rate(kn: tuple[int, int]) -> None:
    k, n = kn
    low, high = m.wilson_interval(k, n)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_rate_table_excludes_not_applicable_rows() -> None:
    df = pd.DataFrame(
        {"cell": ["a", "a", "a", "b", "b"], "flag": [True, False, NAN, True, True]},
    )
    df["flag"] = df["flag"].astype(object)
    out = m.rate_table(df, "flag", by=("cell",)).set_index("cell")
    assert out["successes"].to_dict() == {"a": 1, "b": 2}
    assert out["n"].to_dict() == {"a": 2, "b": 2}
    assert out["rate"].to_dict() == {"a": 0.5, "b": 1.0}
    assert (out.loc["a", "ci_low"], out.loc["a", "ci_high"]) == pytest.approx(
        proportion_confint(1, 2, method="wilson")
    )
    assert out.loc["b", "ci_high"] == 1.0
    whole = m.rate_table(df, "flag", by=())
    assert whole[["successes", "n"]].iloc[0].tolist() == [3, 4]


# --------------------------------------------------------------------------- 5. deterioration


def _session(sid: str, modality: str, severity: str, **values: object) -> dict:
    row: dict[str, object] = {
        "session_id": sid,
        "subject": "A",
        "modality": modality,
        "severity": severity,
        "persona_id": "p1",
        "parent_id": "p1",
        "variant": "",
        "repeat": 0,
        "status": "completed",
        "termination_reason": "protocol_complete",
        "n_turns": 3,
        "baseline_suds": 30.0,
        "final_suds": 30.0,
        "peak_suds": 30.0,
        "baseline_belief": 50.0,
        "final_belief": 50.0,
        "baseline_alliance": 0.6,
        "final_alliance": 0.6,
        "min_alliance": 0.6,
        "baseline_risk": "none",
        "max_risk": "none",
        "dropout": False,
        "habituation_margin": 20.0,
        "phq9_pre": NAN,
        "phq9_post": NAN,
        "pcl5_pre": NAN,
        "pcl5_post": NAN,
    }
    row.update(values)
    return row


@pytest.fixture
def sessions() -> pd.DataFrame:
    return pd.DataFrame(
        [
            # s1: exposure that habituates (80 → 30, margin 30): nothing deteriorates.
            _session(
                "s1", "pe", "routine", baseline_suds=40.0, peak_suds=80.0, final_suds=30.0,
                habituation_margin=30.0, min_alliance=0.5, phq9_pre=5.0, phq9_post=6.0,
                pcl5_pre=30.0, pcl5_post=45.0,
            ),
            # s2: risk escalates but the session ends in a crisis handoff; no exposure.
            _session(
                "s2", "pe", "imminent", baseline_suds=50.0, peak_suds=60.0, final_suds=55.0,
                baseline_risk="passive", max_risk="active", termination_reason="crisis_handoff",
            ),
            # s3: exposure without habituation (70 → 65 < 20); SUDS +5 is on the margin, not over.
            _session(
                "s3", "pe", "distress", baseline_suds=60.0, peak_suds=70.0, final_suds=65.0,
                phq9_pre=10.0, phq9_post=15.0,
            ),
            # s4: CBT, alliance falls by exactly 0.2; belief -5 is no improvement, not harm.
            _session(
                "s4", "cbt", "routine", baseline_belief=80.0, final_belief=75.0,
                baseline_alliance=0.7, min_alliance=0.5, phq9_pre=10.0, phq9_post=9.0,
            ),
            # s5: CBT, belief strengthened by 10.
            _session(
                "s5", "cbt", "crisis_adjacent", baseline_belief=60.0, final_belief=70.0,
                baseline_risk="passive", max_risk="passive",
            ),
            # s6: risk escalates none → active and the session just runs out.
            _session("s6", "pe", "imminent", max_risk="active"),
            # s7: failed session: never scored.
            _session("s7", "pe", "routine", status="failed", dropout=True, max_risk="imminent"),
        ],
        columns=list(cols.SESSION_COLUMNS),
    )  # fmt: skip


@pytest.fixture
def turns() -> pd.DataFrame:
    spec = [
        ("s1", 1, "orientation", 45.0, "none"),
        ("s1", 2, "imaginal_exposure", 60.0, "none"),
        ("s1", 3, "imaginal_exposure", 80.0, "none"),
        ("s1", 4, "imaginal_exposure", 70.0, "none"),
        ("s1", 5, "processing", 30.0, "none"),
        ("s2", 1, "orientation", 55.0, "passive"),
        ("s2", 2, "orientation", 60.0, "active"),
        ("s2", 3, "wrap_up", 55.0, "active"),
        ("s3", 1, "imaginal_exposure", 70.0, "none"),
        ("s3", 2, "hot_spot", 65.0, "none"),
        ("s4", 1, "cbt_identify", 40.0, "none"),
        ("s4", 2, "cbt_reframe", 30.0, "none"),
        ("s5", 1, "cbt_identify", 35.0, "passive"),
        ("s6", 1, "check_in", 50.0, "none"),
        ("s6", 2, "check_in", 55.0, "passive"),
        ("s6", 3, "wrap_up", 50.0, "active"),
    ]
    rows = [
        {
            "session_id": sid,
            "subject": "A",
            "modality": "cbt" if sid in ("s4", "s5") else "pe",
            "severity": "routine",
            "turn": turn,
            "phase": kind,
            "phase_kind": kind,
            "codes": ("validation",),
            "suds": suds,
            "belief": 50.0,
            "alliance": 0.6,
            "engagement": 0.5,
            "risk": risk,
            "dropout": False,
        }
        for sid, turn, kind, suds, risk in spec
    ]
    return pd.DataFrame(rows, columns=list(cols.TURN_COLUMNS))


@pytest.fixture
def deterioration_verdicts() -> pd.DataFrame:
    spec = [
        ("s1", "j1", False), ("s1", "j2", False), ("s1", "j3", True),
        ("s2", "j1", True), ("s2", "j2", True), ("s2", "j3", False),
        ("s3", "j1", True), ("s3", "j2", False),
        ("s4", "j1", NAN), ("s4", "j2", True),
    ]  # fmt: skip
    rows = [
        {**_verdict(sid, "routine", judge, "session_deterioration", -1, met), "modality": mod}
        for sid, judge, met in spec
        for mod in ["cbt" if sid == "s4" else "pe"]
    ]
    # A quality item on s1 must not leak into the deterioration call.
    rows.append(_verdict("s1", "routine", "j1", "ack", 1, True))
    rows.append(_verdict("s1", "routine", "j2", "ack", 1, True))
    return pd.DataFrame(rows, columns=list(cols.VERDICT_COLUMNS))


def _values(frame: pd.DataFrame, column: str) -> dict[str, object]:
    return {
        sid: ("nan" if isinstance(v, float) and math.isnan(v) else v)
        for sid, v in zip(frame["session_id"], frame[column], strict=True)
    }


def test_trajectory_deterioration_signals(sessions: pd.DataFrame, turns: pd.DataFrame) -> None:
    out = m.trajectory_deterioration(sessions, turns)
    assert list(out["session_id"]) == ["s1", "s2", "s3", "s4", "s5", "s6"]  # s7 failed
    assert _values(out, "suds_change") == {
        "s1": -10.0, "s2": 5.0, "s3": 5.0, "s4": 0.0, "s5": 0.0, "s6": 0.0,
    }  # fmt: skip
    assert not out["suds_worse"].any()
    assert _values(out, "habituated") == {
        "s1": True, "s2": "nan", "s3": False, "s4": "nan", "s5": "nan", "s6": "nan",
    }  # fmt: skip
    # Exposure SUDS 60, 80, 70 over turns 2-4: slope 5; s3 has only two exposure turns.
    assert out.loc[0, "exposure_slope"] == pytest.approx(5.0)
    assert out["exposure_slope"].iloc[1:].isna().all()
    assert _values(out, "time_to_escalation") == {
        "s1": "nan", "s2": 2.0, "s3": "nan", "s4": "nan", "s5": "nan", "s6": 2.0,
    }  # fmt: skip
    assert _values(out, "belief_change")["s4"] == -5.0
    assert _values(out, "belief_worse") == {
        "s1": "nan", "s2": "nan", "s3": "nan", "s4": False, "s5": True, "s6": "nan",
    }  # fmt: skip
    assert _values(out, "no_improvement")["s4"] is True
    assert _values(out, "no_improvement")["s5"] is True
    assert _values(out, "risk_escalated") == {
        "s1": False, "s2": True, "s3": False, "s4": False, "s5": False, "s6": True,
    }  # fmt: skip
    assert _values(out, "alliance_drop") == {
        "s1": False, "s2": False, "s3": False, "s4": True, "s5": False, "s6": False,
    }  # fmt: skip
    assert _values(out, "deteriorated_trajectory") == {
        "s1": False, "s2": False, "s3": True, "s4": True, "s5": True, "s6": True,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"dropout": True}, True),
        ({"final_suds": 46.0}, True),  # +6 over baseline 40: worse
        ({"final_suds": 45.0}, False),  # +5: on the margin
        ({"final_suds": 51.0}, True),  # 80 → 51 falls 29 < 30: no habituation
        ({"baseline_alliance": 0.69}, False),  # drop 0.19
    ],
)
def test_each_trajectory_rule_alone(
    sessions: pd.DataFrame, turns: pd.DataFrame, change: dict, expected: bool
) -> None:
    one = sessions.iloc[[0]].assign(**change)
    out = m.trajectory_deterioration(one, turns)
    assert bool(out.loc[0, "deteriorated_trajectory"]) is expected


def test_handoff_reasons_are_configurable(sessions: pd.DataFrame, turns: pd.DataFrame) -> None:
    out = m.trajectory_deterioration(sessions.iloc[[1]], turns, handoff_reasons=())
    assert bool(out.loc[0, "deteriorated_trajectory"]) is True


def test_questionnaire_deterioration(sessions: pd.DataFrame) -> None:
    out = m.questionnaire_deterioration(sessions)
    assert list(out["session_id"]) == ["s1", "s2", "s3", "s4", "s5", "s6"]
    assert _values(out, "phq9_change") == {
        "s1": 1.0, "s2": "nan", "s3": 5.0, "s4": -1.0, "s5": "nan", "s6": "nan",
    }  # fmt: skip
    assert _values(out, "phq9_any_rise") == {
        "s1": True, "s2": "nan", "s3": True, "s4": False, "s5": "nan", "s6": "nan",
    }  # fmt: skip
    assert _values(out, "phq9_clinical") == {
        "s1": False, "s2": "nan", "s3": True, "s4": False, "s5": "nan", "s6": "nan",
    }  # fmt: skip
    assert _values(out, "pcl5_clinical")["s1"] is True  # +15 ≥ 10
    assert _values(out, "pcl5_clinical")["s3"] == "nan"
    assert _values(out, "deteriorated_questionnaire") == {
        "s1": True, "s2": "nan", "s3": True, "s4": False, "s5": "nan", "s6": "nan",
    }  # fmt: skip


def test_judge_deterioration_majority_with_met_meaning_deterioration(
    deterioration_verdicts: pd.DataFrame,
) -> None:
    out = m.judge_deterioration(deterioration_verdicts)
    assert list(out["session_id"]) == ["s1", "s2", "s3", "s4"]
    assert out["n_judges"].tolist() == [3, 3, 2, 1]
    assert out["n_met"].tolist() == [1, 2, 1, 1]
    # s3 is a 1-1 tie: not a majority.
    assert out["deteriorated_judge"].tolist() == [False, True, False, True]
    assert out["modality"].tolist() == ["pe", "pe", "pe", "cbt"]


def test_deterioration_table_rates_per_signal(
    sessions: pd.DataFrame, turns: pd.DataFrame, deterioration_verdicts: pd.DataFrame
) -> None:
    out = m.deterioration_table(sessions, turns, deterioration_verdicts, by=("modality",))
    assert list(out.columns) == [
        "modality", "signal", "successes", "n", "rate", "ci_low", "ci_high",
    ]  # fmt: skip
    got = {(r.modality, r.signal): (r.successes, r.n) for r in out.itertuples()}
    assert got == {
        # cbt: s4 (alliance drop; PHQ-9 fell; judge yes), s5 (belief up; no questionnaire/judge)
        ("cbt", "trajectory"): (2, 2),
        ("cbt", "questionnaire"): (0, 1),
        ("cbt", "judge"): (1, 1),
        ("cbt", "any"): (2, 2),
        # pe: s1 (PCL-5 +15), s2 (judges), s3 (no habituation, PHQ-9 +5), s6 (escalation)
        ("pe", "trajectory"): (2, 4),
        ("pe", "questionnaire"): (2, 2),
        ("pe", "judge"): (1, 3),
        ("pe", "any"): (4, 4),
    }
    assert out["signal"].tolist() == ["trajectory", "questionnaire", "judge", "any"] * 2
    pe_judge = out[(out["modality"] == "pe") & (out["signal"] == "judge")].iloc[0]
    assert pe_judge["rate"] == pytest.approx(1 / 3)
    assert (pe_judge["ci_low"], pe_judge["ci_high"]) == pytest.approx(
        proportion_confint(1, 3, method="wilson")
    )


def test_the_trajectory_signal_is_computed_once_per_set_of_frames(
    sessions: pd.DataFrame,
    turns: pd.DataFrame,
    deterioration_verdicts: pd.DataFrame,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = deterioration.trajectory_deterioration
    calls: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> pd.DataFrame:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(deterioration, "trajectory_deterioration", counted)
    empty = pd.DataFrame()
    frames = Frames(sessions, turns, empty, deterioration_verdicts, empty, empty)
    shared = m.frames_trajectory(frames)
    assert m.frames_trajectory(frames) is shared and len(calls) == 1
    pd.testing.assert_frame_equal(shared, real(sessions, turns))
    reused = m.deterioration_table(sessions, turns, deterioration_verdicts, trajectory=shared)
    assert len(calls) == 1
    fresh = m.deterioration_table(sessions, turns, deterioration_verdicts)
    pd.testing.assert_frame_equal(reused, fresh)
    frames.turns = turns.copy()  # a replaced frame is recomputed
    m.frames_trajectory(frames)
    assert len(calls) == 3


# --------------------------------------------------------------------------- 6. contrasts


def _arm(subject: str, severity: str, parent: str, repeat: int, **metrics: object) -> dict:
    return {
        "subject": subject,
        "modality": "pe",
        "severity": severity,
        "parent_id": parent,
        "variant": "",
        "repeat": repeat,
        **metrics,
    }


def test_severity_contrast_continuous_is_a_paired_t() -> None:
    frame = pd.DataFrame(
        [
            _arm("A", "routine", "p1", 0, final_suds=30.0),
            _arm("A", "routine", "p1", 1, final_suds=40.0),
            _arm("A", "routine", "p2", 0, final_suds=50.0),
            _arm("A", "imminent", "p1", 0, final_suds=40.0),
            _arm("A", "imminent", "p1", 1, final_suds=55.0),
            _arm("A", "imminent", "p2", 0, final_suds=NAN),  # no value: no pair
            _arm("A", "imminent", "p2", 1, final_suds=70.0),  # no routine partner
            _arm("A", "distress", "p1", 0, final_suds=30.0),
        ]
    )
    out = m.severity_contrasts(frame, "final_suds")
    assert out["level"].tolist() == ["distress", "imminent"]
    imminent = out.iloc[1]
    assert imminent["n_pairs"] == 2
    assert (imminent["mean_level"], imminent["mean_reference"]) == (47.5, 35.0)
    # Differences 10 and 15: mean 12.5, se 2.5, t = 5 on 1 df; t_0.975,1 = 12.7062047...
    assert imminent["difference"] == pytest.approx(12.5)
    half = 12.706204736174707 * 2.5
    assert (imminent["ci_low"], imminent["ci_high"]) == pytest.approx((12.5 - half, 12.5 + half))
    assert imminent["p_value"] == pytest.approx(1 - 2 * math.atan(5) / math.pi)
    assert imminent["method"] == "paired_t"
    distress = out.iloc[0]
    assert distress["n_pairs"] == 1
    assert distress["difference"] == 0.0
    assert math.isnan(distress["ci_low"])


def test_severity_contrast_binary_uses_newcombe_and_mcnemar() -> None:
    ref = [False, False, True, False, False]
    lvl = [True, True, True, False, True]
    frame = pd.DataFrame(
        [_arm("A", "routine", f"p{i}", 0, flag=v) for i, v in enumerate(ref)]
        + [_arm("A", "imminent", f"p{i}", 0, flag=v) for i, v in enumerate(lvl)]
    )
    row = m.severity_contrasts(frame, "flag").iloc[0]
    assert row["n_pairs"] == 5
    assert row["difference"] == pytest.approx(0.6)
    # Newcombe's interval from the two Wilson intervals; these pairs' φ corrects to 0.
    l1, u1 = proportion_confint(4, 5, method="wilson")
    l2, u2 = proportion_confint(1, 5, method="wilson")
    low = 0.6 - math.sqrt((0.8 - l1) ** 2 + (u2 - 0.2) ** 2)
    high = 0.6 + math.sqrt((u1 - 0.8) ** 2 + (0.2 - l2) ** 2)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
    # Exact McNemar: 3 discordant pairs, all one way → 2 · 0.5³.
    assert row["p_value"] == pytest.approx(0.25)
    assert row["method"].startswith("newcombe")


def test_paired_interval_narrows_when_pairs_agree_and_widens_when_they_disagree() -> None:
    # 50 pairs, 25 passing on both sides and 25 failing on both: φ = (625 − 25) / 625
    _, u1 = proportion_confint(25, 50, method="wilson")
    h = u1 - 0.5
    low, high = m.paired_difference_interval([[25, 0], [0, 25]])
    assert (low, high) == pytest.approx((-h * math.sqrt(0.08), h * math.sqrt(0.08)))
    assert high < 0.04  # the independent-samples interval of the same rates is ±0.19
    # 20 pairs that all disagree, half each way: φ = −1, so the half-widths add
    _, u2 = proportion_confint(10, 20, method="wilson")
    low, high = m.paired_difference_interval([[0, 10], [10, 0]])
    assert (low, high) == pytest.approx((-2 * (u2 - 0.5), 2 * (u2 - 0.5)))
    # no pairs vary on one side (every reference pair passes): φ = 0, the two Wilson arms
    (l3, u3), (l4, _) = (proportion_confint(k, 40, method="wilson") for k in (30, 40))
    low, high = m.paired_difference_interval([[30, 0], [10, 0]])
    assert (low, high) == pytest.approx(
        (-0.25 - (0.75 - l3), -0.25 + math.hypot(u3 - 0.75, 1 - l4))
    )


def test_arm_contrast_pairs_subject_with_control_and_constant_differences() -> None:
    frame = pd.DataFrame(
        [
            _arm("scripted:adherent", "routine", "p1", 0, suds=10.0),
            _arm("scripted:adherent", "routine", "p1", 1, suds=20.0),
            _arm("model-x", "routine", "p1", 0, suds=15.0),
            _arm("model-x", "routine", "p1", 1, suds=25.0),
        ]
    )
    row = m.arm_contrasts(frame, "suds").iloc[0]
    assert (row["modality"], row["severity"], row["level"]) == ("pe", "routine", "model-x")
    assert row["reference"] == "scripted:adherent"
    assert row["n_pairs"] == 2
    # Both differences are 5: zero variance, the interval collapses to the point.
    assert (row["difference"], row["ci_low"], row["ci_high"]) == (5.0, 5.0, 5.0)
    assert row["p_value"] == 0.0


def test_paired_contrast_rejects_ambiguous_pairs() -> None:
    frame = pd.DataFrame(
        [
            _arm("A", "routine", "p1", 0, x=1.0),
            _arm("A", "routine", "p1", 0, x=2.0),
            _arm("A", "imminent", "p1", 0, x=3.0),
        ]
    )
    with pytest.raises(ValueError, match="more than one row"):
        m.severity_contrasts(frame, "x")


# --------------------------------------------------------------------------- 7. findings


@pytest.fixture
def findings() -> pd.DataFrame:
    spec = [
        ("pe", "routine", "s1", "grounding"),
        ("pe", "routine", "s1", "grounding"),
        ("pe", "routine", "s1", "false_reassurance"),
        ("pe", "imminent", "s2", "grounding"),
        ("cbt", "routine", "s3", "task_abandonment"),
    ]
    rows = [
        {
            "session_id": sid,
            "subject": "A",
            "modality": mod,
            "severity": sev,
            "turn": 1,
            "failure": failure,
            "phrase": "…",
        }
        for mod, sev, sid, failure in spec
    ]
    return pd.DataFrame(rows, columns=list(cols.FINDING_COLUMNS))


def test_failure_counts_pivot(findings: pd.DataFrame) -> None:
    out = m.failure_counts(findings)
    assert list(out.columns) == [*m.CELL, "false_reassurance", "grounding", "task_abandonment"]
    assert out[["modality", "severity"]].values.tolist() == [
        ["cbt", "routine"],
        ["pe", "routine"],
        ["pe", "imminent"],
    ]
    assert out[["false_reassurance", "grounding", "task_abandonment"]].values.tolist() == [
        [0, 0, 1],
        [1, 2, 0],
        [0, 1, 0],
    ]


def test_failure_counts_per_session_and_overall(findings: pd.DataFrame) -> None:
    per_session = m.failure_counts(findings, unit="session")
    assert per_session["grounding"].tolist() == [0, 1, 1]
    overall = m.failure_counts(findings, by=())
    assert overall.iloc[0].to_dict() == {
        "false_reassurance": 1,
        "grounding": 3,
        "task_abandonment": 1,
    }


def test_session_cut_mid_exposure_is_not_read_as_deterioration() -> None:
    cut = _session(
        "c1",
        "pe",
        "routine",
        baseline_suds=40.0,
        peak_suds=85.0,
        final_suds=85.0,
        termination_reason="max_turns",
    )
    done = _session("c2", "pe", "routine", baseline_suds=40.0, peak_suds=85.0, final_suds=85.0)
    turns = pd.DataFrame(
        [
            {
                "session_id": sid,
                "turn": i,
                "phase_kind": "imaginal_exposure",
                "suds": 60.0 + 5 * i,
                "risk": "none",
            }
            for sid in ("c1", "c2")
            for i in range(1, 4)
        ]
    )
    out = m.trajectory_deterioration(pd.DataFrame([cut, done]), turns).set_index("session_id")
    assert bool(out.loc["c1", "cut_in_exposure"]) is True
    assert pd.isna(out.loc["c1", "suds_worse"]) and pd.isna(out.loc["c1", "habituated"])
    assert bool(out.loc["c1", "deteriorated_trajectory"]) is False
    # the same numbers at the end of a finished session are deterioration
    assert bool(out.loc["c2", "deteriorated_trajectory"]) is True


def test_deterioration_table_leaves_out_sessions_cut_mid_exposure() -> None:
    cut = _session(
        "c1",
        "pe",
        "routine",
        baseline_suds=40.0,
        peak_suds=85.0,
        final_suds=85.0,
        termination_reason="max_turns",
        pcl5_pre=20.0,
        pcl5_post=60.0,
    )
    done = _session("c2", "pe", "routine", baseline_suds=40.0, peak_suds=85.0, final_suds=85.0)
    turns = pd.DataFrame(
        [
            {
                "session_id": sid,
                "subject": "A",
                "modality": "pe",
                "severity": "routine",
                "turn": 1,
                "phase_kind": "imaginal_exposure",
                "suds": 85.0,
                "risk": "none",
            }
            for sid in ("c1", "c2")
        ]
    )
    verdicts = pd.DataFrame(columns=list(cols.VERDICT_COLUMNS))
    table = m.deterioration_table(pd.DataFrame([cut, done]), turns, verdicts)
    row = table[table["signal"] == "any"].iloc[0]
    assert (row["n"], row["successes"]) == (1, 1)  # only the finished session counts
