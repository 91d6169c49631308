"""The HTML report's session index and session pages as template data.

At most ``max_sessions`` transcripts are rendered (picked round-robin over the cells so every cell
keeps examples) and the index lists at most ``max_index`` sessions (picked the same way, plus every
failed one), so the page stops growing with the study; the frame export holds every session.
Session pages are shown one at a time with the CSS ``:target`` selector, no script needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from therasim.evaluation.analysis import metrics
from therasim.evaluation.analysis.frames import Frames
from therasim.evaluation.report.html_common import (
    EXPOSURE_KINDS,
    FAILURE_CODES,
    GOOD_CODES,
    Note,
    fmt,
    isnan,
    item_label,
    label,
    severity_key,
)

Data = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Sparkline:
    """SUDS by turn as SVG coordinates (formatted), drawn by the session template."""

    width: int
    height: int
    pad: int
    mid_y: str
    points: str
    dots: list[tuple[str, str]]
    shades: list[str]
    shade_width: str


@dataclass(frozen=True, slots=True)
class IndexRow:
    """One session in the index; ``linked`` when its page is rendered."""

    id: str
    short: str
    linked: bool
    subject: str
    modality: str
    severity: str
    persona: str
    variant: str
    status: str
    ok: bool
    ended_by: str
    turns: str
    suds: str
    max_risk: str
    adherence: str
    findings: int


@dataclass(frozen=True, slots=True)
class State:
    """The patient's state after a therapist turn, formatted."""

    suds: str
    alliance: str
    engagement: str
    risk: str
    dropout: bool


@dataclass(frozen=True, slots=True)
class Judged:
    """A turn's judged items: how many, and those not unanimously fine as (text, css class)."""

    count: int
    marks: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Bubble:
    """One utterance of a transcript with what is shown under it."""

    speaker: str
    turn: str
    phase: str
    text: str
    flagged: bool
    suds: str | None = None
    state: State | None = None
    chips: list[tuple[str, str]] = field(default_factory=list)
    findings: list[tuple[str, list[str]]] = field(default_factory=list)
    judged: Judged | None = None


@dataclass(frozen=True, slots=True)
class SessionPage:
    """One session's page: facts, sparkline, session-level verdicts and the transcript."""

    id: str
    subject: str
    modality: str
    severity: str
    facts: list[tuple[str, str]]
    spark: Sparkline | None
    error: str | None
    verdicts: list[dict[str, Any]]
    bubbles: list[Bubble]


def pick_sessions(sessions: pd.DataFrame, limit: int) -> list[str]:
    """Up to ``limit`` session ids, round-robin over cells so every cell keeps examples."""
    if len(sessions) <= limit:
        return list(sessions["session_id"])
    queues = [list(sub["session_id"]) for _, sub in sessions.groupby(list(metrics.CELL), sort=True)]
    picked: list[str] = []
    while len(picked) < limit:
        for queue in queues:
            if queue and len(picked) < limit:
                picked.append(queue.pop(0))
    return picked


def _ordered_sessions(sessions: pd.DataFrame) -> pd.DataFrame:
    return (
        sessions.assign(_sev=sessions["severity"].map(severity_key))
        .sort_values(
            ["subject", "modality", "_sev", "persona_id", "variant", "repeat", "session_id"]
        )
        .drop(columns="_sev")
    )


def _chip_class(code: str) -> str:
    return "bad" if code in FAILURE_CODES else "good" if code in GOOD_CODES else "neutral"


def sparkline(points: list[tuple[int, float, bool]]) -> Sparkline | None:
    """SUDS by turn with exposure turns shaded; ``points`` are (turn, suds, in_exposure)."""
    if len(points) < 2:
        return None
    width, height, pad = 360, 70, 6
    last = max(t for t, _, _ in points) or 1

    def x(turn: int) -> float:
        return pad + (width - 2 * pad) * turn / last

    def y(suds: float) -> float:
        return pad + (height - 2 * pad) * (1 - suds / 100)

    step = (width - 2 * pad) / last
    return Sparkline(
        width=width,
        height=height,
        pad=pad,
        mid_y=f"{y(50):.1f}",
        points=" ".join(f"{x(t):.1f},{y(s):.1f}" for t, s, _ in points),
        dots=[(f"{x(t):.1f}", f"{y(s):.1f}") for t, s, _ in points],
        shades=[f"{x(t) - step / 2:.1f}" for t, _, exposure in points if exposure],
        shade_width=f"{step:.1f}",
    )


def _index_rows(
    sessions: pd.DataFrame, rendered: set[str], findings: pd.DataFrame
) -> list[IndexRow]:
    hits = findings.groupby("session_id").size() if not findings.empty else pd.Series(dtype=int)
    rows = []
    for r in sessions.itertuples(index=False):
        sid = str(r.session_id)
        rows.append(
            IndexRow(
                id=sid,
                short=sid[:10],
                linked=sid in rendered,
                subject=str(r.subject),
                modality=str(r.modality).upper(),
                severity=str(r.severity),
                persona=str(getattr(r, "persona_ref", r.persona_id)),
                variant=str(r.variant) if r.variant else "–",
                status=str(r.status),
                ok=r.status == "completed",
                ended_by=str(r.termination_reason),
                turns=str(r.n_turns),
                suds=f"{fmt(r.baseline_suds, 0)} → {fmt(r.final_suds, 0)}",
                max_risk=str(r.max_risk),
                adherence=fmt(getattr(r, "adherence_score", math.nan)),
                findings=int(hits.get(sid, 0)),
            )
        )
    return rows


def _turn_verdicts(verdicts: pd.DataFrame) -> dict[str, dict[int, list[tuple[str, int, int]]]]:
    """session → turn → [(item, judges that said met, judges with a verdict)], turn scope only."""
    if verdicts.empty:
        return {}
    frame = verdicts[verdicts["turn"] >= 0]
    met = frame["met"].map(lambda v: math.nan if isnan(v) else float(v)).astype("float64")
    frame = frame.assign(_met=met).dropna(subset=["_met"])
    grouped = frame.groupby(["session_id", "turn", "item_id"], sort=True)["_met"].agg(
        ["sum", "size"]
    )
    out: dict[str, dict[int, list[tuple[str, int, int]]]] = {}
    for (sid, turn, item), k, n in zip(grouped.index, grouped["sum"], grouped["size"], strict=True):
        out.setdefault(str(sid), {}).setdefault(int(turn), []).append((str(item), int(k), int(n)))
    return out


def _judge_marks(judged: list[tuple[str, int, int]], polarity: dict[str, str]) -> Judged:
    """The turn's judged items that were not unanimously fine: (label, class, 'bad/n')."""
    marks = []
    for item, k, n in judged:
        bad = k if polarity.get(item) == "failure" else n - k
        if bad:
            cls = "jv-bad" if 2 * bad > n else "jv-mixed"
            marks.append((f"{item_label(item, polarity)} {bad}/{n}", cls))
    return Judged(len(judged), marks)


def _met(value: Any, *, failure_item: bool) -> tuple[str, str]:
    """('met' | 'not met', css class), green when that is the good outcome for the item."""
    if isnan(value):
        return "–", ""
    met = bool(value)
    return ("met" if met else "not met"), ("no" if met == failure_item else "yes")


def _bubbles(
    utterances: list[Any],
    state_by_turn: dict[int, Any],
    findings: list[Any],
    turn_verdicts: dict[int, list[tuple[str, int, int]]],
    polarity: dict[str, str],
) -> list[Bubble]:
    finding_by_turn: dict[int, dict[str, list[str]]] = {}
    for f in findings:
        by_failure = finding_by_turn.setdefault(int(f.turn), {})
        by_failure.setdefault(str(f.failure), []).append(str(f.phrase))
    bubbles = []
    for u in utterances:
        speaker = str(u.speaker)
        codes = [str(c) for c in (u.codes or ())]
        common: dict[str, Any] = {
            "speaker": speaker,
            "turn": str(u.turn),
            "phase": label(u.phase),
            "text": str(u.text),
            "flagged": any(c in FAILURE_CODES for c in codes),
        }
        if speaker != "therapist":
            bubbles.append(Bubble(**common, suds=None if isnan(u.suds) else fmt(float(u.suds), 0)))
            continue
        state = state_by_turn.get(int(u.turn))
        judged = turn_verdicts.get(int(u.turn), [])
        bubbles.append(
            Bubble(
                **common,
                state=None
                if state is None
                else State(
                    suds=fmt(state.suds, 0),
                    alliance=fmt(state.alliance),
                    engagement=fmt(state.engagement),
                    risk=str(state.risk),
                    dropout=bool(state.dropout),
                ),
                chips=[(_chip_class(c), label(c)) for c in codes],
                findings=[
                    (label(failure), phrases)
                    for failure, phrases in finding_by_turn.get(int(u.turn), {}).items()
                ],
                judged=_judge_marks(judged, polarity) if judged else None,
            )
        )
    return bubbles


#: The columns a page reads of each frame (rows are walked one by one, and the frames are wide).
_BUBBLE_COLUMNS = ("speaker", "codes", "turn", "phase", "text", "suds")
_STATE_COLUMNS = ("turn", "suds", "alliance", "engagement", "risk", "dropout", "phase_kind")
_VERDICT_COLUMNS = ("item_id", "judge", "met", "reason")
_FINDING_COLUMNS = ("turn", "failure", "phrase")


def _session_page(
    row: Any,
    utterances: list[Any],
    turns: list[Any],
    verdicts: list[Any],
    findings: list[Any],
    turn_verdicts: dict[int, list[tuple[str, int, int]]],
    polarity: dict[str, str],
) -> SessionPage:
    state_by_turn = {int(t.turn): t for t in turns}
    # sparkline: baseline then the state after each therapist turn
    points: list[tuple[int, float, bool]] = []
    if not isnan(row.baseline_suds):
        points.append((0, float(row.baseline_suds), False))
    for turn, t in sorted(state_by_turn.items()):
        if not isnan(t.suds):
            points.append((turn, float(t.suds), str(t.phase_kind) in EXPOSURE_KINDS))
    judge_rows = []
    if verdicts:  # the session-scope verdicts, by item and judge
        for v in verdicts:
            failure = polarity.get(str(v.item_id)) == "failure"
            judge_rows.append(
                {
                    "item": item_label(str(v.item_id), polarity),
                    "judge": str(v.judge),
                    "met": _met(v.met, failure_item=failure),
                    "reason": str(getattr(v, "reason", "")),
                }
            )
    facts = [
        ("subject", row.subject),
        ("model", getattr(row, "subject_model", "")),
        ("persona", getattr(row, "persona_ref", row.persona_id)),
        ("variant", row.variant or "base"),
        ("protocol", getattr(row, "protocol", "")),
        ("status", row.status),
        ("ended by", row.termination_reason),
        ("turns", row.n_turns),
        (
            "SUDS",
            f"{fmt(row.baseline_suds, 0)} → {fmt(row.final_suds, 0)} (peak {fmt(row.peak_suds, 0)})",
        ),
        ("alliance", f"{fmt(row.baseline_alliance)} → {fmt(row.final_alliance)}"),
        ("max risk", row.max_risk),
        ("adherence", fmt(getattr(row, "adherence_score", math.nan))),
    ]
    error = getattr(row, "error", None)
    return SessionPage(
        id=str(row.session_id),
        subject=str(row.subject),
        modality=str(row.modality).upper(),
        severity=str(row.severity),
        facts=[(k, str(v)) for k, v in facts if v not in ("", None)],
        spark=sparkline(points),
        error=str(error) if error else None,
        verdicts=judge_rows,
        bubbles=_bubbles(utterances, state_by_turn, findings, turn_verdicts, polarity),
    )


def _rows_of(
    frame: pd.DataFrame, ids: set[str], columns: Sequence[str], order: Sequence[str] = ()
) -> dict[Any, list[Any]]:
    """``frame``'s rows of the sessions ``ids`` by session, each a named tuple of ``columns``
    (those the frame has), in frame order (sorted by ``order`` first, when given): one walk of
    the few rows shown, where a sub-frame per session cost a pandas selection or sort a page."""
    if frame.empty or "session_id" not in frame.columns:
        return {}
    mine = frame[frame["session_id"].isin(ids)]
    if order:
        mine = mine.sort_values(list(order), kind="stable")
    names = [c for c in columns if c in mine.columns]
    out: dict[Any, list[Any]] = {}
    rows = mine[names].itertuples(index=False)
    for sid, row in zip(mine["session_id"], rows, strict=True):
        out.setdefault(sid, []).append(row)
    return out


def sessions_section(
    frames: Frames, max_sessions: int, polarity: dict[str, str], max_index: int
) -> Data | Note:
    """The session index (``rows``) and the rendered session pages (``pages``).

    The index lists at most ``max_index`` sessions (picked like the transcripts, so it holds every
    transcript, plus every failed session) and at most ``max_sessions`` transcripts are rendered:
    the page stays the same size however large the study; the export holds every session."""
    sessions = frames.sessions
    if sessions.empty:
        return Note("No sessions yet.")
    ordered = _ordered_sessions(sessions)
    picked = set(pick_sessions(ordered, max_sessions))
    notes = []
    if len(ordered) > max_sessions:
        notes.append(
            f"{len(ordered)} sessions in the store; transcripts are included for {max_sessions} of them, "
            "picked evenly across the cells (the others are listed without a link)."
        )
    if len(ordered) > max_index:
        listed = set(pick_sessions(ordered, max_index)) | picked
        listed |= set(ordered.loc[ordered["status"] != "completed", "session_id"])
        ordered = ordered[ordered["session_id"].isin(listed)]
        notes.append(
            f"The index lists {len(ordered)} of them, picked the same way, and every failed one; "
            "the full list is in the export (therasim report RUN_FOLDER --format csv|parquet|json, "
            "the sessions table)."
        )
    verdicts = frames.verdicts
    mine = verdicts[verdicts["session_id"].isin(picked)] if not verdicts.empty else verdicts
    # plain values for the few sessions shown: the pages walk their rows one by one, and a
    # Categorical (the frame's text columns) turns codes back into strings on every walk
    mine = mine.astype(
        {c: object for c, t in mine.dtypes.items() if isinstance(t, pd.CategoricalDtype)}
    )
    by_utt = _rows_of(frames.utterances, picked, _BUBBLE_COLUMNS, ["index"])
    by_turn = _rows_of(frames.turns, picked, _STATE_COLUMNS)
    session_scope = mine[mine["turn"] < 0] if not mine.empty else mine
    by_verdict = _rows_of(session_scope, picked, _VERDICT_COLUMNS, ["item_id", "judge"])
    per_turn = _turn_verdicts(mine)
    by_finding = _rows_of(frames.findings, picked, _FINDING_COLUMNS)
    pages = [
        _session_page(
            row,
            by_utt.get(row.session_id, []),
            by_turn.get(row.session_id, []),
            by_verdict.get(row.session_id, []),
            by_finding.get(row.session_id, []),
            per_turn.get(str(row.session_id), {}),
            polarity,
        )
        for row in ordered.itertuples(index=False)
        if row.session_id in picked
    ]
    return {
        "note": Note(" ".join(notes), kind="warn") if notes else None,
        "rows": _index_rows(ordered, picked, frames.findings),
        "pages": pages,
    }
