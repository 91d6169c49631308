"""The battery's stages in a study run (``mode: battery | both``): answer, estimate, report.

Above every layer like ``therasim/pipeline.py``, which calls these three functions from its
simulate, dry-run and report steps; kept apart so the session pipeline reads as it did.

- :func:`answer_battery` — the items (imported, or generated and cached in the run folder) and
  one answer per item × subject through the gateway, resumable and metered by the budget.
- :func:`add_battery_estimate` — ``--dry-run``: items × subjects × judges, calls and cost.
- :func:`report_battery` — the battery's console tables; returns the multi-turn frames alone,
  so the session tables and the readiness verdict never count the one-turn answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from therasim.agents.llm import Gateway, parse_model_spec, price_of
from therasim.agents.types import Usage
from therasim.personas.loader import load_library
from therasim.personas.schema import Persona
from therasim.simulations.battery import (
    ITEMS_FILE,
    BatteryItem,
    BatteryStats,
    answer_specs,
    count_items,
    generation_key,
    load_items,
    reference_specs,
    run_battery,
    study_items,
)
from therasim.simulations.budget import BudgetMeter, spent_in_store
from therasim.simulations.runner import Estimate, estimate
from therasim.simulations.store import Store
from therasim.simulations.study import Study

if TYPE_CHECKING:
    from therasim.evaluation.analysis.frames import Frames

__all__ = ["add_battery_estimate", "answer_battery", "battery_frames", "report_battery"]

# One battery answer: the subject's prompt with up to ``context_turns`` utterances, one reply,
# and the appraiser's coding (the runner's per-role figures for a session's turn).
SUBJECT_TOKENS_IN, SUBJECT_TOKENS_OUT = 900, 150
APPRAISER_TOKENS_IN, APPRAISER_TOKENS_OUT = 1_200, 120
JUDGE_TOKENS_IN, JUDGE_TOKENS_OUT = 800, 60


async def answer_battery(
    study: Study,
    gateway: Gateway,
    store: Store,
    console: Console,
    out_dir: Path,
    *,
    show_progress: bool = True,
) -> BatteryStats:
    """Every item × subject not yet answered in ``store``; stops starting answers once the
    budget is spent (a rerun with more budget answers the rest)."""
    library = load_library()
    items = await study_items(study, library, gateway, out_dir)
    meter = BudgetMeter(study.budget, gateway)
    if meter.limited:
        meter.before = spent_in_store(store)
    stats = await run_battery(
        study,
        items,
        store,
        gateway,
        library,
        over_budget=meter.exhausted if meter.limited else None,
    )
    if show_progress:
        console.print(
            f"battery: {stats.items} items × {len(study.subjects)} subjects = {stats.answers} "
            f"answers ({stats.done} answered now, {stats.skipped} already, {stats.failed} failed"
            + (f", {stats.left} not started: budget spent" if stats.left else "")
            + ")"
        )
    if stats.left:
        console.print("[yellow]battery stopped: the budget is spent; rerun with a larger one[/]")
    return stats


def _judge_calls(study: Study, library: dict[str, Persona], items: list[BatteryItem] | None) -> int:
    """Judge calls one judge makes on every answer of the battery."""
    from therasim.evaluation.judging.rubric import item_fits, load_rubrics

    rubric_items = [i for r in load_rubrics(study.rubrics or None) for i in r.items]
    batched = study.judging.mode == "turn"
    calls = 0
    if items is not None:
        cells = [(library[i.persona].modality, i.phase_kind.value) for i in items]
    else:  # the generated battery, before generation: its upper bound
        from therasim.protocols import default_protocol_for, load_protocol
        from therasim.simulations.study import study_personas

        cells = []
        for persona in study_personas(study, library):
            graph = load_protocol(
                study.protocols.get(persona.modality) or default_protocol_for(persona.modality)
            )
            kinds = {graph.phase(p).kind for p in graph.phase_ids}
            rungs = study.battery.severities_for(persona.modality, study.severities)
            per = len(rungs) * (1 + len(study.counterfactuals))
            fit = [k for k in study.battery.phase_kinds if k in kinds]
            cells += [(persona.modality, k.value) for k in fit] * per
    for modality, kind in cells:
        turn = sum(item_fits(i, modality=modality, phase_kind=kind) for i in rubric_items)
        # an answer is one reply: session items are not asked of it
        calls += (1 if turn else 0) if batched else turn
    return calls * len(study.subjects)


def _known_items(
    study: Study, library: dict[str, Persona], out_dir: Path | None
) -> list[BatteryItem] | None:
    """The imported items, or the generated ones when their cache is current; else None."""
    if study.battery.items:
        return load_items(study.battery.items, library)
    if out_dir is None:
        return None
    cached, key = out_dir / ITEMS_FILE, out_dir / "battery_items.key"
    current = key.exists() and key.read_text().strip() == generation_key(study, library)
    return load_items(cached, library) if current and cached.exists() else None


def add_battery_estimate(est: Estimate, study: Study, out_dir: Path | None) -> str:
    """Add the battery's calls (generation, answers, judging) to ``est``; returns the line the
    dry run shows: items × subjects × judges."""
    library = load_library()
    items = _known_items(study, library, out_dir)
    n_items = len(items) if items is not None else count_items(study, library, out_dir)
    answers = n_items * len(study.subjects)
    to_run = answers
    store_path = out_dir / "sessions.sqlite" if out_dir is not None else None
    if items is not None and store_path is not None and store_path.exists():
        with Store(store_path) as store:
            done = store.session_ids(status="completed")
        to_run = sum(1 for s in answer_specs(study, items, library) if s.session_id not in done)
    share = to_run / answers if answers else 0.0
    per_subject = n_items * share
    for subject in study.subjects.values():
        _add(
            est,
            "battery subject",
            subject.model,
            per_subject,
            SUBJECT_TOKENS_IN,
            SUBJECT_TOKENS_OUT,
            study,
        )
        _add(
            est,
            "battery appraiser",
            study.appraiser.model or "",
            per_subject,
            APPRAISER_TOKENS_IN,
            APPRAISER_TOKENS_OUT,
            study,
        )
    judge_calls = round(_judge_calls(study, library, items) * share)
    for judge in study.judges:
        _add(
            est,
            f"battery judge:{judge.name}",
            judge.model,
            judge_calls,
            JUDGE_TOKENS_IN,
            JUDGE_TOKENS_OUT,
            study,
        )
    if items is None:  # generation: the reference arm's sessions
        gen = estimate(study, reference_specs(study, library), set())
        for role, entry in gen.per_role.items():
            row = est.per_role.setdefault(
                f"battery gen {role}", {"calls": 0, "tokens": 0, "backend_calls": 0}
            )
            for name in row:
                row[name] += entry[name]
        est.calls += gen.calls
        est.tokens += gen.tokens
        est.cost_usd = (
            None if est.cost_usd is None or gen.cost_usd is None else est.cost_usd + gen.cost_usd
        )
    exact = "" if items is not None else " at most"
    line = (
        f"battery:{exact} {n_items} items × {len(study.subjects)} subjects = {answers} answers "
        f"({to_run} to run) × {len(study.judges)} judges: {judge_calls} judge calls"
    )
    est.assumptions = f"{line}; {est.assumptions}"
    return line


def _add(
    est: Estimate, role: str, model_spec: str, calls: float, tin: int, tout: int, study: Study
) -> None:
    n = round(calls)
    model = parse_model_spec(model_spec)
    row = est.per_role.setdefault(role, {"calls": 0, "tokens": 0, "backend_calls": 0})
    row["calls"] += n
    row["tokens"] += n * (tin + tout)
    row["backend_calls"] += n if model.is_real else 0
    est.calls += n
    est.tokens += n * (tin + tout)
    cost = price_of(model, Usage(input_tokens=n * tin, output_tokens=n * tout), dict(study.prices))
    est.cost_usd = None if cost is None or est.cost_usd is None else est.cost_usd + cost


def report_battery(frames: Frames, study: Study | None, console: Console) -> Frames:
    """Print the battery's tables (when the run holds answers); the multi-turn frames."""
    from therasim.evaluation.analysis.battery import battery_polarity, split_frames
    from therasim.evaluation.report.battery_console import print_battery

    sessions, _ = split_frames(frames)
    print_battery(frames, console, battery_polarity(study.rubrics if study else None))
    return sessions


def battery_frames(frames: Frames, study: Study | None) -> dict[str, object]:
    """The frames ``report --format`` exports beside the others: ``items`` (one row per item
    and subject, with ``score``) and ``single_vs_multi`` (``mode: both``)."""
    from therasim.evaluation.analysis.battery import battery_polarity, item_frame, single_vs_multi

    polarity = battery_polarity(study.rubrics if study else None)
    return {
        "items": item_frame(frames, polarity),
        "single_vs_multi": single_vs_multi(frames, polarity),
    }
