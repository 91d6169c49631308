"""The self-contained HTML report: one file, no network, readable offline.

``write_html_report(frames, path)`` writes a single HTML file holding plotly.js (inlined once, in
the head), the CSS and every chart, so it can be mailed or archived and opened on a machine with
no network. Sections, in order:

1. the five-axis readiness verdict per subject (PASS/FAIL per axis and overall) with its FDA SaMD
   and EU AI Act mapping — computed lazily by ``therasim.evaluation.analysis.axes.readiness`` when the
   caller does not pass verdicts; when that module is missing or fails the report says
   "verdict not available" and goes on;
2. headline numbers per subject × modality × severity (``report.cell_table``);
3. SUDS trajectories: mean SUDS per therapist turn with a 95 % t interval, per subject, faceted
   by modality × severity;
4. the severity ladder ("crisis cliff"): headline rubric items and the deterioration rate across
   routine → distress → crisis_adjacent → imminent;
5. a failure-mode heatmap (share of sessions with each lexical-detector finding);
6. deterioration rates per cell and signal with Wilson intervals;
7. judge agreement (Krippendorff's α per item) and per-judge bias;
8. a session index and one page per session (``#session-<id>``): the transcript as bubbles with
   the patient's state after every turn and the behaviour codes as coloured chips.

Every section copes with empty frames by saying what is missing instead of drawing; a section that
fails anyway shows its error in place so the rest of the report still renders. All text that comes
from sessions (transcripts, reasons, names) is escaped: it is untrusted model output.

Session pages are shown one at a time with the CSS ``:target`` selector, so linking to
``report.html#session-<id>`` opens that session like a page without any script; printing shows
them all. At most ``max_sessions`` transcripts are rendered (picked round-robin over the cells so
every cell keeps examples) and the index lists at most ``max_index`` sessions (picked the same way,
plus every failed one), so the file stops growing with the study: plotly.js (~4.8 MB, once) and
~2 MB of transcripts. Chart data are per-cell aggregates with rounded floats. The frame export
(``therasim report --format``) holds every session.
"""

from __future__ import annotations

import base64
import html
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from pandas.api.types import is_bool_dtype, is_numeric_dtype
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots
from scipy import stats

from therasim.evaluation.analysis import metrics
from therasim.evaluation.analysis.frames import Frames
from therasim.evaluation.report import console as report
from therasim.evaluation.report.console import HEADLINE_ITEMS, SEVERITY_ORDER, cell_table

if TYPE_CHECKING:
    from therasim.simulations.study import Study

__all__ = [
    "FAILURE_CODES",
    "GOOD_CODES",
    "LADDER_ITEMS",
    "MAX_INDEX_ROWS",
    "MAX_TRANSCRIPTS",
    "render_html_report",
    "write_html_report",
]

log = logging.getLogger(__name__)

#: Behaviour codes shown as red chips: the failure taxonomy's safety reflexes and task failures.
FAILURE_CODES: frozenset[str] = frozenset(
    {
        "grounding",
        "reassurance",
        "crisis_resources",
        "safety_preamble",
        "refusal",
        "task_abandonment",
        "memory_as_present",
        "avoidance_collusion",
        "misinformation",
    }
)
#: Behaviour codes shown as green chips: what a protocol-adherent therapist does.
GOOD_CODES: frozenset[str] = frozenset(
    {
        "validation",
        "reflection",
        "suds_probe",
        "encourage_continue",
        "exposure_instruction",
        "hot_spot_focus",
        "processing_question",
        "homework",
        "challenge_cognition",
        "task_step",
        "reframe",
        "safety_assessment",
    }
)
#: Rubric items on the severity-ladder chart, per modality (the paper's "crisis cliff" items).
LADDER_ITEMS: dict[str, tuple[str, ...]] = {
    "pe": ("therapeutic_appropriateness", "protocol_fidelity"),
    "cbt": ("completeness", "safety_interference"),
}

_PALETTE = (
    "#4C72B0",
    "#DD8452",
    "#55A868",
    "#C44E52",
    "#8172B3",
    "#937860",
    "#DA8BC3",
    "#8C8C8C",
    "#CCB974",
    "#64B5CD",
)
_SEVERITY_COLORS = {
    "routine": "#55A868",
    "distress": "#CCB974",
    "crisis_adjacent": "#DD8452",
    "imminent": "#C44E52",
}
_SIGNAL_LABELS = {
    "trajectory": "patient-state trajectory",
    "questionnaire": "pre/post questionnaire",
    "judge": "judge panel",
    "any": "any signal",
}
_EXPOSURE_KINDS = frozenset({"imaginal_exposure", "hot_spot"})
#: Transcripts rendered at most (a page is ~25 KB) and sessions listed in the index at most.
MAX_TRANSCRIPTS = 64
MAX_INDEX_ROWS = 300
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}
_FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"


# --------------------------------------------------------------------------- small helpers


def _e(value: Any) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def _isnan(value: Any) -> bool:
    try:
        return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))
    except TypeError:
        return False


def _fmt(value: Any, digits: int = 2) -> str:
    if _isnan(value):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _note(text: str, kind: str = "info") -> str:
    return f'<p class="note note-{kind}">{_e(text)}</p>'


def _str(value: Any) -> str:
    """Enum members by value, everything else by ``str``."""
    return str(getattr(value, "value", value))


def _severity_key(value: Any) -> tuple[int, str]:
    text = str(value)
    return (SEVERITY_ORDER.index(text) if text in SEVERITY_ORDER else len(SEVERITY_ORDER), text)


def _present_severities(values: Iterable[Any]) -> list[str]:
    return sorted({str(v) for v in values if not _isnan(v)}, key=_severity_key)


def _label(value: Any) -> str:
    return str(value).replace("_", " ")


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _subject_colors(frames: Frames) -> dict[str, str]:
    subjects: set[str] = set()
    for frame in (frames.sessions, frames.verdicts, frames.findings):
        if "subject" in frame.columns:
            subjects.update(frame["subject"].dropna().astype(str))
    return {s: _PALETTE[i % len(_PALETTE)] for i, s in enumerate(sorted(subjects))}


def _table(
    frame: pd.DataFrame,
    *,
    formats: dict[str, Callable[[Any], str]] | None = None,
    cls: str = "data",
) -> str:
    """A plain HTML table of ``frame``; every cell escaped unless a format returns markup."""
    formats = formats or {}
    numeric = [is_numeric_dtype(frame[c]) and not is_bool_dtype(frame[c]) for c in frame.columns]
    head = "".join(
        f'<th class="num">{_e(c)}</th>' if num else f"<th>{_e(c)}</th>"
        for c, num in zip(frame.columns, numeric, strict=True)
    )
    rows = []
    for record in frame.itertuples(index=False, name=None):
        cells = []
        for col, num, value in zip(frame.columns, numeric, record, strict=True):
            fmt = formats.get(col)
            text = fmt(value) if fmt else _e(_fmt(value))
            cells.append(f'<td class="num">{text}</td>' if num else f"<td>{text}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f'<div class="table-wrap"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _compact_data(value: Any) -> Any:
    """Figure data as plain JSON lists with floats rounded to 3 decimals (the charts show two):
    plotly writes arrays as base64 float64, 11 characters a value however round it is."""
    if isinstance(value, dict) and {"dtype", "bdata"} <= value.keys():  # a plotly typed array
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        if value.get("shape"):
            array = array.reshape([int(n) for n in str(value["shape"]).split(",")])
        return _compact_data(array.tolist())
    if isinstance(value, dict):
        return {k: _compact_data(v) for k, v in value.items()}
    if isinstance(value, np.ndarray | np.generic | pd.Series | pd.Index):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [_compact_data(v) for v in value]
    if isinstance(value, float) and math.isfinite(value):
        return round(value, 3)
    return value


class _Charts:
    """Turns figures into ``<div>``s; plotly.js itself is inlined once in the page head."""

    def __init__(self) -> None:
        self.count = 0

    def html(self, fig: go.Figure, *, height: int) -> str:
        self.count += 1
        fig.update_layout(
            template="plotly_white",
            height=height,
            font={"family": _FONT, "size": 12, "color": "#263238"},
            margin={"l": 60, "r": 20, "t": 84, "b": 50},
            # legend above the subplot titles, in the margin, so they never overlap
            legend={
                "orientation": "h",
                "yref": "container",
                "y": 0.995,
                "yanchor": "top",
                "xanchor": "left",
                "x": 0,
            },
            hoverlabel={"font": {"family": _FONT}},
        )
        fig.update_annotations(font={"size": 13})
        figure = fig.to_plotly_json()
        figure["data"] = _compact_data(figure["data"])
        div = pio.to_html(
            figure,
            validate=False,
            full_html=False,
            include_plotlyjs=False,
            div_id=f"chart-{self.count}",
            config=_PLOT_CONFIG,
        )
        return f'<div class="chart">{div}</div>'


# --------------------------------------------------------------------------- 1. verdict


def _compute_verdicts(frames: Frames, study: Study | None) -> tuple[list[Any] | None, str]:
    """Run the five-axis readiness check if its module is there; ``(None, why)`` otherwise."""
    try:
        from therasim.evaluation.analysis import axes
    except Exception as exc:  # the axes module is optional for the report
        return None, f"the readiness module could not be imported ({type(exc).__name__}: {exc})"
    overrides = dict(study.thresholds) if study is not None and study.thresholds else None
    kwargs: dict[str, Any] = {}
    probe_ids = getattr(axes, "false_beliefs", None)
    if callable(probe_ids) and not frames.sessions.empty:
        # the seeded misstatement probes need the persona library; without it that check is skipped
        try:
            from therasim.personas.loader import load_library

            kwargs["false_belief_personas"] = probe_ids(load_library().values())
        except Exception:
            log.warning("persona library not loaded; false-belief probes skipped", exc_info=True)
    try:
        return list(axes.readiness(frames, overrides, **kwargs)), ""
    except Exception as exc:
        log.warning("readiness verdict failed", exc_info=True)
        return None, f"the readiness check failed ({type(exc).__name__}: {exc})"


def _badge(status: Any) -> str:
    text = _str(status).upper()
    cls = {"PASS": "pass", "FAIL": "fail"}.get(text, "na")
    label = "NOT ASSESSED" if text == "NOT_ASSESSED" else text
    return f'<span class="badge badge-{cls}">{_e(label)}</span>'


def _compact(value: Any) -> str:
    """A metric value in few characters: 0.605, 11.25, 3, [0.565, 0.646], a: 1, –."""
    if _isnan(value):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e9:
            return str(int(value))
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_compact(v)}" for k, v in value.items()) or "–"
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ", ".join(_compact(v) for v in value) + "]"
    return str(_str(value))


def _metrics_html(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        items = [f"<li><code>{_e(k)}</code> {_e(_compact(v))}</li>" for k, v in value.items()]
        return f'<ul class="kv">{"".join(items)}</ul>' if items else ""
    return _e(_compact(value))


def _evidence_html(value: Any, limit: int = 5) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return _e(value)
    if isinstance(value, dict):
        return _metrics_html(value)
    if isinstance(value, Iterable):
        items = [str(v) for v in value]
        more = (
            f"<li class='muted'>… and {len(items) - limit} more</li>" if len(items) > limit else ""
        )
        lis = "".join(f"<li>{_e(i)}</li>" for i in items[:limit])
        return f'<ul class="evidence">{lis}{more}</ul>' if items else ""
    return _e(value)


def _mapping_text(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, Iterable):
        return ", ".join(str(v) for v in value)
    return str(value)


def _calibration_card(calibration: Any) -> str:
    """The calibration card beside the verdict (``evaluation/report/calibration_card.py``)."""
    if calibration is None:
        return (
            '<div class="callout"><strong>Calibration.</strong> The appraiser was not calibrated '
            "on gold turns, so no readiness axis can be assessed: add a <code>calibration:</code> "
            "block to the study (see the codebook, <code>agents/gold/codebook.md</code>).</div>"
        )
    from therasim.evaluation.report.calibration_card import calibration_rows

    report = calibration.report
    rows = "".join(
        f"<tr><td>{_e(r['what'])}</td><td>{_e(r['value'])}</td><td>{_e(r['threshold'])}</td>"
        f"<td>{_badge('FAIL') if r['status'] == 'BELOW' else _e(r['status'])}</td></tr>"
        for r in calibration_rows(calibration)
    )
    below = "".join(f"<li>{_e(p)}</li>" for p in calibration.shortfalls)
    below_html = (
        f"<p><strong>Below threshold</strong> (the axes resting on it are NOT ASSESSED):</p><ul>{below}</ul>"
        if below
        else ""
    )
    return (
        f'<h3 id="calibration">Calibration on {report.n} gold turns ({_e(report.split)} split)</h3>'
        '<div class="table-wrap"><table class="data calibration"><thead><tr><th>measure</th>'
        "<th>value [95 % CI]</th><th>threshold</th><th></th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div>{below_html}"
    )


def _toy_models_note(study: Study | None) -> str:
    """What the banner says about subjects that show the machinery rather than a finding: the
    bundled SmolLM2-135M only when a subject used it, the scripted arms only when present."""
    models = [s.model for s in study.subjects.values()] if study else []
    toys = []
    if any(m == "local" for m in models):
        toys.append("the tiny local model (SmolLM2-135M)")
    if any(m.startswith("scripted:") for m in models):
        toys.append("the scripted reference therapists")
    if not toys:
        return ""
    return (
        f"Results from {' or from '.join(toys)} show that the machinery works; they are not a "
        "finding about any real system. "
    )


def _verdict_section(
    frames: Frames,
    study: Study | None,
    verdicts: Sequence[Any] | None,
    calibration: Any = None,
) -> str:
    notice = (
        '<div class="callout"><strong>Read this first.</strong> The pass thresholds are '
        "therasim's defaults, not published ones: the paper proposes the five axes but gives no "
        "numbers, and a study can override every threshold. "
        + _toy_models_note(study)
        + "All personas are synthetic and fictional.</div>"
    )
    why = ""
    if verdicts is None:
        verdicts, why = _compute_verdicts(frames, study)
    if verdicts is None:
        return (
            notice
            + f'<div class="unavailable"><strong>verdict not available</strong> — {_e(why)}</div>'
        )
    if not verdicts:
        return notice + _note("verdict not available: there are no subjects to judge yet.")
    axes_order: list[str] = []
    mapping: dict[str, tuple[str, str]] = {}
    for verdict in verdicts:
        for ax in getattr(verdict, "axes", []):
            name = _str(ax.axis)
            if name not in axes_order:
                axes_order.append(name)
                mapping[name] = (
                    _mapping_text(getattr(ax, "fda", None)),
                    _mapping_text(getattr(ax, "eu_ai_act", None)),
                )
    head = "".join(f"<th>{_e(a.replace('_', ' '))}</th>" for a in axes_order)
    rows = []
    for verdict in verdicts:
        by_axis = {_str(ax.axis): ax for ax in getattr(verdict, "axes", [])}
        cells = "".join(
            f"<td>{_badge(by_axis[a].status) if a in by_axis else _badge('NOT_ASSESSED')}</td>"
            for a in axes_order
        )
        subject = _e(_str(verdict.subject))
        rows.append(
            f'<tr><th class="rowhead"><a href="#verdict-{subject}">{subject}</a></th>'
            f'<td class="overall">{_badge(verdict.overall)}</td>{cells}</tr>'
        )
    matrix = (
        '<div class="table-wrap"><table class="verdict-matrix"><thead><tr><th>subject</th>'
        f"<th>overall</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )
    mapping_rows = "".join(
        f"<tr><td>{_e(a.replace('_', ' '))}</td><td>{_e(f)}</td><td>{_e(eu)}</td></tr>"
        for a, (f, eu) in mapping.items()
    )
    mapping_table = (
        '<h3>Regulatory mapping</h3><div class="table-wrap"><table class="data"><thead><tr><th>axis</th>'
        f"<th>FDA SaMD</th><th>EU AI Act</th></tr></thead><tbody>{mapping_rows}</tbody></table></div>"
    )
    details = []
    for verdict in verdicts:
        subject = _e(_str(verdict.subject))
        body = "".join(
            f"<tr><td>{_e(_str(ax.axis).replace('_', ' '))}</td><td>{_badge(ax.status)}</td>"
            f"<td>{_evidence_html(getattr(ax, 'evidence', None))}</td>"
            f"<td>{_metrics_html(getattr(ax, 'metrics', None))}</td>"
            f"<td>{_metrics_html(getattr(ax, 'thresholds', None))}</td></tr>"
            for ax in getattr(verdict, "axes", [])
        )
        note = getattr(verdict, "note", "")
        note_html = f'<p class="muted">{_e(note)}</p>' if isinstance(note, str) and note else ""
        details.append(
            f'<details class="verdict-detail" id="verdict-{subject}"><summary>{subject} '
            f"{_badge(verdict.overall)}</summary>{note_html}"
            '<div class="table-wrap"><table class="data verdict-axes"><thead><tr><th>axis</th><th>status</th>'
            "<th>evidence</th><th>metrics</th><th>thresholds</th></tr></thead>"
            f"<tbody>{body}</tbody></table></div></details>"
        )
    rule = '<p class="muted">A subject passes only when it passes all five axes; an axis that could not be assessed does not pass.</p>'
    card = _calibration_card(calibration)
    return notice + matrix + rule + card + "".join(details) + mapping_table


# --------------------------------------------------------------------------- 2. cells


def _score_cell(value: Any, *, higher_is_better: bool = True) -> str:
    """A 0–1 score as a tinted chip: green when good, red when bad."""
    if _isnan(value):
        return '<span class="muted">–</span>'
    good = float(value) if higher_is_better else 1 - float(value)
    hue = round(120 * max(0.0, min(1.0, good)))
    return f'<span class="score" style="background:hsl({hue},65%,90%);color:hsl({hue},70%,25%)">{float(value):.2f}</span>'


def _failed_summary(sessions: pd.DataFrame) -> str:
    """Failed sessions by termination reason and by the first line of their error."""
    failed = sessions[sessions["status"] == "failed"]
    if failed.empty:
        return ""
    reasons = ", ".join(
        f"{reason} ×{n}" for reason, n in failed["termination_reason"].value_counts().items()
    )
    errors = "error" in failed.columns
    firsts = (
        failed["error"]
        .dropna()
        .astype(str)
        .map(lambda t: t.strip().splitlines()[0][:300] if t.strip() else "")
        if errors
        else pd.Series(dtype=str)
    )
    lines = "".join(
        f"<li><code>{_e(text)}</code> ×{n}</li>"
        for text, n in firsts[firsts != ""].value_counts().head(5).items()
    )
    return (
        f'<div class="error-box"><b>{len(failed)} of {len(sessions)} sessions failed</b> — '
        f"{_e(reasons)}. Failed sessions are left out of every rate below."
        + (f"<ul>{lines}</ul>" if lines else "")
        + "</div>"
    )


def _polarities() -> dict[str, str]:
    """Rubric item id → polarity ('good' or 'failure') from the packaged rubrics.

    On a ``failure`` item ``met`` means the failure occurred, so a high mean is bad. Without the
    rubric module every item is read as ``good`` except the session deterioration call.
    """
    try:
        from therasim.evaluation.judging.rubric import load_rubrics

        return {item.id: str(item.polarity) for r in load_rubrics() for item in r.items}
    except Exception:
        log.warning("rubrics not loaded; item polarity assumed 'good'", exc_info=True)
        return {"session_deterioration": "failure"}


def _item_label(item: str, polarity: dict[str, str]) -> str:
    return _label(item) + (" †" if polarity.get(item) == "failure" else "")


def _cells_section(frames: Frames, polarity: dict[str, str]) -> str:
    table = cell_table(frames)
    if table.empty:
        return _note("The store holds no sessions yet.")
    table = table.copy()
    table["severity"] = table["severity"].astype(str)
    known = {
        "subject", "modality", "severity", "sessions", "failed", "mean_final_suds", "adherence",
        "deterioration", "det_low", "det_high", "det_n", "failures", "top_failure",
    }  # fmt: skip
    items = [c for c in table.columns if c not in known]
    parts = [_failed_summary(frames.sessions)]
    for modality in sorted(table["modality"].astype(str).unique()):
        sub = table[table["modality"] == modality]
        present = [i for i in items if sub[i].notna().any()]
        headline = [i for i in HEADLINE_ITEMS.get(modality, ()) if i in present]
        out = pd.DataFrame(
            {
                "subject": sub["subject"].astype(str),
                "severity": sub["severity"].map(_label),
                "sessions": [
                    f"{n}" + (f" ({k} failed)" if k else "")
                    for n, k in zip(sub["sessions"], sub["failed"], strict=True)
                ],
            }
        )
        formats: dict[str, Callable[[Any], str]] = {}
        for item in headline:
            out[_label(item)] = sub[item].to_numpy()
            formats[_label(item)] = _score_cell
        out["adherence"] = sub["adherence"].to_numpy()
        formats["adherence"] = _score_cell
        out["final SUDS"] = sub["mean_final_suds"].to_numpy()
        formats["final SUDS"] = lambda v: _e(_fmt(v, 1))
        if "deterioration" in sub.columns:
            out["deterioration [95 % CI]"] = [
                "–" if _isnan(r) else f"{r:.2f} [{lo:.2f}, {hi:.2f}]"
                for r, lo, hi in zip(
                    sub["deterioration"], sub["det_low"], sub["det_high"], strict=True
                )
            ]
        if "failures" in sub.columns:
            out["detector hits (top)"] = [
                "–" if _isnan(n) else f"{int(n)}" + (f" ({_label(top)})" if n else "")
                for n, top in zip(sub["failures"], sub["top_failure"], strict=True)
            ]
        parts.append(
            f"<h3>{_e(modality.upper())} sessions</h3>"
            + _table(out, formats=formats, cls="data compact")
        )
        if present:
            parts.append(_all_items_table(sub, present, polarity))
    return (
        '<p class="muted">Rubric item means pool the judges and units. Chips are green when good: '
        "for most items met = good, for items marked † (failure items) met means the failure "
        "occurred, so low is good. Deterioration is the union of the trajectory, questionnaire and "
        "judge signals over completed sessions, with a 95 % Wilson interval.</p>" + "".join(parts)
    )


def _all_items_table(cells: pd.DataFrame, items: list[str], polarity: dict[str, str]) -> str:
    """Every rubric item (rows) × cell (columns), collapsed under a ``<details>``."""
    columns = [
        f"{s} · {_label(v)}" for s, v in zip(cells["subject"], cells["severity"], strict=True)
    ]
    order = sorted(items, key=lambda i: (polarity.get(i) == "failure", i))
    rows = []
    for item in order:
        better = polarity.get(item) != "failure"
        chips = "".join(
            f'<td class="num">{_score_cell(v, higher_is_better=better)}</td>'
            for v in cells[item].to_numpy()
        )
        rows.append(f"<tr><td>{_e(_item_label(item, polarity))}</td>{chips}</tr>")
    head = "<th>item</th>" + "".join(f'<th class="num">{_e(c)}</th>' for c in columns)
    return (
        f'<details class="items"><summary>All {len(order)} rubric items</summary>'
        f'<div class="table-wrap"><table class="data compact"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div></details>"
    )


# --------------------------------------------------------------------------- 3. SUDS


def _t_half_width(sd: float, n: int) -> float:
    if n < 2 or _isnan(sd):
        return math.nan
    return float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def _suds_section(frames: Frames, charts: _Charts, colors: dict[str, str]) -> str:
    sessions, turns = frames.sessions, frames.turns
    if sessions.empty or turns.empty:
        return _note("No therapist turns recorded yet: nothing to plot.")
    done = sessions[sessions["status"] == "completed"]
    keys = ["session_id", "subject", "modality", "severity"]
    base = done[[*keys, "baseline_suds"]].rename(columns={"baseline_suds": "suds"}).assign(turn=0)
    steps = turns[turns["session_id"].isin(done["session_id"])][[*keys, "turn", "suds"]]
    data = pd.concat([base, steps], ignore_index=True)
    data["suds"] = pd.to_numeric(data["suds"], errors="coerce")
    data = data.dropna(subset=["suds"])
    if data.empty:
        return _note("No completed session has SUDS values: nothing to plot.")
    grouped = (
        data.groupby(["modality", "severity", "subject", "turn"])["suds"]
        .agg(["mean", "std", "count"])
        .reset_index()
    )
    grouped["half"] = [
        _t_half_width(sd, int(n)) for sd, n in zip(grouped["std"], grouped["count"], strict=True)
    ]
    modalities = sorted(grouped["modality"].astype(str).unique())
    severities = _present_severities(grouped["severity"])
    titles = [f"{m.upper()} · {s.replace('_', ' ')}" for m in modalities for s in severities]
    fig = make_subplots(
        rows=len(modalities),
        cols=len(severities),
        shared_yaxes=True,
        subplot_titles=titles,
        horizontal_spacing=0.04,
        vertical_spacing=0.16 if len(modalities) > 1 else 0.1,
    )
    shown: set[str] = set()
    for r, modality in enumerate(modalities, start=1):
        for c, severity in enumerate(severities, start=1):
            panel = grouped[(grouped["modality"] == modality) & (grouped["severity"] == severity)]
            for subject, sub in panel.groupby("subject", sort=True):
                sub = sub.sort_values("turn")
                color = colors.get(str(subject), _PALETTE[0])
                band = sub.dropna(subset=["half"])
                if len(band) >= 2:
                    x = [*band["turn"], *band["turn"][::-1]]
                    y = [
                        *(band["mean"] + band["half"]).clip(upper=100),
                        *(band["mean"] - band["half"]).clip(lower=0)[::-1],
                    ]
                    fig.add_trace(
                        go.Scatter(
                            x=x,
                            y=y,
                            fill="toself",
                            mode="lines",
                            fillcolor=_rgba(color, 0.16),
                            line={"width": 0},
                            hoverinfo="skip",
                            showlegend=False,
                            legendgroup=str(subject),
                        ),
                        row=r,
                        col=c,
                    )
                fig.add_trace(
                    go.Scatter(
                        x=sub["turn"],
                        y=sub["mean"],
                        customdata=list(
                            zip(sub["count"], sub["half"].fillna(float("nan")), strict=True)
                        ),
                        mode="lines+markers",
                        marker={"size": 4},
                        line={"color": color, "width": 2},
                        name=str(subject),
                        legendgroup=str(subject),
                        showlegend=str(subject) not in shown,
                        hovertemplate=(
                            f"{_e(subject)}<br>turn %{{x}}<br>mean SUDS %{{y:.1f}} ± %{{customdata[1]:.1f}}"
                            "<br>n = %{customdata[0]}<extra></extra>"
                        ),
                    ),
                    row=r,
                    col=c,
                )
                shown.add(str(subject))
    fig.update_yaxes(range=[0, 100], gridcolor="#eceff1")
    fig.update_yaxes(title_text="SUDS", col=1)
    fig.update_xaxes(title_text="therapist turn", row=len(modalities), gridcolor="#eceff1")
    chart = charts.html(fig, height=300 * len(modalities) + 90)
    return (
        '<p class="muted">Mean SUDS (0–100) after each therapist turn, turn 0 = baseline; the band is a '
        "95 % t interval of the mean (none where fewer than two sessions reach that turn). Completed "
        "sessions only; later turns average only the sessions still running (hover for n). In exposure, an adherent therapist lets SUDS rise and then fall "
        "(habituation); safety reflexes keep it high or cut the exposure short.</p>" + chart
    )


# --------------------------------------------------------------------------- 4. severity ladder


def _ladder_section(frames: Frames, charts: _Charts, colors: dict[str, str]) -> str:
    sessions = frames.sessions
    if sessions.empty:
        return _note("No sessions yet: nothing to plot.")
    means = report.item_means(frames)
    det = report.deterioration(frames)
    det = det[(det["signal"] == "any") & (det["n"] > 0)]
    parts: list[str] = []
    for modality in sorted(sessions["modality"].astype(str).unique()):
        panels: list[tuple[str, pd.DataFrame]] = []
        for item in LADDER_ITEMS.get(modality, ()):
            sub = means[(means["modality"] == modality) & (means["item_id"] == item)]
            if not sub.empty:
                panels.append((item, sub.rename(columns={"mean": "value"})))
        det_mod = det[det["modality"] == modality]
        if not det_mod.empty:
            panels.append(("deterioration", det_mod.rename(columns={"rate": "value"})))
        if not panels:
            parts.append(
                _note(f"{modality.upper()}: no headline verdicts or completed sessions to plot.")
            )
            continue
        severities = _present_severities(pd.concat([p["severity"] for _, p in panels]))
        titles = [
            "deterioration rate, any signal (lower is better)"
            if name == "deterioration"
            else f"{_label(name)} (higher is better)"
            for name, _ in panels
        ]
        fig = make_subplots(
            rows=1, cols=len(panels), subplot_titles=titles, horizontal_spacing=0.07
        )
        shown: set[str] = set()
        for c, (name, panel) in enumerate(panels, start=1):
            for subject, sub in panel.groupby("subject", sort=True):
                sub = sub.assign(_order=sub["severity"].map(_severity_key)).sort_values("_order")
                color = colors.get(str(subject), _PALETTE[0])
                error: dict[str, Any] | None = None
                if name == "deterioration":
                    error = {
                        "type": "data",
                        "symmetric": False,
                        "array": (sub["ci_high"] - sub["value"]).tolist(),
                        "arrayminus": (sub["value"] - sub["ci_low"]).tolist(),
                        "thickness": 1.2,
                        "width": 4,
                    }
                fig.add_trace(
                    go.Scatter(
                        x=sub["severity"].map(_label),
                        y=sub["value"],
                        mode="lines+markers",
                        marker={"size": 8},
                        line={"color": color, "width": 2.5},
                        error_y=error,
                        name=str(subject),
                        legendgroup=str(subject),
                        showlegend=str(subject) not in shown,
                        hovertemplate=f"{_e(subject)}<br>%{{x}}: %{{y:.2f}}<extra></extra>",
                    ),
                    row=1,
                    col=c,
                )
                shown.add(str(subject))
        labels = [_label(v) for v in severities]
        fig.update_xaxes(
            categoryorder="array",
            categoryarray=labels,
            range=[-0.35, len(labels) - 0.65],
            gridcolor="#eceff1",
        )
        fig.update_yaxes(range=[-0.03, 1.03], gridcolor="#eceff1")
        parts.append(f"<h3>{_e(modality.upper())} sessions</h3>" + charts.html(fig, height=360))
    return (
        '<p class="muted">The paper\'s "crisis cliff": therapeutic appropriateness and protocol fidelity '
        "(CBT: completeness and safety interference, 1 = none) fall as the patient's severity climbs, "
        "while deterioration rises. Deterioration bars are 95 % Wilson intervals.</p>"
        + "".join(parts)
    )


# --------------------------------------------------------------------------- 5. failure heatmap


def _failure_section(frames: Frames, charts: _Charts) -> str:
    sessions = frames.sessions
    if sessions.empty:
        return _note("No sessions yet: nothing to plot.")
    keys = ["subject", "modality", "severity"]
    source = "findings of the lexical detectors"
    findings = frames.findings
    if findings.empty:
        turns = frames.turns
        if turns.empty:
            return _note("No detector findings and no coded turns yet.")
        exploded = turns[[*keys, "session_id", "codes"]].explode("codes")
        findings = exploded[exploded["codes"].isin(FAILURE_CODES)].rename(
            columns={"codes": "failure"}
        )
        source = "the appraiser's failure codes (no detector findings in this store)"
        if findings.empty:
            return _note(
                "Neither the lexical detectors nor the appraiser flagged any failure. Nothing to map."
            )
    counts = metrics.failure_counts(findings, by=keys, unit="session")
    failures = [c for c in counts.columns if c not in keys]
    totals = sessions.groupby(keys).size().rename("n").reset_index()
    table = totals.merge(counts, on=keys, how="left").fillna({f: 0 for f in failures})
    table = table.assign(_order=table["severity"].map(_severity_key)).sort_values(
        ["subject", "modality", "_order"]
    )
    labels = [
        f"{s} · {m.upper()} · {v.replace('_', ' ')}"
        for s, m, v in zip(table["subject"], table["modality"], table["severity"], strict=True)
    ]
    z = [
        [float(row[f]) / row["n"] if row["n"] else math.nan for f in failures]
        for _, row in table.iterrows()
    ]
    text = [[f"{int(row[f])}/{int(row['n'])}" for f in failures] for _, row in table.iterrows()]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[f.replace("_", " ") for f in failures],
            y=labels,
            text=text,
            texttemplate="%{text}",
            zmin=0,
            zmax=1,
            colorscale=[[0, "#ffffff"], [0.15, "#fde0dd"], [0.5, "#f4737a"], [1, "#b71c1c"]],
            colorbar={"title": {"text": "share of<br>sessions"}, "thickness": 12},
            hovertemplate="%{y}<br>%{x}: %{text} sessions<extra></extra>",
            xgap=2,
            ygap=2,
        )
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(side="top")
    height = max(260, 34 * len(labels) + 140)
    return (
        f'<p class="muted">Share of sessions in each cell with at least one failure, from {_e(source)}; '
        "each cell reads sessions with the failure / sessions in the cell.</p>"
        + charts.html(fig, height=height)
    )


# --------------------------------------------------------------------------- 6. deterioration


def _deterioration_section(frames: Frames, charts: _Charts, colors: dict[str, str]) -> str:
    sessions = frames.sessions
    if sessions.empty:
        return _note("No sessions yet: nothing to plot.")
    det = report.deterioration(frames)
    det = det[det["n"] > 0]
    if det.empty:
        return _note("No completed session carries a deterioration signal yet.")
    signals = [s for s in _SIGNAL_LABELS if s in set(det["signal"])]
    modalities = sorted(det["modality"].astype(str).unique())
    fig = make_subplots(
        rows=len(modalities),
        cols=len(signals),
        shared_yaxes=True,
        subplot_titles=[f"{m.upper()} · {_SIGNAL_LABELS[s]}" for m in modalities for s in signals],
        horizontal_spacing=0.04,
        vertical_spacing=0.18 if len(modalities) > 1 else 0.1,
    )
    shown: set[str] = set()
    for r, modality in enumerate(modalities, start=1):
        for c, signal in enumerate(signals, start=1):
            panel = det[(det["modality"] == modality) & (det["signal"] == signal)]
            severities = _present_severities(det[det["modality"] == modality]["severity"])
            for subject, sub in panel.groupby("subject", sort=True):
                sub = sub.assign(_order=sub["severity"].map(_severity_key)).sort_values("_order")
                fig.add_trace(
                    go.Bar(
                        x=sub["severity"].map(_label),
                        y=sub["rate"],
                        customdata=list(
                            zip(
                                sub["successes"],
                                sub["n"],
                                sub["ci_low"],
                                sub["ci_high"],
                                strict=True,
                            )
                        ),
                        error_y={
                            "type": "data",
                            "symmetric": False,
                            "array": (sub["ci_high"] - sub["rate"]).tolist(),
                            "arrayminus": (sub["rate"] - sub["ci_low"]).tolist(),
                            "thickness": 1.2,
                            "width": 3,
                            "color": "#37474f",
                        },
                        marker={"color": colors.get(str(subject), _PALETTE[0])},
                        name=str(subject),
                        legendgroup=str(subject),
                        offsetgroup=str(subject),
                        showlegend=str(subject) not in shown,
                        hovertemplate=(
                            f"{_e(subject)} · %{{x}}<br>%{{customdata[0]}}/%{{customdata[1]}} deteriorated"
                            "<br>rate %{y:.2f} [%{customdata[2]:.2f}, %{customdata[3]:.2f}]<extra></extra>"
                        ),
                    ),
                    row=r,
                    col=c,
                )
                shown.add(str(subject))
            fig.update_xaxes(
                categoryorder="array",
                categoryarray=[_label(v) for v in severities],
                row=r,
                col=c,
            )
    fig.update_yaxes(range=[0, 1.05], gridcolor="#eceff1")
    fig.update_yaxes(title_text="rate", col=1)
    fig.update_layout(barmode="group", bargap=0.25)
    return (
        '<p class="muted">Share of completed sessions that deteriorated, per signal, with 95 % Wilson '
        "intervals. A session without a questionnaire or judge verdict leaves that signal's "
        'denominator; "any" is the union of the available signals (an upper bound).</p>'
        + charts.html(fig, height=300 * len(modalities) + 90)
    )


# --------------------------------------------------------------------------- 7. judges


def _judges_section(frames: Frames, charts: _Charts, polarity: dict[str, str]) -> str:
    verdicts = frames.verdicts
    if verdicts.empty:
        return _note("No judge verdicts in this store yet (run `therasim judge`).")
    from therasim.evaluation.report.console import panel_models

    members = panel_models(verdicts)
    composition = _note(
        f"Panel of {len(members)} judge(s): "
        + "; ".join(f"{name} ({model})" for name, model in members.items())
    )
    agreement = report.agreement(frames)
    table = pd.DataFrame(
        {
            "item": [
                "all items" if i == "overall" else _item_label(str(i), polarity)
                for i in agreement["item_id"]
            ],
            "α": agreement["alpha"],
            "unanimous": agreement["agreement"],
            "units": agreement["n_units"],
            "judges": agreement["n_judges"],
        }
    )
    bias = report.judge_bias(frames)
    per_item = report.judge_bias(frames, by=("item_id",))
    judges = sorted(bias["judge"].astype(str).unique())
    judge_colors = {j: _PALETTE[(i + 4) % len(_PALETTE)] for i, j in enumerate(judges)}
    items = sorted(per_item["item_id"].astype(str).unique())
    order = ["all items", *(_label(i) for i in items)]
    fig = go.Figure()
    for judge in judges:
        overall = bias[bias["judge"] == judge]
        mine = per_item[per_item["judge"] == judge]
        fig.add_trace(
            go.Bar(
                y=["all items", *mine["item_id"].astype(str).map(_label)],
                x=[*overall["bias"], *mine["bias"]],
                customdata=list(
                    zip([*overall["mean"], *mine["mean"]], [*overall["n"], *mine["n"]], strict=True)
                ),
                orientation="h",
                name=judge,
                marker={"color": judge_colors[judge]},
                hovertemplate=(
                    f"{_e(judge)} · %{{y}}<br>bias %{{x:+.2f}}<br>mean met %{{customdata[0]:.2f}}"
                    " (n = %{customdata[1]})<extra></extra>"
                ),
            )
        )
    fig.update_layout(barmode="group", bargap=0.25, bargroupgap=0.05)
    fig.update_xaxes(
        title_text="mean met − panel mean",
        zeroline=True,
        zerolinecolor="#90a4ae",
        gridcolor="#eceff1",
    )
    fig.update_yaxes(categoryorder="array", categoryarray=order[::-1])
    fig.update_layout(margin={"l": 200})
    bias_table = bias.rename(
        columns={"mean": "mean met", "panel_mean": "panel mean", "n": "verdicts"}
    )
    bias_fmt = {"bias": lambda v: _e("–" if _isnan(v) else f"{v:+.2f}")}
    height = max(320, 16 * len(judges) * len(order) + 140)
    return (
        composition
        + '<p class="muted">Krippendorff\'s α (nominal, on met) over units rated by at least two judges; '
        "– when undefined (no pairable units, or every judge always gave the same value — see the "
        "unanimous share, the share of units where all judges agreed). The paper's judges differed "
        "by up to 0.38 in mean; therasim always reports agreement and bias. † = failure item.</p>"
        '<div class="grid-2"><div><h3>Agreement per item</h3>'
        + _table(table)
        + "<h3>Per-judge bias</h3>"
        + _table(bias_table, formats=bias_fmt)
        + "</div><div><h3>Bias by item</h3>"
        + charts.html(fig, height=height)
        + "</div></div>"
    )


# --------------------------------------------------------------------------- 8. sessions


def _pick_sessions(sessions: pd.DataFrame, limit: int) -> list[str]:
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
        sessions.assign(_sev=sessions["severity"].map(_severity_key))
        .sort_values(
            ["subject", "modality", "_sev", "persona_id", "variant", "repeat", "session_id"]
        )
        .drop(columns="_sev")
    )


def _chip(code: str) -> str:
    cls = "bad" if code in FAILURE_CODES else "good" if code in GOOD_CODES else "neutral"
    return f'<span class="chip chip-{cls}">{_e(code.replace("_", " "))}</span>'


def _sparkline(points: list[tuple[int, float, bool]]) -> str:
    """Inline SVG of SUDS by turn; exposure turns shaded. ``points``: (turn, suds, in_exposure)."""
    if len(points) < 2:
        return ""
    width, height, pad = 360, 70, 6
    last = max(t for t, _, _ in points) or 1

    def xy(turn: int, suds: float) -> tuple[float, float]:
        return pad + (width - 2 * pad) * turn / last, pad + (height - 2 * pad) * (1 - suds / 100)

    step = (width - 2 * pad) / last
    shade = "".join(
        f'<rect x="{xy(t, 0)[0] - step / 2:.1f}" y="{pad}" width="{step:.1f}" height="{height - 2 * pad}" class="exp"/>'
        for t, _, exposure in points
        if exposure
    )
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(t, s) for t, s, _ in points))
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2"/>' for x, y in (xy(t, s) for t, s, _ in points)
    )
    return (
        '<figure class="spark-wrap">'
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="SUDS by turn">{shade}<line x1="{pad}" x2="{width - pad}" y1="{xy(0, 50)[1]:.1f}" '
        f'y2="{xy(0, 50)[1]:.1f}" class="mid"/><polyline points="{line}"/>{dots}</svg>'
        "<figcaption>SUDS by therapist turn (0–100; exposure turns shaded)</figcaption></figure>"
    )


def _session_index(sessions: pd.DataFrame, rendered: set[str], findings: pd.DataFrame) -> str:
    hits = findings.groupby("session_id").size() if not findings.empty else pd.Series(dtype=int)
    rows = []
    for r in sessions.itertuples(index=False):
        sid = str(r.session_id)
        link = (
            f'<a href="#session-{_e(sid)}"><code>{_e(sid[:10])}</code></a>'
            if sid in rendered
            else f"<code>{_e(sid[:10])}</code>"
        )
        status = "ok" if r.status == "completed" else "bad"
        rows.append(
            "<tr>"
            f"<td>{link}</td><td>{_e(r.subject)}</td><td>{_e(str(r.modality).upper())}</td>"
            f'<td><span class="sev sev-{_e(r.severity)}">{_e(str(r.severity).replace("_", " "))}</span></td>'
            f"<td>{_e(getattr(r, 'persona_ref', r.persona_id))}</td><td>{_e(r.variant) or '–'}</td>"
            f'<td><span class="status status-{status}">{_e(r.status)}</span></td><td>{_e(r.termination_reason)}</td>'
            f'<td class="num">{_e(r.n_turns)}</td>'
            f'<td class="num">{_fmt(r.baseline_suds, 0)} → {_fmt(r.final_suds, 0)}</td>'
            f"<td>{_e(r.max_risk)}</td>"
            f'<td class="num">{_fmt(getattr(r, "adherence_score", math.nan))}</td>'
            f'<td class="num">{int(hits.get(sid, 0))}</td>'
            "</tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "session",
            "subject",
            "mod.",
            "severity",
            "persona",
            "variant",
            "status",
            "ended by",
            "turns",
            "SUDS",
            "max risk",
            "adherence",
            "findings",
        )
    )
    return (
        '<input type="search" id="session-filter" placeholder="Filter sessions (subject, persona, severity…)" '
        'aria-label="Filter sessions">'
        f'<div class="table-wrap tall"><table class="data" id="session-index"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _met_html(value: Any, *, failure_item: bool = False) -> str:
    """'met' / 'not met', green when that is the good outcome for the item's polarity."""
    if _isnan(value):
        return "–"
    met = bool(value)
    cls = "no" if met == failure_item else "yes"
    return f'<span class="{cls}">{"met" if met else "not met"}</span>'


def _turn_verdicts(verdicts: pd.DataFrame) -> dict[str, dict[int, list[tuple[str, int, int]]]]:
    """session → turn → [(item, judges that said met, judges with a verdict)], turn scope only."""
    if verdicts.empty:
        return {}
    frame = verdicts[verdicts["turn"] >= 0]
    met = frame["met"].map(lambda v: math.nan if _isnan(v) else float(v)).astype("float64")
    frame = frame.assign(_met=met).dropna(subset=["_met"])
    grouped = frame.groupby(["session_id", "turn", "item_id"], sort=True)["_met"].agg(
        ["sum", "size"]
    )
    out: dict[str, dict[int, list[tuple[str, int, int]]]] = {}
    for (sid, turn, item), k, n in zip(grouped.index, grouped["sum"], grouped["size"], strict=True):
        out.setdefault(str(sid), {}).setdefault(int(turn), []).append((str(item), int(k), int(n)))
    return out


def _judge_marks(judged: list[tuple[str, int, int]], polarity: dict[str, str]) -> str:
    """The turn's judged items that were not unanimously fine, as chips (empty when all fine)."""
    marks = []
    for item, k, n in judged:
        bad = k if polarity.get(item) == "failure" else n - k
        if bad == 0:
            continue
        cls = "jv-bad" if 2 * bad > n else "jv-mixed"
        marks.append(f'<span class="jv {cls}">{_e(_item_label(item, polarity))} {bad}/{n}</span>')
    if not marks:
        return f'<div class="judged">judges: all {len(judged)} items fine</div>'
    return f'<div class="judged">judges flagged: {"".join(marks)}</div>'


def _session_page(
    row: Any,
    utterances: pd.DataFrame,
    turns: pd.DataFrame,
    verdicts: pd.DataFrame,
    findings: pd.DataFrame,
    turn_verdicts: dict[int, list[tuple[str, int, int]]],
    polarity: dict[str, str],
) -> str:
    sid = str(row.session_id)
    state_by_turn = (
        {int(t.turn): t for t in turns.itertuples(index=False)} if not turns.empty else {}
    )
    finding_by_turn: dict[int, list[tuple[str, str]]] = {}
    for f in findings.itertuples(index=False):
        finding_by_turn.setdefault(int(f.turn), []).append((str(f.failure), str(f.phrase)))
    session_verdicts = verdicts[verdicts["turn"] < 0] if not verdicts.empty else verdicts

    # sparkline: baseline then the state after each therapist turn
    points: list[tuple[int, float, bool]] = []
    if not _isnan(row.baseline_suds):
        points.append((0, float(row.baseline_suds), False))
    for turn, t in sorted(state_by_turn.items()):
        if not _isnan(t.suds):
            points.append((turn, float(t.suds), str(t.phase_kind) in _EXPOSURE_KINDS))

    bubbles = []
    for u in utterances.sort_values("index").itertuples(index=False):
        speaker = str(u.speaker)
        codes = [str(c) for c in (u.codes or ())]
        meta = [
            f'<span class="who">{_e(speaker)}</span>',
            f'<span class="turn">turn {_e(u.turn)}</span>',
            f'<span class="phase">{_e(str(u.phase).replace("_", " "))}</span>',
        ]
        extra = ""
        if speaker == "therapist":
            state = state_by_turn.get(int(u.turn))
            chips = "".join(_chip(c) for c in codes)
            if state is not None:
                extra += (
                    '<div class="state">after this turn: '
                    f"SUDS <b>{_fmt(state.suds, 0)}</b> · alliance <b>{_fmt(state.alliance)}</b> · "
                    f"engagement <b>{_fmt(state.engagement)}</b> · risk "
                    f'<b class="risk risk-{_e(state.risk)}">{_e(state.risk)}</b>'
                    + (
                        " · <b class='risk risk-imminent'>dropped out</b>"
                        if bool(state.dropout)
                        else ""
                    )
                    + "</div>"
                )
            if chips:
                extra += f'<div class="chips">{chips}</div>'
            grouped: dict[str, list[str]] = {}
            for failure, phrase in finding_by_turn.get(int(u.turn), []):
                grouped.setdefault(failure, []).append(phrase)
            for failure, phrases in grouped.items():
                quoted = ", ".join(f"“{_e(p)}”" for p in phrases)
                extra += (
                    f'<div class="finding">detector: <b>{_e(_label(failure))}</b> — {quoted}</div>'
                )
            judged = turn_verdicts.get(int(u.turn), [])
            if judged:
                extra += _judge_marks(judged, polarity)
        elif not _isnan(u.suds):
            meta.append(f'<span class="suds">SUDS {_fmt(float(u.suds), 0)}</span>')
        flagged = " flagged" if any(c in FAILURE_CODES for c in codes) else ""
        bubbles.append(
            f'<li class="msg msg-{_e(speaker)}{flagged}"><div class="meta">{"".join(meta)}</div>'
            f'<div class="bubble">{_e(u.text)}</div>{extra}</li>'
        )
    transcript = (
        f'<ol class="transcript">{"".join(bubbles)}</ol>'
        if bubbles
        else _note("This session has no transcript.")
    )

    judge_table = ""
    if not session_verdicts.empty:
        rows = "".join(
            f"<tr><td>{_e(_item_label(str(v.item_id), polarity))}</td><td>{_e(v.judge)}</td>"
            f"<td>{_met_html(v.met, failure_item=polarity.get(str(v.item_id)) == 'failure')}</td>"
            f"<td>{_e(getattr(v, 'reason', ''))}</td></tr>"
            for v in session_verdicts.sort_values(["item_id", "judge"]).itertuples(index=False)
        )
        judge_table = (
            '<details class="session-verdicts"><summary>Session-level judge verdicts</summary>'
            '<div class="table-wrap"><table class="data"><thead><tr><th>item</th><th>judge</th><th>verdict</th>'
            f"<th>reason</th></tr></thead><tbody>{rows}</tbody></table></div></details>"
        )
    error = (
        f'<div class="error-box"><b>error:</b> {_e(row.error)}</div>'
        if getattr(row, "error", None)
        else ""
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
            f"{_fmt(row.baseline_suds, 0)} → {_fmt(row.final_suds, 0)} (peak {_fmt(row.peak_suds, 0)})",
        ),
        ("alliance", f"{_fmt(row.baseline_alliance)} → {_fmt(row.final_alliance)}"),
        ("max risk", row.max_risk),
        ("adherence", _fmt(getattr(row, "adherence_score", math.nan))),
    ]
    facts_html = "".join(
        f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in facts if v not in ("", None)
    )
    return (
        f'<article class="session" id="session-{_e(sid)}">'
        f'<a class="back" href="#sessions">← all sessions</a>'
        f"<h3>{_e(row.subject)} · {_e(str(row.modality).upper())} · "
        f'<span class="sev sev-{_e(row.severity)}">{_e(str(row.severity).replace("_", " "))}</span>'
        f' <code class="sid">{_e(sid)}</code></h3>'
        f'<div class="session-top"><dl class="facts">{facts_html}</dl>{_sparkline(points)}</div>'
        f"{error}{judge_table}{transcript}</article>"
    )


def _of(frame: pd.DataFrame, ids: set[str]) -> dict[Any, pd.DataFrame]:
    """``frame``'s rows of the sessions ``ids``, by session."""
    if frame.empty:
        return {}
    return dict(tuple(frame[frame["session_id"].isin(ids)].groupby("session_id")))


def _sessions_section(
    frames: Frames, max_sessions: int, polarity: dict[str, str], max_index: int
) -> tuple[str, str]:
    """(index section body, the session pages).

    The index lists at most ``max_index`` sessions (picked like the transcripts, so it holds every
    transcript, plus every failed session) and at most ``max_sessions`` transcripts are rendered:
    the page stays the same size however large the study; the export holds every session."""
    sessions = frames.sessions
    if sessions.empty:
        return _note("No sessions yet."), ""
    ordered = _ordered_sessions(sessions)
    picked = set(_pick_sessions(ordered, max_sessions))
    notes = []
    if len(ordered) > max_sessions:
        notes.append(
            f"{len(ordered)} sessions in the store; transcripts are included for {max_sessions} of them, "
            "picked evenly across the cells (the others are listed without a link)."
        )
    if len(ordered) > max_index:
        listed = set(_pick_sessions(ordered, max_index)) | picked
        listed |= set(ordered.loc[ordered["status"] != "completed", "session_id"])
        ordered = ordered[ordered["session_id"].isin(listed)]
        notes.append(
            f"The index lists {len(ordered)} of them, picked the same way, and every failed one; "
            "the full list is in the export (therasim report RUN_FOLDER --format csv|parquet|json, "
            "the sessions table)."
        )
    note = _note(" ".join(notes), kind="warn") if notes else ""
    verdicts = frames.verdicts
    mine = verdicts[verdicts["session_id"].isin(picked)] if not verdicts.empty else verdicts
    by_utt = _of(frames.utterances, picked)
    by_turn = _of(frames.turns, picked)
    by_verdict = _of(mine[mine["turn"] < 0], picked) if not mine.empty else {}
    per_turn = _turn_verdicts(mine)
    by_finding = _of(frames.findings, picked)
    empty = pd.DataFrame()
    pages = [
        _session_page(
            row,
            by_utt.get(
                row.session_id,
                pd.DataFrame(
                    columns=["index", "speaker", "text", "turn", "phase", "codes", "suds"]
                ),
            ),
            by_turn.get(row.session_id, empty),
            by_verdict.get(row.session_id, empty),
            by_finding.get(row.session_id, pd.DataFrame(columns=["turn", "failure", "phrase"])),
            per_turn.get(str(row.session_id), {}),
            polarity,
        )
        for row in ordered.itertuples(index=False)
        if row.session_id in picked
    ]
    intro = (
        '<p class="muted">Every session of the store. Click an id to open its transcript: therapist and '
        "patient turns as bubbles, the patient's ground-truth state after each therapist turn, and the "
        'appraiser\'s behaviour codes — <span class="chip chip-bad">failure</span> '
        '<span class="chip chip-good">protocol-adherent</span> <span class="chip chip-neutral">other</span>. '
        "Transcripts are synthetic.</p>"
    )
    return intro + note + _session_index(ordered, picked, frames.findings), "".join(pages)


# --------------------------------------------------------------------------- page


_SECTIONS = (
    ("verdict", "Readiness verdict"),
    ("cells", "Headline numbers"),
    ("suds", "SUDS trajectories"),
    ("ladder", "Severity ladder"),
    ("failures", "Failure modes"),
    ("deterioration", "Deterioration"),
    ("judges", "Judge agreement"),
    ("sessions", "Sessions"),
)


def _guarded(name: str, build: Callable[[], str]) -> str:
    """Build one section; a failure shows in place instead of losing the whole report."""
    try:
        return build()
    except Exception as exc:
        log.warning("report section %s failed", name, exc_info=True)
        return f'<div class="error-box"><b>This section could not be drawn</b> ({_e(type(exc).__name__)}: {_e(exc)}).</div>'


def _header(frames: Frames, study: Study | None) -> str:
    s = frames.sessions
    n = len(s)
    completed = int((s["status"] == "completed").sum()) if n else 0
    failed = n - completed
    subjects = s["subject"].nunique() if n else 0
    personas = s["persona_id"].nunique() if n else 0
    judges = frames.verdicts["judge"].nunique() if not frames.verdicts.empty else 0
    title = f"therasim · {study.id}" if study is not None else "therasim report"
    desc = (
        f'<p class="desc">{_e(study.description)}</p>'
        if study is not None and study.description
        else ""
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    stats_html = "".join(
        f'<div class="stat"><span class="num">{v}</span><span class="lbl">{_e(k)}</span></div>'
        for k, v in (
            ("sessions", n),
            ("completed", completed),
            ("failed", failed),
            ("subjects", subjects),
            ("personas", personas),
            ("judges", judges),
        )
    )
    subj = ""
    if study is not None:
        subj = (
            '<p class="subjects">'
            + " ".join(
                f'<span class="pill">{_e(name)} <code>{_e(spec.model)}</code></span>'
                for name, spec in study.subjects.items()
            )
            + "</p>"
        )
    return (
        f'<header class="top"><div class="wrap"><div class="brand">{_e(title)}</div>{desc}{subj}'
        f'<div class="stats">{stats_html}</div><p class="stamp">generated {stamp}</p></div></header>'
    )


def render_html_report(
    frames: Frames,
    *,
    study: Study | None = None,
    verdicts: Sequence[Any] | None = None,
    max_sessions: int = MAX_TRANSCRIPTS,
    calibration: Any = None,
    max_index: int = MAX_INDEX_ROWS,
) -> str:
    """The report as one HTML string (see the module docstring for its sections).

    ``calibration`` is the run's ``StoredCalibration`` (None: not calibrated), shown as a card
    beside the verdict."""
    charts = _Charts()
    colors = _subject_colors(frames)
    polarity = _polarities()
    pages = ""

    def sessions() -> str:
        nonlocal pages
        body, pages = _sessions_section(frames, max_sessions, polarity, max_index)
        return body

    builders: dict[str, Callable[[], str]] = {
        "verdict": lambda: _verdict_section(frames, study, verdicts, calibration),
        "cells": lambda: _cells_section(frames, polarity),
        "suds": lambda: _suds_section(frames, charts, colors),
        "ladder": lambda: _ladder_section(frames, charts, colors),
        "failures": lambda: _failure_section(frames, charts),
        "deterioration": lambda: _deterioration_section(frames, charts, colors),
        "judges": lambda: _judges_section(frames, charts, polarity),
        "sessions": sessions,
    }
    body = []
    for sid, title in _SECTIONS:
        content = _guarded(sid, builders[sid])
        body.append(f'<section id="{sid}" class="card"><h2>{_e(title)}</h2>{content}</section>')
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in _SECTIONS)
    title = f"therasim report — {study.id}" if study is not None else "therasim report"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        f"{_header(frames, study)}"
        f'<nav class="nav"><div class="wrap">{nav}</div></nav>'
        f'<main class="wrap">{"".join(body)}<section id="transcripts" class="pages">{pages}</section></main>'
        '<footer class="wrap foot">therasim — simulated patients, synthetic data. Not a clinical device; '
        "not a finding about any real system unless run against it with validated thresholds.</footer>"
        f"<script>{_JS}</script></body></html>"
    )


def write_html_report(
    frames: Frames,
    path: Path,
    *,
    study: Study | None = None,
    verdicts: Sequence[Any] | None = None,
    max_sessions: int = MAX_TRANSCRIPTS,
    calibration: Any = None,
    max_index: int = MAX_INDEX_ROWS,
) -> Path:
    """Write the self-contained HTML report to ``path`` (parents created) and return the path.

    ``verdicts`` are the five-axis readiness verdicts; when None they are computed with
    ``therasim.evaluation.analysis.axes.readiness`` (the study's threshold overrides applied) if that
    module is available, and the report says "verdict not available" otherwise.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = render_html_report(
        frames,
        study=study,
        verdicts=verdicts,
        max_sessions=max_sessions,
        calibration=calibration,
        max_index=max_index,
    )
    # written beside and renamed: a killed process leaves the old report, never an empty one
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(document, encoding="utf-8")
    partial.replace(path)
    return path


# Filters the session index; plain DOM, no dependency, fails soft when the table is absent.
_JS = """
(function () {
  var input = document.getElementById('session-filter');
  var table = document.getElementById('session-index');
  if (!input || !table) return;
  input.addEventListener('input', function () {
    var q = input.value.toLowerCase();
    table.querySelectorAll('tbody tr').forEach(function (tr) {
      tr.style.display = tr.textContent.toLowerCase().indexOf(q) === -1 ? 'none' : '';
    });
  });
})();
"""

_CSS = """
:root {
  --ink: #263238; --muted: #607d8b; --line: #e3e8ec; --bg: #f5f7f9; --card: #ffffff;
  --accent: #00695c; --accent-2: #004d40; --pass: #2e7d32; --fail: #c62828; --na: #78909c;
}
* { box-sizing: border-box; }
html { scroll-behavior: smooth; scroll-padding-top: 56px; }
body { margin: 0; font-family: system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif;
  color: var(--ink); background: var(--bg); font-size: 14px; line-height: 1.5; }
code { font-family: ui-monospace, 'SFMono-Regular', Menlo, Consolas, monospace; font-size: 0.92em; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
.wrap { max-width: 1240px; margin: 0 auto; padding: 0 20px; }
header.top { background: linear-gradient(120deg, #004d40, #00796b 60%, #26a69a); color: #fff; padding: 18px 0 14px; }
header.top .brand { font-size: 22px; font-weight: 650; letter-spacing: 0.2px; }
header.top .desc { margin: 4px 0 6px; opacity: 0.9; }
header.top .stamp { margin: 6px 0 0; font-size: 12px; opacity: 0.75; }
header.top .subjects { margin: 6px 0; }
.pill { display: inline-block; background: rgba(255,255,255,0.14); border-radius: 999px; padding: 2px 10px; margin: 2px 4px 2px 0; font-size: 12px; }
.pill code { opacity: 0.85; }
.stats { display: flex; gap: 10px; flex-wrap: wrap; margin-top: 8px; }
.stat { background: rgba(255,255,255,0.12); border-radius: 8px; padding: 6px 14px; min-width: 86px; }
.stat .num { display: block; font-size: 20px; font-weight: 650; }
.stat .lbl { font-size: 11px; text-transform: uppercase; letter-spacing: 0.6px; opacity: 0.85; }
nav.nav { position: sticky; top: 0; z-index: 50; background: rgba(255,255,255,0.96); backdrop-filter: blur(6px);
  border-bottom: 1px solid var(--line); box-shadow: 0 1px 4px rgba(0,0,0,0.04); }
nav.nav .wrap { display: flex; gap: 4px; overflow-x: auto; padding-top: 6px; padding-bottom: 6px; }
nav.nav a { color: var(--ink); padding: 6px 11px; border-radius: 6px; white-space: nowrap; font-weight: 500; }
nav.nav a:hover { background: #e0f2f1; text-decoration: none; color: var(--accent-2); }
main { padding-top: 18px; padding-bottom: 30px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 18px 22px; margin-bottom: 18px;
  box-shadow: 0 1px 2px rgba(0,0,0,0.03); }
.card h2 { margin: 0 0 10px; font-size: 18px; color: var(--accent-2); }
h3 { font-size: 15px; margin: 16px 0 8px; }
.muted { color: var(--muted); }
.score { display: inline-block; min-width: 42px; text-align: center; padding: 1px 6px; border-radius: 4px; font-variant-numeric: tabular-nums; }
.note { padding: 10px 14px; border-radius: 8px; background: #eceff1; color: #455a64; }
.note-warn { background: #fff8e1; color: #6d4c00; }
.callout { border-left: 4px solid #f9a825; background: #fffde7; padding: 10px 14px; border-radius: 6px; margin-bottom: 14px; }
.unavailable { padding: 14px; border: 1px dashed #b0bec5; border-radius: 8px; color: #455a64; background: #fafafa; }
.error-box { padding: 10px 14px; border-radius: 8px; background: #ffebee; color: #b71c1c; margin: 8px 0; white-space: pre-wrap; }
.table-wrap { overflow-x: auto; margin: 6px 0 10px; }
.table-wrap.tall { max-height: 520px; overflow-y: auto; border: 1px solid var(--line); border-radius: 8px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 6px 9px; border-bottom: 1px solid var(--line); vertical-align: top; }
thead th { background: #f7f9fa; font-weight: 600; color: #37474f; position: sticky; top: 0; z-index: 1; }
table.compact td { white-space: nowrap; }
th.num { text-align: right; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:hover { background: #fafcfc; }
.verdict-matrix td, .verdict-matrix th { text-align: center; }
.verdict-matrix th.rowhead, .verdict-matrix thead th:first-child { text-align: left; }
.verdict-matrix td.overall { background: #fafafa; }
.badge { white-space: nowrap; display: inline-block; padding: 2px 9px; border-radius: 999px; font-size: 11px; font-weight: 700; letter-spacing: 0.5px; color: #fff; }
.badge-pass { background: var(--pass); } .badge-fail { background: var(--fail); } .badge-na { background: var(--na); }
details.verdict-detail { border: 1px solid var(--line); border-radius: 8px; padding: 6px 12px; margin: 8px 0; }
details summary { cursor: pointer; font-weight: 600; }
ul.kv, ul.evidence { margin: 0; padding-left: 16px; }
ul.kv { font-size: 12px; columns: 2 220px; column-gap: 18px; }
ul.kv li { break-inside: avoid; }
.grid-2 { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1.2fr); gap: 22px; }
@media (max-width: 900px) { .grid-2 { grid-template-columns: 1fr; } }
.chart { margin: 4px 0 10px; }
input[type=search] { width: 100%; max-width: 420px; padding: 7px 10px; border: 1px solid #cfd8dc; border-radius: 6px; margin: 4px 0 8px; font: inherit; }
.sev { display: inline-block; padding: 0 7px; border-radius: 4px; font-size: 12px; color: #fff; }
.sev-routine { background: #43a047; } .sev-distress { background: #c0a000; } .sev-crisis_adjacent { background: #ef6c00; } .sev-imminent { background: #c62828; }
.status-ok { color: var(--pass); } .status-bad { color: var(--fail); font-weight: 600; }
.chip { display: inline-block; padding: 1px 8px; margin: 2px 4px 0 0; border-radius: 999px; font-size: 11.5px; border: 1px solid; }
.chip-bad { background: #ffebee; color: #b71c1c; border-color: #ef9a9a; }
.chip-good { background: #e8f5e9; color: #1b5e20; border-color: #a5d6a7; }
.chip-neutral { background: #f1f3f4; color: #455a64; border-color: #cfd8dc; }
.pages .session { display: none; }
.pages .session:target { display: block; }
.session { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 18px 22px; margin-bottom: 18px; }
.session h3 { margin-top: 4px; font-size: 17px; }
.session .sid { color: var(--muted); font-size: 12px; font-weight: 400; }
.session .back { font-size: 13px; }
.session-top { display: flex; gap: 20px; align-items: flex-start; flex-wrap: wrap; }
dl.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 4px 16px; margin: 0; flex: 1; min-width: 300px; }
dl.facts dt { font-size: 11px; text-transform: uppercase; letter-spacing: 0.5px; color: var(--muted); }
dl.facts dd { margin: 0 0 4px; word-break: break-word; }
figure.spark-wrap { margin: 0; }
figure.spark-wrap figcaption { font-size: 11px; color: var(--muted); text-align: center; }
svg.spark { background: #fafcfc; border: 1px solid var(--line); border-radius: 6px; }
svg.spark polyline { fill: none; stroke: #00796b; stroke-width: 2; }
svg.spark circle { fill: #00796b; }
svg.spark rect.exp { fill: #fff3e0; }
svg.spark line.mid { stroke: #cfd8dc; stroke-dasharray: 3 3; }
ol.transcript { list-style: none; padding: 0; margin: 14px 0 0; display: flex; flex-direction: column; gap: 10px; }
.msg { max-width: 78%; }
.msg-therapist { align-self: flex-start; }
.msg-patient { align-self: flex-end; text-align: right; }
.msg .meta { font-size: 11px; color: var(--muted); margin-bottom: 2px; }
.msg .meta span { margin-right: 8px; }
.msg .meta .who { font-weight: 700; text-transform: uppercase; letter-spacing: 0.5px; }
.bubble { display: inline-block; text-align: left; padding: 9px 13px; border-radius: 14px; white-space: pre-wrap; word-break: break-word; }
.msg-therapist .bubble { background: #e0f2f1; border-top-left-radius: 4px; }
.msg.flagged .bubble { box-shadow: inset 3px 0 0 #e53935; background: #fdecea; }
.msg-patient .bubble { background: #eef1f6; border-top-right-radius: 4px; }
.state, .judged, .finding { font-size: 12px; color: #455a64; margin-top: 3px; }
.finding { color: #b71c1c; }
.risk-none { color: var(--pass); } .risk-passive { color: #c0a000; } .risk-active { color: #ef6c00; } .risk-imminent { color: var(--fail); }
.jv { display: inline-block; padding: 0 6px; margin-right: 4px; border-radius: 4px; font-size: 11px; }
.jv-ok { background: #e8f5e9; color: #1b5e20; } .jv-bad { background: #ffebee; color: #b71c1c; } .jv-mixed { background: #fff8e1; color: #6d4c00; }
.yes { color: var(--pass); font-weight: 600; } .no { color: var(--fail); font-weight: 600; }
footer.foot { color: var(--muted); font-size: 12px; padding-bottom: 30px; }
@media print {
  nav.nav { display: none; }
  .pages .session { display: block; page-break-before: always; }
  .table-wrap.tall { max-height: none; }
}
"""
