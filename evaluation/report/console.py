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
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import pandas as pd
from rich.console import Console
from rich.table import Table

from therasim.evaluation.analysis import metrics
from therasim.evaluation.analysis.frames import Frames, frames_to_json

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

    The same table, built faster: α still comes from ``metrics.krippendorff_alpha``, but the
    unanimous share and unit counts come from one vectorised count per unit, where the metrics
    unit summary also lists which judges said what in every unit (a Python call per unit, most
    of a 1,000-session report's time). ``tests/evaluation/test_report_size.py`` holds the two equal."""

    def build() -> pd.DataFrame:
        verdicts = frames.verdicts
        if verdicts.empty:
            return metrics.agreement_table(verdicts)
        unit_key = list(metrics.UNIT_KEY)
        narrow = verdicts[[*unit_key, "judge", "met"]].assign(
            item_id=verdicts["item_id"].astype(str)
        )
        met = pd.to_numeric(narrow["met"].map(_as_float), errors="coerce")
        units = (
            narrow.assign(_met=met)
            .dropna(subset=["_met"])
            .groupby(unit_key, sort=False)["_met"]
            .agg(["size", "sum"])
        )
        units = units[units["size"] >= 2]
        unanimous = (units["sum"] == 0) | (units["sum"] == units["size"])
        per_item = unanimous.groupby(level="item_id").agg(["mean", "size"])
        judges = narrow.groupby("item_id")["judge"].nunique()
        rows = []
        for item in [*sorted(narrow["item_id"].unique()), None]:
            part = narrow if item is None else narrow[narrow["item_id"] == item]
            if item is None:
                n_units = len(unanimous)
                share = float(unanimous.mean()) if n_units else math.nan
            else:
                n_units = int(per_item["size"].get(item, 0))
                share = float(per_item["mean"][item]) if n_units else math.nan
            rows.append(
                {
                    "item_id": "overall" if item is None else item,
                    "alpha": metrics.krippendorff_alpha(part),
                    "agreement": share,
                    "n_units": n_units,
                    "n_judges": int(narrow["judge"].nunique() if item is None else judges[item]),
                }
            )
        return pd.DataFrame(rows, columns=["item_id", "alpha", "agreement", "n_units", "n_judges"])

    return frames.derived("agreement", build)


def _as_float(value: object) -> float:
    """A verdict's ``met`` (True/False/NaN/None/pd.NA) as 1.0/0.0/NaN."""
    if value is None or value is pd.NA:
        return math.nan
    return float(value)  # type: ignore[arg-type]


def cell_table(frames: Frames) -> pd.DataFrame:
    """One row per subject × modality × severity with the report's headline numbers (computed
    once per frames; do not change the returned frame in place)."""
    return frames.derived("cell_table", lambda: _cell_table(frames))


def _cell_table(frames: Frames) -> pd.DataFrame:
    sessions = frames.sessions
    if sessions.empty:
        return pd.DataFrame()
    keys = list(metrics.CELL)
    base = (
        sessions.groupby(keys, dropna=False)
        .agg(
            sessions=("session_id", "count"),
            failed=("status", lambda s: int((s == "failed").sum())),
            mean_final_suds=("final_suds", "mean"),
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
    return {
        str(judge): ", ".join(sorted({str(m) for m in group["model"].dropna()})) or "?"
        for judge, group in verdicts.groupby("judge", sort=True)
    }


COST_COLUMNS = (
    "role",
    "calls",
    "cache_hits",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "cost_usd",
)


def cost_by_role(frames: Frames) -> pd.DataFrame:
    """Calls, response-cache hits, input, cached-prompt and output tokens, and cost per role
    (``judge:<name>`` roles included), from the calls frame; ``cost_usd`` is NaN when some
    call's price is unknown. Computed once per frames."""

    def build() -> pd.DataFrame:
        calls = frames.calls
        if calls.empty or "role" not in calls.columns:
            return pd.DataFrame(columns=list(COST_COLUMNS))
        cost = pd.to_numeric(calls["cost_usd"], errors="coerce")
        parts = calls.assign(
            role=calls["role"].astype(str),
            cached_input_tokens=calls.get("cached_input_tokens", 0),
            cache_hits=calls["cached"].astype(bool).astype(int),
            cost=cost.fillna(0.0),
            unpriced=cost.isna().astype(int),
        )
        out = (
            parts.groupby("role", sort=True)
            .agg(
                calls=("role", "size"),
                cache_hits=("cache_hits", "sum"),
                input_tokens=("input_tokens", "sum"),
                cached_input_tokens=("cached_input_tokens", "sum"),
                output_tokens=("output_tokens", "sum"),
                cost_usd=("cost", "sum"),
                unpriced=("unpriced", "sum"),
            )
            .reset_index()
        )
        out["cost_usd"] = out["cost_usd"].where(out["unpriced"] == 0)
        return out[list(COST_COLUMNS)]

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


def print_report(frames: Frames, console: Console | None = None) -> None:
    """The rich console report."""
    console = console or Console()
    table = cell_table(frames)
    if table.empty:
        console.print("[yellow]the store holds no sessions yet[/]")
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
            "failures (top)",
        ):
            t.add_column(
                col, justify="left" if col in ("subject", "severity", "failures (top)") else "right"
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
        for col in frame.columns:
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
            frame.to_parquet(path, index=False)
        written.append(path)
    return written
