"""The golden check for refactors: ``studies/quickstart.yaml`` run offline gives the same session
ids, transcripts, states, verdicts and report numbers as the snapshot taken before the
architecture move (issue 13). A change that is meant to alter outputs regenerates the snapshot
with ``THERASIM_UPDATE_GOLDEN=1`` and says why in its commit.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from therasim.evaluation.analysis.axes import readiness
from therasim.evaluation.analysis.frames import load_frames
from therasim.pipeline import run_study
from therasim.simulations.store import Store

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).resolve().parents[1] / "snapshots" / "quickstart_golden.json"

pytestmark = pytest.mark.slow


def _digest(rows: Any) -> str:
    text = json.dumps(rows, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return None if value != value else round(value, 6)
    if isinstance(value, dict):
        return {str(k): _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def golden(run_dir: Path) -> dict[str, Any]:
    """What must not move: ids, transcripts with states, verdicts, and the verdict numbers."""
    with Store(run_dir / "sessions.sqlite") as store:
        sessions = sorted(
            (r.session_id, r.termination_reason.value, r.n_turns) for r in store.sessions()
        )
        turns = [
            (
                t.session_id,
                t.record.speaker,
                t.record.text,
                None if t.record.state is None else t.record.state.model_dump(mode="json"),
                t.record.codes,
            )
            for t in store.turns()
        ]
        errors = [r.error for r in store.sessions() if r.termination_reason.is_error]
        assert not errors, f"a golden run must not fail a session: {errors[:1]}"
        verdicts = sorted(
            (
                v.session_id,
                v.judge,
                v.item_id,
                v.turn,
                None if v.met is None else int(v.met),
                v.score,
            )
            for v in store.verdicts()
        )
        frames = load_frames(store)
    axes = {
        v.subject: {a.axis: [a.status.value, _rounded(a.metrics)] for a in v.axes}
        for v in readiness(frames, gate={})
    }
    return {
        "sessions": len(sessions),
        "session_ids": _digest([s[0] for s in sessions]),
        "terminations": _digest(sessions),
        "transcripts_and_states": _digest(turns),
        "verdicts": len(verdicts),
        "verdict_rows": _digest(verdicts),
        "axes": {subject: {axis: v[0] for axis, v in a.items()} for subject, a in axes.items()},
        "axis_metrics": _digest(axes),
    }


def test_quickstart_offline_matches_the_golden_snapshot(tmp_path: Path) -> None:
    run_study(
        ROOT / "studies" / "quickstart.yaml",
        report=False,
        console=Console(file=io.StringIO()),
        show_progress=False,
        output=str(tmp_path / "run"),
    )
    now = golden(tmp_path / "run")
    if os.environ.get("THERASIM_UPDATE_GOLDEN") == "1" or not SNAPSHOT.exists():
        SNAPSHOT.write_text(json.dumps(now, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    assert now == json.loads(SNAPSHOT.read_text(encoding="utf-8"))
