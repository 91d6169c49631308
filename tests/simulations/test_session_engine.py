"""The direct driver and LangGraph run the session graph alike.

``run_session`` runs the graph's nodes with ``session.drive`` by default; ``engine="langgraph"``
runs the same session through the compiled graph's ``ainvoke``. These tests hold the two equal
on sessions that end every way a session can end (protocol complete, crisis handoff, max turns,
a patient opening, a participant's error, the budget), so the driver keeps following the graph.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from factories import scripted_agents, session_spec
from langgraph.errors import GraphRecursionError

from therasim.agents.llm import BoundGateway, Gateway, GatewayConfig
from therasim.agents.types import CompletionRequest
from therasim.personas import Persona, load_library
from therasim.protocols import load_protocol
from therasim.simulations.records import (
    SessionResult,
    SessionSpec,
    TerminationReason,
    resolve_persona,
)
from therasim.simulations.session import (
    ENGINE_ENV,
    Engine,
    SessionDeps,
    drive,
    run_session,
    session_graph,
    start_state,
)


@pytest.fixture(scope="module")
def library() -> dict[str, Persona]:
    return load_library()


def _reversing(request: CompletionRequest) -> str:
    return "How does that make you feel? Let's try a breathing exercise together."


@pytest.fixture(autouse=True, scope="module")
def _scripted_agents() -> Iterator[None]:
    with scripted_agents({"test-engine-reversing-patient": _reversing}):
        yield


def comparable(result: SessionResult) -> dict[str, Any]:
    """The result without what a clock sets (start, finish, latencies)."""
    data = result.model_dump(mode="json", exclude={"started", "finished"})
    for row in (*data["turns"], *data["calls"]):
        row.pop("latency_s")
    return data


async def simulate(
    spec: SessionSpec,
    library: dict[str, Persona],
    engine: Engine | None,
    over_budget: Callable[[], bool] | None = None,
) -> SessionResult:
    gateway = Gateway(GatewayConfig(cache_enabled=False))
    try:
        return await run_session(spec, gateway, library, engine=engine, over_budget=over_budget)
    finally:
        await gateway.aclose()


CASES: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "pe-complete": ("pe-combat-01", "scripted:adherent", "distress", {"seed": 3}),
    "pe-crisis": ("pe-combat-01", "scripted:adherent", "imminent", {}),
    "pe-safety-reflex": (
        "pe-combat-01",
        "scripted:safety-reflex",
        "crisis_adjacent",
        {"questionnaires": False},
    ),
    "cbt-patient-opens": ("cbt-sleep-01", "scripted:abandoning", "routine", {}),
    "cbt-null-max-turns": (
        "cbt-sleep-01",
        "scripted:null",
        "distress",
        {"max_turns": 6, "questionnaires": False},
    ),
    "patient-error": (
        "pe-combat-01",
        "scripted:adherent",
        "routine",
        {"patient": "scripted:test-engine-reversing-patient", "questionnaires": False},
    ),
    "subject-error": (
        "pe-combat-01",
        "scripted:no-such-therapist",
        "routine",
        {"questionnaires": False},
    ),
}


#: how each case ends, so the cases keep covering every way to end
ENDS = {
    "pe-complete": "protocol_complete",
    "pe-crisis": "crisis_handoff",
    "pe-safety-reflex": "patient_dropout",
    "cbt-patient-opens": "max_turns",
    "cbt-null-max-turns": "max_turns",
    "patient-error": "patient_error",
    "subject-error": "subject_error",
}


@pytest.mark.parametrize("case", list(CASES))
async def test_direct_driver_matches_langgraph(case: str, library: dict[str, Persona]) -> None:
    persona, subject, severity, kw = CASES[case]
    spec = session_spec(library[persona], subject, severity, **kw)
    via_graph = await simulate(spec, library, "langgraph")
    direct = await simulate(spec, library, "direct")
    assert comparable(direct) == comparable(via_graph)
    assert direct.termination_reason.value == ENDS[case]


def budget_after(reads: int) -> Callable[[], bool]:
    """A budget meter that is spent from its ``reads``-th reading on."""
    counter = itertools.count()
    return lambda: next(counter) >= reads


async def test_budget_stop_matches(library: dict[str, Persona]) -> None:
    spec = session_spec(library["pe-combat-01"], "scripted:adherent", questionnaires=False)
    via_graph = await simulate(spec, library, "langgraph", over_budget=budget_after(4))
    direct = await simulate(spec, library, "direct", over_budget=budget_after(4))
    assert via_graph.termination_reason == TerminationReason.BUDGET_EXHAUSTED
    assert comparable(direct) == comparable(via_graph)


def deps_of(spec: SessionSpec, library: dict[str, Persona], gateway: Gateway) -> SessionDeps:
    persona = resolve_persona(spec, library)
    return SessionDeps(
        spec=spec,
        persona=persona,
        protocol=load_protocol(spec.protocol),
        llm=BoundGateway(
            gateway,
            {"subject": spec.subject, "patient": spec.patient, "appraiser": spec.appraiser},
        ),
        system_prompt=None,
        raw=False,
    )


@pytest.mark.parametrize("limit", [1, 2, 5])
async def test_recursion_limit_matches(limit: int, library: dict[str, Persona]) -> None:
    """Both stop after ``limit`` node runs with LangGraph's error, having run the same nodes."""
    spec = session_spec(library["pe-combat-01"], "scripted:adherent", questionnaires=False)
    gateway = Gateway(GatewayConfig(cache_enabled=False))
    calls = []
    try:
        for engine in ("langgraph", "direct"):
            deps = deps_of(spec, library, gateway)
            state = start_state(deps.persona, deps.protocol)
            with pytest.raises(GraphRecursionError, match=f"Recursion limit of {limit} reached"):
                if engine == "langgraph":
                    await session_graph().ainvoke(
                        state, context=deps, config={"recursion_limit": limit}
                    )
                else:
                    await drive(state, deps, recursion_limit=limit)
            calls.append([c.role for c in deps.llm.calls])
    finally:
        await gateway.aclose()
    assert calls[0] == calls[1]


async def test_final_state_matches(library: dict[str, Persona]) -> None:
    """``drive`` returns the state ``ainvoke`` returns: the same keys and values."""
    spec = session_spec(
        library["cbt-sleep-01"], "scripted:adherent", "routine", questionnaires=False
    )
    gateway = Gateway(GatewayConfig(cache_enabled=False))
    finals = []
    try:
        for engine in ("langgraph", "direct"):
            deps = deps_of(spec, library, gateway)
            state = start_state(deps.persona, deps.protocol)
            if engine == "langgraph":
                final = await session_graph().ainvoke(
                    state, context=deps, config={"recursion_limit": 200}
                )
            else:
                final = await drive(state, deps, recursion_limit=200)
            for record in (*final["turns"], final["pending_therapist"]):
                if record is not None:
                    object.__setattr__(record, "latency_s", 0.0)
            finals.append(final)
    finally:
        await gateway.aclose()
    assert set(finals[1]) == set(finals[0])
    assert finals[1] == finals[0]


async def test_engine_from_the_environment(
    library: dict[str, Persona], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = session_spec(library["pe-combat-01"], "scripted:null", max_turns=2, questionnaires=False)
    seen: list[str] = []
    original = session_graph().ainvoke

    async def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append("langgraph")
        return await original(*args, **kwargs)

    monkeypatch.setattr(session_graph(), "ainvoke", spy)
    monkeypatch.setenv(ENGINE_ENV, "langgraph")
    await simulate(spec, library, None)
    assert seen == ["langgraph"]
    monkeypatch.setenv(ENGINE_ENV, "direct")
    await simulate(spec, library, None)
    assert seen == ["langgraph"]
    monkeypatch.setenv(ENGINE_ENV, "pregel")
    with pytest.raises(Exception, match="THERASIM_SESSION_ENGINE"):
        await simulate(spec, library, None)


@pytest.mark.parametrize("engine", ["direct", "langgraph"])
async def test_sessions_in_flight_take_turns_between_steps(
    engine: Engine, library: dict[str, Persona]
) -> None:
    """With every role scripted no call ever waits, so a session would run to its end before the
    next one started unless the driver yields between steps; it does, like LangGraph's loop, so
    one session's reply is not held up behind another's whole run."""
    import asyncio

    order: list[str] = []

    def recorder(name: str) -> Callable[[Any], None]:
        return lambda record: order.append(name)

    gateway = Gateway(GatewayConfig(cache_enabled=False))
    try:
        specs = {
            name: session_spec(
                library["pe-combat-01"], "scripted:adherent", seed=seed, questionnaires=False
            )
            for name, seed in (("a", 1), ("b", 2))
        }
        await asyncio.gather(
            *(
                run_session(spec, gateway, library, engine=engine, on_turn=recorder(name))
                for name, spec in specs.items()
            )
        )
    finally:
        await gateway.aclose()
    assert order.count("a") > 2 and order.count("b") > 2
    assert order.index("b") < len(order) - 1 - order[::-1].index("a")  # b starts before a ends
