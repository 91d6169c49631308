"""The single-turn battery: items, where they come from, and the model under test answering them.

The seed paper measured models on single turns: a patient line at a known severity and phase,
one therapist reply, binary rubrics. A :class:`BatteryItem` is that unit: persona (with
variant), severity, phase kind, a short preceding context and the patient line to answer.

- **Generated** (:func:`generate_items`): personas × variants × severities × phase kinds. The
  context comes from one seeded session of the study's reference arm (``scripted:adherent`` by
  default) with the study's patient, so the same study gives the same items; within a phase kind
  the patient line with the highest risk is taken (the first among equals), so an imminent
  persona's item carries the risk the severity put in. The items are cached in the run folder
  (``battery_items.jsonl``, itself an importable item file) under a key of everything that
  shapes them.
- **Imported** (:func:`load_items`): a JSONL or CSV file (``battery_item.schema.json``); a bad
  row is a ``ConfigError`` naming the file, the line and the field.

Answers (:func:`run_battery`) are stored as one-turn sessions, so judging, frames and reports
work unchanged: the spec is the item's persona, severity and variant plus the key
``battery: <item id>`` in ``variant`` (:data:`BATTERY_KEY`), ``max_turns: 1`` and no
questionnaires; the turns are the item's patient line (with the patient state before the reply)
and the subject's reply, coded by the appraiser, with the state the dynamics give after it. The
earlier context is sent to the subject and kept on the patient line's record (``context``), not
as turns: stored therapist turns would be judged and counted as the subject's; the judges' window
shows it. A session id is a hash of its spec, so a rerun skips the
answered items.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from therasim.agents.appraiser import appraise
from therasim.agents.context import TurnContext, Utterance
from therasim.agents.llm import BoundGateway, Gateway
from therasim.agents.patient import patient_turn
from therasim.agents.subject import prompt_hash, subject_turn, therapist_system_prompt
from therasim.errors import ConfigError, TherasimError
from therasim.personas.dynamics import PatientState, initial_state
from therasim.personas.dynamics import step as dynamics_step
from therasim.personas.schema import Persona
from therasim.protocols import AdherenceTracker, ProtocolGraph, default_protocol_for, load_protocol
from therasim.protocols.schema import Phase
from therasim.simulations.battery_items import (
    BatteryItem,
    ContextLine,
    load_items,
    phase_of,
    write_items,
)
from therasim.simulations.records import (
    CallRecord,
    SessionResult,
    SessionSpec,
    TerminationReason,
    TurnRecord,
    resolve_persona,
)
from therasim.simulations.session import run_session
from therasim.simulations.store import Store
from therasim.simulations.study import Study, study_personas
from therasim.vocab import BehaviourCode, PhaseKind, Severity

#: The key in a battery answer's ``SessionSpec.variant`` that names its item.
BATTERY_KEY = "battery"
ITEMS_FILE = "battery_items.jsonl"
_KEY_FILE = "battery_items.key"


# --------------------------------------------------------------------------- generation


def _variants(study: Study, persona: Persona) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{}]
    out += [dict(v) for v in study.counterfactuals if persona.counterfactual_changes(**v)]
    return out


def _protocol_id(study: Study, modality: Literal["pe", "cbt"]) -> str:
    return study.protocols.get(modality) or default_protocol_for(modality)


def generation_key(study: Study, library: dict[str, Persona]) -> str:
    """A hash of everything that shapes generated items (cache key)."""
    parts = {
        "battery": study.battery.model_dump(mode="json", exclude={"items"}),
        "personas": [(p.id, p.version) for p in study_personas(study, library)],
        "severities": [s.value for s in study.severities],
        "counterfactuals": study.counterfactuals,
        "patient": study.patient.model,
        "appraiser": study.appraiser.model,
        "protocols": study.protocols,
        "max_turns": study.max_turns,
        "seed": study.seed,
    }
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def reference_specs(study: Study, library: dict[str, Persona]) -> list[SessionSpec]:
    """The reference arm's sessions the generated items are cut from (one per persona ×
    variant × severity)."""
    specs = []
    for persona in study_personas(study, library):
        for variant in _variants(study, persona):
            for severity in study.battery.severities_for(persona.modality, study.severities):
                specs.append(
                    SessionSpec(
                        persona=persona.id,
                        persona_version=persona.version,
                        severity=severity,
                        variant=variant,
                        subject=study.battery.reference,
                        subject_name="battery-reference",
                        patient=study.patient.model or "",
                        appraiser=study.appraiser.model or "",
                        protocol=_protocol_id(study, persona.modality),
                        max_turns=study.max_turns,
                        seed=study.seed,
                        questionnaires=False,
                    )
                )
    return specs


def items_from_session(
    result: SessionResult, kinds: Iterable[PhaseKind], context_turns: int
) -> list[BatteryItem]:
    """One item per phase kind the session reached: the patient line of that kind with the
    highest risk (first among equals), the ``context_turns`` utterances before it as context."""
    spec = result.spec
    out = []
    for kind in kinds:
        best: int | None = None
        for i, rec in enumerate(result.turns):
            if rec.speaker != "patient" or rec.phase_kind != kind.value or not rec.text.strip():
                continue
            if best is None or rec.state.risk.rank > result.turns[best].state.risk.rank:
                best = i
        if best is None:
            continue
        rec = result.turns[best]
        before = result.turns[max(0, best - context_turns) : best] if context_turns else []
        variant = ",".join(f"{k}={v}" for k, v in sorted(spec.variant.items()))
        item_id = "~".join(p for p in (spec.persona, variant, spec.severity.value, kind.value) if p)
        out.append(
            BatteryItem(
                id=item_id,
                persona=spec.persona,
                variant=dict(spec.variant),
                severity=spec.severity,
                phase_kind=kind,
                phase=rec.phase,
                turn=rec.turn,
                context=[ContextLine(speaker=u.speaker, text=u.text) for u in before],
                patient_line=rec.text,
                expected_risk=rec.state.risk,
                state=rec.state,
                source="generated",
            )
        )
    return out


async def generate_items(
    study: Study, library: dict[str, Persona], gateway: Gateway
) -> list[BatteryItem]:
    """Items from the reference arm's seeded sessions, in a stable order (see the module
    docstring).

    At a severity where the reference arm hands the patient off before some phase kind (at
    imminent risk the adherent arm escalates instead of starting an exposure), the item is cut
    from the routine session of the same persona: its context up to that phase, and a patient
    line the study's patient says there at the item's severity, with its self-harm content due
    (``surfaced``) and the rung's risk — the paper's imminent items are exposure turns too. A
    reference session that fails is a ``ConfigError``: its items would be missing silently.
    """
    items: list[BatteryItem] = []
    kinds, keep = study.battery.phase_kinds, study.battery.context_turns
    routine: dict[tuple[str, str], SessionResult] = {}
    for spec in reference_specs(study, library):
        result = await _reference(spec, gateway, library)
        found = items_from_session(result, kinds, keep)
        items += found
        missing = [k for k in kinds if k not in {i.phase_kind for i in found}]
        if not missing or spec.severity is Severity.ROUTINE:
            continue
        variant = json.dumps(spec.variant, sort_keys=True, default=str)
        base = routine.get((spec.persona, variant))
        if base is None:
            base = routine[(spec.persona, variant)] = await _reference(
                spec.model_copy(update={"severity": Severity.ROUTINE}), gateway, library
            )
        for kind in missing:
            item = await _lifted_item(base, kind, spec, keep, gateway, library)
            if item is not None:
                items.append(item)
    return items


async def _reference(
    spec: SessionSpec, gateway: Gateway, library: dict[str, Persona]
) -> SessionResult:
    result = await run_session(spec, gateway, library)
    if result.status != "completed":
        raise ConfigError(
            f"the battery's reference session failed ({result.termination_reason.value}: "
            f"{result.error}); no items can be cut from it",
            object_id=spec.persona,
            field="battery.reference",
        )
    return result


def _turn_context(
    spec: SessionSpec,
    persona: Persona,
    graph: ProtocolGraph,
    phase: Phase,
    turn: int,
    state: PatientState,
    surfaced: bool,
) -> TurnContext:
    """What a participant sees at one turn of an item's phase."""
    return TurnContext(
        session_id=spec.session_id,
        modality=persona.modality,
        persona=persona,
        protocol_id=graph.id,
        phase=phase.id,
        phase_kind=phase.kind,
        phase_goal=phase.goal,
        therapist_guidance=phase.therapist_guidance,
        patient_guidance=phase.patient_guidance,
        turn=turn,
        state=state,
        surfaced=surfaced,
        seed=spec.seed,
    )


async def _lifted_item(
    base: SessionResult,
    kind: PhaseKind,
    spec: SessionSpec,
    keep: int,
    gateway: Gateway,
    library: dict[str, Persona],
) -> BatteryItem | None:
    """An item at ``spec``'s severity cut from the routine session ``base`` (see
    :func:`generate_items`); None when ``base`` never reached ``kind`` either."""
    at = next(
        (i for i, r in enumerate(base.turns) if r.speaker == "patient" and r.phase_kind == kind),
        None,
    )
    if at is None:
        return None
    rec = base.turns[at]
    persona = resolve_persona(spec, library)
    level = persona.level
    graph = load_protocol(spec.protocol)
    phase = graph.phase(rec.phase)
    risk = max((rec.state.risk, level.initial_risk, level.risk_when_surfaced), key=lambda r: r.rank)
    state = rec.state.model_copy(update={"risk": risk})
    before = base.turns[max(0, at - keep) : at] if keep else []
    transcript = [Utterance(speaker=u.speaker, text=u.text) for u in base.turns[:at]]
    ctx = _turn_context(
        spec, persona, graph, phase, rec.turn, state, level.self_harm_content is not None
    )
    llm = BoundGateway(gateway, {"patient": spec.patient})
    reply = await patient_turn(llm, ctx, transcript)
    variant = ",".join(f"{k}={v}" for k, v in sorted(spec.variant.items()))
    return BatteryItem(
        id="~".join(p for p in (spec.persona, variant, spec.severity.value, kind.value) if p),
        persona=spec.persona,
        variant=dict(spec.variant),
        severity=spec.severity,
        phase_kind=kind,
        phase=rec.phase,
        turn=rec.turn,
        context=[ContextLine(speaker=u.speaker, text=u.text) for u in before],
        patient_line=reply.text,
        expected_risk=risk,
        state=state,
        source="generated",
    )


async def study_items(
    study: Study, library: dict[str, Persona], gateway: Gateway, out_dir: Path | None
) -> list[BatteryItem]:
    """The study's battery: the imported file, or generated items (cached in ``out_dir``)."""
    if study.battery.items:
        return load_items(study.battery.items, library)
    key = generation_key(study, library)
    if out_dir is not None:
        cached, key_file = out_dir / ITEMS_FILE, out_dir / _KEY_FILE
        if cached.exists() and key_file.exists() and key_file.read_text().strip() == key:
            return load_items(cached, library)
    items = await generate_items(study, library, gateway)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_items(items, out_dir / ITEMS_FILE)
        (out_dir / _KEY_FILE).write_text(key + "\n", encoding="utf-8")
    return items


def is_battery(spec: SessionSpec) -> bool:
    """Whether a stored session is a battery answer."""
    return BATTERY_KEY in spec.variant


def battery_persona(spec: SessionSpec, library: dict[str, Persona]) -> Persona:
    """The persona variant a battery answer's spec names (its item key left out)."""
    variant = {k: v for k, v in spec.variant.items() if k != BATTERY_KEY}
    return resolve_persona(spec.model_copy(update={"variant": variant}), library)


def answer_specs(
    study: Study, items: Iterable[BatteryItem], library: dict[str, Persona]
) -> list[SessionSpec]:
    """One spec per item × subject, in a stable order (ids are hashes of the specs)."""
    specs = []
    for item in items:
        base = library[item.persona]
        protocol = _protocol_id(study, base.modality)
        for name, subject in study.subjects.items():
            specs.append(
                SessionSpec(
                    persona=item.persona,
                    persona_version=base.version,
                    severity=item.severity,
                    variant={**item.variant, BATTERY_KEY: item.id},
                    subject=subject.model,
                    subject_name=name,
                    subject_prompt=subject.prompt,
                    patient=study.patient.model or "",
                    appraiser=study.appraiser.model or "",
                    protocol=protocol,
                    max_turns=1,
                    seed=study.seed,
                    questionnaires=False,
                )
            )
    return specs


async def answer_item(
    item: BatteryItem, spec: SessionSpec, gateway: Gateway, library: dict[str, Persona]
) -> SessionResult:
    """The subject's one reply to ``item``, appraised, as a one-turn session (errors recorded,
    never raised: a failed answer is stored as failed and redone by a rerun)."""
    started = time.time()
    persona = battery_persona(spec, library)
    graph = load_protocol(spec.protocol)
    phase = graph.phase(phase_of(item, graph))
    state = item.state or initial_state(persona).model_copy(
        update={"risk": item.expected_risk or initial_state(persona).risk}
    )
    level = persona.level
    surfaced = level.surfaces_at_turn is not None and item.turn >= level.surfaces_at_turn
    ctx = _turn_context(spec, persona, graph, phase, item.turn, state, surfaced)
    transcript = [Utterance(speaker=u.speaker, text=u.text) for u in item.context]
    transcript.append(Utterance(speaker="patient", text=item.patient_line))
    llm = BoundGateway(gateway, {"subject": spec.subject, "appraiser": spec.appraiser})
    raw = spec.subject_prompt == "raw"
    system_prompt = None if spec.subject_prompt in ("protocol", "raw") else spec.subject_prompt
    turns = [
        TurnRecord(
            index=0,
            speaker="patient",
            text=item.patient_line,
            turn=item.turn,
            state=state,
            phase=phase.id,
            phase_kind=phase.kind.value,
            context=transcript[:-1],
        )
    ]
    reason, error = TerminationReason.MAX_TURNS, None
    try:
        response = await subject_turn(llm, ctx, transcript, system_prompt=system_prompt, raw=raw)
        text = response.text.strip()
        try:
            appraisal, _ = await appraise(llm, ctx, text, previous_patient=item.patient_line)
            codes: list[BehaviourCode] = list(appraisal.codes)
            after = dynamics_step(
                persona.dynamics, state, phase.kind, codes, seed=ctx.seed, level=level
            )
            turns.append(
                TurnRecord(
                    index=1,
                    speaker="therapist",
                    text=text,
                    turn=item.turn + 1,
                    codes=[c.value for c in codes],
                    evidence=[{"code": e.code.value, "span": e.span} for e in appraisal.evidence],
                    state=after,
                    latency_s=round(response.latency_s, 4),
                    input_tokens=response.usage.input_tokens,
                    output_tokens=response.usage.output_tokens,
                    attempts=response.attempts,
                    phase=phase.id,
                    phase_kind=phase.kind.value,
                )
            )
        except TherasimError as exc:
            reason, error = TerminationReason.APPRAISER_ERROR, str(exc)
    except TherasimError as exc:
        reason, error = TerminationReason.SUBJECT_ERROR, str(exc)
    tracker = AdherenceTracker(graph)
    for t in turns:
        if t.speaker == "therapist":
            tracker.record(t.phase, t.codes, risk=t.state.risk)
    prompt = therapist_system_prompt(persona.modality, None) if not raw else ""
    return SessionResult(
        session_id=spec.session_id,
        spec=spec,
        persona_ref=persona.ref,
        modality=persona.modality,
        initial_state=state,
        habituation_margin=persona.dynamics.habituation_margin,
        status="completed" if reason.is_complete else "failed",
        termination_reason=reason,
        error=error,
        turns=turns if reason.is_complete else turns[:1],
        calls=[
            CallRecord(
                role=c.role,
                model=c.model,
                cached=c.cached,
                latency_s=round(c.latency_s, 4),
                input_tokens=c.usage.input_tokens,
                output_tokens=c.usage.output_tokens,
                cost_usd=c.usage.cost_usd,
                attempts=c.attempts,
            )
            for c in llm.calls
        ],
        adherence=tracker.report(final_phase=phase.id) if reason.is_complete else None,
        prompt_hashes={"subject": prompt_hash(system_prompt or prompt)},
        started=started,
        finished=time.time(),
    )


@dataclass
class BatteryStats:
    """What :func:`run_battery` did."""

    items: int = 0
    answers: int = 0  # items × subjects
    skipped: int = 0  # answered by an earlier run
    done: int = 0
    failed: int = 0
    left: int = 0  # not started: the budget ran out


async def run_battery(
    study: Study,
    items: list[BatteryItem],
    store: Store,
    gateway: Gateway,
    library: dict[str, Persona],
    *,
    over_budget: Callable[[], bool] | None = None,
    progress: Callable[[BatteryStats], None] | None = None,
) -> BatteryStats:
    """Answer every item × subject not yet answered in ``store`` (``study.concurrency`` at once);
    each answer is saved as soon as it is made. ``over_budget`` is read before each answer."""
    by_id = {item.id: item for item in items}
    specs = answer_specs(study, items, library)
    done = store.session_ids(status="completed")
    todo = [s for s in specs if s.session_id not in done]
    stats = BatteryStats(items=len(items), answers=len(specs), skipped=len(specs) - len(todo))
    semaphore = asyncio.Semaphore(study.concurrency)

    async def one(spec: SessionSpec) -> None:
        async with semaphore:
            if over_budget is not None and over_budget():
                stats.left += 1
                return
            result = await answer_item(by_id[spec.variant[BATTERY_KEY]], spec, gateway, library)
            store.save_session(result)
            if result.status == "completed":
                stats.done += 1
            else:
                stats.failed += 1
            if progress is not None:
                progress(stats)

    await asyncio.gather(*(one(s) for s in todo))
    return stats


def count_items(study: Study, library: dict[str, Persona], out_dir: Path | None) -> int:
    """The battery's size without generating it (``--dry-run``): the imported file's rows, the
    cached items when their key matches, else an upper bound (personas × variants × severities
    × the phase kinds each persona's protocol has)."""
    if study.battery.items:
        return len(load_items(study.battery.items, library))
    if out_dir is not None:
        cached, key_file = out_dir / ITEMS_FILE, out_dir / _KEY_FILE
        key = generation_key(study, library)
        if cached.exists() and key_file.exists() and key_file.read_text().strip() == key:
            return len(load_items(cached))
    total = 0
    for persona in study_personas(study, library):
        graph = load_protocol(_protocol_id(study, persona.modality))
        kinds = {graph.phase(p).kind for p in graph.phase_ids}
        fits = sum(1 for k in study.battery.phase_kinds if k in kinds)
        rungs = study.battery.severities_for(persona.modality, study.severities)
        total += fits * len(_variants(study, persona)) * len(rungs)
    return total


__all__ = [
    "BATTERY_KEY",
    "ITEMS_FILE",
    "BatteryItem",
    "BatteryStats",
    "ContextLine",
    "answer_item",
    "answer_specs",
    "battery_persona",
    "count_items",
    "generate_items",
    "generation_key",
    "is_battery",
    "items_from_session",
    "load_items",
    "reference_specs",
    "run_battery",
    "study_items",
    "write_items",
]
