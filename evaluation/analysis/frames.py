"""Store → tidy pandas frames. The only place that builds frames.

Frames follow the column contract in :mod:`therasim.evaluation.analysis.columns` (``SESSION_COLUMNS``,
``TURN_COLUMNS``, ``VERDICT_COLUMNS``, ``FINDING_COLUMNS``, the extra columns the reports use,
and the ordered Categoricals). They are built from the store's typed rows (``Store.session_stream``,
``turns``, ``verdict_batches``, ``call_batches``), the store's one read path; metrics are pure functions of
these frames; judging and reporting read the store only.

Cost: the calls frame holds the sessions' calls and their judges' (role ``judge:<name>``), the
call totals the same summed per session, role and model in SQL; the sessions frame's
``SESSION_COST_COLUMNS`` (judging's tokens and cost per session, and the totals) and the reports'
cost tables are computed from the totals, so the reports load the calls frame empty
(``with_calls=False``) and only the export holds every call.

Memory: a 1,000-session study holds ~30,000 utterances and ~450,000 verdicts. The store streams
its rows in batches and ``load_frames`` consumes them one at a time straight into one list per
column, with each repeated string (ids, names, codes, reasons) stored once, and builds each frame
from those columns; it never holds every row at once, so its peak is about the size of the
finished frames rather than several times it. The verdicts frame, by far the largest, holds its
text columns (``session_id``, ``subject``, ``modality``, ``judge``, ``item_id``, ``scope``,
``reason``, ``prompt_hash``, ``model``) as pandas Categoricals with their distinct values sorted:
the same values, one small integer code a row instead of an 8-byte pointer (~25 MB instead of
~52 MB at 450,000 rows), and grouping by them needs no hashing of strings. ``met`` stays an
``object`` column of ``True``/``False``/``NaN`` (the column contract's "bool or NaN"). The calls
frame, as long as the verdicts when judging goes item by item, is built the same way
(:mod:`~therasim.evaluation.analysis.costs`); the column builders are in
:mod:`~therasim.evaluation.analysis.columnar`.

The lexical findings are detected on the sessions as they stream past (each session rebuilt
from its stored row and utterances, without its calls, which the detectors do not read), not
by reloading every session from the store.
"""

from __future__ import annotations

import itertools
import json
import math
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np
import pandas as pd

from therasim.evaluation.analysis.columnar import Codes, Columns, Dictionary
from therasim.evaluation.analysis.columns import (
    CALL_COLUMNS,
    CALL_TOTAL_COLUMNS,
    FINDING_COLUMNS,
    SESSION_COLUMNS,
    SESSION_COST_COLUMNS,
    SESSION_EXTRA_COLUMNS,
    TURN_COLUMNS,
    UTTERANCE_COLUMNS,
    VERDICT_COLUMNS,
    VERDICT_EXTRA_COLUMNS,
    with_ordered_categories,
)
from therasim.evaluation.analysis.costs import (
    add_session_costs,
    calls_frame,
    stored_call_totals,
    sum_calls,
)
from therasim.personas.dynamics import PatientState
from therasim.simulations.records import (
    QuestionnaireRecord,
    SessionResult,
    SessionRow,
    TurnRecord,
    TurnRow,
    VerdictBatch,
)
from therasim.simulations.store import Store
from therasim.vocab import RiskLevel

T = TypeVar("T")

__all__ = ["UTTERANCE_COLUMNS", "Frames", "call_totals", "frames_to_json", "load_frames"]


@dataclass
class Frames:
    """Every frame of a store."""

    sessions: pd.DataFrame
    turns: pd.DataFrame
    utterances: pd.DataFrame
    verdicts: pd.DataFrame
    findings: pd.DataFrame
    calls: pd.DataFrame
    #: ``CALL_TOTAL_COLUMNS``; empty in a hand-built set, where :func:`call_totals` sums ``calls``
    call_totals: pd.DataFrame = field(default_factory=pd.DataFrame)
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
            "call_totals": self.call_totals,
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


def _questionnaire(qs: list[QuestionnaireRecord], instrument: str, when: str) -> float:
    for q in qs:
        if q.instrument == instrument and q.when == when:
            return float(q.total)
    return math.nan


def _by_session(
    rows: Iterable[SessionRow], turns: Iterator[TurnRow]
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


def load_frames(store: Store, *, with_findings: bool = True, with_calls: bool = True) -> Frames:
    """Build all frames from a store, streaming (see the module docstring). ``with_calls=False``
    leaves the calls frame empty (its columns only): the reports read the call totals, and a
    study judged item by item stores about ten calls a therapist turn."""
    cats = Codes()
    utterances = Columns(UTTERANCE_COLUMNS, {"index": "q", "turn": "q"}, cats)
    turns = Columns([*TURN_COLUMNS, "text"], codes=cats)
    share = utterances.share
    session_rows: list[dict[str, Any]] = []
    findings = Columns(FINDING_COLUMNS) if with_findings else None
    detect = _detector() if with_findings else None
    # subject, modality and severity of each session: all the verdicts need of it
    cells: dict[str, tuple[str, str, str]] = {}
    for r, records in _by_session(store.session_stream(), store.turns()):
        cells[r.session_id] = (r.subject, r.modality, r.severity.value)
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
        if findings is not None and detect is not None:
            for f in detect(r.result(records)):
                findings.add(*(findings.share(f[c]) for c in FINDING_COLUMNS))
    stored = [c for c in SESSION_EXTRA_COLUMNS if c not in SESSION_COST_COLUMNS]
    columns = [*SESSION_COLUMNS, *stored] if session_rows else SESSION_COLUMNS
    sessions = pd.DataFrame(session_rows, columns=list(columns))
    calls = calls_frame(store) if with_calls else pd.DataFrame(columns=list(CALL_COLUMNS))
    totals = stored_call_totals(store)
    if session_rows:
        add_session_costs(sessions, totals)
    del session_rows  # the verdicts are streamed with only each session's cell at hand
    verdicts = _verdicts(store, cells, cats)
    frames = Frames(
        sessions=sessions,
        turns=turns.frame(),
        utterances=utterances.frame() if utterances.rows else pd.DataFrame(),
        verdicts=verdicts,
        findings=findings.frame()
        if findings is not None
        else pd.DataFrame(columns=list(FINDING_COLUMNS)),
        calls=calls,
        call_totals=totals,
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
        # no adherence report: unknown, not zero (the fidelity axis reads a 0 as evidence)
        "proscribed_hits": len(adherence.proscribed_hits) if adherence else math.nan,
        "skipped_phases": len(adherence.skipped_phases) if adherence else math.nan,
        "regressions": len(adherence.regressions) if adherence else math.nan,
        "input_tokens": r.input_tokens,
        "output_tokens": r.output_tokens,
        "cost_usd": r.cost_usd,
    }


#: The verdict frame's text columns, held as Categoricals (see the module docstring).
_VERDICT_TEXT = (
    "session_id",
    "subject",
    "modality",
    "judge",
    "item_id",
    "scope",
    "reason",
    "prompt_hash",
    "model",
)


def _verdicts(
    store: Store, sessions: Mapping[str, tuple[str, str, str]], codes: Codes
) -> pd.DataFrame:
    """The verdicts frame, streamed from the store a batch of columns at a time (in
    ``Store.verdicts`` order); ``sessions`` maps each stored session to its subject, modality
    and severity; verdicts of a session the store no longer holds are left out. Each batch is
    turned into numpy columns at once, text as codes (``Dictionary``), so no list of a Python
    object per row is ever held but ``met``'s."""
    columns = [*VERDICT_COLUMNS, *VERDICT_EXTRA_COLUMNS]
    text = {c: Dictionary() for c in _VERDICT_TEXT}
    # One growing buffer a column (``array``: resized in place, so the heap is not left with a
    # hole per batch), each batch appended as a block of machine values.
    typecodes = {c: "i" for c in [*_VERDICT_TEXT, "severity"]}
    typecodes |= {"turn": "q", "score": "d", "input_tokens": "q", "output_tokens": "q"}
    typecodes |= {"weight": "d"}
    data: dict[str, array[Any]] = {c: array(t) for c, t in typecodes.items()}
    dtypes = {c: np.dtype(t) for c, t in typecodes.items()}
    met: list[Any] = []
    cell_codes: dict[str, tuple[int, int, int, int]] = {}
    cell_columns = ("session_id", "subject", "modality", "severity")
    scope = text["scope"]
    session_code, turn_code = scope["session"], scope["turn"]
    nan = math.nan

    def add(column: str, values: Any) -> None:
        data[column].frombytes(np.asarray(values, dtype=dtypes[column]).tobytes())

    for batch in store.verdict_batches():
        if not sessions.keys() >= set(batch.session_id):
            batch = _only(batch, sessions)
        if not len(batch):
            continue
        runs: list[tuple[int, int, int, int]] = []
        lengths: list[int] = []
        for sid, rows in itertools.groupby(batch.session_id):
            cell = cell_codes.get(sid)
            if cell is None:
                subject, modality, severity = sessions[sid]
                cell = cell_codes[sid] = (
                    text["session_id"][sid],
                    text["subject"][subject],
                    text["modality"][modality],
                    codes.code("severity", severity),
                )
            runs.append(cell)
            lengths.append(sum(1 for _ in rows))
        cells = np.repeat(np.array(runs, dtype=np.int32), lengths, axis=0)
        for i, column in enumerate(cell_columns):
            add(column, cells[:, i])
        for column in ("judge", "item_id", "reason", "prompt_hash", "model"):
            add(column, text[column].codes(getattr(batch, column)))
        turn = np.array(batch.turn, dtype=np.int64)
        add("turn", turn)
        add("scope", np.where(turn < 0, session_code, turn_code))
        met.extend([nan if m is None else m for m in batch.met])
        add("score", np.array(batch.score, dtype=np.float64))  # None -> NaN
        add("input_tokens", batch.input_tokens)
        add("output_tokens", batch.output_tokens)
        add("weight", batch.weight)
    if not met:
        return pd.DataFrame(columns=columns)
    out: dict[str, Any] = {}
    for name in columns:  # each buffer is dropped once converted: one column at a time
        if name == "met":
            out[name] = pd.Series(met, dtype=object)
            del met
            continue
        values = np.frombuffer(data.pop(name), dtype=dtypes[name])
        if name in text:
            out[name] = text[name].categorical(values)
        elif name == "severity":
            out[name] = pd.Categorical.from_codes(values, dtype=codes.dtype("severity"))
        else:
            out[name] = values
        del values
    return pd.DataFrame(out, columns=columns, copy=False)


def _only(batch: VerdictBatch, sessions: Mapping[str, object]) -> VerdictBatch:
    """The verdicts of ``batch`` whose session the store still holds."""
    keep = [i for i, sid in enumerate(batch.session_id) if sid in sessions]
    return batch.model_copy(
        update={name: [getattr(batch, name)[i] for i in keep] for name in VerdictBatch.model_fields}
    )


def call_totals(frames: Frames) -> pd.DataFrame:
    """``CALL_TOTAL_COLUMNS``: the store's call totals, or, for frames built by hand with only
    a calls frame, that frame summed per session, role and model."""
    if not frames.call_totals.empty or frames.calls.empty or "role" not in frames.calls.columns:
        return frames.call_totals.reindex(columns=list(CALL_TOTAL_COLUMNS))
    return sum_calls(frames.calls)


def _detector() -> Callable[[SessionResult], list[dict[str, object]]] | None:
    """The lexical detectors' ``detect_findings`` (None when they are not available: the findings
    frame is then empty rather than the load failing)."""
    try:
        from therasim.evaluation.judging.detectors import detect_findings
    except ImportError:
        return None
    return detect_findings


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
