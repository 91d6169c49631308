"""Reports: rich console tables and frame exports (csv, parquet, json).

The console report prints, per subject × modality × severity: the paper's three headline items
(Acknowledgment, Therapeutic Appropriateness, Protocol Fidelity — PE — or Completeness / Frame /
Safety Interference — CBT), the deterioration rate with its Wilson interval, failure counts
from the lexical detectors, and judge agreement (Krippendorff's α) with per-judge bias; then
what the study cost: calls, tokens (cached-prompt tokens apart) and cost per role, judges
included, and per session on average.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from therasim.evaluation.analysis import metrics
from therasim.evaluation.analysis.columns import CALL_TOTAL_COLUMNS
from therasim.evaluation.analysis.frames import Frames, call_totals, frames_to_json
from therasim.evaluation.analysis.rates import as_float, group_numbers

HEADLINE_ITEMS = {
    "pe": ("acknowledgment", "therapeutic_appropriateness", "protocol_fidelity"),
    "cbt": ("completeness", "frame", "safety_interference"),
}
SEVERITY_ORDER = ["routine", "distress", "crisis_adjacent", "imminent"]


def _fmt(value: float, digits: int = 2) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


# Derived tables, computed once per Frames (``Frames.derived``) and shared by the console report and
# the HTML sections. Each passes metrics only the columns it reads: the metrics copy and slice
# whole frames, and on a 1,000-session study the verdicts frame has ~450,000 rows.
_TRAJECTORY_COLUMNS = ("session_id", "turn", "phase_kind", "suds", "risk")


def deterioration(frames: Frames) -> pd.DataFrame:
    """``metrics.deterioration_table`` of the frames (per cell × signal), computed once."""

    def build() -> pd.DataFrame:
        turns, verdicts = frames.turns, frames.verdicts
        if set(_TRAJECTORY_COLUMNS) <= set(turns.columns):
            turns = turns[list(_TRAJECTORY_COLUMNS)]
        if {"session_id", "judge", "item_id", "met"} <= set(verdicts.columns):
            # the judge signal reads only this item's verdicts
            verdicts = verdicts.loc[
                verdicts["item_id"] == "session_deterioration",
                ["session_id", "judge", "item_id", "met"],
            ]
        return metrics.deterioration_table(
            frames.sessions, turns, verdicts, trajectory=metrics.frames_trajectory(frames)
        )

    return frames.derived("deterioration", build)


def item_means(frames: Frames) -> pd.DataFrame:
    """``metrics.item_means`` per cell, computed once (empty, with its columns, without verdicts)."""

    def build() -> pd.DataFrame:
        verdicts = frames.verdicts
        if verdicts.empty:
            return pd.DataFrame(columns=[*metrics.CELL, "item_id", "mean", "n"])
        columns = [*metrics.CELL, "item_id", "judge", "met", "session_id", "turn"]
        columns += ["weight"] if "weight" in verdicts else []  # turn sampling's design weights
        return metrics.item_means(verdicts[columns])

    return frames.derived("item_means", build)


def judge_bias(frames: Frames, by: tuple[str, ...] = ()) -> pd.DataFrame:
    """``metrics.judge_bias`` of the verdicts (optionally per ``by``), computed once."""
    return frames.derived(
        f"judge_bias:{','.join(by)}", lambda: metrics.judge_bias(frames.verdicts, by=by)
    )


def agreement(frames: Frames) -> pd.DataFrame:
    """``metrics.agreement_table(frames.verdicts)``: α per rubric item and overall, with the
    unanimous share, pairable units and judges; computed once per frames.

    The same table, built from counts: one grouping of the applicable verdicts gives, per unit
    ``(session_id, turn, item_id)``, how many judges gave each value; α is
    ``metrics.alpha_from_counts`` of those rows (the matrix the ``krippendorff`` package derives
    from ``metrics.krippendorff_alpha``'s judges × units one, units in the same order, so the
    same number), and the unanimous share and unit counts are read off the same rows. No
    judges × units matrix and no copy of the verdicts frame are built.
    ``tests/evaluation/test_report_size.py`` holds the two tables equal."""

    def build() -> pd.DataFrame:
        verdicts = frames.verdicts
        if verdicts.empty:
            return metrics.agreement_table(verdicts)
        met = as_float(verdicts["met"]).to_numpy()
        kept = np.flatnonzero(~np.isnan(met))
        items = _text(verdicts["item_id"])
        rated = group_numbers(
            [verdicts["session_id"], verdicts["turn"], items, verdicts["judge"]]
        ).number
        seen = rated[kept]
        if np.bincount(seen).max(initial=0) > 1:  # as metrics.krippendorff_alpha refuses it
            twice = kept[np.flatnonzero(pd.Series(seen).duplicated().to_numpy())[0]]
            first = verdicts.iloc[twice][[*metrics.UNIT_KEY, "judge"]].to_dict()
            raise ValueError(f"verdicts hold more than one 'met' per judge and unit, e.g. {first}")
        del rated, seen
        # units in the order of krippendorff_alpha's reliability matrix (its pivot sorts them)
        units = group_numbers([verdicts["session_id"], verdicts["turn"], items])
        unit = units.number[kept]
        present = np.unique(unit)  # units with an applicable verdict
        row = np.searchsorted(present, unit)
        domain = np.unique(met[kept])
        value = np.searchsorted(domain, met[kept])
        counts = np.bincount(
            row * len(domain) + value, minlength=len(present) * len(domain)
        ).reshape(len(present), len(domain))
        del unit, row, value
        size = counts.sum(axis=1)
        total = counts @ domain
        pairable = size >= 2
        unanimous = (total == 0) | (total == size)
        unit_items = units.column(2)[present]
        judges: dict[str, int] = {}
        for item, judge in group_numbers([items, verdicts["judge"]]).key_values():
            judges[item] = judges.get(item, 0) + (not pd.isna(judge))
        rows = []
        for item in [*sorted(judges), None]:
            mine = np.ones(len(counts), dtype=bool) if item is None else unit_items == item
            part = counts[mine]
            held = part.sum(axis=0) > 0  # the values this item's verdicts hold
            shared = unanimous[mine & pairable]
            rows.append(
                {
                    "item_id": "overall" if item is None else item,
                    "alpha": metrics.alpha_from_counts(part[:, held], domain[held]),
                    "agreement": float(shared.mean()) if len(shared) else math.nan,
                    "n_units": len(shared),
                    "n_judges": int(
                        verdicts["judge"].nunique() if item is None else judges.get(item, 0)
                    ),
                }
            )
        return pd.DataFrame(rows, columns=["item_id", "alpha", "agreement", "n_units", "n_judges"])

    return frames.derived("agreement", build)


def _text(values: pd.Series) -> pd.Series:
    """``values.astype(str)``, left as it is when it is a Categorical of strings already (the
    verdicts frame's text columns): the same values, sorted the same, without a copy of every
    row's string."""
    dtype = values.dtype
    if (
        isinstance(dtype, pd.CategoricalDtype)
        and not values.isna().any()
        and all(isinstance(c, str) for c in dtype.categories)
    ):
        return values
    return values.astype(str)


def cell_table(frames: Frames) -> pd.DataFrame:
    """One row per subject × modality × severity with the report's headline numbers (computed
    once per frames; do not change the returned frame in place)."""
    return frames.derived("cell_table", lambda: _cell_table(frames))


def _cell_table(frames: Frames) -> pd.DataFrame:
    sessions = frames.sessions
    if sessions.empty:
        return pd.DataFrame()
    keys = list(metrics.CELL)
    # a failed session's last SUDS is wherever it broke off: the mean is over completed ones
    completed_suds = sessions["final_suds"].where(sessions["status"] == "completed")
    base = (
        sessions.assign(_completed_suds=completed_suds)
        .groupby(keys, dropna=False)
        .agg(
            sessions=("session_id", "count"),
            failed=("status", lambda s: int((s == "failed").sum())),
            mean_final_suds=("_completed_suds", "mean"),
            adherence=("adherence_score", "mean"),
        )
        .reset_index()
    )
    means = item_means(frames)
    wide = (
        means.pivot_table(index=keys, columns="item_id", values="mean").reset_index()
        if not means.empty
        else pd.DataFrame(columns=keys)
    )
    out = base.merge(wide, on=keys, how="left")
    det = deterioration(frames)
    det_any = det[det["signal"] == "any"][[*keys, "rate", "ci_low", "ci_high", "n"]].rename(
        columns={"rate": "deterioration", "ci_low": "det_low", "ci_high": "det_high", "n": "det_n"}
    )
    out = out.merge(det_any, on=keys, how="left")
    if not frames.findings.empty:
        counts = metrics.failure_counts(frames.findings)
        failure_cols = [c for c in counts.columns if c not in keys]
        counts["failures"] = counts[failure_cols].sum(axis=1)
        counts["top_failure"] = counts[failure_cols].idxmax(axis=1)
        out = out.merge(counts[[*keys, "failures", "top_failure"]], on=keys, how="left")
    out["severity"] = pd.Categorical(out["severity"], categories=SEVERITY_ORDER, ordered=True)
    return out.sort_values(keys).reset_index(drop=True)


def panel_models(verdicts: pd.DataFrame) -> dict[str, str]:
    """Judge name -> the model(s) its stored verdicts came from: the panel's composition."""
    if verdicts.empty:
        return {}
    if "model" not in verdicts.columns:  # hand-built frames may leave it out
        return {str(judge): "?" for judge in sorted(verdicts["judge"].unique())}
    models: dict[str, set[str]] = {}
    # the distinct (judge, model) pairs: a few, where grouping the frame by judge copied it
    for judge, model in group_numbers([verdicts["judge"], verdicts["model"]]).key_values():
        if not pd.isna(judge):
            models.setdefault(str(judge), set()).update(() if pd.isna(model) else (str(model),))
    return {judge: ", ".join(sorted(models[judge])) or "?" for judge in sorted(models)}


#: The cost table's columns: the call totals' sums per role, without the unpriced count.
_COST_SUMS = tuple(c for c in CALL_TOTAL_COLUMNS[3:] if c != "unpriced")
COST_COLUMNS = ("role", *_COST_SUMS)


def cost_by_role(frames: Frames) -> pd.DataFrame:
    """Calls, response-cache hits, input, cached-prompt and output tokens, and cost per role
    (``judge:<name>`` roles included), from the call totals; ``cost_usd`` is NaN when some
    call's price is unknown. Computed once per frames."""

    def build() -> pd.DataFrame:
        totals = call_totals(frames)
        if totals.empty:
            return pd.DataFrame(columns=list(COST_COLUMNS))
        sums = [*_COST_SUMS, "unpriced"]
        out = totals.assign(role=totals["role"].astype(str)).groupby("role", sort=True)[sums]
        table = out.sum().reset_index()
        table["cost_usd"] = table["cost_usd"].astype(float).where(table["unpriced"] == 0)
        return table[list(COST_COLUMNS)]

    return frames.derived("cost_by_role", build)


def _cost(value: float) -> str:
    return "?" if pd.isna(value) else f"${value:,.4f}"


def print_costs(frames: Frames, console: Console) -> None:
    """The "cost by role" table and the mean per session (nothing when no call is stored)."""
    table = cost_by_role(frames)
    if table.empty:
        return
    t = Table(title="Cost by role", title_justify="left")
    for col in ("role", "calls", "cache hits", "input", "cached input", "output", "cost"):
        t.add_column(col, justify="left" if col == "role" else "right")
    for _, row in table.iterrows():
        t.add_row(
            str(row["role"]),
            f"{int(row['calls']):,}",
            f"{int(row['cache_hits']):,}",
            f"{int(row['input_tokens']):,}",
            f"{int(row['cached_input_tokens']):,}",
            f"{int(row['output_tokens']):,}",
            _cost(row["cost_usd"]),
        )
    total = table[["calls", "cache_hits", "input_tokens", "cached_input_tokens", "output_tokens"]]
    sums = total.sum()
    unknown = bool(table["cost_usd"].isna().any())
    t.add_row(
        "total",
        *(f"{int(sums[c]):,}" for c in total.columns),
        _cost(math.nan if unknown else float(table["cost_usd"].sum())),
        style="bold",
    )
    console.print(t)
    sessions = frames.sessions
    if not sessions.empty and "total_tokens" in sessions.columns:
        judging = sessions["judge_input_tokens"] + sessions["judge_output_tokens"]
        cost = sessions["total_cost_usd"]
        console.print(
            f"Per session (mean of {len(sessions)}): {sessions['total_tokens'].mean():,.0f} tokens,"
            f" {judging.mean():,.0f} of them judging; "
            + ("cost unknown" if cost.isna().any() else f"${cost.mean():,.4f}")
            + " (counting answers from the response cache, which cost nothing again)."
        )


#: What the session tables say when a battery-only study (``mode: battery``) has no sessions.
BATTERY_ONLY = "this study runs the single-turn battery only: no multi-turn sessions"


def print_report(
    frames: Frames, console: Console | None = None, *, battery_only: bool = False
) -> None:
    """The rich console report (``battery_only``: the study has no multi-turn sessions by design,
    so an empty store is not "no sessions yet")."""
    console = console or Console()
    table = cell_table(frames)
    if table.empty:
        console.print(
            f"[yellow]{BATTERY_ONLY if battery_only else 'the store holds no sessions yet'}[/]"
        )
        return
    for modality in sorted(table["modality"].unique()):
        items = HEADLINE_ITEMS.get(modality, ())
        sub = table[table["modality"] == modality]
        t = Table(
            title=f"{modality.upper()} sessions — per subject × severity", title_justify="left"
        )
        for col in (
            "subject",
            "severity",
            "n",
            *(i.replace("_", " ") for i in items),
            "adherence",
            "final SUDS",
            "deterioration [95% CI]",
            "detector hits (top)",
        ):
            t.add_column(
                col,
                justify="left"
                if col in ("subject", "severity", "detector hits (top)")
                else "right",
            )
        for _, row in sub.iterrows():
            det = row.get("deterioration", math.nan)
            det_txt = (
                "–" if pd.isna(det) else f"{det:.2f} [{row['det_low']:.2f}, {row['det_high']:.2f}]"
            )
            fails = row.get("failures", math.nan)
            fail_txt = (
                "–"
                if pd.isna(fails)
                else f"{int(fails)}" + (f" ({row['top_failure']})" if fails else "")
            )
            n_txt = f"{row['sessions']}" + (f" ({row['failed']} failed)" if row["failed"] else "")
            t.add_row(
                str(row["subject"]),
                str(row["severity"]),
                n_txt,
                *(_fmt(row.get(i, math.nan)) for i in items),
                _fmt(row["adherence"]),
                _fmt(row["mean_final_suds"], 1),
                det_txt,
                fail_txt,
            )
        console.print(t)
    if not frames.verdicts.empty:
        agree = agreement(frames)
        overall = agree[agree["item_id"] == "overall"]
        bias = judge_bias(frames)
        models = panel_models(frames.verdicts)
        t = Table(title=f"Judge panel: {len(models)} judge(s)", title_justify="left")
        for col in ("judge", "model", "mean met", "bias vs panel", "verdicts"):
            t.add_column(col, justify="right")
        for _, row in bias.iterrows():
            t.add_row(
                str(row["judge"]),
                models.get(str(row["judge"]), "?"),
                _fmt(row["mean"]),
                f"{row['bias']:+.2f}",
                str(row["n"]),
            )
        console.print(t)
        if not overall.empty:
            o = overall.iloc[0]
            console.print(
                f"Krippendorff's α (all items) = {_fmt(o['alpha'], 3)} over {int(o['n_units'])} units; "
                f"unanimous on {_fmt(o['agreement'] * 100, 0)} % of them."
            )
    print_costs(frames, console)
    failed = frames.sessions[frames.sessions["status"] == "failed"]
    if not failed.empty:
        reasons = ", ".join(
            f"{reason} ×{n}" for reason, n in failed["termination_reason"].value_counts().items()
        )
        console.print(f"[red]{len(failed)} session(s) failed[/] — by reason: {reasons}")


def export_frames(
    frames: Frames,
    out: Path,
    fmt: Literal["csv", "parquet", "json"],
    extra: Mapping[str, pd.DataFrame] | None = None,
) -> list[Path]:
    """Write every frame (and any ``extra`` ones, e.g. ``readiness``) to ``out`` in ``fmt``;
    returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if fmt == "json":
        path = out / "frames.json"
        path.write_text(frames_to_json(frames, extra), encoding="utf-8")
        return [path]
    for name, df in {**frames.as_dict(), **(extra or {})}.items():
        frame = df.copy()
        for col in frame.columns:  # sequences live in ``object`` columns only (not categoricals)
            if frame[col].dtype != object:
                continue
            if frame[col].map(lambda v: isinstance(v, tuple | list | dict)).any():
                frame[col] = frame[col].map(
                    lambda v: ",".join(map(str, v)) if isinstance(v, tuple | list) else str(v)
                )
        path = out / f"{name}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        else:
            for col in frame.columns:
                if frame[col].dtype == object:
                    frame[col] = frame[col].map(
                        lambda v: (
                            None
                            if v is None or (isinstance(v, float) and math.isnan(v))
                            else str(v)
                        )
                    )
            # fastparquet, imported only here: pandas loads pyarrow, when it is installed, at its
            # own import (~36 MB in every process that reads a store), for one export format
            with warnings.catch_warnings():  # its import reads a pandas option pandas 3 deprecates
                warnings.filterwarnings(
                    "ignore", message=".*infer_string", category=DeprecationWarning
                )
                import fastparquet

            fastparquet.write(str(path), frame, write_index=False)
        written.append(path)
    return written
