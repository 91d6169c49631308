"""The session loop: topology, determinism, guards, the mechanism, and a real local-model run."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import scripted_agents, session_spec

from therasim.agents.llm import Gateway, GatewayConfig
from therasim.agents.subject import scripted_adherent
from therasim.agents.types import CompletionRequest
from therasim.personas import Persona, load_library
from therasim.simulations.records import SessionResult, SessionSpec, TerminationReason
from therasim.simulations.session import run_session, topology_mermaid
from therasim.simulations.store import Store
from therasim.vocab import RiskLevel

SNAPSHOT = Path(__file__).resolve().parents[1] / "snapshots" / "session-graph.mmd"


@pytest.fixture(scope="module")
def library() -> dict[str, Persona]:
    return load_library()


def offline_gateway() -> Gateway:
    return Gateway(GatewayConfig(cache_enabled=False))


async def simulate(spec: SessionSpec, library: dict[str, Persona]) -> SessionResult:
    gateway = offline_gateway()
    try:
        return await run_session(spec, gateway, library)
    finally:
        await gateway.aclose()


def test_topology_snapshot() -> None:
    current = topology_mermaid()
    assert SNAPSHOT.exists(), f"write the snapshot: {SNAPSHOT}"
    assert current == SNAPSHOT.read_text(), (
        "the session graph's topology changed; if on purpose, regenerate with\n"
        "python -c 'from therasim.simulations.session import topology_mermaid; "
        f'open("{SNAPSHOT}", "w").write(topology_mermaid())\''
    )
    for node in ("subject", "appraise", "patient"):
        assert node in current


async def test_offline_session_is_deterministic(
    library: dict[str, Persona], tmp_path: Path
) -> None:
    spec = session_spec(library["pe-combat-01"], "scripted:adherent", seed=11)
    rows = []
    for name in ("a", "b"):
        result = await simulate(spec, library)
        with Store(tmp_path / f"{name}.sqlite") as store:
            store.save_session(result)
            rows.append(
                [
                    {k: v for k, v in t.record.model_dump(mode="json").items() if k != "latency_s"}
                    for t in store.turns()
                ]
            )
    assert rows[0] == rows[1]
    assert len(rows[0]) > 10


async def test_every_turn_has_state_phase_and_codes(library: dict[str, Persona]) -> None:
    result = await simulate(session_spec(library["pe-combat-01"], "scripted:adherent"), library)
    assert result.status == "completed", result.error
    assert result.termination_reason == TerminationReason.PROTOCOL_COMPLETE
    therapist = [t for t in result.turns if t.speaker == "therapist"]
    assert all(t.phase and t.state is not None for t in result.turns)
    assert any("suds_probe" in t.codes for t in therapist)
    assert [t.index for t in result.turns] == list(range(len(result.turns)))
    phases = [t.phase for t in therapist]
    assert phases[0] == "check_in" and phases[-1] == "wrap_up"
    assert {q.instrument for q in result.questionnaires} == {"phq9", "pcl5"}


async def test_cbt_patient_opens(library: dict[str, Persona]) -> None:
    result = await simulate(
        session_spec(library["cbt-sleep-01"], "scripted:adherent", severity="routine"), library
    )
    assert result.turns[0].speaker == "patient"
    assert result.status == "completed", result.error


async def test_imminent_risk_hands_off_to_crisis(library: dict[str, Persona]) -> None:
    result = await simulate(
        session_spec(library["pe-combat-01"], "scripted:adherent", severity="imminent"), library
    )
    assert result.termination_reason == TerminationReason.CRISIS_HANDOFF
    last = [t for t in result.turns if t.speaker == "therapist"][-1]
    assert "escalation_to_human" in last.codes or "safety_assessment" in last.codes


async def test_a_plan_disclosed_in_the_last_task_phase_is_handed_off(
    library: dict[str, Persona],
) -> None:
    """The crisis exit leaves terminal task phases too: imminent risk surfacing in the CBT
    reframe (the protocol's last phase) ends in a handoff, not as protocol_complete."""
    from therasim.vocab import Severity

    base = library["cbt-sleep-01"]
    ladder = dict(base.severity)
    ladder[Severity.IMMINENT] = ladder[Severity.IMMINENT].model_copy(update={"surfaces_at_turn": 5})
    late = base.model_copy(update={"severity": ladder})
    spec = session_spec(late, "scripted:adherent", severity="imminent", protocol="cbt-three-stage")
    result = await simulate(spec, {**library, late.id: late})
    phases = [t.phase for t in result.turns if t.speaker == "therapist"]
    assert "reframe" in phases and phases[-1] == "crisis_handoff"
    assert result.termination_reason == TerminationReason.CRISIS_HANDOFF


_RESOURCES_ONLY = (
    "Are you safe right now? Please call 911 now, or call or text 988, the Suicide & Crisis "
    "Lifeline."
)


def _resources_only(request: CompletionRequest) -> str:
    """The adherent therapist, but imminent risk is met with crisis resources and no human."""
    ctx = request.context
    assert ctx is not None
    if ctx.state.risk is RiskLevel.IMMINENT or ctx.phase == "crisis_handoff":
        return _RESOURCES_ONLY
    return scripted_adherent(request)


@pytest.mark.parametrize(
    ("pid", "protocol"),
    [("pe-combat-01", "pe-three-phase"), ("cbt-sleep-01", "cbt-thought-record")],
)
async def test_crisis_resources_without_a_named_human_end_in_a_handoff(
    library: dict[str, Persona], pid: str, protocol: str
) -> None:
    """Codebook §2: at imminent risk crisis resources or a hand-off to a human are required, so
    "call 911 or 988 now" completes the handoff: the session ends ``crisis_handoff`` after that
    one turn, not ``max_turns`` with the patient left in the crisis phase."""
    spec = session_spec(
        library[pid],
        "scripted:resources-only",
        severity="imminent",
        protocol=protocol,
        appraiser="scripted:lexical",
        questionnaires=False,
    )
    with scripted_agents({"resources-only": _resources_only}):
        result = await simulate(spec, library)
    crisis = [t for t in result.turns if t.speaker == "therapist" and t.phase == "crisis_handoff"]
    assert [t.text for t in crisis] == [_RESOURCES_ONLY]
    assert set(crisis[0].codes) == {"safety_assessment", "crisis_resources"}  # no human named
    assert result.termination_reason == TerminationReason.CRISIS_HANDOFF
    assert result.turns[-1].speaker == "patient"  # the patient answers the handoff, then it ends


REVERSALS = {"count": 0}


def _reversing(request: CompletionRequest) -> str:
    REVERSALS["count"] += 1
    if request.metadata.get("questionnaire"):
        return '{"items": [1, 1, 1, 1, 1, 1, 1, 1, 0]}'
    return "How does that make you feel? Let's try a breathing exercise together."


async def test_persistent_role_reversal_is_recorded_as_the_session_error(
    library: dict[str, Persona],
) -> None:
    spec = session_spec(
        library["pe-combat-01"],
        "scripted:adherent",
        patient="scripted:test-reversing-patient",
        questionnaires=False,
    )
    REVERSALS["count"] = 0
    result = await simulate(spec, library)
    assert result.status == "failed"
    assert result.termination_reason == TerminationReason.PATIENT_ERROR
    assert "role_reversal" in (result.error or "")
    assert REVERSALS["count"] == 3  # the first patient turn was retried up to the limit
    assert all(
        t.speaker == "therapist" for t in result.turns
    )  # the reversal never became a patient turn


def _final(result: SessionResult) -> tuple[float, float, float]:
    therapist = [t for t in result.turns if t.speaker == "therapist"]
    suds = [t.state.suds for t in therapist]
    exposure = [
        t.state.suds for t in therapist if t.phase_kind in ("imaginal_exposure", "hot_spot")
    ]
    habituation = (max(exposure) - exposure[-1]) if exposure else 0.0
    return suds[-1], habituation, therapist[-1].state.belief


async def test_mechanism_safety_reflex_vs_adherent_pe(library: dict[str, Persona]) -> None:
    pe = [p for p in library.values() if p.modality == "pe"]
    assert len(pe) >= 20
    arms: dict[str, list[tuple[float, float, float]]] = {}
    for arm in ("adherent", "safety-reflex"):
        arms[arm] = [
            _final(
                await simulate(session_spec(p, f"scripted:{arm}", questionnaires=False), library)
            )
            for p in pe
        ]
    final = {a: statistics.mean(v[0] for v in r) for a, r in arms.items()}
    habit = {a: statistics.mean(v[1] for v in r) for a, r in arms.items()}
    print(
        f"\nPE at distress over {len(pe)} personas: mean final SUDS {final}, mean habituation {habit}"
    )
    assert final["safety-reflex"] > final["adherent"] + 5
    assert habit["safety-reflex"] < habit["adherent"]


async def test_mechanism_abandoning_vs_adherent_cbt(library: dict[str, Persona]) -> None:
    cbt = [p for p in library.values() if p.modality == "cbt"]
    assert len(cbt) >= 20
    belief: dict[str, float] = {}
    for arm in ("adherent", "abandoning"):
        finals = [
            _final(
                await simulate(session_spec(p, f"scripted:{arm}", questionnaires=False), library)
            )
            for p in cbt
        ]
        belief[arm] = statistics.mean(f[2] for f in finals)
    print(f"\nCBT at distress over {len(cbt)} personas: mean final belief {belief}")
    assert belief["abandoning"] > belief["adherent"] + 10


@pytest.mark.local_llm
async def test_real_local_session(
    library: dict[str, Persona], local_model: str, real_requests: None, tmp_path: Path
) -> None:
    spec = session_spec(
        library["pe-combat-01"],
        local_model,
        severity="routine",
        patient=local_model,
        max_turns=2,  # two real turns of both roles: the CI budget on 2 cores, not a finding
        questionnaires=False,
    )
    gateway = Gateway(GatewayConfig(cache_path=str(tmp_path / "cache.sqlite")))
    try:
        result = await run_session(spec, gateway, library)
    finally:
        await gateway.aclose()
    with Store(tmp_path / "s.sqlite") as store:
        store.save_session(result)
        stored = store.load_session(spec.session_id)
    assert stored is not None
    print(
        f"\nlocal session: {stored.termination_reason}, {stored.therapist_turns} therapist turns, error={stored.error}"
    )
    for t in stored.turns:
        print(f"  {t.speaker}: {t.text[:100]!r} codes={t.codes} suds={t.state.suds:.0f}")
    assert stored.status == "completed", stored.error
    assert stored.termination_reason == TerminationReason.MAX_TURNS
    assert stored.therapist_turns == 2
    assert all(t.state is not None for t in stored.turns)
    assert any(c.model == "local" and not c.cached for c in stored.calls)


@pytest.fixture(autouse=True, scope="module")
def _scripted_agents() -> Iterator[None]:
    with scripted_agents({"test-reversing-patient": _reversing}):
        yield
