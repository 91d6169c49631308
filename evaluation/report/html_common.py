"""What the HTML report's sections share: vocabulary, formatting, and the plain data the Jinja2
templates render (notes, tables, score chips, badges, charts).

Builders here and in ``html_sections``, ``html_charts`` and ``html_sessions`` return plain data,
never markup: the templates under ``templates/`` turn it into HTML with autoescaping on, since
every string that comes from a session is untrusted model output.
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from therasim.evaluation.analysis.frames import Frames
from therasim.evaluation.report.console import SEVERITY_ORDER

log = logging.getLogger("therasim.evaluation.report.html")

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
#: Transcripts rendered at most (a page is ~25 KB) and sessions listed in the index at most.
MAX_TRANSCRIPTS = 64
MAX_INDEX_ROWS = 300

PALETTE = (
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
SIGNAL_LABELS = {
    "trajectory": "patient-state trajectory",
    "questionnaire": "pre/post questionnaire",
    "judge": "judge panel",
    "any": "any signal",
}
EXPOSURE_KINDS = frozenset({"imaginal_exposure", "hot_spot"})
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}
_FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"


# --------------------------------------------------------------------------- template data


@dataclass(frozen=True, slots=True)
class Note:
    """A grey (``info``) or yellow (``warn``) box of plain text."""

    text: str
    kind: str = "info"


@dataclass(frozen=True, slots=True)
class Score:
    """A 0–1 score as a chip tinted by ``hue`` (0 red … 120 green); ``hue`` None: no value."""

    text: str
    hue: int | None


@dataclass(frozen=True, slots=True)
class Badge:
    """A PASS / FAIL / NOT ASSESSED pill: ``cls`` is pass, fail or na."""

    label: str
    cls: str


@dataclass(frozen=True, slots=True)
class Table:
    """A plain table: header cells with their numeric flag, rows of text or score chips."""

    columns: list[tuple[str, bool]]
    rows: list[list[str | Score]]
    cls: str = "data"


@dataclass(frozen=True, slots=True)
class Chart:
    """One plotly figure: drawn into ``<div id=id>`` from its JSON block by the page's script."""

    id: str
    height: int
    figure: dict[str, Any]


@dataclass
class Charts:
    """Collects the figures of a report; the shared plotly template is kept once, not per figure."""

    count: int = 0
    template: dict[str, Any] | None = None
    charts: list[Chart] = field(default_factory=list)

    def add(self, fig: go.Figure, *, height: int) -> Chart:
        """Style ``fig`` like every report chart and turn it into plain, compact JSON data."""
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
        layout = plain_json(figure["layout"])
        template = layout.pop("template", None)
        if self.template is None:
            self.template = template
        elif template != self.template:  # never in practice: every chart uses plotly_white
            layout["template"] = template
        chart = Chart(
            id=f"chart-{self.count}",
            height=height,
            figure={
                "data": plain_json(figure["data"], digits=3),
                "layout": layout,
                "config": _PLOT_CONFIG,
            },
        )
        self.charts.append(chart)
        return chart


def plain_json(value: Any, digits: int | None = None) -> Any:
    """``value`` as plain JSON types: numpy and plotly typed arrays as lists, NaN and infinities as
    null (``JSON.parse`` rejects NaN), floats rounded to ``digits`` when given (the charts show two
    decimals; plotly would write each array as base64 float64, 11 characters a value)."""
    if isinstance(value, dict) and {"dtype", "bdata"} <= value.keys():  # a plotly typed array
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        if value.get("shape"):
            array = array.reshape([int(n) for n in str(value["shape"]).split(",")])
        return plain_json(array.tolist(), digits)
    if isinstance(value, dict):
        return {str(k): plain_json(v, digits) for k, v in value.items()}
    if isinstance(value, np.ndarray | np.generic | pd.Series | pd.Index):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [plain_json(v, digits) for v in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return round(value, digits) if digits is not None else value
    if value is None or isinstance(value, str | int | bool):
        return value
    return None if value is pd.NA else str(value)


# --------------------------------------------------------------------------- formatting


def isnan(value: Any) -> bool:
    """True for None, NA and float NaN."""
    try:
        return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))
    except TypeError:
        return False


def fmt(value: Any, digits: int = 2) -> str:
    """A table value: – when missing, yes/no, ints as is, floats to ``digits``."""
    if isnan(value):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def text(value: Any) -> str:
    """Enum members by value, everything else by ``str``."""
    return str(getattr(value, "value", value))


def label(value: Any) -> str:
    """An identifier as words: ``crisis_adjacent`` → ``crisis adjacent``."""
    return str(value).replace("_", " ")


def severity_key(value: Any) -> tuple[int, str]:
    """Sort key putting severities in ladder order, unknown ones last."""
    name = str(value)
    return (SEVERITY_ORDER.index(name) if name in SEVERITY_ORDER else len(SEVERITY_ORDER), name)


def present_severities(values: Iterable[Any]) -> list[str]:
    """The distinct severities in ``values``, in ladder order."""
    return sorted({str(v) for v in values if not isnan(v)}, key=severity_key)


def rgba(hex_color: str, alpha: float) -> str:
    """``#rrggbb`` with an alpha, for plotly fills."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def subject_colors(frames: Frames) -> dict[str, str]:
    """One palette colour per subject, stable across charts."""
    subjects: set[str] = set()
    for frame in (frames.sessions, frames.verdicts, frames.findings):
        if "subject" in frame.columns:  # distinct values first: the verdicts have ~450,000 rows
            subjects.update(str(s) for s in frame["subject"].dropna().unique())
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(sorted(subjects))}


def score(value: Any, *, higher_is_better: bool = True) -> Score:
    """A 0–1 score as a tinted chip: green when good, red when bad."""
    if isnan(value):
        return Score("–", None)
    good = float(value) if higher_is_better else 1 - float(value)
    return Score(f"{float(value):.2f}", round(120 * max(0.0, min(1.0, good))))


def badge(status: Any) -> Badge:
    """A verdict status as a badge."""
    name = text(status).upper()
    return Badge(
        "NOT ASSESSED" if name == "NOT_ASSESSED" else name,
        {"PASS": "pass", "FAIL": "fail"}.get(name, "na"),
    )


def table(
    frame: pd.DataFrame,
    *,
    formats: dict[str, Callable[[Any], str | Score]] | None = None,
    cls: str = "data",
) -> Table:
    """``frame`` as a :class:`Table`; cells formatted by ``fmt`` unless ``formats`` names the
    column. Numeric columns are right-aligned."""
    formats = formats or {}
    numeric = [is_numeric_dtype(frame[c]) and not is_bool_dtype(frame[c]) for c in frame.columns]
    columns = [str(c) for c in frame.columns]
    rows: list[list[str | Score]] = []
    for record in frame.itertuples(index=False, name=None):
        row: list[str | Score] = []
        for col, value in zip(columns, record, strict=True):
            fmt_col = formats.get(col)
            row.append(fmt_col(value) if fmt_col else fmt(value))
        rows.append(row)
    return Table(list(zip(columns, numeric, strict=True)), rows, cls)


def polarities() -> dict[str, str]:
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


def item_label(item: str, polarity: dict[str, str]) -> str:
    """A rubric item's name, marked † when it is a failure item."""
    return label(item) + (" †" if polarity.get(item) == "failure" else "")
