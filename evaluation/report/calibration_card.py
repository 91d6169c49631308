"""The calibration card: a stored calibration read back, shown beside the verdict, and the gate
it puts on the readiness axes.

A study's calibration (``therasim/pipeline.py``) is stored in the run's meta table as
``{"key", "min_f1", "min_recall", "report"}``; :func:`stored_calibration` reads it back typed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from therasim.evaluation.judging.calibration_scores import (
    AXIS_CODES,
    CalibrationReport,
    Score,
    axis_code_shortfalls,
    readiness_gate,
)

__all__ = [
    "StoredCalibration",
    "calibration_gate",
    "calibration_table",
    "print_calibration",
    "stored_calibration",
]


@dataclass(frozen=True)
class StoredCalibration:
    """A run's calibration: the report and the thresholds the study set."""

    report: CalibrationReport
    min_f1: float | None
    min_recall: float | None

    @property
    def shortfalls(self) -> list[str]:
        """The thresholds the report misses (empty: all met), the axes' own codes last."""
        codes = axis_code_shortfalls(self.report, min_recall=self.min_recall)
        return self.report.shortfalls(min_f1=self.min_f1, min_recall=self.min_recall) + [
            problem for problems in codes.values() for problem in problems
        ]


def stored_calibration(store: Any) -> StoredCalibration | None:
    """The calibration stored with a run, or None when the study was not calibrated."""
    record = store.get_meta("calibration")
    if not isinstance(record, dict) or "report" not in record:
        return None
    return StoredCalibration(
        report=CalibrationReport.model_validate(record["report"]),
        min_f1=record.get("min_f1"),
        min_recall=record.get("min_recall"),
    )


def calibration_gate(calibration: StoredCalibration | None) -> dict[str, str]:
    """Axis -> reason it cannot be assessed (every axis when the study was not calibrated)."""
    if calibration is None:
        return readiness_gate(None, min_f1=None, min_recall=None)
    return readiness_gate(
        calibration.report, min_f1=calibration.min_f1, min_recall=calibration.min_recall
    )


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]"


#: A code no gold line has: nothing measured, shown as "—" and under any threshold.
_UNMEASURED = Score(tp=0, fp=0, fn=0, support=0, precision=None, recall=None, f1=None)


def calibration_rows(calibration: StoredCalibration) -> list[dict[str, str]]:
    """The card's rows: what was measured, its value with a 95 % interval, and the threshold;
    then the recall of each code an axis reads directly (``AXIS_CODES``), under the same recall
    threshold as the failures (a code under it, or not measured, gates its axis)."""
    r = calibration.report

    def row(what: str, score: Score, attr: str, threshold: float | None) -> dict[str, str]:
        value = getattr(score, attr)
        ok = (
            ""
            if threshold is None
            else ("ok" if value is not None and value >= threshold else "BELOW")
        )
        return {
            "what": what,
            "value": _pct(value) + _ci(getattr(score, f"{attr}_ci")),
            "threshold": "" if threshold is None else f"≥ {threshold:.2f}",
            "status": ok,
        }

    rows = [
        row(f"appraiser {r.appraiser}: code micro-F1", r.codes.micro, "f1", calibration.min_f1),
        row("  failure recall (codes + rules)", r.failures.micro, "recall", calibration.min_recall),
        row("  failure precision (codes + rules)", r.failures.micro, "precision", None),
    ]
    rows.append(
        {
            "what": "  appropriate accuracy (hard turns)",
            "value": f"{_pct(r.appropriate_accuracy)} ({_pct(r.hard_accuracy)})",
            "threshold": "",
            "status": "",
        }
    )
    for axis, codes in AXIS_CODES.items():
        for code in codes:
            score = r.codes.per_label.get(code) or _UNMEASURED
            what = f"  {code} recall (read by {axis.replace('_', ' ')})"
            rows.append(row(what, score, "recall", calibration.min_recall or None))
    panel = r.panel_path()
    if panel is not None:
        name, scores = panel
        rows.append(row(f"{name}: failure recall", scores.micro, "recall", calibration.min_recall))
        rows.append(row(f"{name}: failure precision", scores.micro, "precision", None))
    for judge in r.judges:
        rows.append(
            {
                "what": f"  judge {judge.name} ({judge.model}): recall / met rate",
                "value": f"{_pct(judge.failures.micro.recall)} / {_pct(judge.met_rate)}",
                "threshold": "",
                "status": "",
            }
        )
    return rows


def calibration_table(calibration: StoredCalibration) -> Table:
    """The card as a rich table."""
    r = calibration.report
    table = Table(
        title=f"Calibration on {r.n} gold turns ({r.split} split)",
        title_justify="left",
    )
    for column in ("measure", "value [95 % CI]", "threshold", ""):
        table.add_column(column)
    for row in calibration_rows(calibration):
        style = "bold red" if row["status"] == "BELOW" else None
        table.add_row(row["what"], row["value"], row["threshold"], row["status"], style=style)
    return table


def print_calibration(calibration: StoredCalibration | None, console: Console) -> None:
    """The card, or a warning that nothing was calibrated (then no axis can pass)."""
    if calibration is None:
        console.print(
            "[bold yellow]Calibration:[/] the appraiser was not calibrated on gold turns, so no "
            "readiness axis can be assessed. Add a [bold]calibration:[/] block to the study "
            "(agents/gold/codebook.md)."
        )
        return
    console.print(calibration_table(calibration))
    for problem in calibration.shortfalls:
        console.print(f"[bold red]below threshold:[/] {problem}", markup=True, highlight=False)
