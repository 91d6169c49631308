"""Store → tidy pandas frames. The only place that builds frames.

Frames follow the column contract in :mod:`therasim.evaluation.analysis.columns` (``SESSION_COLUMNS``,
``TURN_COLUMNS``, ``VERDICT_COLUMNS``, ``FINDING_COLUMNS``) plus a few extra columns the report
uses (``persona_ref``, ``error``, ``adherence_score``, …). Metrics are pure functions of these
frames; judging and reporting read the store only.

Memory: a 1,000-session study holds ~30,000 utterances and ~450,000 verdicts. ``load_frames``
streams them (turns one session at a time, verdicts and calls in batches) straight into one list
per column, with each repeated string (ids, names, codes, reasons) stored once, and builds each
frame from those columns; it never holds a dict per row, so its peak is about the size of the
finished frames rather than several times it.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from array import array
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pandas as pd

from therasim.evaluation.analysis.columns import (
    FINDING_COLUMNS,
    SESSION_COLUMNS,
    TURN_COLUMNS,
    VERDICT_COLUMNS,
)
from therasim.personas.dynamics import RiskLevel
from therasim.simulations.store import Store

T = TypeVar("T")

UTTERANCE_COLUMNS: tuple[str, ...] = (
    "session_id",
    "subject",
    "modality",
    "severity",
    "index",
    "speaker",
    "text",
    "turn",
    "phase",
    "codes",
    "suds",
)
_VERDICT_EXTRA = ("reason", "prompt_hash", "model", "input_tokens", "output_tokens")
_BATCH = 5_000  # rows fetched at a time from the store


def _risk_max(values: list[str]) -> str:
    return max(values, key=lambda v: RiskLevel(v).rank) if values else RiskLevel.NONE.value


@dataclass
class Frames:
    """Every frame of a store."""

    sessions: pd.DataFrame
    turns: pd.DataFrame
    utterances: pd.DataFrame
    verdicts: pd.DataFrame
    findings: pd.DataFrame
    calls: pd.DataFrame
    _derived: dict[str, tuple[tuple[pd.DataFrame, ...], Any]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def as_dict(self) -> dict[str, pd.DataFrame]:
        return {
            "sessions": self.sessions,
            "turns": self.turns,
            "utterances": self.utterances,
            "verdicts": self.verdicts,
            "findings": self.findings,
            "calls": self.calls,
        }

    def derived(self, name: str, build: Callable[[], T]) -> T:
        """``build()``, computed once per set of frames: the console report, the HTML sections and
        the readiness check need the same costly tables (deterioration, agreement), which are pure
        functions of the frames. Replacing a frame recomputes; the result is shared, so callers
        must not change it in place."""
        frames = tuple(self.as_dict().values())
        hit = self._derived.get(name)
        if hit is not None and all(a is b for a, b in zip(hit[0], frames, strict=True)):
            return hit[1]
        value = build()
        self._derived[name] = (frames, value)
        return value


class _Columns:
    """Rows appended column-wise; equal hashable values (ids, names, code tuples) stored once."""

    def __init__(self, columns: Sequence[str], numeric: Mapping[str, str] | None = None) -> None:
        self.columns = list(columns)
        numeric = numeric or {}
        self.data: dict[str, list[Any] | array[Any]] = {
            c: array(numeric[c]) if c in numeric else [] for c in self.columns
        }
        self._lists = [self.data[c] for c in self.columns]
        self._seen: dict[Hashable, Any] = {}
        self.rows = 0

    def share(self, value: T) -> T:
        """The one stored copy of ``value`` (a str or tuple repeated across rows)."""
        return self._seen.setdefault(value, value)

    def add(self, *values: Any) -> None:
        for column, value in zip(self._lists, values, strict=True):
            column.append(value)
        self.rows += 1

    def frame(self) -> pd.DataFrame:
        """The frame (every column ``object`` when there are no rows, as ``pd.DataFrame([],
        columns=...)`` gives); the builder is emptied."""
        data, self.data, self._lists, self._seen = self.data, {}, [], {}
        if not self.rows:
            return pd.DataFrame(columns=self.columns)
        # Text stays ``object``: a pointer per cell to the one shared string, where pandas' default
        # string dtype would copy every row's bytes (~2.5× the memory on the verdicts frame)
        # and make each later Python-level pass over the column convert it back.
        columns: dict[str, Any] = {}
        for (
            name
        ) in self.columns:  # each list is dropped once converted: one column copied at a time
            values = data.pop(name)
            text = isinstance(values, list) and isinstance(values[0], str)
            columns[name] = pd.Series(values, dtype=object) if text else pd.Series(values)
            del values
        return pd.DataFrame(columns, columns=self.columns, copy=False)


@contextlib.contextmanager
def _read_only(store: Store) -> Iterator[sqlite3.Connection]:
    """A second, read-only connection to the store's file, for streaming whole tables: the
    store's list methods (``verdict_rows``, ``call_rows``) build a dict per row for the whole
    table, which for a large study is several times the frame built from it."""
    uri = f"{store.path.resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        yield db


def _batches(cursor: sqlite3.Cursor) -> Iterator[tuple[Any, ...]]:
    """A cursor's rows, fetched ``_BATCH`` at a time."""
    while batch := cursor.fetchmany(_BATCH):
        yield from batch


def _questionnaire(qs: list[dict[str, Any]], instrument: str, when: str) -> float:
    for q in qs:
        if q["instrument"] == instrument and q["when"] == when:
            return float(q["total"])
    return math.nan


def load_frames(store: Store, *, with_findings: bool = True) -> Frames:
    """Build all frames from a store, streaming (see the module docstring)."""
    rows = store.session_rows()
    meta = {r["session_id"]: r for r in rows}
    utterances = _Columns(UTTERANCE_COLUMNS, {"index": "q", "turn": "q"})
    turns = _Columns([*TURN_COLUMNS, "text"])
    share = utterances.share
    session_rows: list[dict[str, Any]] = []
    for r in rows:
        sid = share(r["session_id"])
        base = (sid, share(r["subject"]), share(r["modality"]), share(r["severity"]))
        states: list[dict[str, Any]] = []  # the patient state after each therapist turn
        for _, rec in store.turn_records(sid):
            state = rec["state"]
            codes = share(tuple(rec.get("codes", [])))
            phase = share(rec["phase"])
            speaker = share(rec["speaker"])
            utterances.add(
                *base, rec["index"], speaker, rec["text"], rec["turn"], phase, codes, state["suds"]
            )
            if speaker == "therapist":
                risk = share(state["risk"])
                turns.add(
                    *base,
                    rec["turn"],
                    phase,
                    share(rec["phase_kind"]),
                    codes,
                    state["suds"],
                    state["belief"],
                    state["alliance"],
                    state["engagement"],
                    risk,
                    state["dropout"],
                    rec["text"],
                )
                states.append(state)
        session_rows.append(_session_row(r, states))
    sessions = pd.DataFrame(session_rows, columns=[*SESSION_COLUMNS, *_extra_columns(session_rows)])
    del session_rows
    verdicts = _verdicts(store, meta)
    findings = (
        _findings(store, meta) if with_findings else pd.DataFrame(columns=list(FINDING_COLUMNS))
    )
    return Frames(
        sessions=sessions,
        turns=turns.frame(),
        utterances=utterances.frame() if utterances.rows else pd.DataFrame(),
        verdicts=verdicts,
        findings=findings,
        calls=_calls(store),
    )


def _session_row(r: dict[str, Any], states: list[dict[str, Any]]) -> dict[str, Any]:
    """One ``sessions`` row from the stored session and its therapist turns' states."""
    init = r["initial_state"] or {}
    spec = r["spec"]
    suds = [s["suds"] for s in states]
    alliance = [s["alliance"] for s in states]
    base_suds = init.get("suds", math.nan)
    adherence = r["adherence"] or {}
    return {
        "session_id": r["session_id"],
        "subject": r["subject"],
        "modality": r["modality"],
        "severity": r["severity"],
        "persona_id": r["persona_ref"].split("@")[0],
        "parent_id": r["persona"],
        "variant": ",".join(f"{k}={v}" for k, v in sorted(r["variant"].items())),
        "repeat": r["repeat"],
        "status": r["status"],
        "termination_reason": r["termination_reason"],
        "n_turns": r["n_turns"],
        "baseline_suds": base_suds,
        "final_suds": suds[-1] if suds else base_suds,
        "peak_suds": max([base_suds, *suds])
        if not math.isnan(base_suds)
        else (max(suds) if suds else math.nan),
        "baseline_belief": init.get("belief", math.nan),
        "final_belief": states[-1]["belief"] if states else init.get("belief", math.nan),
        "baseline_alliance": init.get("alliance", math.nan),
        "final_alliance": alliance[-1] if alliance else init.get("alliance", math.nan),
        "min_alliance": min([init.get("alliance", 1.0), *alliance]),
        "baseline_risk": init.get("risk", "none"),
        "max_risk": _risk_max([init.get("risk", "none"), *(s["risk"] for s in states)]),
        "dropout": bool(states and states[-1]["dropout"]),
        "habituation_margin": r["habituation_margin"],
        "phq9_pre": _questionnaire(r["questionnaires"], "phq9", "pre"),
        "phq9_post": _questionnaire(r["questionnaires"], "phq9", "post"),
        "pcl5_pre": _questionnaire(r["questionnaires"], "pcl5", "pre"),
        "pcl5_post": _questionnaire(r["questionnaires"], "pcl5", "post"),
        # extras for reports
        "persona_ref": r["persona_ref"],
        "subject_model": spec.get("subject", ""),
        "protocol": spec.get("protocol", ""),
        "error": r["error"],
        "adherence_score": adherence.get("adherence_score", math.nan),
        "proscribed_hits": len(adherence.get("proscribed_hits", [])),
        "skipped_phases": len(adherence.get("skipped_phases", [])),
        "regressions": len(adherence.get("regressions", [])),
        "input_tokens": r["input_tokens"],
        "output_tokens": r["output_tokens"],
        "cost_usd": r["cost_usd"],
    }


def _verdicts(store: Store, meta: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """The verdicts frame, streamed from the store (in ``Store.verdict_rows`` order)."""
    out = _Columns(
        [*VERDICT_COLUMNS, *_VERDICT_EXTRA],
        {"turn": "q", "score": "d", "input_tokens": "q", "output_tokens": "q"},
    )
    share = out.share
    query = (
        "SELECT session_id, judge, item_id, turn, met, score, reason, prompt_hash, model,"
        " input_tokens, output_tokens FROM verdicts ORDER BY session_id, judge, item_id, turn"
    )
    last: str | None = None
    cell: tuple[str, str, str, str] | None = None
    with _read_only(store) as db:
        for sid, judge, item, turn, met, score, reason, prompt_hash, model, tin, tout in _batches(
            db.execute(query)
        ):
            if sid != last:  # rows come grouped by session
                last = sid
                row = meta.get(sid)
                cell = (
                    (
                        share(sid),
                        share(row["subject"]),
                        share(row["modality"]),
                        share(row["severity"]),
                    )
                    if row is not None
                    else None
                )
            if cell is None:  # a verdict of a session the store no longer holds
                continue
            out.add(
                *cell,
                share(judge),
                share(item),
                "session" if turn < 0 else "turn",
                turn,
                math.nan if met is None else bool(met),
                math.nan if score is None else score,
                share(reason),
                share(prompt_hash),
                share(model),
                tin,
                tout,
            )
    verdicts = out.frame()
    if not verdicts.empty:
        verdicts["met"] = verdicts["met"].astype(object)
    return verdicts


def _calls(store: Store) -> pd.DataFrame:
    """Every stored call, streamed (an empty frame when the store holds none)."""
    with _read_only(store) as db:
        cursor = db.execute("SELECT * FROM calls ORDER BY session_id, idx")
        out = _Columns([d[0] for d in cursor.description])
        for row in _batches(cursor):
            out.add(*(out.share(v) if isinstance(v, str) else v for v in row))
    return out.frame() if out.rows else pd.DataFrame()


def _extra_columns(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    return [k for k in rows[0] if k not in SESSION_COLUMNS]


def _findings(store: Store, meta: dict[str, dict[str, Any]]) -> pd.DataFrame:
    try:
        from therasim.evaluation.judging.detectors import detect_findings
    except ImportError:  # detectors not available: an empty frame, not a crash
        return pd.DataFrame(columns=list(FINDING_COLUMNS))
    out = _Columns(FINDING_COLUMNS)
    for sid in meta:
        result = store.load_session(sid)
        if result is not None:
            for f in detect_findings(result):
                out.add(*(out.share(f[c]) for c in FINDING_COLUMNS))
    return out.frame()


def frames_to_json(frames: Frames, extra: Mapping[str, pd.DataFrame] | None = None) -> str:
    """All frames (and any ``extra`` ones, e.g. the readiness verdict) as one JSON document
    (records orientation)."""
    tables = {**frames.as_dict(), **(extra or {})}
    return json.dumps(
        {
            name: json.loads(df.to_json(orient="records", default_handler=str))
            for name, df in tables.items()
        },
        indent=1,
    )
