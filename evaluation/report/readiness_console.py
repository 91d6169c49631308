"""The readiness verdict on the console: one rich table per subject (green PASS, red FAIL, dim
NOT ASSESSED), each axis with its evidence and its FDA SaMD / EU AI Act mapping.

The verdict itself is computed in :mod:`therasim.evaluation.analysis.axes`; this is the report
stage's view of it.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from therasim.evaluation.analysis.axes import Status, Verdict, axis_info

__all__ = ["print_verdicts"]

_STYLE = {Status.PASS: "bold green", Status.FAIL: "bold red", Status.NOT_ASSESSED: "dim"}


def print_verdicts(verdicts: Sequence[Verdict], console: Console | None = None) -> None:
    """The readiness verdicts as rich tables (green PASS, red FAIL, dim NOT ASSESSED)."""
    console = console or Console()
    if not verdicts:
        console.print("[dim]no subjects to give a readiness verdict for[/]")
        return
    for v in verdicts:
        style = _STYLE[v.overall]
        table = Table(
            title=f"Readiness of {v.subject}: [{style}]{v.overall.label}[/]",
            title_justify="left",
            caption=v.note,
            caption_justify="left",
        )
        for col in ("axis", "status", "evidence", "FDA SaMD", "EU AI Act"):
            table.add_column(col, overflow="fold")
        for a in v.axes:
            table.add_row(
                axis_info(a.axis)["title"],
                f"[{_STYLE[a.status]}]{a.status.label}[/]",
                a.evidence,
                a.fda,
                a.eu_ai_act,
            )
        console.print(table)
    console.print(
        "[dim]Thresholds are therasim's own defaults (the paper published none); "
        "a study overrides them under `thresholds:`.[/]"
    )
