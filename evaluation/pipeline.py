"""A study from file to verdict: simulate (resumable), judge (cached), report.

Lives in ``evaluation`` because it is the one place that uses every layer; the CLI's ``run``,
``judge`` and ``demo`` verbs call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from therasim.agents.llm import Gateway
from therasim.errors import ConfigError
from therasim.personas.loader import load_library
from therasim.simulations.runner import RunStats, check_specs, estimate, run_specs
from therasim.simulations.store import Store
from therasim.simulations.study import Study, expand, load_study

if TYPE_CHECKING:  # numpy-backed models: imported when a report is written, not on a rerun
    from therasim.evaluation.calibration_card import StoredCalibration

STORE_NAME = "sessions.sqlite"


@dataclass
class StudyRun:
    """What ``run_study`` did."""

    study: Study
    out_dir: Path
    store_path: Path
    stats: RunStats | None
    judged: int
    report_html: Path | None


def study_store(out_dir: Path) -> Path:
    return out_dir / STORE_NAME


def print_estimate(study: Study, console: Console) -> None:
    """``--dry-run``: counts and an estimate; no model is called."""
    library = load_library()
    specs = expand(study, library)
    check_specs(specs, library)
    out_dir = study.output_dir()
    done: set[str] = set()
    if study_store(out_dir).exists():
        with Store(study_store(out_dir)) as store:
            done = store.session_ids(status="completed")
    est = estimate(study, specs, done)
    console.print(
        f"[bold]{study.id}[/]: {est.sessions} sessions ({est.to_run} to run, {est.sessions - est.to_run} already done)"
    )
    for role, entry in est.per_role.items():
        console.print(
            f"  {role:<14} {entry['calls']:>8,} calls  {entry['tokens']:>12,} tokens  ({entry['backend_calls']:,} to real backends)"
        )
    cost = "unknown (no price for some model)" if est.cost_usd is None else f"${est.cost_usd:,.2f}"
    console.print(
        f"  total          {est.calls:>8,} calls  {est.tokens:>12,} tokens  estimated cost {cost}"
    )
    console.print(f"[dim]assumptions: {est.assumptions}[/]")


def _progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


async def simulate_study(
    study: Study, gateway: Gateway, store: Store, console: Console, *, show_progress: bool = True
) -> RunStats:
    library = load_library()
    specs = expand(study, library)
    check_specs(specs, library)
    if not show_progress:
        return await run_specs(specs, study=study, store=store, gateway=gateway, library=library)
    with _progress_bar(console) as bar:
        task = bar.add_task("sessions", total=len(specs), info="")

        def update(stats: RunStats) -> None:
            tokens = stats.input_tokens + stats.output_tokens
            bar.update(
                task,
                completed=stats.skipped + stats.done,
                info=f"{stats.turns} turns · {tokens:,} tokens · ${stats.cost_usd:.2f} · {stats.failed} failed",
            )

        stats = await run_specs(
            specs, study=study, store=store, gateway=gateway, library=library, progress=update
        )
        update(stats)
    return stats


async def judge_study(study: Study, gateway: Gateway, store: Store, console: Console) -> int:
    from therasim.evaluation.panel import JudgeSpec, judge_store
    from therasim.evaluation.rubric import load_rubrics

    if not study.judges:
        return 0
    judges = [JudgeSpec(**j.model_dump()) for j in study.judges]
    rubrics = load_rubrics(study.rubrics or None)
    return await judge_store(store, gateway, rubrics, judges)


async def calibrate_study(
    study: Study, gateway: Gateway, store: Store, console: Console, *, show_progress: bool = True
) -> dict[str, Any] | None:
    """Calibrate the study's appraiser (and panel) on gold turns; stored in the run's meta.

    A stored report made from the same appraiser, judges, gold text and split is reused, so a
    rerun costs nothing; the gateway's cache covers a changed panel's unchanged calls.
    """
    spec = study.calibration
    if spec is None:
        return None
    import hashlib

    from therasim.agents.gold import load_gold, select_split, shipped_gold_files

    files = [Path(f) for f in spec.gold] or shipped_gold_files()
    digest = hashlib.sha256(spec.model_dump_json().encode())
    digest.update((study.appraiser.model or "").encode())
    entries = study.judges if spec.judges else []
    for entry in entries:
        digest.update(entry.model_dump_json().encode())
    for f in files:
        with contextlib.suppress(OSError):  # load_gold names a missing file below
            digest.update(f.read_bytes())
    key = digest.hexdigest()
    stored = store.get_meta("calibration")
    if isinstance(stored, dict) and stored.get("key") == key:
        return stored
    from therasim.evaluation.calibration import calibrate  # numpy, the panel: only when needed
    from therasim.evaluation.panel import JudgeSpec

    judges = [JudgeSpec(**j.model_dump()) for j in entries]
    turns = select_split(load_gold(files), spec.split)
    if not turns:
        raise ConfigError(f"no gold turns in split {spec.split!r}", field="calibration.split")
    with _progress_bar(console) as bar:
        task = bar.add_task("calibration", total=None, info="", visible=show_progress)
        report = await calibrate(
            gateway,
            turns,
            appraiser=study.appraiser.model or "",
            judges=judges,
            split=spec.split,
            gold_files=[str(f) for f in files],
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    record = {"key": key, "min_f1": spec.min_f1, "min_recall": spec.min_recall}
    record["report"] = report.model_dump(mode="json")
    store.set_meta("calibration", record)
    return record


def run_study(
    path: str | Path,
    *,
    judge: bool = True,
    report: bool = True,
    console: Console | None = None,
    show_progress: bool = True,
    on_stats: Callable[[RunStats], Any] | None = None,
    output: str | None = None,
) -> StudyRun:
    """``therasim run``: simulate what is not done, judge what is not judged, report.

    ``output`` overrides the study's output folder (``--output``)."""
    console = console or Console()
    study = load_study(path)
    if output:
        study = study.model_copy(update={"output": output})
    if study.thresholds:
        from therasim.evaluation.axes import resolve_thresholds  # pandas + scipy: only when needed

        resolve_thresholds(study.thresholds)  # a typo in a threshold fails now, not after the run
    out_dir = study.output_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    if Path(path).resolve() != (out_dir / "study.yaml").resolve():
        shutil.copyfile(path, out_dir / "study.yaml")  # the run folder says what produced it
    store_path = study_store(out_dir)

    async def go() -> tuple[RunStats, int]:
        gateway = Gateway(study.gateway_config())
        try:
            with Store(store_path) as store:
                store.set_meta("study", study.model_dump(mode="json"))
                await calibrate_study(study, gateway, store, console, show_progress=show_progress)
                stats = await simulate_study(
                    study, gateway, store, console, show_progress=show_progress
                )
                judged = await judge_study(study, gateway, store, console) if judge else 0
                return stats, judged
        finally:
            await gateway.aclose()

    stats, judged = asyncio.run(go())
    if on_stats:
        on_stats(stats)
    html: Path | None = None
    if report:
        html = write_reports(study, store_path, out_dir, console)
    return StudyRun(
        study=study,
        out_dir=out_dir,
        store_path=store_path,
        stats=stats,
        judged=judged,
        report_html=html,
    )


def verdicts_of(
    frames: Any, study: Study | None, calibration: StoredCalibration | None
) -> list[Any]:
    """The readiness verdicts of a run, gated by its calibration (none: no axis can pass)."""
    from therasim.evaluation.axes import false_belief_persona_ids, readiness
    from therasim.evaluation.calibration_card import calibration_gate

    return readiness(
        frames,
        study.thresholds if study else None,
        false_belief_personas=false_belief_persona_ids(load_library().values()),
        gate=calibration_gate(calibration),
    )


def write_reports(
    study: Study | None, store_path: Path, out_dir: Path, console: Console
) -> Path | None:
    """Console tables, the calibration card and the verdict, and the HTML report."""
    from therasim.evaluation.axes import print_verdicts
    from therasim.evaluation.calibration_card import print_calibration, stored_calibration
    from therasim.evaluation.frames import load_frames
    from therasim.evaluation.html import write_html_report
    from therasim.evaluation.report import print_report

    with Store(store_path) as store:
        frames = load_frames(store)
        calibration = stored_calibration(store)
    print_report(frames, console)
    verdicts = verdicts_of(frames, study, calibration)
    print_calibration(calibration, console)
    print_verdicts(verdicts, console)
    path = write_html_report(
        frames, out_dir / "report.html", study=study, verdicts=verdicts, calibration=calibration
    )
    console.print(f"[bold]HTML report:[/] {path}")
    return path
