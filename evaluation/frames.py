"""Store → tidy pandas frames. The only place that builds frames.

Frames follow the column contract in :mod:`therasim.evaluation.metrics` (``SESSION_COLUMNS``,
``TURN_COLUMNS``, ``VERDICT_COLUMNS``, ``FINDING_COLUMNS``) plus a few extra columns the report
uses (``persona_ref``, ``error``, ``adherence_score``, …). Metrics are pure functions of these
frames; judging and reporting read the store only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from therasim.evaluation.metrics import (
    FINDING_COLUMNS,
    SESSION_COLUMNS,
    TURN_COLUMNS,
    VERDICT_COLUMNS,
)
from therasim.personas.dynamics import RiskLevel
from therasim.simulations.store import Store


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

    def as_dict(self) -> dict[str, pd.DataFrame]:
        return {
            "sessions": self.sessions,
            "turns": self.turns,
            "utterances": self.utterances,
            "verdicts": self.verdicts,
            "findings": self.findings,
            "calls": self.calls,
        }


def _questionnaire(qs: list[dict[str, Any]], instrument: str, when: str) -> float:
    for q in qs:
        if q["instrument"] == instrument and q["when"] == when:
            return float(q["total"])
    return math.nan


def load_frames(store: Store, *, with_findings: bool = True) -> Frames:
    """Build all frames from a store."""
    rows = store.session_rows()
    meta = {r["session_id"]: r for r in rows}
    utterance_rows: list[dict[str, Any]] = []
    turn_rows: list[dict[str, Any]] = []
    by_session: dict[str, list[dict[str, Any]]] = {}
    for sid, rec in store.turn_records():
        row = meta.get(sid)
        if row is None:
            continue
        state = rec["state"]
        base = {
            "session_id": sid,
            "subject": row["subject"],
            "modality": row["modality"],
            "severity": row["severity"],
        }
        utterance_rows.append(
            {
                **base,
                "index": rec["index"],
                "speaker": rec["speaker"],
                "text": rec["text"],
                "turn": rec["turn"],
                "phase": rec["phase"],
                "codes": tuple(rec.get("codes", [])),
                "suds": state["suds"],
            }
        )
        if rec["speaker"] == "therapist":
            t = {
                **base,
                "turn": rec["turn"],
                "phase": rec["phase"],
                "phase_kind": rec["phase_kind"],
                "codes": tuple(rec.get("codes", [])),
                "suds": state["suds"],
                "belief": state["belief"],
                "alliance": state["alliance"],
                "engagement": state["engagement"],
                "risk": state["risk"],
                "dropout": state["dropout"],
                "text": rec["text"],
            }
            turn_rows.append(t)
            by_session.setdefault(sid, []).append(t)

    session_rows: list[dict[str, Any]] = []
    for r in rows:
        sid = r["session_id"]
        turns = by_session.get(sid, [])
        init = r["initial_state"] or {}
        spec = r["spec"]
        suds = [t["suds"] for t in turns]
        alliance = [t["alliance"] for t in turns]
        base_suds = init.get("suds", math.nan)
        session_rows.append(
            {
                "session_id": sid,
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
                "final_belief": turns[-1]["belief"] if turns else init.get("belief", math.nan),
                "baseline_alliance": init.get("alliance", math.nan),
                "final_alliance": alliance[-1] if alliance else init.get("alliance", math.nan),
                "min_alliance": min([init.get("alliance", 1.0), *alliance]),
                "baseline_risk": init.get("risk", "none"),
                "max_risk": _risk_max([init.get("risk", "none"), *(t["risk"] for t in turns)]),
                "dropout": bool(turns and turns[-1]["dropout"]),
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
                "adherence_score": (r["adherence"] or {}).get("adherence_score", math.nan),
                "proscribed_hits": len((r["adherence"] or {}).get("proscribed_hits", [])),
                "skipped_phases": len((r["adherence"] or {}).get("skipped_phases", [])),
                "regressions": len((r["adherence"] or {}).get("regressions", [])),
                "input_tokens": r["input_tokens"],
                "output_tokens": r["output_tokens"],
                "cost_usd": r["cost_usd"],
            }
        )
    sessions = pd.DataFrame(session_rows, columns=[*SESSION_COLUMNS, *_extra_columns(session_rows)])
    turns_df = pd.DataFrame(turn_rows, columns=[*TURN_COLUMNS, "text"])
    utterances = pd.DataFrame(utterance_rows)

    verdict_rows = []
    for v in store.verdict_rows():
        row = meta.get(v["session_id"])
        if row is None:
            continue
        verdict_rows.append(
            {
                "session_id": v["session_id"],
                "subject": row["subject"],
                "modality": row["modality"],
                "severity": row["severity"],
                "judge": v["judge"],
                "item_id": v["item_id"],
                "scope": "session" if v["turn"] < 0 else "turn",
                "turn": v["turn"],
                "met": (bool(v["met"]) if v["met"] is not None else math.nan),
                "score": v["score"] if v["score"] is not None else math.nan,
                "reason": v["reason"],
                "prompt_hash": v["prompt_hash"],
                "model": v["model"],
                "input_tokens": v["input_tokens"],
                "output_tokens": v["output_tokens"],
            }
        )
    verdicts = pd.DataFrame(
        verdict_rows,
        columns=[
            *VERDICT_COLUMNS,
            "reason",
            "prompt_hash",
            "model",
            "input_tokens",
            "output_tokens",
        ],
    )
    if not verdicts.empty:
        verdicts["met"] = verdicts["met"].astype(object)

    findings = pd.DataFrame(columns=list(FINDING_COLUMNS))
    if with_findings:
        findings = _findings(store, meta)
    calls = pd.DataFrame(store.call_rows())
    return Frames(
        sessions=sessions,
        turns=turns_df,
        utterances=utterances,
        verdicts=verdicts,
        findings=findings,
        calls=calls,
    )


def _extra_columns(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    return [k for k in rows[0] if k not in SESSION_COLUMNS]


def _findings(store: Store, meta: dict[str, dict[str, Any]]) -> pd.DataFrame:
    try:
        from therasim.evaluation.detectors import detect_findings
    except ImportError:  # detectors not available: an empty frame, not a crash
        return pd.DataFrame(columns=list(FINDING_COLUMNS))
    out: list[dict[str, Any]] = []
    for sid in meta:
        result = store.load_session(sid)
        if result is not None:
            out.extend(detect_findings(result))
    return pd.DataFrame(out, columns=list(FINDING_COLUMNS))


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
