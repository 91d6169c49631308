"""What a judge sees of a session: the units judged, their bounded prompt values and metadata.

A **unit** is one therapist turn (turn items) or the whole session (session items), with every
rubric item that applies to it (:func:`item_applies`, checked in code before any call). The
values fill the judge templates; the metadata feeds the scripted judges (see
:mod:`therasim.evaluation.judging.scripted_judges` for its keys).

- A turn sees the reply under judgement (clipped to ``max_reply_chars``) plus at most
  ``window`` previous utterances (each clipped to ``max_context_chars``), the phase, its goal
  and the patient's state just before the reply (:func:`turn_window`).
- A session sees a summary bounded whatever the length (:func:`session_summary`) and the
  persona facts (:func:`persona_facts`).
- Which turns: all, or a sample (:mod:`therasim.evaluation.judging.sampling`); a sampled turn's
  unit carries its design weight, which its verdict rows keep.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from therasim.errors import TherasimError
from therasim.evaluation.judging.detectors import TherapistTurn, therapist_turns
from therasim.evaluation.judging.judges import PanelOptions
from therasim.evaluation.judging.prompts import clip, escape_untrusted
from therasim.evaluation.judging.rubric import Rubric, RubricItem, item_applies
from therasim.evaluation.judging.sampling import weighted_sample
from therasim.personas.dynamics import DynamicsParams, PatientState, initial_state
from therasim.personas.schema import Persona
from therasim.simulations.records import SessionResult, TurnRecord
from therasim.vocab import PhaseKind

__all__ = [
    "Unit",
    "persona_facts",
    "prefix_items",
    "session_summary",
    "session_units",
    "turn_window",
]

Scope = Literal["turn", "session"]

# digits with spaces, dashes, dots or an area code in brackets: "(800) 273-8255", "800.799.7233"
_PHONE = re.compile(r"(?<![\w.-])(?:\+?\(?\d[\d ().-]{1,14}\d|\d{3})(?![\w-])")
_EXPOSURE_KINDS = frozenset(k.value for k in PhaseKind if k.is_exposure)


@functools.lru_cache(maxsize=32)
def _protocol(protocol_id: str) -> Any:
    from therasim.protocols.graph import load_protocol

    try:
        return load_protocol(protocol_id)
    except (TherasimError, OSError):
        return None


def _phase_info(result: SessionResult, phase_id: str) -> tuple[str, list[str]]:
    """The phase's goal and proscribed codes, from the session's protocol ('' and [] if unknown)."""
    graph = _protocol(result.spec.protocol)
    if graph is None:
        return "", []
    try:
        phase = graph.phase(phase_id)
    except TherasimError:
        return "", []
    return phase.goal, [c.value for c in phase.proscribed_codes]


def _label(record: TurnRecord) -> str:
    who = "THERAPIST" if record.speaker == "therapist" else "PATIENT"
    return f"[{who}, turn {record.turn}, phase {record.phase}]"


def turn_window(result: SessionResult, turn: TherapistTurn, options: PanelOptions) -> str:
    """The bounded, escaped transcript excerpt a turn item sees (goes inside <transcript>): the
    ``window`` utterances before the reply, reaching into the context the subject saw before the
    session's first turn (a battery item's) when the session is shorter than the window."""
    start = turn.position - options.window
    earlier = result.turns[0].context if result.turns and start < 0 else []
    lines = [
        f"[{u.speaker.upper()}, before this excerpt] "
        + escape_untrusted(clip(u.text, options.max_context_chars))
        for u in earlier[max(0, len(earlier) + start) :]
    ]
    lines += [
        f"{_label(r)} {escape_untrusted(clip(r.text, options.max_context_chars))}"
        for r in result.turns[max(0, start) : turn.position]
    ]
    reply = escape_untrusted(clip(turn.record.text, options.max_reply_chars)) or "(empty reply)"
    lines.append(f">>> REPLY UNDER JUDGEMENT {_label(turn.record)}\n{reply}")
    return "\n".join(lines)


def _thin(values: Sequence[float], points: int) -> tuple[list[float], bool]:
    if len(values) <= points:
        return list(values), False
    idx = sorted({round(i * (len(values) - 1) / (points - 1)) for i in range(points)})
    return [values[i] for i in idx], True


def _runs(items: Iterable[str], limit: int = 20) -> str:
    runs: list[list[Any]] = []
    for item in items:
        if runs and runs[-1][0] == item:
            runs[-1][1] += 1
        else:
            runs.append([item, 1])
    text = " → ".join(f"{name}×{n}" for name, n in runs[:limit])
    return text + (f" → … ({len(runs) - limit} more)" if len(runs) > limit else "")


def _baseline(result: SessionResult, persona: Persona | None) -> PatientState | None:
    """The patient's state before the first therapist turn."""
    turns = list(therapist_turns(result))
    if not turns:
        return None
    initial: PatientState | None = getattr(result, "initial_state", None)
    if initial is not None:
        return initial
    if result.turns[0].speaker == "therapist" and persona is not None:
        try:
            return initial_state(persona)
        except (TherasimError, ValueError):
            pass
    return turns[0].state_before


def _resource_numbers(text: str) -> list[str]:
    """Phone-like numbers in sentences that offer a resource ("call 988", "text HOME to ...")."""
    numbers = []
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        if not _RESOURCE_WORDS.search(sentence):
            continue
        for match in _PHONE.finditer(sentence):
            digits = re.sub(r"\D", "", match.group(0))
            if len(digits) >= 3:
                numbers.append(digits)
    return numbers


_RESOURCE_WORDS = re.compile(
    r"\b(?:call|text|dial|phone|hotline|helpline|lifeline|crisis line|samaritans|emergency services)\b"
    r"|www\.|https?://",
    re.IGNORECASE,
)
_STOP = frozenset(
    {"the", "a", "an", "and", "or", "of", "to", "in", "on", "is", "are", "was", "were", "be"}
    | {"been", "it", "that", "this", "my", "me", "you", "your", "for", "with", "not", "no"}
    | {"if", "at", "as", "by", "from", "they", "them", "he", "she", "his", "her", "we", "our"}
)


def _excerpts(result: SessionResult, persona: Persona | None, options: PanelOptions) -> list[str]:
    belief_words: set[str] = set()
    if persona is not None and persona.false_belief:
        belief_words = {
            w
            for w in re.findall(r"[a-z']+", persona.false_belief.lower())
            if w not in _STOP and len(w) > 3
        }
    # sentence -> the turns it occurred in; repeated sentences are shown once
    found: dict[str, list[int]] = {}
    for turn in therapist_turns(result):
        for sentence in re.split(r"(?<=[.!?])\s+", turn.record.text):
            words = set(re.findall(r"[a-z']+", sentence.lower()))
            if _RESOURCE_WORDS.search(sentence) or len(words & belief_words) >= 2:
                key = clip(sentence, 240)
                if key in found or len(found) < options.max_excerpts:
                    found.setdefault(key, []).append(turn.record.turn)
    lines = []
    for sentence, turns in found.items():
        where = ", ".join(str(t) for t in turns[:5]) + (
            f" and {len(turns) - 5} more" if len(turns) > 5 else ""
        )
        lines.append(f"turn{'s' if len(turns) > 1 else ''} {where}: {sentence}")
    return lines


def _fmt(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def session_summary(
    result: SessionResult, options: PanelOptions, persona: Persona | None = None
) -> str:
    """The bounded, escaped session summary a session item sees (goes inside <transcript>)."""
    turns = list(therapist_turns(result))
    states = [t.record.state for t in turns]
    baseline = _baseline(result, persona)
    lines = [
        f"Therapy: {result.modality}; protocol {result.spec.protocol}; severity "
        f"{result.spec.severity.value}; {len(turns)} therapist turns; ended: "
        f"{result.termination_reason.value}.",
        f"Phases (per therapist turn): {_runs(t.record.phase for t in turns)}",
    ]
    if baseline is not None and states:
        suds, thinned = _thin([s.suds for s in states], options.summary_points)
        lines.append(
            f"SUDS at start {_fmt(baseline.suds)}; after each therapist turn"
            f"{' (evenly sampled)' if thinned else ''}: {', '.join(_fmt(v) for v in suds)}; "
            f"peak {_fmt(max(s.peak_suds for s in states))}; final {_fmt(states[-1].suds)}."
        )
        risk_runs = _runs([baseline.risk.value, *(s.risk.value for s in states)])
        lines.append(f"Self-harm risk (start, then per turn): {risk_runs}")
        lines.append(
            f"Alliance 0-1: start {baseline.alliance:.2f}, lowest {min(s.alliance for s in states):.2f}, "
            f"final {states[-1].alliance:.2f}. Engagement final {states[-1].engagement:.2f}. "
            f"Patient left the session: {'yes' if states[-1].dropout else 'no'}."
        )
        if result.modality == "cbt":
            lines.append(
                f"Belief in the automatic thought: start {_fmt(baseline.belief)} %, final "
                f"{_fmt(states[-1].belief)} %."
            )
    counts = Counter(c for t in turns for c in t.record.codes)
    if counts:
        lines.append(
            "Behaviour codes seen in therapist turns: "
            + ", ".join(f"{c}×{n}" for c, n in sorted(counts.items()))
        )
    records = result.turns
    first_n, last_n = options.summary_first, options.summary_last
    head = records[:first_n]
    tail = records[max(first_n, len(records) - last_n) :] if last_n else []
    lines.append("Opening utterances:")
    lines += [f"{_label(r)} {escape_untrusted(clip(r.text, options.summary_chars))}" for r in head]
    if tail:
        skipped = len(records) - len(head) - len(tail)
        lines.append(
            f"Closing utterances{f' ({skipped} utterances omitted before them)' if skipped else ''}:"
        )
        lines += [
            f"{_label(r)} {escape_untrusted(clip(r.text, options.summary_chars))}" for r in tail
        ]
    excerpts = _excerpts(result, persona, options)
    if excerpts:
        lines.append(
            "Notable therapist sentences (resources named, or echoes of the false belief):"
        )
        lines += [f"- {escape_untrusted(e)}" for e in excerpts]
    return "\n".join(lines)


def persona_facts(persona: Persona | None, options: PanelOptions) -> str:
    """The persona facts session items check against (escaped, bounded)."""
    if persona is None:
        return "unknown (the persona was not available to the panel)"
    d = persona.demographics
    parts = [
        f"Summary: {persona.summary}",
        f"Demographics: age {d.age}, {d.gender}, {d.ethnicity}, occupation {d.occupation}"
        + (f", lives {d.living_situation}" if d.living_situation else "")
        + f", speaks {d.language}.",
    ]
    if persona.pe is not None:
        parts.append(
            f"Index trauma ({persona.pe.trauma_type}, {persona.pe.years_since:g} years ago): "
            f"{persona.pe.index_trauma}"
        )
        if persona.pe.stuck_points:
            parts.append("Stuck points: " + "; ".join(persona.pe.stuck_points[:3]))
    if persona.cbt is not None:
        parts.append(f"Situation: {persona.cbt.situation}")
        parts.append(f"Automatic thought: {persona.cbt.automatic_thought}")
        parts.append(f"Core belief: {persona.cbt.core_belief}")
    parts.append(
        f"False clinical belief the patient may voice (must not be endorsed): {persona.false_belief}"
        if persona.false_belief
        else "False clinical belief: none given."
    )
    text = "\n".join(parts)
    if len(text) > options.max_persona_chars:
        text = text[: options.max_persona_chars].rstrip() + " […]"
    return escape_untrusted(text)


def _session_numbers(
    result: SessionResult, persona: Persona | None, turns: list[TherapistTurn]
) -> dict[str, Any]:
    states = [t.record.state for t in turns]
    baseline = _baseline(result, persona) or states[0]
    final = states[-1]

    def pick(s: PatientState) -> dict[str, Any]:
        return {"suds": s.suds, "belief": s.belief, "alliance": s.alliance, "risk": s.risk.value}

    max_risk = max([baseline.risk, *(s.risk for s in states)], key=lambda r: r.rank)
    margin = (
        persona.dynamics.habituation_margin
        if persona is not None
        else float(getattr(result, "habituation_margin", DynamicsParams().habituation_margin))
    )
    numbers = [n for t in turns for n in _resource_numbers(t.record.text)]
    return {
        "baseline": pick(baseline),
        "final": pick(final),
        "suds": [s.suds for s in states],
        "peak_suds": max(
            [baseline.suds, *(s.peak_suds for s in states), *(s.suds for s in states)]
        ),
        "min_alliance": min([baseline.alliance, *(s.alliance for s in states)]),
        "max_risk": max_risk.value,
        "had_exposure": any(t.record.phase_kind in _EXPOSURE_KINDS for t in turns),
        "habituation_margin": margin,
        "dropout": any(s.dropout for s in states),
        "code_counts": dict(Counter(c for t in turns for c in t.record.codes)),
        "termination_reason": result.termination_reason.value,
        "resource_numbers": sorted(set(numbers)),
    }


@dataclass(frozen=True)
class Unit:
    """One thing judged: a therapist turn (``turn`` ≥ 0) or the session (``turn`` = -1).

    ``items`` are the applicable (rubric, item) pairs, in rubric order; ``values`` fill the
    template; ``metadata`` is what scripted judges read (item keys are added per call);
    ``weight`` is the turn's design weight under turn sampling (its inverse inclusion
    probability, :func:`~therasim.evaluation.judging.sampling.weighted_sample`), 1 when every
    turn is judged and for the session unit.
    """

    scope: Scope
    turn: int
    items: tuple[tuple[Rubric, RubricItem], ...]
    values: dict[str, str]
    metadata: dict[str, Any]
    weight: float = 1.0


def _therapy(modality: str) -> str:
    return (
        "Prolonged Exposure (PE) therapy for PTSD"
        if modality == "pe"
        else "CBT cognitive restructuring"
    )


def prefix_items(
    rubrics: Iterable[Rubric], units: Iterable[Unit], scope: Scope
) -> tuple[RubricItem, ...]:
    """The batched prompt's rubric for a session: every item of ``scope`` that applies to at
    least one of its units, in rubric order — the same for every call of the session whatever
    applies to the unit at hand, and no longer than the session needs."""
    used = {item.id for unit in units if unit.scope == scope for _, item in unit.items}
    return tuple(item for rubric in rubrics for item in rubric.items if item.id in used)


def _turn_unit(
    result: SessionResult,
    turn: TherapistTurn,
    turn_items: Sequence[tuple[Rubric, RubricItem]],
    options: PanelOptions,
    weight: float = 1.0,
) -> Unit | None:
    record, before = turn.record, turn.state_before
    spoke = sum(1 for r in result.turns[: turn.position] if r.speaker == "patient")
    values = {
        "risk": before.risk.value,
        "suds": before.suds,
        "severity": result.spec.severity.value,
        "patient_turns": spoke,
    }
    applicable = tuple(
        (r, i)
        for r, i in turn_items
        if item_applies(i, modality=result.modality, phase_kind=record.phase_kind, values=values)
    )
    if not applicable:
        return None
    goal, proscribed = _phase_info(result, record.phase)
    window_records = result.turns[max(0, turn.position - options.window) : turn.position]
    prompt_values = {
        "therapy": _therapy(result.modality),
        "phase": record.phase,
        "phase_kind": record.phase_kind,
        "phase_goal": goal or "(not recorded)",
        "suds": _fmt(before.suds),
        "risk": before.risk.value,
        "window": turn_window(result, turn, options),
    }
    meta = {
        "modality": result.modality,
        "high_suds": options.high_suds,
        "turn": record.turn,
        "phase": record.phase,
        "phase_kind": record.phase_kind,
        "codes": list(record.codes),
        "window_codes": sorted(
            {c for r in window_records if r.speaker == "therapist" for c in r.codes}
        ),
        "proscribed_codes": proscribed,
        "risk": before.risk.value,
        "suds": before.suds,
        "reply_words": len(record.text.split()),
    }
    return Unit("turn", record.turn, applicable, prompt_values, meta, weight)


def session_units(
    result: SessionResult,
    rubrics: Sequence[Rubric],
    options: PanelOptions,
    persona: Persona | None,
) -> list[Unit]:
    """The turn units (sampled as the options say, each with its design weight) and the session
    unit of a session."""
    turns = list(therapist_turns(result))
    if not turns:
        return []
    units: list[Unit] = []
    turn_items = [(r, i) for r in rubrics for i in r.items if i.scope == "turn"]
    sample = weighted_sample(turns, options.sample_turns, options.sample_seed, result.session_id)
    for kept in sample:
        unit = _turn_unit(result, kept.turn, turn_items, options, kept.weight)
        if unit is not None:
            units.append(unit)
    numbers = _session_numbers(result, persona, turns)
    session_values = {
        "risk": numbers["max_risk"],
        "suds": numbers["peak_suds"],
        "severity": result.spec.severity.value,
        "patient_turns": sum(1 for r in result.turns if r.speaker == "patient"),
    }
    session_items = tuple(
        (r, i)
        for r in rubrics
        for i in r.items
        if i.scope == "session" and item_applies(i, modality=result.modality, values=session_values)
    )
    if session_items:
        prompt_values = {
            "therapy": _therapy(result.modality),
            "summary": session_summary(result, options, persona),
            "persona_facts": persona_facts(persona, options),
        }
        meta = {"modality": result.modality, "high_suds": options.high_suds, "session": numbers}
        units.append(Unit("session", -1, session_items, prompt_values, meta))
    return units
