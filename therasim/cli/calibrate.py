"""``therasim calibrate``: score an appraiser and judges on gold turns, as a table, JSON or HTML.

Exit codes: 0 when every threshold given (``--min-f1``, ``--min-recall``) is met, 3 when one is
missed, 1 on a configuration error and 2 on a model error (as every verb).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rich.console import Console

from therasim.cli.common import bounded, console, parse_judges, run_then_close, table

if TYPE_CHECKING:  # numpy and pydantic models: imported when the verb runs, not at CLI start
    from rich.table import Table

    from therasim.agents.gold import GoldTurn
    from therasim.evaluation.judging.calibration_scores import CalibrationReport, Score, ScoreSet

__all__ = ["add_parsers", "cmd_calibrate"]

EXIT_BELOW_THRESHOLD = 3


def run_calibration(args: argparse.Namespace, console: Console) -> CalibrationReport:
    """Load the gold turns, build a gateway for the roles, and calibrate."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from therasim.agents.gold import default_split, load_gold, select_split, shipped_gold_files
    from therasim.agents.llm import Gateway, GatewayConfig, RoleConfig, parse_model_spec
    from therasim.errors import ConfigError
    from therasim.evaluation.judging.calibration import calibrate

    parse_model_spec(args.appraiser)
    judges = parse_judges(args.judges or [])
    files = [Path(f) for f in args.gold] if args.gold else shipped_gold_files()
    split = args.split or default_split(bool(args.gold))
    turns = select_split(load_gold(files), split)
    if not turns:
        raise ConfigError(f"no gold turns in split {split!r}", file=", ".join(map(str, files)))
    _warn_if_trained_on(turns, args.appraiser)
    roles = {"appraiser": RoleConfig(model=args.appraiser, concurrency=args.concurrency)}
    roles.update(
        {j.role: RoleConfig(model=cast(str, j.model), concurrency=args.concurrency) for j in judges}
    )
    gateway = Gateway(GatewayConfig(roles=roles, cache_enabled=not args.no_cache))

    async def go() -> CalibrationReport:
        progress = Progress(
            TextColumn("[bold]calibrating"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        with progress:
            task = progress.add_task("calls", total=None)
            return await calibrate(
                gateway,
                turns,
                appraiser=args.appraiser,
                judges=judges,
                split=split,
                gold_files=[str(f) for f in files],
                concurrency=args.concurrency,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
                judging_mode=args.judging_mode,
            )

    return run_then_close(gateway, go)


# --------------------------------------------------------------------------- rendering


def _warn_if_trained_on(turns: Sequence[GoldTurn], appraiser: str) -> None:
    """Say so on stderr when the statistical coder is scored on lines it was trained on (the
    shipped dev split): those figures are not a test of it."""
    if appraiser != "scripted:statistical":
        return
    from therasim.agents.statcoder import trained_on_warning

    if warning := trained_on_warning(turns, "gold turns"):
        print(f"warning: {warning}", file=sys.stderr)


def _v(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def _score_cells(s: Score, *, kappa: bool = True) -> list[str]:
    cells = [
        f"{_v(s.precision)} {_ci(s.precision_ci)}",
        f"{_v(s.recall)} {_ci(s.recall_ci)}",
        f"{_v(s.f1)} {_ci(s.f1_ci)}",
    ]
    if kappa:
        cells.append(_v(s.kappa))
    return [*cells, str(s.support)]


def _set_table(title: str, scores: ScoreSet, *, kappa: bool) -> Table:
    out = table(
        ("label", "precision [95 % CI]", "recall [95 % CI]", "F1 [95 % CI]"),
        title=title,
        title_justify="left",
    )
    if kappa:
        out.add_column("κ")
    out.add_column("gold n", justify="right")
    for label, s in scores.per_label.items():
        out.add_row(label, *_score_cells(s, kappa=kappa))
    out.add_row("micro", *_score_cells(scores.micro, kappa=kappa), style="bold")
    macro = scores.macro
    out.add_row(
        "macro",
        _v(macro["precision"]),
        _v(macro["recall"]),
        _v(macro["f1"]),
        *([""] if kappa else []),
        "",
        style="bold",
    )
    return out


def print_tables(report: CalibrationReport, console: Console) -> None:
    """The report as rich tables: codes, failures per path, appropriateness, worst misses."""
    console.print(
        f"[bold]Calibration[/] of [bold]{report.appraiser}[/] on {report.n} gold turns "
        f"({report.split} split; {report.coder_errors} coding errors)"
    )
    console.print(_set_table("Behaviour codes", report.codes, kappa=True))
    for path, scores in report.failure_paths.items():
        console.print(_set_table(f"Failures through {path}", scores, kappa=True))
    console.print(
        f"appropriate accuracy {_v(report.appropriate_accuracy)} · on {report.n_hard} hard turns "
        f"{_v(report.hard_accuracy)}"
    )
    for judge in report.judges:
        console.print(
            f"judge {judge.name} ({judge.model}, {report.judging_mode} mode): {judge.asked} items asked, {judge.errors} "
            f"unanswered, met rate {_v(judge.met_rate)}"
        )
    if report.worst_misses:
        from rich.markup import escape

        misses = table(
            ("id", "context", "therapist", "missed", "extra"),
            title="Worst misses",
            title_justify="left",
            show_lines=True,
        )
        for m in report.worst_misses:
            misses.add_row(
                m.id,
                f"{m.modality} · {m.phase_kind} · risk {m.risk}",
                escape(m.therapist[:300] + ("…" if len(m.therapist) > 300 else "")),
                ", ".join(m.missed_codes + [f"FAILURE {f}" for f in m.missed_failures]),
                ", ".join(m.extra_codes + [f"FAILURE {f}" for f in m.extra_failures]),
            )
        console.print(misses)


def to_json(report: CalibrationReport) -> str:
    """The report as JSON; ``codes.per_code`` and ``failures.per_failure`` name the per-label
    tables as the issue's contract spells them (``per_label`` kept as well)."""
    data = report.model_dump(mode="json")
    data["codes"]["per_code"] = data["codes"]["per_label"]
    data["failures"]["per_failure"] = data["failures"]["per_label"]
    for path in data["failure_paths"].values():
        path["per_failure"] = path["per_label"]
    return json.dumps(data, indent=2, ensure_ascii=False)


def to_html(report: CalibrationReport) -> str:
    """A self-contained HTML page of the report (pandas tables, escaped)."""
    import html

    import pandas as pd

    def frame(scores: ScoreSet) -> str:
        rows = [
            {
                "label": label,
                "precision": s.precision,
                "precision 95% CI": _ci(s.precision_ci),
                "recall": s.recall,
                "recall 95% CI": _ci(s.recall_ci),
                "F1": s.f1,
                "F1 95% CI": _ci(s.f1_ci),
                "kappa": s.kappa,
                "gold n": s.support,
            }
            for label, s in [*scores.per_label.items(), ("micro", scores.micro)]
        ]
        out = pd.DataFrame(rows).to_html(index=False, float_format="%.2f", na_rep="—", border=0)
        return cast(str, out)  # pandas ships no type hints

    misses = pd.DataFrame([m.model_dump() for m in report.worst_misses])
    parts = [
        f"<h1>Calibration of {html.escape(report.appraiser)}</h1>",
        f"<p>{report.n} gold turns ({html.escape(report.split)} split). Appropriate accuracy "
        f"{_v(report.appropriate_accuracy)}; on {report.n_hard} hard turns {_v(report.hard_accuracy)}.</p>",
        "<h2>Behaviour codes</h2>",
        frame(report.codes),
    ]
    for path, scores in report.failure_paths.items():
        parts += [f"<h2>Failures through {html.escape(path)}</h2>", frame(scores)]
    if not misses.empty:
        parts += ["<h2>Worst misses</h2>", misses.to_html(index=False, border=0)]
    style = (
        "body{font-family:system-ui,sans-serif;margin:2rem;color:#263238}"
        "table{border-collapse:collapse;margin-bottom:1.5rem}"
        "td,th{border-bottom:1px solid #e3e8ec;padding:.25rem .6rem;text-align:left}"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>therasim calibration</title><style>{style}</style></head><body>"
        + "".join(parts)
        + "</body></html>"
    )


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Score an appraiser (and judges) on gold turns; exit 3 when a threshold is missed."""
    report = run_calibration(args, console)
    if args.format == "json":
        text = to_json(report)
        if args.out:
            Path(args.out).write_text(text, encoding="utf-8")
            console.print(f"wrote {args.out}")
        else:
            print(text)
    elif args.format == "html":
        out = Path(args.out or "calibration.html")
        out.write_text(to_html(report), encoding="utf-8")
        console.print(f"wrote {out}")
    else:
        print_tables(report, console)
    shortfalls = report.shortfalls(min_f1=args.min_f1, min_recall=args.min_recall)
    for problem in shortfalls:
        Console(stderr=True).print(f"[bold red]below threshold:[/] {problem}", highlight=False)
    return EXIT_BELOW_THRESHOLD if shortfalls else 0


def add_parsers(sub: Any) -> None:
    """Register ``calibrate`` on the command line's sub-parsers."""
    from therasim.agents.scripted import DEFAULT_OFFLINE_APPRAISER

    p = sub.add_parser(
        "calibrate",
        help="score an appraiser and judges against labelled gold turns",
        description=(
            "Code every gold turn with the appraiser (and ask each judge the failure items), then "
            "report per-code and per-failure precision, recall and F1 with 95 % intervals, "
            "Cohen's kappa, appropriateness accuracy and the worst misses. Exits 3 when a "
            "--min-f1 or --min-recall threshold is missed."
        ),
    )
    p.add_argument(
        "--appraiser",
        default=DEFAULT_OFFLINE_APPRAISER,
        help=f"model spec of the coder (default: {DEFAULT_OFFLINE_APPRAISER})",
    )
    p.add_argument("--judges", nargs="*", metavar="NAME=SPEC", help="judges to calibrate too")
    p.add_argument(
        "--judging-mode",
        choices=["item", "turn"],
        default="turn",
        help="turn: every item of a turn in one call, as a study asks by default; item: one "
        "item per call (default: turn)",
    )
    p.add_argument(
        "--gold", nargs="*", metavar="FILE", help="gold JSONL files (default: the shipped set)"
    )
    p.add_argument(
        "--split",
        choices=["dev", "test", "all"],
        help="which lines to score (default: test of the shipped set; every line of --gold "
        "files, where a line without a split counts as dev)",
    )
    p.add_argument("--format", choices=["table", "json", "html"], default="table")
    p.add_argument("--out", help="file for json/html output (json default: stdout)")
    p.add_argument("--min-f1", type=bounded(float, 0, 1), default=None, help="least code micro-F1")
    p.add_argument(
        "--min-recall",
        type=bounded(float, 0, 1),
        default=None,
        help="least failure micro-recall (codes + rules path, and the judge panel)",
    )
    p.add_argument(
        "--concurrency", type=bounded(int, 1), default=8, help="calls in flight per role"
    )
    p.add_argument("--no-cache", action="store_true", help="bypass the response cache")
    p.set_defaults(handler=cmd_calibrate)
