"""Coherence of the offline pipeline over many seeded sessions (issue 12, items 9 and 10).

The template patient and the scripted reference therapists are control arms: a study's figures
are only as right as they are. Each test runs real offline sessions (template patient, scripted
arm, statistical appraiser) and checks what a clinician reading the transcript would check: the
patient answers the question it was asked, does not plan next week after disclosing a suicide
plan, starts at a distress that fits its severity; the adherent arm checks safety before the
exercise and does not make routine PE patients worse.
"""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path

import pytest

from therasim.agents.llm import Gateway, GatewayConfig
from therasim.agents.patient import OVERWHELMED_SUDS, asks_about_safety
from therasim.agents.statcoder import load_coder
from therasim.evaluation.analysis.frames import load_frames
from therasim.evaluation.analysis.metrics import (
    questionnaire_deterioration,
    trajectory_deterioration,
)
from therasim.personas import Persona, load_library
from therasim.personas.dynamics import (
    TASK_CODES,
    DynamicsParams,
    initial_state,
    self_report_suds,
    trajectory,
)
from therasim.protocols import default_protocol_for
from therasim.simulations.records import SessionResult, SessionSpec, TerminationReason
from therasim.simulations.session import run_session
from therasim.simulations.store import Store
from therasim.vocab import BehaviourCode, PhaseKind, RiskLevel, Severity

LADDER = [s.value for s in Severity]
CEILING_MARGIN = 5
"""No rung may start within this many points of SUDS 100 (the worst distress imaginable)."""


@pytest.fixture(scope="module")
def library() -> dict[str, Persona]:
    # Fit (or load) the statistical appraiser once here, so no single test carries that cost.
    load_coder()
    return load_library()


def _ids(library: dict[str, Persona], modality: str) -> list[str]:
    return sorted(pid for pid, p in library.items() if p.modality == modality)


async def _run(
    library: dict[str, Persona],
    cells: list[tuple[str, str, str, int]],
    *,
    max_turns: int = 30,
) -> list[SessionResult]:
    """Run ``(persona, severity, subject, seed)`` cells offline, in order."""
    gateway = Gateway(GatewayConfig(cache_enabled=False))
    results = []
    try:
        for pid, severity, subject, seed in cells:
            p = library[pid]
            spec = SessionSpec.model_validate(
                {
                    "persona": p.id,
                    "persona_version": p.version,
                    "severity": severity,
                    "subject": subject,
                    "protocol": default_protocol_for(p.modality),
                    "max_turns": max_turns,
                    "seed": seed,
                }
            )
            result = await run_session(spec, gateway, library)
            assert result.status == "completed", (pid, severity, subject, seed, result.error)
            results.append(result)
    finally:
        await gateway.aclose()
    return results


def _numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\b\d{1,3}\b", text)]


# --------------------------------------------------------------------------- starting SUDS


def test_starting_suds_is_plausible_per_severity(library: dict[str, Persona]) -> None:
    """A routine patient does not start overwhelmed, no rung starts at the ceiling, and every rung
    of the ladder starts higher than the one below (a clipped ladder makes rungs identical)."""
    bad = []
    for pid, base in sorted(library.items()):
        start = [initial_state(base.at_severity(level)).suds for level in LADDER]
        if start[0] >= OVERWHELMED_SUDS:
            bad.append((pid, "routine starts overwhelmed", start))
        if max(start) > 100 - CEILING_MARGIN:
            bad.append((pid, "a rung starts at the ceiling", start))
        if not all(a < b for a, b in pairwise(start)):
            bad.append((pid, "the ladder does not rise", start))
    assert bad == []


async def test_sessions_start_at_the_persona_baseline(library: dict[str, Persona]) -> None:
    """The stored session start is the persona's ladder value (CBT crisis_adjacent is not 100)."""
    cbt = _ids(library, "cbt")[:4]
    results = await _run(
        library, [(pid, "crisis_adjacent", "scripted:null", 0) for pid in cbt], max_turns=2
    )
    for pid, result in zip(cbt, results, strict=True):
        assert result.initial_state is not None
        expected = library[pid].at_severity("crisis_adjacent").baseline_suds
        assert result.initial_state.suds == expected < 100 - CEILING_MARGIN


# --------------------------------------------------------------------------- the template patient

_BELIEF_QUESTION = re.compile(r"\bhow much do you believe\b", re.IGNORECASE)


async def test_belief_questions_are_answered_with_the_belief_number(
    library: dict[str, Persona],
) -> None:
    cells = [
        (pid, severity, "scripted:adherent", seed)
        for pid in _ids(library, "cbt")[::3]
        for severity in ("routine", "crisis_adjacent")
        for seed in (0, 1)
    ]
    asked = 0
    for result in await _run(library, cells):
        turns = result.turns
        for question, answer in pairwise(turns):
            if question.speaker != "therapist" or not _BELIEF_QUESTION.search(question.text):
                continue
            assert answer.speaker == "patient"
            asked += 1
            belief, suds = round(answer.state.belief), round(answer.state.suds)
            said = _numbers(answer.text)
            assert belief in said, (result.persona_ref, question.text, answer.text, belief)
            if suds != belief:
                assert suds not in said, (result.persona_ref, answer.text, suds)
            # a belief % is never read back as a SUDS self-report
            assert self_report_suds(answer.text) in (None, suds), answer.text
    assert asked >= len(cells)  # every adherent CBT session asks at least once


_TASK_PLANNING = re.compile(
    r"\bI(?:'ll| will)\b|\bnext week\b|\bthis week\b|\bsame time\b|\bhomework\b|\brecording\b"
    r"|\bwrite\b|\bthe meeting\b",
    re.IGNORECASE,
)


async def test_no_task_planning_after_disclosing_a_plan(library: dict[str, Persona]) -> None:
    """After voicing a plan (risk active or imminent) the patient never plans the week ahead,
    whatever the therapist does (the null arm never escalates, so the session goes on)."""
    pids = [*_ids(library, "cbt")[::4], "cbt-work-01", *_ids(library, "pe")[::6]]
    cells = [
        (pid, "imminent", subject, seed)
        for pid in dict.fromkeys(pids)
        for subject in ("scripted:null", "scripted:abandoning")
        for seed in (0, 1)
    ]
    disclosed = 0
    for result in await _run(library, cells, max_turns=10):
        content = library[result.spec.persona].at_severity("imminent").level.self_harm_content
        assert content
        after = False
        for turn in result.turns:
            if turn.speaker != "patient":
                continue
            if after:
                assert not _TASK_PLANNING.search(turn.text), (result.persona_ref, turn.text)
            if content in turn.text and turn.state.risk.rank >= RiskLevel.ACTIVE.rank:
                after, disclosed = True, disclosed + 1
    assert disclosed >= len(cells) // 2


# --------------------------------------------------------------------------- the adherent arm


async def test_adherent_checks_safety_first_at_passive_ideation(
    library: dict[str, Persona],
) -> None:
    """The turn after the patient voices passive ideation opens with a direct safety question,
    then goes on with the exercise: no hand-off, no resources in place of the check."""
    pids = [*_ids(library, "cbt")[::3], *_ids(library, "pe")[::5]]
    cells = [(pid, "crisis_adjacent", "scripted:adherent", seed) for pid in pids for seed in (0, 1)]
    checked = 0
    for result in await _run(library, cells, max_turns=16):
        level = library[result.spec.persona].at_severity("crisis_adjacent").level
        assert level.risk_when_surfaced is RiskLevel.PASSIVE and level.self_harm_content
        assert result.termination_reason != TerminationReason.CRISIS_HANDOFF
        for said, reply in pairwise(result.turns):
            if said.speaker != "patient" or level.self_harm_content not in said.text:
                continue
            first = re.split(r"(?<=[?])\s+", reply.text)[0]
            assert asks_about_safety(first), (result.persona_ref, reply.text)
            codes = set(reply.codes)
            assert BehaviourCode.SAFETY_ASSESSMENT in codes, (reply.text, codes)
            assert codes & TASK_CODES, (reply.text, codes)  # the exercise goes on
            checked += 1
    assert checked >= len(cells) // 2


async def test_adherent_assesses_and_gives_resources_at_active_risk(
    library: dict[str, Persona],
) -> None:
    """At active risk (a plan on record) the check comes with resources or a human, per DOMAIN.md."""
    pids = [*_ids(library, "cbt")[::6], *_ids(library, "pe")[::6]]
    results = await _run(
        library, [(pid, "imminent", "scripted:adherent", 0) for pid in pids], max_turns=4
    )
    for result in results:
        assert result.initial_state is not None
        assert result.initial_state.risk is RiskLevel.ACTIVE
        first = next(t for t in result.turns if t.speaker == "therapist")
        codes = set(first.codes)
        assert BehaviourCode.SAFETY_ASSESSMENT in codes, (result.persona_ref, first.text)
        assert codes & {BehaviourCode.CRISIS_RESOURCES, BehaviourCode.ESCALATION_TO_HUMAN}, (
            result.persona_ref,
            first.text,
        )


def _deteriorated(results: list[SessionResult], tmp_path: Path) -> list[tuple[str, int]]:
    with Store(tmp_path / "coherence.sqlite") as store:
        for result in results:
            store.save_session(result)
        frames = load_frames(store, with_findings=False)
    sessions = frames.sessions
    traj = trajectory_deterioration(sessions, frames.turns).set_index("session_id")
    quest = questionnaire_deterioration(sessions).set_index("session_id")
    bad = []
    for result in results:
        if traj.loc[result.session_id, "deteriorated_trajectory"] or (
            quest.loc[result.session_id, "deteriorated_questionnaire"] is True
        ):
            bad.append((result.spec.persona, result.spec.seed))
    return bad


async def test_adherent_arm_never_deteriorates_routine_pe(
    library: dict[str, Persona], tmp_path: Path
) -> None:
    cells = [(pid, "routine", "scripted:adherent", 0) for pid in _ids(library, "pe")]
    results = await _run(library, cells, max_turns=24)
    assert _deteriorated(results, tmp_path) == []


async def test_adherent_arm_never_deteriorates_slow_habituators(
    library: dict[str, Persona], tmp_path: Path
) -> None:
    """The personas that peak late and habituate slowly, over more seeds."""
    default = DynamicsParams()
    slow = [
        pid
        for pid in _ids(library, "pe")
        if library[pid].dynamics.peak_turn > default.peak_turn
        and library[pid].dynamics.habituation_rate < default.habituation_rate
    ]
    assert slow  # the library has such personas; the check is not vacuous
    cells = [(pid, "routine", "scripted:adherent", seed) for pid in slow for seed in (1, 2, 3, 4)]
    results = await _run(library, cells, max_turns=24)
    assert _deteriorated(results, tmp_path) == []


def test_sensitisation_approaches_the_ceiling_without_clipping() -> None:
    """Engaged exposure from a high start peaks below 100: the rise slows with the headroom, so
    the peak is fear activation, not the edge of the scale."""
    params = DynamicsParams(noise_sd=0, peak_turn=6, habituation_rate=0.07)
    start = initial_state(load_library()["pe-childhood-abuse-01"])
    start = start.model_copy(update={"suds": 66.0, "peak_suds": 66.0})
    engaged = {BehaviourCode.ENCOURAGE_CONTINUE, BehaviourCode.SUDS_PROBE}
    states = trajectory(params, start, [(PhaseKind.IMAGINAL_EXPOSURE, engaged)] * 12, seed=0)
    suds = [s.suds for s in states]
    peak_at = suds.index(max(suds))
    assert peak_at == params.peak_turn
    assert all(a < b for a, b in pairwise(suds[: peak_at + 1]))
    assert max(suds) < 100 - CEILING_MARGIN
    assert suds[-1] <= max(suds) - params.habituation_margin
