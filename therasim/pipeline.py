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
from therasim.agents.llm.usage import Totals
from therasim.errors import BudgetExhausted, ConfigError
from therasim.personas.loader import load_library
from therasim.simulations.budget import BudgetMeter, record_judging, spent_in_store
from therasim.simulations.records import SessionSpec
from therasim.simulations.runlock import run_lock
from therasim.simulations.runner import Estimate, RunStats, check_specs, estimate, run_specs
from therasim.simulations.store import Store
from therasim.simulations.study import Study, expand, expand_study, load_study, study_personas

if TYPE_CHECKING:  # numpy-backed models: imported when a report is written, not on a rerun
    from therasim.evaluation.report.calibration_card import StoredCalibration

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
    """The store file of a run folder."""
    return out_dir / STORE_NAME


# A judge's call, in tokens: the rubric item, instructions and a bounded transcript window
# (measured on studies/quickstart.yaml: about 794 input tokens a turn item), and a short verdict.
# A batched call (``judging: {mode: turn}``, the default) carries the rubric's one-line briefs
# once and answers every item: about 925 input tokens a call on the same study with the
# version-3 templates (benchmarks/README.md §6).
JUDGE_PROMPT_TOKENS = 800
JUDGE_BATCH_PROMPT_TOKENS = 925
JUDGE_REPLY_TOKENS = 60


def add_judging(est: Estimate, study: Study, specs: list[SessionSpec], done: set[str]) -> None:
    """Add the panel's calls to ``est``, by the study's judging mode.

    ``item``: one call per judge, per turn item that fits the turn's phase kind along the
    protocol's shortest full path, and per session item. ``turn``: one call per judge per turn
    with at least one such item, and one per session. With ``sample_turns: K`` at most K turns a
    session count (flagged turns can add more; they are not known before the run). Conditional
    items (``applies_when``) are counted as applying: an upper bound for crisis-only items. Turn
    mode's repair rounds and item fallback (calls for items a batched answer lacks) are not
    known before the run either, and are not counted: a judge that often fails its batches
    costs more than the estimate (the budget still counts every call made).
    """
    if not study.judges:
        return
    from therasim.agents.llm import parse_model_spec, price_of
    from therasim.agents.types import Usage
    from therasim.evaluation.judging.rubric import item_fits, load_rubrics
    from therasim.protocols import load_protocol

    items = [item for rubric in load_rubrics(study.rubrics or None) for item in rubric.items]
    batched = study.judging.mode == "turn"
    sample = study.judging.sample_turns

    # (protocol, max_turns) -> (calls, item answers) a session
    per_protocol: dict[tuple[str, int], tuple[int, int]] = {}
    calls = answers = 0
    for spec in (s for s in specs if s.session_id not in done):
        key = (spec.protocol, spec.max_turns)
        if key not in per_protocol:
            graph = load_protocol(spec.protocol)
            modality = graph.protocol.modality
            path = [graph.phase(p) for p in graph.canonical_path]
            kinds = [phase.kind.value for phase in path for _ in range(phase.min_turns)]
            turns = [
                sum(item_fits(i, modality=modality, phase_kind=kind) for i in items)
                for kind in kinds[: spec.max_turns]
            ]
            turns = sorted(turns, reverse=True)[:sample] if sample else turns
            session = sum(item_fits(i, modality=modality) for i in items)
            n = sum(turns) + session
            per_protocol[key] = (
                (sum(1 for t in turns if t) + (1 if session else 0), n) if batched else (n, n)
            )
        calls += per_protocol[key][0]
        answers += per_protocol[key][1]
    prompt = JUDGE_BATCH_PROMPT_TOKENS if batched else JUDGE_PROMPT_TOKENS
    for judge in study.judges:
        model = parse_model_spec(judge.model)
        tokens_in, tokens_out = calls * prompt, answers * JUDGE_REPLY_TOKENS
        est.per_role[f"judge:{judge.name}"] = {
            "calls": calls,
            "tokens": tokens_in + tokens_out,
            "backend_calls": calls if model.is_real else 0,
        }
        est.calls += calls
        est.tokens += tokens_in + tokens_out
        cost = price_of(
            model, Usage(input_tokens=tokens_in, output_tokens=tokens_out), dict(study.prices)
        )
        est.cost_usd = None if cost is None or est.cost_usd is None else est.cost_usd + cost
    unit = "turn (all its items)" if batched else "applicable item"
    est.assumptions = est.assumptions.replace(
        "judging not included", f"judging: one call per judge per {unit}, ~{prompt} tokens in"
    )


def stored_spending(study: Study) -> Totals:
    """What earlier runs of this study (its run folder's store) have spent."""
    path = study_store(study.output_dir())
    if not path.exists():
        return Totals()
    with Store(path) as store:
        return spent_in_store(store)


def over_budget(study: Study, est: Estimate, spent: Totals | None = None) -> str | None:
    """Why the estimate plus what earlier runs spent exceeds the study's budget, or None."""
    b, spent = study.budget, spent or Totals()
    tokens = est.tokens + spent.total_tokens
    if b.max_tokens is not None and tokens > b.max_tokens:
        return f"the estimate ({tokens:,} tokens) exceeds the budget ({b.max_tokens:,} tokens)"
    if b.max_cost_usd is not None and est.cost_usd is not None:
        cost = est.cost_usd + spent.cost_usd
        if cost > b.max_cost_usd:
            return f"the estimate (${cost:,.2f}) exceeds the budget (${b.max_cost_usd:,.2f})"
    return None


def preflight(study: Study, source: str | Path | None = None) -> None:
    """Fail now, naming the study file and field, on what the run would fail on later: a model
    spec that cannot be called (unknown ``scripted:`` name, ``python:`` module that does not
    import, missing ``local`` model), an unknown judge prompt variant or rubric, a bad
    threshold, unreadable gold files."""
    from therasim.agents.preflight import check_model_spec
    from therasim.evaluation.judging.panel import JudgeSpec
    from therasim.evaluation.judging.rubric import load_rubrics
    from therasim.simulations.runner import check_executor

    file = str(source) if source else None
    roles = [(f"subjects.{name}.model", s.model) for name, s in study.subjects.items()]
    roles += [
        ("patient.model", study.patient.model or ""),
        ("appraiser.model", study.appraiser.model or ""),
    ]
    roles += [(f"judges.{i}.model", j.model) for i, j in enumerate(study.judges)]
    try:
        check_executor(study)  # executor: ray needs its extra
        for field, spec in roles:
            check_model_spec(spec, field=field)
        for i, judge in enumerate(study.judges):
            try:
                JudgeSpec(**judge.model_dump())
            except (ValueError, ConfigError) as exc:  # pydantic's error, or the registry's
                raise ConfigError(str(exc).splitlines()[-1].strip(), field=f"judges.{i}") from None
        try:
            load_rubrics(study.rubrics or None)
        except ConfigError as exc:
            raise ConfigError(str(exc), field="rubrics") from None
        if study.thresholds:
            from therasim.evaluation.analysis.axes import (
                resolve_thresholds,  # pandas: only when needed
            )

            resolve_thresholds(study.thresholds)
        if study.calibration is not None and study.calibration.gold:
            from therasim.agents.gold import load_gold

            load_gold(study.calibration.gold)
        study_personas(study, load_library())
    except ConfigError as exc:
        if file is None or exc.file:
            raise
        raise ConfigError(str(exc), file=file) from None


def study_estimate(study: Study, source: str | Path | None = None) -> Estimate:
    """``--dry-run``'s figures: the sessions left to run and their judging."""
    preflight(study, source)
    library = load_library()
    expansion = expand_study(study, library)
    specs = expansion.specs if study.mode != "battery" else []  # battery: no sessions
    check_specs(specs, library)
    done: set[str] = set()
    if study_store(study.output_dir()).exists():
        with Store(study_store(study.output_dir())) as store:
            done = store.session_ids(status="completed")
    est = estimate(study, specs, done)
    add_judging(est, study, specs, done)
    if study.mode != "sessions":  # the single-turn battery (therasim/battery_pipeline.py)
        from therasim.battery_pipeline import add_battery_estimate

        add_battery_estimate(est, study, study.output_dir())
    if expansion.skipped:
        est.assumptions = f"{expansion.summary()}; {est.assumptions}"
    return est


def print_estimate(study: Study, console: Console, source: str | Path | None = None) -> Estimate:
    """``--dry-run``: counts and an estimate, judging included; no model is called."""
    est = study_estimate(study, source)
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
    reason = over_budget(study, est, stored_spending(study))
    if reason:
        console.print(
            f"[yellow]{reason}: the run would stop part-way. `therasim run` asks for --yes.[/]"
        )
    return est


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
    """Run the study's sessions not yet in the store (resumable, budget metered)."""
    library = load_library()
    specs = expand(study, library) if study.mode != "battery" else []  # battery: no sessions
    check_specs(specs, library)
    if not show_progress:
        return await run_specs(specs, study=study, store=store, gateway=gateway, library=library)
    with _progress_bar(console) as bar:
        task = bar.add_task("sessions", total=len(specs), info="")

        def update(stats: RunStats) -> None:
            tokens = stats.usage.total_tokens
            bar.update(
                task,
                completed=stats.skipped + stats.done,
                info=f"{stats.turns} turns · {tokens:,} tokens · ${stats.usage.cost_usd:.2f} · {stats.failed} failed",
            )

        stats = await run_specs(
            specs, study=study, store=store, gateway=gateway, library=library, progress=update
        )
        update(stats)
    return stats


async def judge_study(study: Study, gateway: Gateway, store: Store, console: Console) -> int:
    """Judge the stored sessions with the study's panel and judging mode; returns how many."""
    from therasim.evaluation.judging.panel import JudgeSpec, PanelOptions, judge_store
    from therasim.evaluation.judging.rubric import load_rubrics

    if not study.judges:
        return 0
    judges = [JudgeSpec(**j.model_dump()) for j in study.judges]
    rubrics = load_rubrics(study.rubrics or None)
    meter = BudgetMeter(study.budget, gateway)
    if meter.limited:
        meter.before = spent_in_store(store)
    try:
        return await judge_store(
            store,
            gateway,
            rubrics,
            judges,
            options=PanelOptions.from_study(study.judging),
            over_budget=meter.exhausted if meter.limited else None,
        )
    except BudgetExhausted as exc:
        console.print(f"[yellow]judging stopped: {exc}; rerun with a larger budget to finish[/]")
        return exc.done
    finally:
        record_judging(store, meter)


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

    from therasim.agents.gold import default_split, load_gold, select_split, shipped_gold_files

    files = [Path(f) for f in spec.gold] or shipped_gold_files()
    digest = hashlib.sha256(spec.model_dump_json().encode())
    digest.update((study.appraiser.model or "").encode())
    entries = study.judges if spec.judges else []
    if entries:
        digest.update(study.judging.mode.encode())
    for entry in entries:
        digest.update(entry.model_dump_json().encode())
    for f in files:
        with contextlib.suppress(OSError):  # load_gold names a missing file below
            digest.update(f.read_bytes())
    key = digest.hexdigest()
    stored = store.get_meta("calibration")
    if isinstance(stored, dict) and stored.get("key") == key:
        return stored
    from therasim.evaluation.judging.calibration import (
        calibrate,  # numpy, the panel: only when needed
    )
    from therasim.evaluation.judging.panel import JudgeSpec

    judges = [JudgeSpec(**j.model_dump()) for j in entries]
    split = spec.split or default_split(bool(spec.gold))
    turns = select_split(load_gold(files), split)
    if not turns:
        raise ConfigError(f"no gold turns in split {split!r}", field="calibration.split")
    if study.appraiser.model == "scripted:statistical":
        from therasim.agents.statcoder import trained_on_warning

        if warning := trained_on_warning(turns, "calibration turns"):
            console.print(f"[yellow]warning:[/] {warning}")
    with _progress_bar(console) as bar:
        task = bar.add_task("calibration", total=None, info="", visible=show_progress)
        report = await calibrate(
            gateway,
            turns,
            appraiser=study.appraiser.model or "",
            judges=judges,
            split=split,
            gold_files=[str(f) for f in files],
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            judging_mode=study.judging.mode,
        )
    record = {"key": key, "min_f1": spec.min_f1, "min_recall": spec.min_recall}
    record["report"] = report.model_dump(mode="json")
    store.set_meta("calibration", record)
    return record


async def recalibrate_panel(store_path: Path, console: Console, *, no_cache: bool = False) -> bool:
    """After ``therasim judge`` changed a calibrated run's panel: calibrate the panel now in the
    store, as its study would, so the judge-dependent axes are gated on the judges that scored
    the sessions and not on the panel calibrated before. False when there was nothing to do
    (not a study's store, no panel calibration, or the same panel)."""
    from therasim.simulations.study import JudgeEntry

    with Store(store_path) as store:
        saved, calibration = store.get_meta("study"), store.get_meta("calibration")
        panel = store.verdict_models()
    if not isinstance(saved, dict) or not isinstance(calibration, dict):
        return False
    study = Study.model_validate(saved)
    if study.calibration is None or not study.calibration.judges:
        return False
    calibrated = {(j["name"], j["model"]) for j in calibration.get("report", {}).get("judges", [])}
    now = {(name, model) for name, models in panel.items() for model in models}
    if now == calibrated:
        return False
    kept = {j.name: j for j in study.judges}
    entries = [
        kept[name]
        if name in kept and kept[name].model == model
        else JudgeEntry(name=name, model=model)
        for name, model in sorted(now)
    ]
    study = study.model_copy(update={"judges": entries, "cache": study.cache and not no_cache})
    names = ", ".join(name for name, _ in sorted(now))
    console.print(f"the panel changed since calibration: calibrating {names}")
    gateway = Gateway(study.gateway_config())
    try:
        with Store(store_path) as store:
            await calibrate_study(study, gateway, store, console)
            store.set_meta("study", study.model_dump(mode="json"))
    finally:
        await gateway.aclose()
    return True


async def _simulate_and_judge(
    study: Study, store_path: Path, console: Console, *, judge: bool, show_progress: bool
) -> tuple[RunStats, int]:
    gateway = Gateway(study.gateway_config())
    try:
        with Store(store_path) as store:
            store.set_meta("study", study.model_dump(mode="json"))
            await calibrate_study(study, gateway, store, console, show_progress=show_progress)
            stats = await simulate_study(
                study, gateway, store, console, show_progress=show_progress
            )
            if study.mode != "sessions":  # the single-turn battery (therasim/battery_pipeline.py)
                from therasim.battery_pipeline import answer_battery

                await answer_battery(
                    study, gateway, store, console, store_path.parent, show_progress=show_progress
                )
            judged = await judge_study(study, gateway, store, console) if judge else 0
            return stats, judged
    finally:
        await gateway.aclose()


def run_study(
    path: str | Path,
    *,
    judge: bool = True,
    report: bool = True,
    console: Console | None = None,
    show_progress: bool = True,
    on_stats: Callable[[RunStats], Any] | None = None,
    output: str | None = None,
    wait: bool = False,
) -> StudyRun:
    """``therasim run``: simulate what is not done, judge what is not judged, report.

    ``output`` overrides the study's output folder (``--output``). One run at a time holds the
    run folder (``runlock.py``); ``wait`` waits for another to finish instead of refusing."""
    console = console or Console()
    study = load_study(path)
    if output:
        study = study.model_copy(update={"output": output})
    preflight(study, path)  # a typo fails now, not after the sessions
    out_dir = study.output_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    store_path = study_store(out_dir)
    with run_lock(out_dir, wait=wait):
        if Path(path).resolve() != (out_dir / "study.yaml").resolve():
            shutil.copyfile(path, out_dir / "study.yaml")  # the run folder says what produced it
        stats, judged = asyncio.run(
            _simulate_and_judge(
                study, store_path, console, judge=judge, show_progress=show_progress
            )
        )
        if on_stats:
            on_stats(stats)
        html = write_reports(study, store_path, out_dir, console) if report else None
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
    from therasim.evaluation.analysis.axes import false_beliefs, readiness
    from therasim.evaluation.report.calibration_card import calibration_gate

    library = load_library()
    return readiness(
        frames,
        study.thresholds if study else None,
        false_belief_personas=false_beliefs(library.values()),
        gate=calibration_gate(calibration),
        noop_pairs=len(expand_study(study, library).skipped) if study else None,
    )


def write_reports(
    study: Study | None, store_path: Path, out_dir: Path, console: Console
) -> Path | None:
    """Console tables, the calibration card and the verdict, and the HTML report."""
    from therasim.evaluation.analysis.frames import load_frames
    from therasim.evaluation.report.calibration_card import print_calibration, stored_calibration
    from therasim.evaluation.report.console import print_report
    from therasim.evaluation.report.html import write_html_report
    from therasim.evaluation.report.readiness_console import print_verdicts

    with Store(store_path) as store:
        frames = load_frames(store, with_calls=False)
        calibration = stored_calibration(store)
    all_frames = frames
    if study is not None and study.mode != "sessions":  # the battery's own tables, below
        from therasim.evaluation.analysis.battery import split_frames

        frames = split_frames(all_frames)[0]
    print_report(frames, console, battery_only=study is not None and study.mode == "battery")
    verdicts = verdicts_of(frames, study, calibration)
    print_calibration(calibration, console)
    print_verdicts(verdicts, console)
    if study is not None and study.mode != "sessions":
        from therasim.battery_pipeline import report_battery

        report_battery(all_frames, study, console)
    battery = (
        split_frames(all_frames)[1] if study is not None and study.mode != "sessions" else None
    )
    path = write_html_report(
        frames,
        out_dir / "report.html",
        study=study,
        verdicts=verdicts,
        calibration=calibration,
        battery=battery,
    )
    console.print(f"[bold]HTML report:[/] {path}")
    return path
