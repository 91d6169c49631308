"""The HTML report's table sections as template data: the readiness verdict with the calibration
card, the headline numbers per cell, and judge agreement. The charts are in ``html_charts``."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from therasim.evaluation.analysis.frames import Frames, call_totals
from therasim.evaluation.report import console as report
from therasim.evaluation.report.console import HEADLINE_ITEMS, cell_table
from therasim.evaluation.report.html_common import (
    Charts,
    Note,
    Score,
    badge,
    fmt,
    isnan,
    item_label,
    label,
    score,
    table,
    text,
)

if TYPE_CHECKING:
    from therasim.simulations.study import Study

log = logging.getLogger(__name__)

Data = dict[str, Any]


# --------------------------------------------------------------------------- verdict


def compute_verdicts(frames: Frames, study: Study | None) -> tuple[list[Any] | None, str]:
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


def compact(value: Any) -> str:
    """A metric value in few characters: 0.605, 11.25, 3, [0.565, 0.646], a: 1, –."""
    if isnan(value):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e9:
            return str(int(value))
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, dict):
        return ", ".join(f"{k}: {compact(v)}" for k, v in value.items()) or "–"
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ", ".join(compact(v) for v in value) + "]"
    return str(text(value))


def _metrics(value: Any) -> Data:
    """Metrics or thresholds: a key/value list for a dict, else one compact value."""
    if value is None:
        return {"kind": "none"}
    if isinstance(value, dict):
        items = [(str(k), compact(v)) for k, v in value.items()]
        return {"kind": "kv", "items": items} if items else {"kind": "none"}
    return {"kind": "text", "text": compact(value)}


def _evidence(value: Any, limit: int = 5) -> Data:
    """An axis's evidence: text, key/values, or the first ``limit`` items of a list."""
    if value is None:
        return {"kind": "none"}
    if isinstance(value, str):
        return {"kind": "text", "text": value}
    if isinstance(value, dict):
        return _metrics(value)
    if isinstance(value, Iterable):
        items = [str(v) for v in value]
        if not items:
            return {"kind": "none"}
        return {"kind": "list", "items": items[:limit], "more": max(0, len(items) - limit)}
    return {"kind": "text", "text": str(value)}


def _mapping_text(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, Iterable):
        return ", ".join(str(v) for v in value)
    return str(value)


def calibration_card(calibration: Any) -> Data | None:
    """The calibration card beside the verdict (``calibration_card.py``); None: not calibrated."""
    if calibration is None:
        return None
    from therasim.evaluation.report.calibration_card import calibration_rows

    return {
        "n": calibration.report.n,
        "split": calibration.report.split,
        "rows": calibration_rows(calibration),
        "shortfalls": list(calibration.shortfalls),
    }


def toy_models_note(study: Study | None) -> str:
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


def verdict_section(
    frames: Frames,
    study: Study | None,
    verdicts: Sequence[Any] | None,
    calibration: Any = None,
) -> Data:
    """The verdict matrix, per-subject details, regulatory mapping and the calibration card."""
    data: Data = {"toy_note": toy_models_note(study), "unavailable": None, "note": None}
    if verdicts is None:
        verdicts, why = compute_verdicts(frames, study)
        if verdicts is None:
            return {**data, "unavailable": why}
    if not verdicts:
        return {**data, "note": Note("verdict not available: there are no subjects to judge yet.")}
    axes_order: list[str] = []
    mapping: dict[str, tuple[str, str]] = {}
    for verdict in verdicts:
        for ax in getattr(verdict, "axes", []):
            name = text(ax.axis)
            if name not in axes_order:
                axes_order.append(name)
                mapping[name] = (
                    _mapping_text(getattr(ax, "fda", None)),
                    _mapping_text(getattr(ax, "eu_ai_act", None)),
                )
    rows, details = [], []
    for verdict in verdicts:
        by_axis = {text(ax.axis): ax for ax in getattr(verdict, "axes", [])}
        subject = text(verdict.subject)
        rows.append(
            {
                "subject": subject,
                "overall": badge(verdict.overall),
                "axes": [
                    badge(by_axis[a].status if a in by_axis else "NOT_ASSESSED") for a in axes_order
                ],
            }
        )
        note = getattr(verdict, "note", "")
        details.append(
            {
                "subject": subject,
                "overall": badge(verdict.overall),
                "note": note if isinstance(note, str) else "",
                "axes": [
                    {
                        "name": label(text(ax.axis)),
                        "badge": badge(ax.status),
                        "evidence": _evidence(getattr(ax, "evidence", None)),
                        "metrics": _metrics(getattr(ax, "metrics", None)),
                        "thresholds": _metrics(getattr(ax, "thresholds", None)),
                    }
                    for ax in getattr(verdict, "axes", [])
                ],
            }
        )
    return {
        **data,
        "axes": [label(a) for a in axes_order],
        "rows": rows,
        "details": details,
        "calibration": calibration_card(calibration),
        "mapping": [(label(a), f, eu) for a, (f, eu) in mapping.items()],
    }


# --------------------------------------------------------------------------- cells


def _failed_summary(sessions: pd.DataFrame) -> Data | None:
    """Failed sessions by termination reason and by the first line of their error."""
    failed = sessions[sessions["status"] == "failed"]
    if failed.empty:
        return None
    reasons = ", ".join(
        f"{reason} ×{n}" for reason, n in failed["termination_reason"].value_counts().items()
    )
    firsts = (
        failed["error"]
        .dropna()
        .astype(str)
        .map(lambda t: t.strip().splitlines()[0][:300] if t.strip() else "")
        if "error" in failed.columns
        else pd.Series(dtype=str)
    )
    return {
        "failed": len(failed),
        "total": len(sessions),
        "reasons": reasons,
        "errors": [
            (str(t), int(n)) for t, n in firsts[firsts != ""].value_counts().head(5).items()
        ],
    }


def cells_section(
    frames: Frames, polarity: dict[str, str], *, battery_only: bool = False
) -> Data | Note:
    """Headline items, adherence, SUDS and deterioration per subject × severity, per modality
    (``battery_only``: the study has no multi-turn sessions by design)."""
    cells = cell_table(frames)
    if cells.empty:
        if battery_only:
            return Note(
                "This study runs the single-turn battery only (no multi-turn sessions): "
                "see the single-turn battery section."
            )
        return Note("The store holds no sessions yet.")
    cells = cells.copy()
    cells["severity"] = cells["severity"].astype(str)
    known = {
        "subject", "modality", "severity", "sessions", "failed", "mean_final_suds", "adherence",
        "deterioration", "det_low", "det_high", "det_n", "failures", "top_failure",
    }  # fmt: skip
    items = [c for c in cells.columns if c not in known]
    modalities = []
    for modality in sorted(cells["modality"].astype(str).unique()):
        sub = cells[cells["modality"] == modality]
        present = [i for i in items if sub[i].notna().any()]
        headline = [i for i in HEADLINE_ITEMS.get(modality, ()) if i in present]
        out = pd.DataFrame(
            {
                "subject": sub["subject"].astype(str),
                "severity": sub["severity"].map(label),
                "sessions": [
                    f"{n}" + (f" ({k} failed)" if k else "")
                    for n, k in zip(sub["sessions"], sub["failed"], strict=True)
                ],
            }
        )
        formats: dict[str, Callable[[Any], str | Score]] = {}
        for item in headline:
            out[label(item)] = sub[item].to_numpy()
            formats[label(item)] = score
        out["adherence"] = sub["adherence"].to_numpy()
        formats["adherence"] = score
        out["final SUDS"] = sub["mean_final_suds"].to_numpy()
        formats["final SUDS"] = lambda v: fmt(v, 1)
        if "deterioration" in sub.columns:
            out["deterioration [95 % CI]"] = [
                "–" if isnan(r) else f"{r:.2f} [{lo:.2f}, {hi:.2f}]"
                for r, lo, hi in zip(
                    sub["deterioration"], sub["det_low"], sub["det_high"], strict=True
                )
            ]
        if "failures" in sub.columns:
            out["detector hits (top)"] = [
                "–" if isnan(n) else f"{int(n)}" + (f" ({label(top)})" if n else "")
                for n, top in zip(sub["failures"], sub["top_failure"], strict=True)
            ]
        modalities.append(
            {
                "title": f"{modality.upper()} sessions",
                "table": table(out, formats=formats, cls="data compact"),
                "all_items": _all_items(sub, present, polarity) if present else None,
            }
        )
    return {"failed": _failed_summary(frames.sessions), "modalities": modalities}


def _all_items(cells: pd.DataFrame, items: list[str], polarity: dict[str, str]) -> Data:
    """Every rubric item (rows) × cell (columns), shown collapsed under a ``<details>``."""
    columns = [
        f"{s} · {label(v)}" for s, v in zip(cells["subject"], cells["severity"], strict=True)
    ]
    order = sorted(items, key=lambda i: (polarity.get(i) == "failure", i))
    rows = [
        (
            item_label(item, polarity),
            [
                score(v, higher_is_better=polarity.get(item) != "failure")
                for v in cells[item].to_numpy()
            ],
        )
        for item in order
    ]
    return {"columns": columns, "rows": rows}


# --------------------------------------------------------------------------- judges


def judges_section(frames: Frames, charts: Charts, polarity: dict[str, str]) -> Data | Note:
    """Panel composition, Krippendorff's α per item, per-judge bias and its chart by item."""
    verdicts = frames.verdicts
    if verdicts.empty:
        return Note("No judge verdicts in this store yet (run `therasim judge`).")
    from therasim.evaluation.report.html_charts import bias_chart

    members = report.panel_models(verdicts)
    agreement = report.agreement(frames)
    agreement_table = pd.DataFrame(
        {
            "item": [
                "all items" if i == "overall" else item_label(str(i), polarity)
                for i in agreement["item_id"]
            ],
            "α": agreement["alpha"],
            "unanimous": agreement["agreement"],
            "units": agreement["n_units"],
            "judges": agreement["n_judges"],
        }
    )
    bias = report.judge_bias(frames)
    bias_table = bias.rename(
        columns={"mean": "mean met", "panel_mean": "panel mean", "n": "verdicts"}
    )
    return {
        "composition": Note(
            f"Panel of {len(members)} judge(s): "
            + "; ".join(f"{name} ({model})" for name, model in members.items())
        ),
        "agreement": table(agreement_table),
        "bias": table(bias_table, formats={"bias": lambda v: "–" if isnan(v) else f"{v:+.2f}"}),
        "chart": bias_chart(frames, charts, bias),
    }


# --------------------------------------------------------------------------- costs


def _tokens(value: Any) -> str:
    return "–" if isnan(value) else f"{int(value):,}"


def _usd(value: Any) -> str:
    return "–" if isnan(value) else f"${float(value):,.4f}"


def costs_section(frames: Frames, battery: Frames | None = None) -> Data | Note:
    """Calls, cache hits, tokens and cost per role (``console.cost_by_role``) with a total row;
    a cost is "–" when some call's price is unknown. ``battery``'s calls are counted too."""
    if battery is not None and not call_totals(battery).empty:
        totals = pd.concat([call_totals(frames), call_totals(battery)], ignore_index=True)
        frames = Frames(**{**frames.as_dict(), "call_totals": totals})
    costs = report.cost_by_role(frames)
    if costs.empty:
        return Note("No model calls recorded in this store.")
    counts = ["calls", "cache_hits", "input_tokens", "cached_input_tokens", "output_tokens"]
    cost = pd.to_numeric(costs["cost_usd"], errors="coerce")
    total = {c: costs[c].sum() for c in counts}
    total_cost = math.nan if cost.isna().any() else float(cost.sum())
    out = pd.DataFrame(
        {
            "role": [*costs["role"].astype(str), "total"],
            "calls": [*costs["calls"], total["calls"]],
            "cache hits": [*costs["cache_hits"], total["cache_hits"]],
            "input tokens": [*costs["input_tokens"], total["input_tokens"]],
            "cached input tokens": [*costs["cached_input_tokens"], total["cached_input_tokens"]],
            "output tokens": [*costs["output_tokens"], total["output_tokens"]],
            "cost (USD)": [*cost, total_cost],
        }
    )
    for column in out.columns[1:]:
        out[column] = pd.to_numeric(out[column], errors="coerce")
    formats: dict[str, Callable[[Any], str | Score]] = {c: _tokens for c in out.columns[1:-1]}
    formats["cost (USD)"] = _usd
    return {
        "table": table(out, formats=formats, cls="data compact costs"),
        "unpriced": bool(cost.isna().any()),
    }
