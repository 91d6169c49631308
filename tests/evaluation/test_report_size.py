"""The HTML report stays compact as a study grows (issue 12, item 13): plotly.js once, rounded
per-cell chart data, capped session lists, and frames streamed from the store with shared
strings. ``benchmarks/bench_report.py`` measures time and memory at 48 to 960 sessions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from plotly.offline import get_plotlyjs

from therasim.agents.llm import Gateway
from therasim.evaluation.analysis import metrics
from therasim.evaluation.analysis.columns import CALL_COLUMNS
from therasim.evaluation.analysis.frames import Frames, call_totals, load_frames
from therasim.evaluation.judging.panel import JudgeSpec, PanelOptions, judge_store
from therasim.evaluation.judging.rubric import load_rubrics
from therasim.evaluation.report import console as report
from therasim.evaluation.report.html import render_html_report
from therasim.personas import load_library
from therasim.simulations.runner import run_specs
from therasim.simulations.store import Store
from therasim.simulations.study import Study, expand

PLOTLY_HEAD = get_plotlyjs()[:300]


def _simulate(path: Path) -> int:
    """24 offline sessions (2 arms × 6 personas × 2 severities, 4 turns), judged lexically item
    by item."""
    study = Study.model_validate(
        {
            "id": "size",
            "subjects": {
                "adherent": "scripted:adherent",
                "safety-reflex": "scripted:safety-reflex",
            },
            "personas": {"globs": ["pe-*", "cbt-*"], "limit": 3},
            "severities": ["routine", "crisis_adjacent"],
            "max_turns": 4,
            "judges": [{"name": "lexical", "model": "scripted:lexical-judge"}],
            "cache": False,
        }
    )
    library = load_library()

    async def go() -> int:
        gateway = Gateway(study.gateway_config())
        try:
            with Store(path) as store:
                stats = await run_specs(
                    expand(study, library),
                    study=study,
                    store=store,
                    gateway=gateway,
                    library=library,
                )
                await judge_store(
                    store,
                    gateway,
                    load_rubrics(),
                    [JudgeSpec(name="lexical", model="scripted:lexical-judge")],
                    options=PanelOptions(mode="item"),  # a call per verdict: the most call rows
                )
                return stats.completed
        finally:
            await gateway.aclose()

    return asyncio.run(go())


def _grow(store: Store, copies: int) -> None:
    """Add ``copies`` copies of every stored session (new ids), with their verdicts."""
    ids = sorted(store.session_ids())
    verdicts = list(store.verdicts())
    for k in range(1, copies + 1):
        for sid in ids:
            result = store.load_session(sid)
            assert result is not None
            store.save_session(result.model_copy(update={"session_id": f"{sid}-copy{k}"}))
        store.save_verdicts(
            v.model_copy(update={"session_id": f"{v.session_id}-copy{k}"})
            for v in verdicts
            if v.turn >= -1
        )


@pytest.fixture(scope="module")
def stores_by_size(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("size")
    assert _simulate(root / "base.sqlite") == 24
    out: dict[int, Path] = {}
    for copies in (1, 3):  # 48 and 96 sessions
        path = root / f"s{copies}.sqlite"
        path.write_bytes((root / "base.sqlite").read_bytes())
        with Store(path) as store:
            _grow(store, copies)
            out[store.count()] = path
    assert sorted(out) == [48, 96]
    return out


@pytest.fixture(scope="module")
def frames_by_size(stores_by_size: dict[int, Path]) -> dict[int, Frames]:
    out: dict[int, Frames] = {}
    for n, path in stores_by_size.items():
        with Store(path) as store:
            out[n] = load_frames(store)
    return out


def _without_plotly(text: str) -> int:
    return len(text.encode()) - len(get_plotlyjs().encode())


def _chart_data(text: str) -> list[object]:
    """The ``data`` of every chart's figure, from its ``<script type="application/json">`` block."""
    blocks = re.findall(r'<script type="application/json" class="figure"[^>]*>(.*?)</script>', text)
    return [json.loads(block)["data"] for block in blocks]


@pytest.fixture(scope="module")
def pages(frames_by_size: dict[int, Frames]) -> dict[str, str]:
    """The report of 48 and 96 sessions with the default caps, and with caps below both."""
    out = {}
    for n in (48, 96):
        out[f"default{n}"] = render_html_report(frames_by_size[n], verdicts=[])
        out[f"capped{n}"] = render_html_report(
            frames_by_size[n], verdicts=[], max_sessions=8, max_index=16
        )
    return out


def test_plotly_js_once_and_chart_data_compact(pages: dict[str, str]) -> None:
    text = pages["default96"]
    assert text.count(PLOTLY_HEAD) == 1
    assert "<script src=" not in text
    # the plotly template every chart shares is written once, not per chart
    assert text.count('"sequentialminus":') == 1
    data = _chart_data(text)
    assert len(data) >= 5
    serialized = json.dumps(data)
    # floats rounded to 3 decimals, and no base64 typed arrays
    assert not re.search(r"\d\.\d{4,}", serialized), re.search(r"\d\.\d{4,}", serialized)
    assert '"bdata"' not in serialized


def test_html_does_not_grow_with_the_sessions(pages: dict[str, str]) -> None:
    small, large = pages["default48"], pages["default96"]
    # the charts are per-cell aggregates: their data do not grow with the sessions
    assert len(json.dumps(_chart_data(large))) < 1.1 * len(json.dumps(_chart_data(small)))
    # beyond plotly.js, twice the sessions cost well under twice the bytes (transcripts capped)
    assert _without_plotly(large) < 1.6 * _without_plotly(small)
    # with caps below both sizes, the page is the same size whatever the store holds
    assert _without_plotly(pages["capped96"]) < 1.1 * _without_plotly(pages["capped48"])


def test_long_session_index_is_capped_with_a_note(pages: dict[str, str]) -> None:
    text = pages["capped96"]
    index = text.split('id="session-index"', 1)[1].split("</table>", 1)[0]
    assert index.count("<tr>") - 1 == 16  # header row + 16 sessions
    assert "The index lists 16 of them" in text and "--format" in text
    assert len(re.findall(r'<article class="session"', text)) == 8


def test_verdict_text_columns_are_compact_categoricals(frames_by_size: dict[int, Frames]) -> None:
    verdicts = frames_by_size[96].verdicts
    for column in ("session_id", "subject", "judge", "item_id", "scope", "reason", "model"):
        values = verdicts[column]
        assert isinstance(values.dtype, pd.CategoricalDtype)
        # each distinct string once, sorted (grouping and sorting follow the strings), and a
        # small integer code a row
        assert list(values.cat.categories) == sorted(set(values.astype(object)))
        assert values.cat.codes.dtype.itemsize <= 2
    assert verdicts["met"].dtype == object  # the contract's "bool or NaN"
    # at most half of an 8-byte pointer or number a cell (the frame when text was ``object``)
    assert verdicts.memory_usage(deep=False).sum() < 0.5 * 8 * verdicts.size


def test_frames_hold_the_stored_values(stores_by_size: dict[int, Path]) -> None:
    """The verdicts frame row by row is the store's verdicts, and the findings frame is what the
    detectors find in each stored session (as ``Store.load_session`` rebuilds it)."""
    from therasim.evaluation.analysis.columns import FINDING_COLUMNS
    from therasim.evaluation.judging.detectors import detect_findings

    with Store(stores_by_size[48]) as store:
        frames = load_frames(store)
        cells = {r.session_id: (r.subject, r.modality, r.severity.value) for r in store.sessions()}
        expected = [
            (
                v.session_id,
                *cells[v.session_id],
                v.judge,
                v.item_id,
                "session" if v.turn < 0 else "turn",
                v.turn,
                v.met,
                v.score,
                v.reason,
                v.prompt_hash,
                v.model,
                v.input_tokens,
                v.output_tokens,
                v.weight,
            )
            for v in store.verdicts()
        ]
        found = [
            tuple(f[c] for c in FINDING_COLUMNS)
            for sid in sorted(store.session_ids())
            for f in detect_findings(store.load_session(sid))  # type: ignore[arg-type]
        ]
    verdicts = frames.verdicts
    assert list(verdicts.columns) == [
        *("session_id", "subject", "modality", "severity", "judge", "item_id", "scope", "turn"),
        *("met", "score", "reason", "prompt_hash", "model", "input_tokens", "output_tokens"),
        "weight",
    ]

    def same(a: object, b: object) -> bool:
        both_missing = (a is None or a != a) and (b is None or b != b)
        return both_missing or a == b

    got = list(verdicts.astype(object).itertuples(index=False, name=None))
    assert len(got) == len(expected)
    assert all(all(map(same, g, e)) for g, e in zip(got, expected, strict=True))
    assert {type(m) for m in verdicts["met"] if m == m} <= {bool}
    assert list(frames.findings.itertuples(index=False, name=None)) == found


def test_the_calls_frame_holds_the_stored_calls(stores_by_size: dict[int, Path]) -> None:
    """Built a batch of columns at a time, the calls frame is still every stored call in
    order, text as ``object`` (one shared copy of each string) and numbers machine-typed."""

    with Store(stores_by_size[96]) as store:
        calls = load_frames(store).calls
        expected = [tuple(getattr(c, name) for name in CALL_COLUMNS) for c in store.calls()]
    assert list(calls.columns) == list(CALL_COLUMNS)
    assert len(calls) == len(expected) > 96
    assert calls["role"].str.startswith("judge:").any()  # the judges' calls are rows too
    assert all(calls[c].dtype == object for c in ("session_id", "role", "model"))
    assert calls["cached"].dtype == bool and calls["input_tokens"].dtype == np.int64
    got = list(calls.astype(object).itertuples(index=False, name=None))
    assert got == expected
    assert len({id(s) for s in calls["role"]}) == calls["role"].nunique()  # strings shared


def test_an_unknown_price_is_nan_and_no_price_at_all_is_none(
    stores_by_size: dict[int, Path], tmp_path: Path
) -> None:
    """``cost_usd`` as a row-by-row build gives it: float with NaN where a price is unknown,
    ``None`` throughout when no call has one."""
    import sqlite3

    path = tmp_path / "s.sqlite"
    path.write_bytes(stores_by_size[48].read_bytes())
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE calls SET cost_usd = NULL WHERE idx = 0")
    with Store(path) as store:
        cost = load_frames(store).calls["cost_usd"]
    assert cost.dtype == np.float64 and cost.isna().sum() == 48 and (cost.dropna() == 0).all()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE calls SET cost_usd = NULL")
    with Store(path) as store:
        cost = load_frames(store).calls["cost_usd"]
    assert cost.dtype == object and set(cost) == {None}


def test_the_reports_read_call_totals_summed_in_sql(
    stores_by_size: dict[int, Path], tmp_path: Path
) -> None:
    """The reports load no calls frame: the call totals (summed in SQL) give the same cost table
    and session cost columns as every call summed in pandas, unknown prices included."""
    import sqlite3

    path = tmp_path / "s.sqlite"
    path.write_bytes(stores_by_size[48].read_bytes())
    with contextlib.closing(sqlite3.connect(path)) as db, db:  # prices that add up to something
        db.execute("UPDATE calls SET cost_usd = 0.001 * (idx % 7), cached_input_tokens = idx % 3")
        db.execute("UPDATE calls SET cost_usd = NULL WHERE idx = 5 AND session_id < '4'")
    with Store(path) as store:
        full = load_frames(store)
        lean = load_frames(store, with_calls=False)
    assert lean.calls.empty and list(lean.calls.columns) == list(CALL_COLUMNS)
    assert len(full.calls) > 10 * len(lean.call_totals) > 0
    by_hand = call_totals(Frames(**{**full.as_dict(), "call_totals": pd.DataFrame()}))
    sql = lean.call_totals
    pd.testing.assert_frame_equal(sql, by_hand, check_dtype=False)
    assert sql["unpriced"].sum() == full.calls["cost_usd"].isna().sum() > 0
    pd.testing.assert_frame_equal(report.cost_by_role(lean), report.cost_by_role(full))
    assert report.cost_by_role(lean)["cost_usd"].isna().any()  # a judge role with no price
    pd.testing.assert_frame_equal(lean.sessions, full.sessions)


def test_report_tables_equal_the_metrics_ones(frames_by_size: dict[int, Frames]) -> None:
    frames = frames_by_size[48]
    pd.testing.assert_frame_equal(
        report.agreement(frames), metrics.agreement_table(frames.verdicts)
    )
    pd.testing.assert_frame_equal(
        report.deterioration(frames),
        metrics.deterioration_table(frames.sessions, frames.turns, frames.verdicts),
    )
    pd.testing.assert_frame_equal(report.item_means(frames), metrics.item_means(frames.verdicts))
    assert report.agreement(frames) is report.agreement(frames)  # computed once
