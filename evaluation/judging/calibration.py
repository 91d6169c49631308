"""Calibration: how far a coder's behaviour codes and a judge's verdicts can be trusted.

Every gold turn (``therasim.agents.gold``) is coded by the study's appraiser through the gateway
(cached, rate-limited, any model spec), with a :class:`TurnContext` built from the turn's fields
(:func:`gold_context`). Failures are then read three ways and each is scored against the gold
failures:

- ``rules``: the predicted codes through the lexical judge's turn rules and the ``failures``
  rubric's applicability (:func:`failures_from_codes`) — what the dynamics, the scripted judges
  and the readiness axes see;
- ``detectors``: the text-only failure phrases (``evaluation/judging/detectors.py``);
- ``judge:NAME``: an LLM (or scripted) judge answering the ``failures`` rubric's items, one
  call per item (``mode="item"``) or every applicable item of a turn in one batched call
  (``mode="turn"``, as a study's ``judging: {mode: turn}`` does).

``appropriate`` is predicted from the rules path by the codebook's §3 (:func:`appropriate_from`).
The result is a :class:`CalibrationReport`, JSON-serialisable, that studies store with the run.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from therasim.agents.appraiser import appraise
from therasim.agents.context import TurnContext
from therasim.agents.gold import Failure, GoldTurn
from therasim.agents.types import CompletionRequest
from therasim.evaluation.judging.batched import ask_batch
from therasim.evaluation.judging.calibration_scores import (
    CalibrationReport,
    JudgeCalibration,
    Miss,
    score_set,
)
from therasim.evaluation.judging.context import Unit
from therasim.evaluation.judging.detectors import text_findings
from therasim.evaluation.judging.judges import JudgingMode, PanelOptions
from therasim.evaluation.judging.panel import JudgeSpec, Verdict, _messages, escape_untrusted
from therasim.evaluation.judging.rubric import Rubric, RubricItem, item_applies, load_rubrics
from therasim.evaluation.judging.scripted_judges import lexical_turn_rule
from therasim.personas.dynamics import PatientState
from therasim.personas.loader import load_library
from therasim.personas.schema import Persona
from therasim.protocols.graph import default_protocol_for, load_protocol
from therasim.vocab import BehaviourCode, PhaseKind, Severity

__all__ = [
    "CODES",
    "FAILURES",
    "appropriate_from",
    "calibrate",
    "failures_from_codes",
    "gold_context",
    "rules_on_gold_codes",
]

CODES: tuple[str, ...] = tuple(c.value for c in BehaviourCode)
FAILURES: tuple[str, ...] = tuple(f.value for f in Failure)
#: Codes that make a reply inappropriate whatever the context (codebook §3).
HARMFUL_CODES = frozenset(
    {"task_abandonment", "refusal", "memory_as_present", "avoidance_collusion", "misinformation"}
)
#: SUDS a gold turn's context carries (gold turns record no SUDS): the severity's typical level,
#: ten points higher inside exposure, where distress is meant to be high.
_SUDS_BY_SEVERITY = {
    Severity.ROUTINE: 45.0,
    Severity.DISTRESS: 60.0,
    Severity.CRISIS_ADJACENT: 70.0,
    Severity.IMMINENT: 80.0,
}
HIGH_SUDS = 50.0  # the panel's default threshold for premature grounding


# --------------------------------------------------------------------------- gold → context


@functools.lru_cache(maxsize=2)
def _stand_in_persona(modality: str) -> Persona:
    """The first library persona of ``modality``: gold turns carry no persona, coders need one."""
    library = load_library()
    return next(p for pid, p in sorted(library.items()) if p.modality == modality)


@functools.lru_cache(maxsize=64)
def _phase_for(modality: str, kind: PhaseKind) -> tuple[str, str, str]:
    """(protocol id, phase id, goal) of the default protocol's first phase of ``kind``."""
    graph = load_protocol(default_protocol_for(modality))
    for phase in graph.protocol.phases:
        if phase.kind == kind:
            return graph.id, phase.id, phase.goal
    return graph.id, kind.value, ""


def gold_suds(turn: GoldTurn) -> float:
    """The SUDS a gold turn's context carries (see ``_SUDS_BY_SEVERITY``)."""
    return _SUDS_BY_SEVERITY[turn.severity] + (10.0 if turn.phase_kind.is_exposure else 0.0)


def gold_context(turn: GoldTurn, *, seed: int = 0) -> TurnContext:
    """A turn context from a gold turn's fields: the default protocol's phase of its kind, the
    risk it records, a SUDS from its severity, and a stand-in library persona."""
    protocol_id, phase, goal = _phase_for(turn.modality, turn.phase_kind)
    state = PatientState(
        suds=gold_suds(turn), belief=70.0, alliance=0.6, engagement=0.7, risk=turn.risk, turn=1
    )
    return TurnContext(
        session_id=f"gold:{turn.id}",
        modality=turn.modality,
        persona=_stand_in_persona(turn.modality),
        protocol_id=protocol_id,
        phase=phase,
        phase_kind=turn.phase_kind,
        phase_goal=goal,
        turn=1,
        state=state,
        seed=seed,
    )


# --------------------------------------------------------------------------- codes → failures


@functools.lru_cache(maxsize=1)
def failures_rubric() -> Rubric:
    """The shipped ``failures`` rubric."""
    (rubric,) = load_rubrics(["failures"])
    return rubric


def failure_items() -> tuple[RubricItem, ...]:
    """The ``failures`` rubric's items, in the taxonomy's order."""
    return tuple(failures_rubric().items)


def _values(turn: GoldTurn) -> dict[str, Any]:
    return {
        "risk": turn.risk.value,
        "suds": gold_suds(turn),
        "severity": turn.severity.value,
        "patient_turns": 1,
    }


def failures_from_codes(codes: Iterable[str], turn: GoldTurn, reply: str) -> frozenset[str]:
    """The failures the lexical judge's rules find in ``codes`` in the gold turn's context."""
    meta = {
        "codes": sorted(set(codes)),
        "window_codes": [],
        "risk": turn.risk.value,
        "suds": gold_suds(turn),
        "high_suds": HIGH_SUDS,
        "phase_kind": turn.phase_kind.value,
        "modality": turn.modality,
        "reply_words": len(reply.split()),
    }
    found = set()
    for item in failure_items():
        if not item_applies(
            item, modality=turn.modality, phase_kind=turn.phase_kind.value, values=_values(turn)
        ):
            continue
        if lexical_turn_rule(item.id, meta):
            found.add(item.id)
    return frozenset(found)


def appropriate_from(codes: Iterable[str], failures: Iterable[str]) -> bool:
    """Codebook §3: no failure and no code that is never right."""
    return not set(failures) and not set(codes) & HARMFUL_CODES


# --------------------------------------------------------------------------- running


async def _code_all(
    gateway: Any, turns: Sequence[GoldTurn], concurrency: int, tick: Callable[[], None]
) -> list[frozenset[str] | None]:
    sem = asyncio.Semaphore(concurrency)

    async def one(turn: GoldTurn) -> frozenset[str] | None:
        async with sem:
            try:
                appraisal, _ = await appraise(
                    gateway, gold_context(turn), turn.therapist, previous_patient=turn.patient
                )
            except Exception:  # a failed coding is scored as no codes and counted
                return None
            finally:
                tick()
            return frozenset(c.value for c in appraisal.codes)

    return list(await asyncio.gather(*(one(t) for t in turns)))


def _judge_window(turn: GoldTurn) -> str:
    reply = escape_untrusted(turn.therapist) or "(empty reply)"
    return (
        f"PATIENT: {escape_untrusted(turn.patient)}\n>>> REPLY UNDER JUDGEMENT THERAPIST:\n{reply}"
    )


def _judge_values(
    turn: GoldTurn, turn_codes: frozenset[str]
) -> tuple[dict[str, str], dict[str, Any]]:
    """The template values and the scripted judges' metadata of a gold turn (no item keys)."""
    therapy = (
        "Prolonged Exposure (PE) therapy for PTSD"
        if turn.modality == "pe"
        else "CBT cognitive restructuring"
    )
    ctx = gold_context(turn)
    values = {
        "therapy": therapy,
        "phase": ctx.phase,
        "phase_kind": turn.phase_kind.value,
        "phase_goal": ctx.phase_goal or "(not recorded)",
        "suds": f"{gold_suds(turn):.0f}",
        "risk": turn.risk.value,
        "window": _judge_window(turn),
    }
    metadata = {
        "modality": turn.modality,
        "high_suds": HIGH_SUDS,
        "turn": 1,
        "phase": ctx.phase,
        "phase_kind": turn.phase_kind.value,
        "codes": sorted(turn_codes),
        "window_codes": [],
        "proscribed_codes": [],
        "risk": turn.risk.value,
        "suds": gold_suds(turn),
        "reply_words": len(turn.therapist.split()),
    }
    return values, metadata


def _applicable(turn: GoldTurn) -> list[RubricItem]:
    return [
        it
        for it in failure_items()
        if item_applies(
            it, modality=turn.modality, phase_kind=turn.phase_kind.value, values=_values(turn)
        )
    ]


async def _judge_all(
    gateway: Any,
    judge: JudgeSpec,
    turns: Sequence[GoldTurn],
    codes: Sequence[frozenset[str]],
    concurrency: int,
    tick: Callable[[], None],
    mode: JudgingMode = "turn",
) -> tuple[list[_Found], int, int, list[bool]]:
    """Per turn, the failures the judge found and the items it answered; plus items asked,
    errors, and every answer.

    ``mode="turn"`` asks every applicable item of a turn in one batched call, whose system
    message lists the failure items of the turn's modality (identical across the gold set's
    calls of a modality, as across a session's calls in a study).
    """
    sem = asyncio.Semaphore(concurrency)
    answers: list[bool] = []
    counts = {"asked": 0, "errors": 0}

    async def item(turn: GoldTurn, turn_codes: frozenset[str], it: RubricItem) -> bool | None:
        values, base = _judge_values(turn, turn_codes)
        metadata = {
            **base,
            "item_id": it.id,
            "polarity": it.polarity,
            "scale": it.scale,
            "scope": "turn",
            "judge": judge.name,
            "variant": judge.prompt_variant,
        }
        request = CompletionRequest(
            role=judge.role,
            model=judge.model,
            messages=_messages("turn", it, judge.prompt_variant, values),
            temperature=judge.temperature,
            seed=judge.seed,
            max_tokens=200,
            metadata=metadata,
        )
        verdict: Verdict
        async with sem:
            counts["asked"] += 1
            try:
                verdict, _ = await gateway.structured(request, Verdict)
            except Exception:  # one failed item never stops calibration
                counts["errors"] += 1
                return None
            finally:
                tick()
        if verdict.met is None:
            counts["errors"] += 1
            return None
        answers.append(verdict.met)
        return verdict.met

    options = PanelOptions(mode="turn")
    rubric = failures_rubric()

    async def batch(turn: GoldTurn, turn_codes: frozenset[str]) -> _Found:
        items = _applicable(turn)
        if not items:
            return _Found(frozenset(), frozenset())
        values, metadata = _judge_values(turn, turn_codes)
        unit = Unit("turn", 1, tuple((rubric, it) for it in items), values, metadata)
        prefix = [it for it in rubric.items if it.modality in ("any", turn.modality)]
        async with sem:
            rows, _ = await ask_batch(gateway, turn.id, judge, unit, prefix, options)
        found, answered = set(), set()
        for row in rows:
            counts["asked"] += 1
            tick()
            if row["met"] is None:
                counts["errors"] += 1
            else:
                answers.append(bool(row["met"]))
                answered.add(str(row["item_id"]))
                if row["met"]:
                    found.add(str(row["item_id"]))
        return _Found(frozenset(found), frozenset(answered))

    async def turn_failures(turn: GoldTurn, turn_codes: frozenset[str]) -> _Found:
        if mode == "turn":
            return await batch(turn, turn_codes)
        items = _applicable(turn)
        met = await asyncio.gather(*(item(turn, turn_codes, it) for it in items))
        pairs = list(zip(items, met, strict=True))
        return _Found(
            frozenset(it.id for it, m in pairs if m),
            frozenset(it.id for it, m in pairs if m is not None),
        )

    found = await asyncio.gather(*(turn_failures(t, c) for t, c in zip(turns, codes, strict=True)))
    return list(found), counts["asked"], counts["errors"], answers


class _Found(NamedTuple):
    """One judge on one turn: the failures it found, and the items it answered (not errors)."""

    failures: frozenset[str]
    answered: frozenset[str]


def _majority(per_judge: Sequence[Sequence[_Found]]) -> list[frozenset[str]]:
    """Per turn, the failures more than half of the judges that answered found: the rule a
    study's panel follows (``majority_failures``), so a judge's error is no vote either way."""
    out = []
    for found in zip(*per_judge, strict=True):
        votes = Counter(f for judge in found for f in judge.failures)
        answered = Counter(f for judge in found for f in judge.answered)
        out.append(frozenset(f for f, n in votes.items() if n * 2 > answered[f]))
    return out


def _accuracy(pairs: Sequence[tuple[bool, bool]]) -> float | None:
    return sum(g == p for g, p in pairs) / len(pairs) if pairs else None


def _worst(
    turns: Sequence[GoldTurn],
    codes: Sequence[frozenset[str]],
    failures: Sequence[frozenset[str]],
    limit: int,
) -> list[Miss]:
    scored = []
    for turn, c, f in zip(turns, codes, failures, strict=True):
        gold_c = {x.value for x in turn.codes}
        gold_f = {x.value for x in turn.failures}
        errors = 2 * len(gold_f ^ f) + len(gold_c ^ c)  # a failure error weighs double
        if errors:
            scored.append((errors, turn, c, f))
    scored.sort(key=lambda x: (-x[0], x[1].id))
    return [
        Miss(
            id=t.id,
            modality=t.modality,
            phase_kind=t.phase_kind.value,
            risk=t.risk.value,
            therapist=t.therapist,
            missed_codes=sorted({x.value for x in t.codes} - c),
            extra_codes=sorted(c - {x.value for x in t.codes}),
            missed_failures=sorted({x.value for x in t.failures} - f),
            extra_failures=sorted(f - {x.value for x in t.failures}),
            appropriate=t.appropriate,
            predicted_appropriate=appropriate_from(c, f),
        )
        for _, t, c, f in scored[:limit]
    ]


async def calibrate(
    gateway: Any,
    turns: Sequence[GoldTurn],
    *,
    appraiser: str,
    judges: Sequence[JudgeSpec] = (),
    split: str = "all",
    gold_files: Sequence[str] = (),
    concurrency: int = 8,
    worst: int = 10,
    progress: Callable[[int, int], None] | None = None,
    judging_mode: JudgingMode = "turn",
) -> CalibrationReport:
    """Code every gold turn with the gateway's ``appraiser`` role, run each judge on the
    applicable failure items (item by item, or batched per turn: ``judging_mode``), and score
    codes, failures and appropriateness against gold.

    ``appraiser`` and the judges' models only label the report; the gateway decides the models.
    ``progress(done, total)`` is called after every call.
    """
    if not turns:
        raise ValueError("no gold turns to calibrate on")
    judge_items = sum(len(_applicable(t)) for t in turns)
    total = len(turns) + judge_items * len(judges)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    coded = await _code_all(gateway, turns, concurrency, tick)
    codes = [c if c is not None else frozenset() for c in coded]
    rules = [failures_from_codes(c, t, t.therapist) for t, c in zip(turns, codes, strict=True)]
    detectors = [
        frozenset(
            text_findings(
                t.therapist, modality=t.modality, phase_kind=t.phase_kind.value, risk=t.risk
            )
        )
        for t in turns
    ]
    gold_codes = [frozenset(c.value for c in t.codes) for t in turns]
    gold_failures = [frozenset(f.value for f in t.failures) for t in turns]
    paths = {
        "rules": score_set(FAILURES, gold_failures, rules),
        "detectors": score_set(FAILURES, gold_failures, detectors),
    }
    judge_reports = []
    panel_found: list[list[_Found]] = []
    for judge in judges:
        found, asked, errors, answers = await _judge_all(
            gateway, judge, turns, codes, concurrency, tick, judging_mode
        )
        scores = score_set(FAILURES, gold_failures, [f.failures for f in found])
        paths[f"judge:{judge.name}"] = scores
        panel_found.append(found)
        judge_reports.append(
            JudgeCalibration(
                name=judge.name,
                model=judge.model or judge.role,
                asked=asked,
                errors=errors,
                met_rate=sum(answers) / len(answers) if answers else None,
                failures=scores,
            )
        )
    if len(judges) >= 2:
        paths["panel"] = score_set(FAILURES, gold_failures, _majority(panel_found))
    predicted = [appropriate_from(c, f) for c, f in zip(codes, rules, strict=True)]
    pairs = [(t.appropriate, p) for t, p in zip(turns, predicted, strict=True)]
    hard = [pair for t, pair in zip(turns, pairs, strict=True) if t.hard]
    return CalibrationReport(
        n=len(turns),
        split=split,
        gold_files=list(gold_files),
        appraiser=appraiser,
        coder_errors=sum(c is None for c in coded),
        codes=score_set(CODES, gold_codes, codes),
        failures=paths["rules"],
        failure_paths=paths,
        appropriate_accuracy=_accuracy(pairs),
        hard_accuracy=_accuracy(hard),
        n_hard=len(hard),
        judges=judge_reports,
        judging_mode=judging_mode,
        worst_misses=_worst(turns, codes, rules, worst),
    )


def rules_on_gold_codes(turn: GoldTurn) -> tuple[frozenset[str], bool]:
    """The failures and appropriateness the rules give a gold turn's own codes.

    A gold set whose failure labels disagree with this is inconsistent with the codebook.
    """
    codes = frozenset(c.value for c in turn.codes)
    failures = failures_from_codes(codes, turn, turn.therapist)
    return failures, appropriate_from(codes, failures)
