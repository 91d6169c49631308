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
   then, when the run holds single-turn battery answers (``battery=``), the battery's crisis
   cliff (mean appropriateness per subject by severity) and failure rates (``html_battery``);
5. a failure-mode heatmap (share of sessions with each lexical-detector finding);
6. deterioration rates per cell and signal with Wilson intervals;
7. judge agreement (Krippendorff's α per item) and per-judge bias;
8. cost by role: calls, cache hits, tokens and cost per role, with a total;
9. a session index and one page per session (``#session-<id>``): the transcript as bubbles with
   the patient's state after every turn and the behaviour codes as coloured chips.

How it is built: the ``html_sections``, ``html_charts`` and ``html_sessions`` modules turn the
frames into plain data, and Jinja2 templates (``templates/``) turn that into HTML with
autoescaping on and ``StrictUndefined``: transcripts, reasons and names are untrusted model
output, so nothing from a session reaches the page unescaped. The CSS and the page's script are
static files in ``templates/`` inlined by the page template. Each chart is a
``<script type="application/json">`` block of its figure (written by Jinja's ``tojson``, which
escapes ``<``, ``>``, ``&`` and ``'`` so no text can close the block) that one small script hands
to plotly.js; the plotly template shared by every chart is written once.

Every section copes with empty frames by saying what is missing instead of drawing; a section whose
data fail to build shows its error in place so the rest of the report still renders.

Session pages are shown one at a time with the CSS ``:target`` selector, so linking to
``report.html#session-<id>`` opens that session like a page without any script; printing shows
them all. At most ``max_sessions`` transcripts are rendered and the index lists at most
``max_index`` sessions (see ``html_sessions``), so the file stops growing with the study:
plotly.js (~4.8 MB, once) and ~2 MB of transcripts. Chart data are per-cell aggregates with
rounded floats. The frame export (``therasim report --format``) holds every session.
"""

from __future__ import annotations

import functools
import importlib.resources
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypedDict

from jinja2 import BaseLoader, Environment, PackageLoader, StrictUndefined

from therasim.evaluation.analysis.frames import Frames
from therasim.evaluation.report import html_battery, html_charts, html_sections, html_sessions
from therasim.evaluation.report.html_common import (
    FAILURE_CODES,
    GOOD_CODES,
    LADDER_ITEMS,
    MAX_INDEX_ROWS,
    MAX_TRANSCRIPTS,
    PALETTE,
    Charts,
    Note,
    polarities,
    subject_colors,
)

if TYPE_CHECKING:
    from jinja2.environment import Template
    from typing_extensions import Unpack

    from therasim.simulations.study import Study

__all__ = [
    "FAILURE_CODES",
    "GOOD_CODES",
    "LADDER_ITEMS",
    "MAX_INDEX_ROWS",
    "MAX_TRANSCRIPTS",
    "ReportOptions",
    "render_html_report",
    "write_html_report",
]

log = logging.getLogger(__name__)

_SECTIONS = (
    ("verdict", "Readiness verdict"),
    ("cells", "Headline numbers"),
    ("suds", "SUDS trajectories"),
    ("ladder", "Severity ladder"),
    ("failures", "Failure modes"),
    ("deterioration", "Deterioration"),
    ("judges", "Judge agreement"),
    ("costs", "Cost by role"),
    ("sessions", "Sessions"),
)
#: Shown after the severity ladder when the run holds battery answers.
_BATTERY_SECTION = ("battery", "Single-turn battery")


class _DedentingLoader(PackageLoader):
    """The package's templates with each line's indentation dropped on load.

    The indentation is there to read the templates; without it a report of 64 session pages and
    300 index rows is ~5 % smaller. Templates therefore keep whitespace-sensitive content (the
    ``pre-wrap`` bubbles and error boxes, runs of inline elements) on one line."""

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str, Callable[[], bool] | None]:
        source, filename, uptodate = super().get_source(environment, template)
        if template.endswith(".j2"):
            source = "\n".join(line.strip() for line in source.splitlines()) + "\n"
        return source, filename, uptodate


@functools.cache
def environment() -> Environment:
    """The report's Jinja2 environment: autoescaping, strict undefined, compact JSON."""
    loader: BaseLoader = _DedentingLoader("therasim.evaluation.report", "templates")
    env = Environment(
        loader=loader,
        autoescape=True,  # every template is HTML; session text is untrusted
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.policies["json.dumps_kwargs"] = {"separators": (",", ":"), "sort_keys": False}
    return env


@functools.cache
def _asset(name: str) -> str:
    """A static file of ``templates/`` (CSS, script), read as is: never rendered as a template."""
    env = environment()
    assert env.loader is not None
    return env.loader.get_source(env, name)[0]


def _template(name: str) -> Template:
    return environment().get_template(name)


@dataclass(frozen=True, slots=True)
class _Section:
    """One card of the report: its template data, or the note or error shown instead."""

    id: str
    title: str
    data: dict[str, Any] | None = None
    note: Note | None = None
    error: str | None = None


def _guarded(sid: str, title: str, build: Callable[[], dict[str, Any] | Note]) -> _Section:
    """Build one section's data; a failure shows in place instead of losing the whole report."""
    try:
        result = build()
    except Exception as exc:
        log.warning("report section %s failed", sid, exc_info=True)
        return _Section(sid, title, error=f"{type(exc).__name__}: {exc}")
    if isinstance(result, Note):
        return _Section(sid, title, note=result)
    return _Section(sid, title, data=result)


def _header(frames: Frames, study: Study | None) -> dict[str, Any]:
    s = frames.sessions
    n = len(s)
    completed = int((s["status"] == "completed").sum()) if n else 0
    return {
        "title": f"therasim · {study.id}" if study is not None else "therasim report",
        "description": study.description if study is not None and study.description else "",
        "subjects": [(name, spec.model) for name, spec in study.subjects.items()]
        if study is not None
        else None,
        "stats": [
            ("sessions", n),
            ("completed", completed),
            ("failed", n - completed),
            ("subjects", s["subject"].nunique() if n else 0),
            ("personas", s["persona_id"].nunique() if n else 0),
            ("judges", frames.verdicts["judge"].nunique() if not frames.verdicts.empty else 0),
        ],
        "stamp": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _battery_polarity(study: Study | None) -> dict[str, str]:
    """Rubric item → polarity for the battery's scores, from the study's rubrics."""
    from therasim.evaluation.analysis.battery import battery_polarity

    return battery_polarity(study.rubrics if study is not None else None)


def _page(
    frames: Frames,
    *,
    study: Study | None = None,
    verdicts: Sequence[Any] | None = None,
    max_sessions: int = MAX_TRANSCRIPTS,
    calibration: Any = None,
    max_index: int = MAX_INDEX_ROWS,
    battery: Frames | None = None,
) -> dict[str, Any]:
    """The page template's data (see :func:`render_html_report` for the arguments)."""
    charts = Charts()
    has_battery = battery is not None and not battery.sessions.empty
    colors = subject_colors(frames)
    if battery is not None and has_battery:  # one colour per subject across both halves
        subjects = sorted(set(colors) | set(subject_colors(battery)))
        colors = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(subjects)}
    polarity = polarities()
    builders: dict[str, Callable[[], dict[str, Any] | Note]] = {
        "verdict": lambda: html_sections.verdict_section(frames, study, verdicts, calibration),
        "cells": lambda: html_sections.cells_section(
            frames, polarity, battery_only=has_battery and frames.sessions.empty
        ),
        "suds": lambda: html_charts.suds_section(frames, charts, colors),
        "ladder": lambda: html_charts.ladder_section(frames, charts, colors),
        "failures": lambda: html_charts.failure_section(frames, charts),
        "deterioration": lambda: html_charts.deterioration_section(frames, charts, colors),
        "judges": lambda: html_sections.judges_section(frames, charts, polarity),
        "costs": lambda: html_sections.costs_section(frames, battery),
        "sessions": lambda: html_sessions.sessions_section(
            frames, max_sessions, polarity, max_index
        ),
    }
    order = list(_SECTIONS)
    if battery is not None and has_battery:
        batt = battery
        builders["battery"] = lambda: html_battery.battery_section(
            batt, charts, colors, _battery_polarity(study)
        )
        order.insert(order.index(("ladder", "Severity ladder")) + 1, _BATTERY_SECTION)
    sections = [_guarded(sid, title, builders[sid]) for sid, title in order]
    sessions = next(s.data for s in sections if s.id == "sessions")
    return {
        "title": f"therasim report — {study.id}" if study is not None else "therasim report",
        "header": _header(frames, study),
        "sections": sections,
        "pages": sessions["pages"] if sessions else [],
        "plot_template": charts.template,
        "css": _asset("report.css"),
        "script": _asset("report.js"),
    }


class ReportOptions(TypedDict, total=False):
    """What the report shows beside the frames.

    ``verdicts`` are the five-axis readiness verdicts; when None they are computed with
    ``therasim.evaluation.analysis.axes.readiness`` (the study's threshold overrides applied) if
    that module is available, and the report says "verdict not available" otherwise.
    ``calibration`` is the run's ``StoredCalibration`` (None: not calibrated), shown as a card
    beside the verdict. ``battery`` is the battery half of
    ``therasim.evaluation.analysis.battery.split_frames``; when it holds answers the report gains
    the battery section (its crisis cliff and failure rates), and its calls count in the costs.
    ``max_sessions`` and ``max_index`` cap the transcripts and the session index."""

    study: Study | None
    verdicts: Sequence[Any] | None
    max_sessions: int
    calibration: Any
    max_index: int
    battery: Frames | None


def render_html_report(frames: Frames, **options: Unpack[ReportOptions]) -> str:
    """The report as one HTML string (see the module docstring for its sections)."""
    out = io.StringIO()
    _stream(out, _page(frames, **options))
    return out.getvalue()


def write_html_report(frames: Frames, path: Path, **options: Unpack[ReportOptions]) -> Path:
    """Write the self-contained HTML report to ``path`` (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page = _page(frames, **options)
    # written beside and renamed: a killed process leaves the old report, never an empty one
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", encoding="utf-8") as out:
        _stream(out, page)
    partial.replace(path)
    return path


def _stream(out: TextIO, page: dict[str, Any]) -> None:
    """Write the page piece by piece, never holding the whole text, with plotly.js (4.8 MB)
    copied from its file in place of a marker rather than read into a string, marked safe (a
    copy) and encoded (another)."""
    for piece in _template("report.html.j2").generate(page, plotly_js=_PLOTLY_MARK):
        if _PLOTLY_MARK in piece:
            before, after = piece.split(_PLOTLY_MARK, 1)
            out.write(before)
            _copy_plotly_js(out)
            out.write(after)
        else:
            out.write(piece)


#: Stands for plotly.js in the streamed page: starts with ``<``, so no escaped text can hold it.
_PLOTLY_MARK = "<!--therasim:plotly.js-->"


def _copy_plotly_js(out: TextIO) -> None:
    """Write plotly.js, the text ``plotly.offline.get_plotlyjs()`` returns, a chunk at a time."""
    source = importlib.resources.files("plotly").joinpath("package_data", "plotly.min.js")
    with (
        importlib.resources.as_file(source) as file,
        file.open(encoding="utf-8", newline="") as js,
    ):
        while chunk := js.read(1 << 20):
            out.write(chunk)
