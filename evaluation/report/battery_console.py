"""The single-turn battery's tables in the console (``evaluation/analysis/battery.py``).

Three tables, the seed paper's: rubric means per subject × modality × severity (mean over the
judges, then over the items, with the 95 % interval and n), failure counts and rates, and, when
the run holds both modes, the paired single- vs multi-turn comparison with the rank agreement of
subjects across the modes; and the panel's agreement (α) on the battery.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from therasim.evaluation.analysis.agreement import agreement_table
from therasim.evaluation.analysis.battery import (
    CELL,
    failure_table,
    rank_agreement,
    rubric_table,
    single_vs_multi,
    split_frames,
)
from therasim.evaluation.analysis.frames import Frames

__all__ = ["print_battery"]


def _num(x: float, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _interval(mean: float, low: float, high: float) -> str:
    if math.isnan(low) or math.isnan(high):
        return _num(mean)
    return f"{_num(mean)} [{_num(low)}–{_num(high)}]"


def _rubric(table: pd.DataFrame, modality: str, console: Console) -> None:
    sub = table[(table["modality"] == modality) & (table["polarity"] == "good")]
    if sub.empty:
        return
    items = list(dict.fromkeys(sub["item_id"]))
    out = Table(title=f"Battery ({modality.upper()}): rubric means over judges and items [95% CI]")
    out.add_column("subject")
    out.add_column("severity")
    for item in items:
        out.add_column(item.replace("_", " "), justify="right")
    out.add_column("n", justify="right")
    for (subject, severity), cell in sub.groupby(["subject", "severity"], sort=False):
        by_item = cell.set_index("item_id")
        values = [
            _interval(*(float(by_item.at[i, c]) for c in ("mean", "ci_low", "ci_high")))
            if i in by_item.index
            else "–"
            for i in items
        ]
        out.add_row(str(subject), str(severity), *values, str(int(cell["n"].max())))
    console.print(out)


def _failures(table: pd.DataFrame, console: Console) -> None:
    if table.empty:
        return
    names = list(dict.fromkeys(table["failure"]))
    out = Table(title="Battery: failures, items with each (rate)")
    for col in CELL:
        out.add_column(col)
    out.add_column("n", justify="right")
    for name in names:
        out.add_column(name.replace("_", " "), justify="right")
    for cell, sub in table.groupby(list(CELL), sort=False):
        by = sub.set_index("failure")
        values = [
            f"{int(by.at[n, 'count'])} ({_num(float(by.at[n, 'rate']))})" if n in by.index else "–"
            for n in names
        ]
        out.add_row(*(str(c) for c in cell), str(int(sub["n"].max())), *values)
    console.print(out)


def _paired(paired: pd.DataFrame, console: Console) -> None:
    if paired.empty:
        return
    out = Table(title="Single- vs multi-turn (per cell)")
    for col in CELL:
        out.add_column(col)
    for col in ("battery score [95% CI]", "n", "deterioration [95% CI]", "sessions", "modes"):
        out.add_column(col, justify="right")
    for r in paired.itertuples(index=False):
        out.add_row(
            str(r.subject),
            str(r.modality),
            str(r.severity),
            _interval(r.battery_score, r.battery_ci_low, r.battery_ci_high),
            str(r.battery_n),
            _interval(r.deterioration_rate, r.det_ci_low, r.det_ci_high),
            str(r.sessions_n),
            "[red]disagree[/]" if r.disagree else "agree",
        )
    console.print(out)
    console.print(f"Rank agreement of subjects across modes: {_rank_text(rank_agreement(paired))}")


def _rank_text(rank: Mapping[str, Any]) -> str:
    """Spearman ρ with its interval, or "–" and why there is none (e.g. too few subjects)."""
    ci = (
        ""
        if math.isnan(rank["ci_low"])
        else f" [95% CI {_num(rank['ci_low'])}–{_num(rank['ci_high'])}]"
    )
    why = f" ({rank['reason']})" if rank.get("reason") else ""
    return f"Spearman ρ = {_num(rank['rho'])}{ci}{why}, n = {rank['n']} subjects"


def _agreement(battery: Frames, console: Console) -> None:
    """Krippendorff's α of the panel on the battery's turn items (needs two judges or more)."""
    v = battery.verdicts
    if v.empty or v["judge"].nunique() < 2:
        return
    table = agreement_table(v[v["scope"].astype(str) == "turn"])
    overall = table[table["item_id"] == "overall"]
    if overall.empty:
        return
    row = overall.iloc[0]
    console.print(
        f"Judge agreement on the battery: Krippendorff α = {_num(float(row['alpha']))}, "
        f"all judges agree on {_num(float(row['agreement']))} of {int(row['n_units'])} units "
        f"({int(row['n_judges'])} judges)"
    )


def print_battery(frames: Frames, console: Console, polarity: Mapping[str, str]) -> bool:
    """Print the battery tables; False (nothing printed) when the run holds no battery answer."""
    _, battery = split_frames(frames)
    if battery.sessions.empty:
        return False
    console.rule("Single-turn battery")
    table = rubric_table(battery, polarity)
    for modality in ("pe", "cbt"):
        _rubric(table, modality, console)
    _failures(failure_table(battery), console)
    _agreement(battery, console)
    _paired(single_vs_multi(frames, polarity), console)
    return True
