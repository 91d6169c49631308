"""``therasim demo``: the demo study on the bundled local model (the README's main command)."""

from __future__ import annotations

import argparse
from typing import Any

from therasim.cli.common import console


def cmd_demo(args: argparse.Namespace) -> int:
    """The demo study on the bundled local model: simulate, judge, report; prints the HTML path."""
    import time
    from importlib.resources import files
    from pathlib import Path

    from therasim.pipeline import run_study

    study_path = Path(args.study) if args.study else Path(str(files("therasim") / "demo.yaml"))
    console.print(
        "[bold]therasim demo[/] — the bundled SmolLM2-135M plays the therapist under test beside two scripted "
        "control arms.\n[dim]The model is tiny: this demo shows the machinery, not a finding about any model.[/]"
    )
    started = time.monotonic()
    run = run_study(study_path, console=console)
    elapsed = time.monotonic() - started
    console.print(f"[bold green]demo finished in {elapsed:.0f} s[/] · store {run.store_path}")
    if run.report_html:
        console.print(f"[bold]open the report:[/] {run.report_html.resolve()}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``demo`` on the command line's sub-parsers."""
    p = sub.add_parser(
        "demo", help="the demo study on the bundled local model (the README's main command)"
    )
    p.add_argument("--study", help="another study file to run as the demo")
    p.set_defaults(handler=cmd_demo)
