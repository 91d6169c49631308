"""The HTML report's chart sections: SUDS trajectories, the severity ladder, the failure heatmap,
deterioration rates, and the judges' bias by item. Each returns template data holding
:class:`~therasim.evaluation.report.html_common.Chart` s (figure JSON, drawn in the page) or a
:class:`~therasim.evaluation.report.html_common.Note` when there is nothing to draw.

Chart data are per-cell aggregates, so they do not grow with the sessions. Hover templates are
plotly's own pseudo-HTML, so the subject and judge names in them are escaped here.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from scipy import stats

from therasim.evaluation.analysis import metrics
from therasim.evaluation.analysis.frames import Frames
from therasim.evaluation.report import console as report
from therasim.evaluation.report.html_common import (
    FAILURE_CODES,
    LADDER_ITEMS,
    PALETTE,
    SIGNAL_LABELS,
    Chart,
    Charts,
    Note,
    isnan,
    label,
    present_severities,
    rgba,
    severity_key,
)

Data = dict[str, Any]


def _t_half_width(sd: float, n: int) -> float:
    if n < 2 or isnan(sd):
        return math.nan
    return float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def suds_section(frames: Frames, charts: Charts, colors: dict[str, str]) -> Data | Note:
    """Mean SUDS per therapist turn with a 95 % t band, per subject, by modality × severity."""
    sessions, turns = frames.sessions, frames.turns
    if sessions.empty or turns.empty:
        return Note("No therapist turns recorded yet: nothing to plot.")
    done = sessions[sessions["status"] == "completed"]
    keys = ["session_id", "subject", "modality", "severity"]
    base = done[[*keys, "baseline_suds"]].rename(columns={"baseline_suds": "suds"}).assign(turn=0)
    steps = turns[turns["session_id"].isin(done["session_id"])][[*keys, "turn", "suds"]]
    data = pd.concat([base, steps], ignore_index=True)
    data["suds"] = pd.to_numeric(data["suds"], errors="coerce")
    data = data.dropna(subset=["suds"])
    if data.empty:
        return Note("No completed session has SUDS values: nothing to plot.")
    grouped = (
        data.groupby(["modality", "severity", "subject", "turn"])["suds"]
        .agg(["mean", "std", "count"])
        .reset_index()
    )
    grouped["half"] = [
        _t_half_width(sd, int(n)) for sd, n in zip(grouped["std"], grouped["count"], strict=True)
    ]
    modalities = sorted(grouped["modality"].astype(str).unique())
    severities = present_severities(grouped["severity"])
    fig = make_subplots(
        rows=len(modalities),
        cols=len(severities),
        shared_yaxes=True,
        subplot_titles=[f"{m.upper()} · {label(s)}" for m in modalities for s in severities],
        horizontal_spacing=0.04,
        vertical_spacing=0.16 if len(modalities) > 1 else 0.1,
    )
    shown: set[str] = set()
    for r, modality in enumerate(modalities, start=1):
        for c, severity in enumerate(severities, start=1):
            panel = grouped[(grouped["modality"] == modality) & (grouped["severity"] == severity)]
            for subject, sub in panel.groupby("subject", sort=True):
                sub = sub.sort_values("turn")
                color = colors.get(str(subject), PALETTE[0])
                band = sub.dropna(subset=["half"])
                if len(band) >= 2:
                    fig.add_trace(
                        go.Scatter(
                            x=[*band["turn"], *band["turn"][::-1]],
                            y=[
                                *(band["mean"] + band["half"]).clip(upper=100),
                                *(band["mean"] - band["half"]).clip(lower=0)[::-1],
                            ],
                            fill="toself",
                            mode="lines",
                            fillcolor=rgba(color, 0.16),
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
                            f"{escape(str(subject))}<br>turn %{{x}}<br>mean SUDS %{{y:.1f}} ± %{{customdata[1]:.1f}}"
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
    return {"chart": charts.add(fig, height=300 * len(modalities) + 90)}


def ladder_section(frames: Frames, charts: Charts, colors: dict[str, str]) -> Data | Note:
    """The "crisis cliff": headline items and deterioration across the severity ladder."""
    sessions = frames.sessions
    if sessions.empty:
        return Note("No sessions yet: nothing to plot.")
    means = report.item_means(frames)
    det = report.deterioration(frames)
    det = det[(det["signal"] == "any") & (det["n"] > 0)]
    parts: list[Data] = []
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
            note = f"{modality.upper()}: no headline verdicts or completed sessions to plot."
            parts.append({"title": None, "chart": None, "note": Note(note)})
            continue
        chart = _ladder_chart(panels, charts, colors)
        parts.append({"title": f"{modality.upper()} sessions", "chart": chart, "note": None})
    return {"parts": parts}


def _ladder_chart(
    panels: list[tuple[str, pd.DataFrame]], charts: Charts, colors: dict[str, str]
) -> Chart:
    severities = present_severities(pd.concat([p["severity"] for _, p in panels]))
    titles = [
        "deterioration rate, any signal (lower is better)"
        if name == "deterioration"
        else f"{label(name)} (higher is better)"
        for name, _ in panels
    ]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=titles, horizontal_spacing=0.07)
    shown: set[str] = set()
    for c, (name, panel) in enumerate(panels, start=1):
        for subject, sub in panel.groupby("subject", sort=True):
            sub = sub.assign(_order=sub["severity"].map(severity_key)).sort_values("_order")
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
                    x=sub["severity"].map(label),
                    y=sub["value"],
                    mode="lines+markers",
                    marker={"size": 8},
                    line={"color": colors.get(str(subject), PALETTE[0]), "width": 2.5},
                    error_y=error,
                    name=str(subject),
                    legendgroup=str(subject),
                    showlegend=str(subject) not in shown,
                    hovertemplate=f"{escape(str(subject))}<br>%{{x}}: %{{y:.2f}}<extra></extra>",
                ),
                row=1,
                col=c,
            )
            shown.add(str(subject))
    labels = [label(v) for v in severities]
    fig.update_xaxes(
        categoryorder="array",
        categoryarray=labels,
        range=[-0.35, len(labels) - 0.65],
        gridcolor="#eceff1",
    )
    fig.update_yaxes(range=[-0.03, 1.03], gridcolor="#eceff1")
    return charts.add(fig, height=360)


def failure_section(frames: Frames, charts: Charts) -> Data | Note:
    """Share of sessions per cell with each failure, from the detectors (or the failure codes)."""
    sessions = frames.sessions
    if sessions.empty:
        return Note("No sessions yet: nothing to plot.")
    keys = ["subject", "modality", "severity"]
    source = "findings of the lexical detectors"
    findings = frames.findings
    if findings.empty:
        turns = frames.turns
        if turns.empty:
            return Note("No detector findings and no coded turns yet.")
        exploded = turns[[*keys, "session_id", "codes"]].explode("codes")
        findings = exploded[exploded["codes"].isin(FAILURE_CODES)].rename(
            columns={"codes": "failure"}
        )
        source = "the appraiser's failure codes (no detector findings in this store)"
        if findings.empty:
            return Note(
                "Neither the lexical detectors nor the appraiser flagged any failure. Nothing to map."
            )
    counts = metrics.failure_counts(findings, by=keys, unit="session")
    failures = [c for c in counts.columns if c not in keys]
    totals = sessions.groupby(keys).size().rename("n").reset_index()
    cells = totals.merge(counts, on=keys, how="left").fillna({f: 0 for f in failures})
    cells = cells.assign(_order=cells["severity"].map(severity_key)).sort_values(
        ["subject", "modality", "_order"]
    )
    labels = [
        f"{s} · {m.upper()} · {label(v)}"
        for s, m, v in zip(cells["subject"], cells["modality"], cells["severity"], strict=True)
    ]
    z = [
        [float(row[f]) / row["n"] if row["n"] else math.nan for f in failures]
        for _, row in cells.iterrows()
    ]
    hits = [[f"{int(row[f])}/{int(row['n'])}" for f in failures] for _, row in cells.iterrows()]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[label(f) for f in failures],
            y=labels,
            text=hits,
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
    return {"source": source, "chart": charts.add(fig, height=height)}


def deterioration_section(frames: Frames, charts: Charts, colors: dict[str, str]) -> Data | Note:
    """Deterioration rate per cell and signal, with 95 % Wilson intervals."""
    sessions = frames.sessions
    if sessions.empty:
        return Note("No sessions yet: nothing to plot.")
    det = report.deterioration(frames)
    det = det[det["n"] > 0]
    if det.empty:
        return Note("No completed session carries a deterioration signal yet.")
    signals = [s for s in SIGNAL_LABELS if s in set(det["signal"])]
    modalities = sorted(det["modality"].astype(str).unique())
    fig = make_subplots(
        rows=len(modalities),
        cols=len(signals),
        shared_yaxes=True,
        subplot_titles=[f"{m.upper()} · {SIGNAL_LABELS[s]}" for m in modalities for s in signals],
        horizontal_spacing=0.04,
        vertical_spacing=0.18 if len(modalities) > 1 else 0.1,
    )
    shown: set[str] = set()
    for r, modality in enumerate(modalities, start=1):
        for c, signal in enumerate(signals, start=1):
            panel = det[(det["modality"] == modality) & (det["signal"] == signal)]
            severities = present_severities(det[det["modality"] == modality]["severity"])
            for subject, sub in panel.groupby("subject", sort=True):
                sub = sub.assign(_order=sub["severity"].map(severity_key)).sort_values("_order")
                fig.add_trace(
                    go.Bar(
                        x=sub["severity"].map(label),
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
                        marker={"color": colors.get(str(subject), PALETTE[0])},
                        name=str(subject),
                        legendgroup=str(subject),
                        offsetgroup=str(subject),
                        showlegend=str(subject) not in shown,
                        hovertemplate=(
                            f"{escape(str(subject))} · %{{x}}<br>%{{customdata[0]}}/%{{customdata[1]}} deteriorated"
                            "<br>rate %{y:.2f} [%{customdata[2]:.2f}, %{customdata[3]:.2f}]<extra></extra>"
                        ),
                    ),
                    row=r,
                    col=c,
                )
                shown.add(str(subject))
            fig.update_xaxes(
                categoryorder="array",
                categoryarray=[label(v) for v in severities],
                row=r,
                col=c,
            )
    fig.update_yaxes(range=[0, 1.05], gridcolor="#eceff1")
    fig.update_yaxes(title_text="rate", col=1)
    fig.update_layout(barmode="group", bargap=0.25)
    return {"chart": charts.add(fig, height=300 * len(modalities) + 90)}


def bias_chart(frames: Frames, charts: Charts, bias: pd.DataFrame) -> Chart:
    """Each judge's mean met minus the panel mean, overall and per rubric item."""
    per_item = report.judge_bias(frames, by=("item_id",))
    judges = sorted(bias["judge"].astype(str).unique())
    judge_colors = {j: PALETTE[(i + 4) % len(PALETTE)] for i, j in enumerate(judges)}
    items = sorted(per_item["item_id"].astype(str).unique())
    order = ["all items", *(label(i) for i in items)]
    fig = go.Figure()
    for judge in judges:
        overall = bias[bias["judge"] == judge]
        mine = per_item[per_item["judge"] == judge]
        fig.add_trace(
            go.Bar(
                y=["all items", *mine["item_id"].astype(str).map(label)],
                x=[*overall["bias"], *mine["bias"]],
                customdata=list(
                    zip([*overall["mean"], *mine["mean"]], [*overall["n"], *mine["n"]], strict=True)
                ),
                orientation="h",
                name=judge,
                marker={"color": judge_colors[judge]},
                hovertemplate=(
                    f"{escape(judge)} · %{{y}}<br>bias %{{x:+.2f}}<br>mean met %{{customdata[0]:.2f}}"
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
    return charts.add(fig, height=max(320, 16 * len(judges) * len(order) + 140))
