"""Store → tidy pandas frames. The only place that builds frames.

Frames follow the column contract in :mod:`therasim.evaluation.analysis.columns` (``SESSION_COLUMNS``,
``TURN_COLUMNS``, ``VERDICT_COLUMNS``, ``FINDING_COLUMNS``, the extra columns the reports use,
and the ordered Categoricals). They are built from the store's typed rows (``Store.sessions``,
``turns``, ``verdicts``, ``calls``), the store's one read path; metrics are pure functions of
these frames; judging and reporting read the store only.

Cost: the calls frame holds the sessions' calls and their judges' (role ``judge:<name>``); the
sessions frame's ``SESSION_COST_COLUMNS`` (judging's tokens and cost per session, and the totals)
are computed from it.

Memory: a 1,000-session study holds ~30,000 utterances and ~450,000 verdicts. The store streams
its rows in batches and ``load_frames`` consumes them one at a time straight into one list per
column, with each repeated string (ids, names, codes, reasons) stored once, and builds each frame
from those columns; it never holds every row at once, so its peak is about the size of the
finished frames rather than several times it.
"""

from __future__ import annotations

import itertools
import json
import math
from array import array
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np
import pandas as pd

from therasim.evaluation.analysis.columns import (
    CALL_COLUMNS,
    FINDING_COLUMNS,
    ORDERED,
    SESSION_COLUMNS,
    SESSION_COST_COLUMNS,
    SESSION_EXTRA_COLUMNS,
    TURN_COLUMNS,
    UTTERANCE_COLUMNS,
    VERDICT_COLUMNS,
    VERDICT_EXTRA_COLUMNS,
    with_ordered_categories,
)
from therasim.personas.dynamics import PatientState
from therasim.simulations.records import (
    JUDGE_ROLE_PREFIX,
    QuestionnaireRecord,
    SessionRow,
    TurnRecord,
    TurnRow,
    VerdictBatch,
)
from therasim.simulations.store import Store
from therasim.vocab import RiskLevel

T = TypeVar("T")

__all__ = ["UTTERANCE_COLUMNS", "Frames", "frames_to_json", "load_frames"]


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
        """The frames by name, in a fixed order."""
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
            return cast(T, hit[1])
        value = build()
        self._derived[name] = (frames, value)
        return value


class _Codes:
    """Codes of the ordered-categorical values (``ORDERED``), shared by a store's frames: the
    vocabulary's order first, a value outside it the next code."""

    def __init__(self) -> None:
        self.categories = {column: list(order) for column, order in ORDERED.items()}
        self._index = {c: {v: i for i, v in enumerate(o)} for c, o in self.categories.items()}

    def code(self, column: str, value: str) -> int:
        index = self._index[column]
        found = index.get(value)
        if found is None:
            found = index[value] = len(self.categories[column])
            self.categories[column].append(value)
        return found

    def dtype(self, column: str) -> pd.CategoricalDtype:
        return pd.CategoricalDtype(self.categories[column], ordered=True)


class _Columns:
    """Rows appended column-wise; equal hashable values (ids, names, code tuples) stored once,
    ordered-categorical columns (given ``codes``) as their codes."""

    def __init__(
        self,
        columns: Sequence[str],
        numeric: Mapping[str, str] | None = None,
        codes: _Codes | None = None,
    ) -> None:
        self.columns = list(columns)
        self.codes = codes
        typecodes = dict(numeric or {})
        if codes is not None:
            typecodes.update({c: "h" for c in self.columns if c in codes.categories})
        self.data: dict[str, list[Any] | array[Any]] = {
            c: array(typecodes[c]) if c in typecodes else [] for c in self.columns
        }
        self._lists = [self.data[c] for c in self.columns]
        self._seen: dict[Hashable, Any] = {}
        self.rows = 0

    def share(self, value: T) -> T:
        """The one stored copy of ``value`` (a str or tuple repeated across rows)."""
        return cast(T, self._seen.setdefault(value, value))

    def shared(self, values: Sequence[T]) -> Iterator[T]:
        """``share`` over ``values``."""
        return map(self._seen.setdefault, values, values)

    def add(self, *values: Any) -> None:
        for column, value in zip(self._lists, values, strict=True):
            column.append(value)
        self.rows += 1

    def extend(self, n: int, values: Mapping[str, Iterable[Any]]) -> None:
        """Append ``n`` rows given column by column (every column, ``n`` values each)."""
        for name in self.columns:
            self.data[name].extend(values[name])
        self.rows += n

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
        for name in self.columns:  # each list is dropped once converted: one column at a time
            values = data.pop(name)
            if self.codes is not None and isinstance(values, array) and values.typecode == "h":
                codes = np.frombuffer(values, dtype=np.int16)
                columns[name] = pd.Categorical.from_codes(codes, dtype=self.codes.dtype(name))
            elif isinstance(values, list) and isinstance(values[0], str):
                columns[name] = pd.Series(values, dtype=object)
            else:
                columns[name] = pd.Series(values)
            del values
        return pd.DataFrame(columns, columns=self.columns, copy=False)


def _questionnaire(qs: list[QuestionnaireRecord], instrument: str, when: str) -> float:
    for q in qs:
        if q.instrument == instrument and q.when == when:
            return float(q.total)
    return math.nan


def _by_session(
    rows: list[SessionRow], turns: Iterator[TurnRow]
) -> Iterator[tuple[SessionRow, list[TurnRecord]]]:
    """Each session with its utterances: two streams, both ordered by session id, merged."""
    groups = itertools.groupby(turns, key=lambda t: t.session_id)
    head = next(groups, None)
    for row in rows:
        while head is not None and head[0] < row.session_id:  # turns of no stored session
            head = next(groups, None)
        records: list[TurnRecord] = []
        if head is not None and head[0] == row.session_id:
            records = [t.record for t in head[1]]
            head = next(groups, None)
        yield row, records


def load_frames(store: Store, *, with_findings: bool = True) -> Frames:
    """Build all frames from a store, streaming (see the module docstring)."""
    rows = store.sessions()
    cats = _Codes()
    utterances = _Columns(UTTERANCE_COLUMNS, {"index": "q", "turn": "q"}, cats)
    turns = _Columns([*TURN_COLUMNS, "text"], codes=cats)
    share = utterances.share
    session_rows: list[dict[str, Any]] = []
    for r, records in _by_session(rows, store.turns()):
        sid = share(r.session_id)
        base = (sid, share(r.subject), share(r.modality), cats.code("severity", r.severity.value))
        states: list[PatientState] = []  # the patient state after each therapist turn
        for rec in records:
            state = rec.state
            codes = share(tuple(rec.codes))
            phase = share(rec.phase)
            speaker = share(rec.speaker)
            utterances.add(*base, rec.index, speaker, rec.text, rec.turn, phase, codes, state.suds)
            if speaker == "therapist":
                turns.add(
                    *base,
                    rec.turn,
                    phase,
                    cats.code("phase_kind", rec.phase_kind),
                    codes,
                    state.suds,
                    state.belief,
                    state.alliance,
                    state.engagement,
                    cats.code("risk", state.risk.value),
                    state.dropout,
                    rec.text,
                )
                states.append(state)
        session_rows.append(_session_row(r, states))
    stored = [c for c in SESSION_EXTRA_COLUMNS if c not in SESSION_COST_COLUMNS]
    columns = [*SESSION_COLUMNS, *stored] if session_rows else SESSION_COLUMNS
    sessions = pd.DataFrame(session_rows, columns=list(columns))
    calls = _calls(store)
    if session_rows:
        _add_session_costs(sessions, calls)
    cells = {r.session_id: (r.subject, r.modality, r.severity.value) for r in rows}
    del session_rows, rows  # the verdicts are streamed with only each session's cell at hand
    verdicts = _verdicts(store, cells, cats)
    findings = (
        _findings(store, cells) if with_findings else pd.DataFrame(columns=list(FINDING_COLUMNS))
    )
    frames = Frames(
        sessions=sessions,
        turns=turns.frame(),
        utterances=utterances.frame() if utterances.rows else pd.DataFrame(),
        verdicts=verdicts,
        findings=findings,
        calls=calls,
    )
    for frame in frames.as_dict().values():
        with_ordered_categories(frame)
    return frames


def _session_row(r: SessionRow, states: list[PatientState]) -> dict[str, Any]:
    """One ``sessions`` row from the stored session and its therapist turns' states."""
    init = r.initial_state
    suds = [s.suds for s in states]
    alliance = [s.alliance for s in states]
    base_suds = init.suds if init else math.nan
    base_belief = init.belief if init else math.nan
    base_alliance = init.alliance if init else math.nan
    base_risk = init.risk if init else RiskLevel.NONE
    adherence = r.adherence
    return {
        "session_id": r.session_id,
        "subject": r.subject,
        "modality": r.modality,
        "severity": r.severity.value,
        "persona_id": r.persona_ref.split("@")[0],
        "parent_id": r.persona,
        "variant": ",".join(f"{k}={v}" for k, v in sorted(r.variant.items())),
        "repeat": r.repeat,
        "status": r.status,
        "termination_reason": r.termination_reason.value,
        "n_turns": r.n_turns,
        "baseline_suds": base_suds,
        "final_suds": suds[-1] if suds else base_suds,
        "peak_suds": max([base_suds, *suds])
        if not math.isnan(base_suds)
        else (max(suds) if suds else math.nan),
        "baseline_belief": base_belief,
        "final_belief": states[-1].belief if states else base_belief,
        "baseline_alliance": base_alliance,
        "final_alliance": alliance[-1] if alliance else base_alliance,
        "min_alliance": min([init.alliance if init else 1.0, *alliance]),
        "baseline_risk": base_risk.value,
        "max_risk": max([base_risk, *(s.risk for s in states)], key=lambda v: v.rank).value,
        "dropout": bool(states and states[-1].dropout),
        "habituation_margin": r.habituation_margin,
        "phq9_pre": _questionnaire(r.questionnaires, "phq9", "pre"),
        "phq9_post": _questionnaire(r.questionnaires, "phq9", "post"),
        "pcl5_pre": _questionnaire(r.questionnaires, "pcl5", "pre"),
        "pcl5_post": _questionnaire(r.questionnaires, "pcl5", "post"),
        # extras for reports (SESSION_EXTRA_COLUMNS)
        "persona_ref": r.persona_ref,
        "subject_model": r.spec.subject,
        "protocol": r.spec.protocol,
        "error": r.error,
        "adherence_score": adherence.adherence_score if adherence else math.nan,
        "proscribed_hits": len(adherence.proscribed_hits) if adherence else 0,
        "skipped_phases": len(adherence.skipped_phases) if adherence else 0,
        "regressions": len(adherence.regressions) if adherence else 0,
        "input_tokens": r.input_tokens,
        "output_tokens": r.output_tokens,
        "cost_usd": r.cost_usd,
    }


def _verdicts(
    store: Store, sessions: Mapping[str, tuple[str, str, str]], codes: _Codes
) -> pd.DataFrame:
    """The verdicts frame, streamed from the store a batch of columns at a time (in
    ``Store.verdicts`` order); ``sessions`` maps each stored session to its subject, modality
    and severity; verdicts of a session the store no longer holds are left out."""
    out = _Columns(
        [*VERDICT_COLUMNS, *VERDICT_EXTRA_COLUMNS],
        {"turn": "q", "score": "d", "input_tokens": "q", "output_tokens": "q", "weight": "d"},
        codes,
    )
    cells: dict[str, tuple[str, str, str, int]] = {}
    for batch in store.verdict_batches():
        if not sessions.keys() >= set(batch.session_id):
            batch = _only(batch, sessions)
        runs = [(sid, sum(1 for _ in rows)) for sid, rows in itertools.groupby(batch.session_id)]
        cell_columns: list[list[Any]] = [[], [], [], []]
        for sid, n in runs:
            cell = cells.get(sid)
            if cell is None:
                subject, modality, severity = sessions[sid]
                cell = cells[sid] = (
                    out.share(sid),
                    out.share(subject),
                    out.share(modality),
                    codes.code("severity", severity),
                )
            for column, value in zip(cell_columns, cell, strict=True):
                column.extend([value] * n)
        out.extend(
            len(batch),
            dict(
                zip(("session_id", "subject", "modality", "severity"), cell_columns, strict=True),
                judge=out.shared(batch.judge),
                item_id=out.shared(batch.item_id),
                scope=["session" if t < 0 else "turn" for t in batch.turn],
                turn=batch.turn,
                met=[math.nan if m is None else m for m in batch.met],
                score=(math.nan if s is None else s for s in batch.score),
                reason=out.shared(batch.reason),
                prompt_hash=out.shared(batch.prompt_hash),
                model=out.shared(batch.model),
                input_tokens=batch.input_tokens,
                output_tokens=batch.output_tokens,
                weight=batch.weight,
            ),
        )
    verdicts = out.frame()
    if not verdicts.empty:
        verdicts["met"] = verdicts["met"].astype(object)
    return verdicts


def _only(batch: VerdictBatch, sessions: Mapping[str, object]) -> VerdictBatch:
    """The verdicts of ``batch`` whose session the store still holds."""
    keep = [i for i, sid in enumerate(batch.session_id) if sid in sessions]
    return batch.model_copy(
        update={name: [getattr(batch, name)[i] for i in keep] for name in VerdictBatch.model_fields}
    )


def _calls(store: Store) -> pd.DataFrame:
    """Every stored call, streamed (an empty frame when the store holds none)."""
    out = _Columns(CALL_COLUMNS)
    share = out.share
    for c in store.calls():
        out.add(
            share(c.session_id),
            c.idx,
            share(c.role),
            share(c.model),
            c.cached,
            c.latency_s,
            c.input_tokens,
            c.cached_input_tokens,
            c.output_tokens,
            c.cost_usd,
            c.attempts,
        )
    return out.frame() if out.rows else pd.DataFrame()


def _add_session_costs(sessions: pd.DataFrame, calls: pd.DataFrame) -> None:
    """Add ``SESSION_COST_COLUMNS`` to ``sessions``, in place, from the calls frame: the session's
    own cached-prompt tokens, its judges' calls, tokens and cost, and the totals over both."""
    ids = sessions["session_id"]
    sums = ["calls", "input_tokens", "cached_input_tokens", "output_tokens", "cost", "unpriced"]
    own = judged = pd.DataFrame(0, index=pd.Index(ids), columns=sums)
    if not calls.empty:
        cost = pd.to_numeric(calls["cost_usd"], errors="coerce")
        parts = calls[
            ["session_id", "input_tokens", "cached_input_tokens", "output_tokens"]
        ].assign(
            judge=calls["role"].astype(str).str.startswith(JUDGE_ROLE_PREFIX),
            calls=1,
            cost=cost.fillna(0.0),
            unpriced=cost.isna().astype(int),
        )
        grouped = parts.groupby(["judge", "session_id"])[sums].sum()
        own, judged = (
            grouped.xs(flag, level="judge").reindex(ids, fill_value=0)
            if flag in grouped.index.get_level_values("judge")
            else pd.DataFrame(0, index=pd.Index(ids), columns=sums)
            for flag in (False, True)
        )
    judge_cost = judged["cost"].astype(float).where(judged["unpriced"] == 0)
    own_cost = pd.to_numeric(sessions["cost_usd"], errors="coerce").to_numpy()
    values = {
        "cached_input_tokens": own["cached_input_tokens"],
        "judge_calls": judged["calls"],
        "judge_input_tokens": judged["input_tokens"],
        "judge_cached_input_tokens": judged["cached_input_tokens"],
        "judge_output_tokens": judged["output_tokens"],
        "judge_cost_usd": judge_cost,
        "total_tokens": sessions["input_tokens"].to_numpy()
        + sessions["output_tokens"].to_numpy()
        + judged["input_tokens"].to_numpy()
        + judged["output_tokens"].to_numpy(),
        "total_cost_usd": own_cost + judge_cost.to_numpy(),
    }
    for column in SESSION_COST_COLUMNS:
        value = values[column]
        sessions[column] = value.to_numpy() if isinstance(value, pd.Series) else value


def _findings(store: Store, sessions: Iterable[str]) -> pd.DataFrame:
    try:
        from therasim.evaluation.judging.detectors import detect_findings
    except ImportError:  # detectors not available: an empty frame, not a crash
        return pd.DataFrame(columns=list(FINDING_COLUMNS))
    out = _Columns(FINDING_COLUMNS)
    for sid in sessions:
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
