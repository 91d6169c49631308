"""Verbs about a study and its run folder: ``run``, ``status``, ``judge`` and ``report``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, cast

from therasim.cli.common import bounded, console, err_console, parse_judges, run_then_close
from therasim.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from therasim.pipeline import StudyRun
    from therasim.simulations.study import Study


def cmd_run(args: argparse.Namespace) -> int:
    """Simulate, judge and report a study (resumable)."""
    from therasim.simulations.runner import check_executor, executor_override
    from therasim.simulations.study import load_study

    study = load_study(args.study)
    if args.output:
        study = study.model_copy(update={"output": args.output})
    with executor_override(args.executor):
        check_executor(study)  # Ray missing fails now, dry run included
        return _run(args, study)


def _run(args: argparse.Namespace, study: Study) -> int:
    from therasim.pipeline import (
        over_budget,
        print_estimate,
        run_study,
        stored_spending,
        study_estimate,
    )
    from therasim.simulations.runner import executor_of
    from therasim.simulations.store import Store

    if args.dry_run:
        print_estimate(study, console, args.study)
        executor = executor_of(study)
        if executor.kind == "ray":
            import os

            local = f"this machine's {os.cpu_count()} CPUs"
            workers = executor.workers or (
                local if executor.address == "local" else "the cluster's CPUs"
            )
            console.print(f"[dim]executor: ray (address {executor.address}, workers {workers})[/]")
        return 0
    if study.budget.max_tokens or study.budget.max_cost_usd:
        reason = over_budget(study, study_estimate(study, args.study), stored_spending(study))
        if reason and not args.yes:
            console.print(
                f"[red]{reason}: the run would stop part-way. Raise the budget, or pass --yes "
                "to run until it is spent (a rerun with more budget finishes the rest).[/]"
            )
            return 2
    run = run_study(
        args.study,
        judge=not args.no_judge,
        report=not args.no_report,
        console=console,
        output=args.output,
        wait=args.wait,
    )
    stats = run.stats
    if stats is not None:
        console.print(run_summary(run))
    with Store(run.store_path) as store:
        broken = {j: c for j, c in store.verdict_error_counts().items() if c[0] and c[0] == c[1]}
    for judge, (errors, _, first) in sorted(broken.items()):
        console.print(f"[red]judge {judge}: all {errors:,} verdicts are errors, e.g. {first}[/]")
    return 0 if (stats is None or stats.failed == 0) and not broken else 3


def run_summary(run: StudyRun) -> str:
    """The line ``run`` ends with: sessions completed, failed and skipped, what was judged, the
    store. A study with a battery stores its answers as one-turn sessions and the pipeline
    counts them with the sessions it judged, so the count is not called sessions there."""
    stats = run.stats
    done = (
        f"{stats.completed} completed, {stats.failed} failed, {stats.skipped} already done"
        + (f", {stats.not_started} not started (budget spent)" if stats.budget_exhausted else "")
        if stats is not None
        else "not run"
    )
    judged = (
        f"{run.judged} sessions judged"
        if run.study.mode == "sessions"
        else f"{run.judged} judged (sessions and battery answers together)"
    )
    return f"[bold]{run.study.id}[/]: {done} · {judged} · store {run.store_path}"


def cmd_status(args: argparse.Namespace) -> int:
    """What a study folder holds."""
    from pathlib import Path

    from therasim.agents.llm.usage import Totals
    from therasim.personas.loader import load_library
    from therasim.pipeline import study_store
    from therasim.simulations.study import Study, expand

    out = Path(args.study_dir)
    store_path = study_store(out)
    if not store_path.exists():
        err_console.print(f"[red]error:[/] no {store_path.name} in {out}")
        return 1
    from therasim.simulations.store import Store

    with Store(store_path) as store:
        completed = store.count("completed")
        failed = store.count("failed")
        verdicts = sum(n for _, n, _ in store.verdict_error_counts().values())
        study_doc = store.get_meta("study")
        rows = store.sessions()
    total = None
    if study_doc:
        study = Study.model_validate(study_doc)
        library = load_library()
        total = len(expand(study, library)) if study.mode != "battery" else 0
        if study.mode != "sessions":  # battery answers are stored as one-turn sessions
            from therasim.simulations.battery import count_items

            total += count_items(study, library, out) * len(study.subjects)
    spent = Totals.sum(rows)
    console.print(
        f"{out}: {completed} completed, {failed} failed"
        + (f", {total - completed - failed} not run (of {total})" if total is not None else "")
        + f" · {verdicts} verdicts · {spent.total_tokens:,} tokens in sessions (${spent.cost_usd:.2f})"
    )
    if failed:
        reasons: dict[str, int] = {}
        for r in rows:
            if r.status == "failed":
                reason = r.termination_reason.value
                reasons[reason] = reasons.get(reason, 0) + 1
        console.print(
            "  failed by reason: " + ", ".join(f"{k} ×{v}" for k, v in sorted(reasons.items()))
        )
    return 0


def _store_path(arg: str) -> Path:
    """The store a STORE argument names: a study folder's store, or a ``.sqlite`` file."""
    from pathlib import Path

    from therasim.pipeline import study_store

    path = Path(arg)
    if path.is_dir():
        path = study_store(path)
    if not path.exists():
        raise ConfigError("no such store (give a study folder or a .sqlite file)", file=str(path))
    return path


def cmd_judge(args: argparse.Namespace) -> int:
    """Re-score stored sessions with a judge panel (no re-simulation; cached)."""
    from therasim.agents.llm import Gateway, GatewayConfig, RoleConfig
    from therasim.agents.preflight import check_model_spec
    from therasim.evaluation.judging.panel import PanelOptions, judge_store
    from therasim.evaluation.judging.rubric import load_rubrics
    from therasim.simulations.store import Store

    judges = parse_judges(args.judges or ["lexical=scripted:lexical-judge"])
    for j in judges:  # a typo fails now, before any verdict is written
        check_model_spec(cast(str, j.model), field=f"--judges {j.name}")
    options = PanelOptions(mode=args.mode, sample_turns=args.sample_turns, sample_seed=args.seed)
    rubrics = load_rubrics(args.rubric or None)
    gateway = Gateway(
        GatewayConfig(
            roles={f"judge:{j.name}": RoleConfig(model=cast(str, j.model)) for j in judges},
            cache_enabled=not args.no_cache,
        )
    )

    store_path = _store_path(args.store)
    with Store(store_path) as store:
        stored = store.verdict_models()
        others = set(stored) - {j.name for j in judges}
        # a name re-used for another model: its verdicts are not this judge's
        remodelled = sorted(j.name for j in judges if stored.get(j.name, {j.model}) != {j.model})
        if remodelled and not args.replace:
            raise ConfigError(
                f"judge(s) {', '.join(remodelled)} hold verdicts from another model "
                f"({'; '.join(n + ': ' + ', '.join(sorted(stored[n])) for n in remodelled)}); "
                "pass --replace to re-score them with the models given, or use new names",
                file=str(store_path),
            )
        if remodelled:
            dropped = store.delete_verdicts(remodelled)
            console.print(f"dropped {dropped} verdicts of {', '.join(remodelled)} (another model)")
        if others and not (args.replace or args.add):
            raise ConfigError(
                f"the store holds verdicts from other judges ({', '.join(sorted(others))}); "
                "pass --replace to drop them and keep only this panel, or --add to add these "
                "judges to the panel",
                file=str(store_path),
            )
        if others and args.replace:
            dropped = store.delete_verdicts(others)
            console.print(
                f"dropped {dropped} verdicts of {', '.join(sorted(others))} and their judges'"
                " call rows"
            )

    async def judge_all() -> int:
        with Store(store_path) as store:
            return await judge_store(store, gateway, rubrics, judges, options=options)

    n = run_then_close(gateway, judge_all)
    total = gateway.accounting.total()
    console.print(
        f"{n} sessions judged · {total.backend_calls} backend calls, {total.cached_calls} from cache · {total.total_tokens:,} tokens"
    )
    import asyncio

    from therasim.pipeline import recalibrate_panel

    asyncio.run(recalibrate_panel(store_path, console, no_cache=args.no_cache))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Rich tables per subject × modality × severity; frames as csv/parquet/json."""
    from pathlib import Path

    from therasim.evaluation.analysis.frames import load_frames
    from therasim.evaluation.report.calibration_card import print_calibration, stored_calibration
    from therasim.evaluation.report.console import export_frames, print_report
    from therasim.pipeline import verdicts_of
    from therasim.simulations.store import Store
    from therasim.simulations.study import Study

    store_path = _store_path(args.store)
    with Store(store_path) as store:
        # only the export writes every call; the reports read the call totals
        frames = load_frames(store, with_calls=bool(args.format))
        calibration = stored_calibration(store)
        study_doc = store.get_meta("study")
    try:  # the study the run was made from (its thresholds); an older store may not hold one
        study = Study.model_validate(study_doc) if isinstance(study_doc, dict) else None
    except ValueError:
        study = None
    battery = study is not None and study.mode != "sessions"
    all_frames, battery_half = frames, None
    if battery:  # the session tables and the verdict read the multi-turn sessions only
        from therasim.evaluation.analysis.battery import split_frames

        frames, battery_half = split_frames(all_frames)
    verdicts = verdicts_of(frames, study, calibration) if not frames.sessions.empty else []
    if args.format:
        from therasim.evaluation.analysis.axes import readiness_frame

        out = Path(args.out) if args.out else store_path.parent / "frames"
        extra = {"readiness": readiness_frame(verdicts)}
        if battery:
            from therasim.battery_pipeline import battery_frames

            extra |= battery_frames(all_frames, study)
        for path in export_frames(frames, out, args.format, extra):
            console.print(f"wrote {path}")
        return 0
    print_report(frames, console, battery_only=study is not None and study.mode == "battery")
    print_calibration(calibration, console)
    if verdicts:
        from therasim.evaluation.report.readiness_console import print_verdicts

        print_verdicts(verdicts, console)
    if battery:
        from therasim.battery_pipeline import report_battery

        report_battery(all_frames, study, console)
    if args.html:
        from therasim.evaluation.report.html import write_html_report

        path = write_html_report(
            frames,
            Path(args.html),
            study=study,
            verdicts=verdicts,
            calibration=calibration,
            battery=battery_half,
        )
        console.print(f"[bold]HTML report:[/] {path}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``run``, ``status``, ``judge`` and ``report`` on the command line's sub-parsers."""
    p = sub.add_parser("run", help="simulate, judge and report a study (resumable)")
    p.add_argument("study", metavar="STUDY.yaml")
    p.add_argument(
        "--dry-run", action="store_true", help="print counts and an estimate; call no model"
    )
    p.add_argument(
        "--yes",
        action="store_true",
        help="start even when the estimate exceeds the study's budget (it stops once spent)",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="if another run holds the run folder, wait for it instead of stopping",
    )
    p.add_argument("--no-judge", action="store_true", help="skip judging")
    p.add_argument("--no-report", action="store_true", help="skip the report")
    p.add_argument("--output", metavar="DIR", help="run folder (overrides the study's output:)")
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        help="where the sessions run (overrides the study's executor kind); ray needs "
        "pip install 'therasim[ray]'",
    )
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("status", help="what a study folder holds")
    p.add_argument("study_dir", metavar="STUDY_DIR")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser(
        "judge",
        help="re-score stored sessions without re-simulating",
        description="Re-score stored sessions without re-simulating. In a run whose study "
        "calibrates its panel, a changed panel is calibrated again afterwards.",
    )
    p.add_argument("store", metavar="STORE", help="a study folder or a .sqlite store")
    p.add_argument("--rubric", action="append", help="rubric id (repeatable; default: all)")
    p.add_argument(
        "--judges",
        nargs="+",
        metavar="NAME=MODEL",
        help="the panel, e.g. a=local b=scripted:lexical-judge",
    )
    panel = p.add_mutually_exclusive_group()
    panel.add_argument(
        "--replace",
        action="store_true",
        help="drop stored verdicts and call rows of judges not named here (and of a name "
        "given another model)",
    )
    panel.add_argument(
        "--add", action="store_true", help="keep other judges' verdicts: these join the panel"
    )
    p.add_argument(
        "--mode",
        choices=("item", "turn"),
        default="turn",
        help="one judge call per therapist turn, all items at once (default), or one per rubric item",
    )
    p.add_argument(
        "--sample-turns",
        type=bounded(int, 1),
        metavar="K",
        help="judge at least K turns per session (risk and failure turns always)",
    )
    p.add_argument("--seed", type=int, help="seed of the turn sample (default: spread evenly)")
    p.add_argument("--no-cache", action="store_true")
    p.set_defaults(handler=cmd_judge)

    p = sub.add_parser("report", help="tables per subject × modality × severity")
    p.add_argument("store", metavar="STORE", help="a study folder or a .sqlite store")
    p.add_argument("--format", choices=["csv", "parquet", "json"], help="export the frames instead")
    p.add_argument("--out", help="folder for exported frames (default: beside the store)")
    p.add_argument("--html", help="also write the HTML report to this file")
    p.set_defaults(handler=cmd_report)
