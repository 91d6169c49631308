"""The HTML report's single-turn battery section (``therasim.evaluation.analysis.battery``): the
"crisis cliff" — each subject's mean appropriateness across the severity ladder, one chart per
modality — and the failure rates per cell. Shown only when the run holds battery answers.

An item's appropriateness is :func:`~therasim.evaluation.analysis.battery.item_frame`'s ``score``
(the mean ``met`` over the judges and the item's ``good`` rubric items); a point is the mean over
a cell's items with its 95 % interval (``mean_interval``: Wilson for 0/1 scores, else t).
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from therasim.evaluation.analysis.battery import (
    CELL,
    failure_table,
    item_frame,
    mean_interval,
    rubric_table,
)
from therasim.evaluation.analysis.frames import Frames
from therasim.evaluation.report.html_common import (
    PALETTE,
    Chart,
    Charts,
    Note,
    Score,
    Table,
    isnan,
    label,
    present_severities,
    score,
    severity_key,
)

Data = dict[str, Any]

__all__ = ["battery_section", "cliff_points"]


def cliff_points(items: pd.DataFrame) -> pd.DataFrame:
    """Per subject × modality × severity: ``mean``, ``ci_low``, ``ci_high`` and ``n`` (scored
    items) of the battery items' scores, severities in ladder order."""
    cols = [*CELL, "mean", "ci_low", "ci_high", "n"]
    scored = items.dropna(subset=["score"]) if not items.empty else items
    if scored.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for cell, sub in scored.groupby(list(CELL), sort=False):
        mean, low, high = mean_interval(sub["score"].astype(float).tolist())
        rows.append({**dict(zip(CELL, cell, strict=True)), "mean": mean, "ci_low": low,
                     "ci_high": high, "n": len(sub)})  # fmt: skip
    out = pd.DataFrame(rows, columns=cols)
    out["_order"] = out["severity"].map(severity_key)
    return out.sort_values(["modality", "subject", "_order"]).drop(columns="_order")


def _cliff_chart(points: pd.DataFrame, charts: Charts, colors: Mapping[str, str]) -> Chart:
    labels = [label(v) for v in present_severities(points["severity"])]
    fig = go.Figure()
    for subject, sub in points.groupby("subject", sort=True):
        fig.add_trace(
            go.Scatter(
                x=sub["severity"].map(label).tolist(),
                y=sub["mean"].tolist(),
                customdata=list(zip(sub["n"], sub["ci_low"], sub["ci_high"], strict=True)),
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": (sub["ci_high"] - sub["mean"]).tolist(),
                    "arrayminus": (sub["mean"] - sub["ci_low"]).tolist(),
                    "thickness": 1.2,
                    "width": 4,
                },
                mode="lines+markers",
                marker={"size": 8},
                line={"color": colors.get(str(subject), PALETTE[0]), "width": 2.5},
                name=str(subject),
                hovertemplate=(
                    f"{escape(str(subject))}<br>%{{x}}: %{{y:.2f}}"
                    " [%{customdata[1]:.2f}, %{customdata[2]:.2f}]<br>n = %{customdata[0]} items"
                    "<extra></extra>"
                ),
            )
        )
    fig.update_xaxes(
        title_text="severity",
        categoryorder="array",
        categoryarray=labels,
        range=[-0.35, len(labels) - 0.65],
        gridcolor="#eceff1",
    )
    fig.update_yaxes(title_text="mean appropriateness", range=[-0.03, 1.03], gridcolor="#eceff1")
    return charts.add(fig, height=360)


def _failure_table(failures: pd.DataFrame) -> Table | None:
    """Cells (rows) × failures (columns): items with the failure of the answered ones, tinted
    by rate (red when high)."""
    if failures.empty:
        return None
    names = list(dict.fromkeys(failures["failure"].astype(str)))
    columns: list[tuple[str, bool]] = [(c, False) for c in CELL] + [("n", True)]
    columns += [(label(n), True) for n in names]
    rows: list[list[str | Score]] = []
    for cell, sub in failures.groupby(list(CELL), sort=False):
        by = sub.assign(failure=sub["failure"].astype(str)).set_index("failure")
        row: list[str | Score] = [str(cell[0]), str(cell[1]).upper(), label(cell[2])]
        row.append(str(int(sub["n"].max())))
        for name in names:
            if name not in by.index:
                row.append(Score("–", None))
                continue
            rate = float(by.at[name, "rate"])
            chip = score(rate, higher_is_better=False)
            text = f"{int(by.at[name, 'count'])}/{int(by.at[name, 'n'])}"
            row.append(Score(text, chip.hue) if not isnan(rate) else Score(text, None))
        rows.append(row)
    return Table(columns, rows, "data compact")


def _rubric_table(rubric: pd.DataFrame) -> Table | None:
    """Cells × the ``good`` rubric items: the mean over battery items [95 % interval]."""
    good = rubric[rubric["polarity"] == "good"] if not rubric.empty else rubric
    if good.empty:
        return None
    items = list(dict.fromkeys(good["item_id"].astype(str)))
    columns: list[tuple[str, bool]] = [(c, False) for c in CELL] + [("n", True)]
    columns += [(label(i), True) for i in items]
    rows: list[list[str | Score]] = []
    for cell, sub in good.groupby(list(CELL), sort=False):
        by = sub.assign(item_id=sub["item_id"].astype(str)).set_index("item_id")
        row: list[str | Score] = [str(cell[0]), str(cell[1]).upper(), label(cell[2])]
        row.append(str(int(sub["n"].max())))
        row += [
            score(float(by.at[i, "mean"])) if i in by.index else Score("–", None) for i in items
        ]
        rows.append(row)
    return Table(columns, rows, "data compact")


def battery_section(
    battery: Frames, charts: Charts, colors: Mapping[str, str], polarity: Mapping[str, str]
) -> Data | Note:
    """The crisis-cliff chart per modality, the failure-rate table and the rubric means."""
    items = item_frame(battery, polarity)
    if items.empty:
        return Note("The run holds no battery answers.")
    points = cliff_points(items)
    parts: list[Data] = []
    for modality in sorted(items["modality"].astype(str).unique()):
        sub = points[points["modality"] == modality]
        if sub.empty:
            note = f"{modality.upper()}: no judged battery answers to plot."
            parts.append({"title": None, "chart": None, "note": Note(note)})
            continue
        chart = _cliff_chart(sub, charts, colors)
        parts.append({"title": f"{modality.upper()} items", "chart": chart, "note": None})
    return {
        "items": len(items),
        "subjects": items["subject"].nunique(),
        "parts": parts,
        "failures": _failure_table(failure_table(battery)),
        "rubric": _rubric_table(rubric_table(battery, polarity)),
    }
