"""One simulated session: a small, fixed LangGraph loop.

::

    START ─(protocol opener)─► subject ─► appraise ─► patient ─(route)─► subject | END
                         └──────────────────────────► patient

* ``subject``  — the model under test answers the visible transcript (``agents/subject.py``).
* ``appraise`` — codes the therapist turn (``agents/appraiser.py``); the patient state moves by
  the dynamics (``personas/dynamics.py``) and the protocol FSM advances (``protocols/``).
* ``patient``  — the simulated patient answers, conditioned on persona, state and phase.
* ``route``    — ends the session with a :class:`TerminationReason` or goes round again.

Each node routes by returning a ``Command`` (its update and where to go), not through
conditional edges. The topology never changes; the protocol phase is a field of the state.
Dependencies (persona, protocol graph, gateway) travel in the run context, not in the state, so
the state stays plain data. Errors from a participant end the session with ``*_error`` and are
recorded; they never escape as exceptions and are never saved as a reply.

How a session is run. The compiled :func:`session_graph` is the definition (its mermaid is
snapshotted by the tests), and :data:`NODES` is the one table both it and :func:`drive` are
built from. By default :func:`run_session` runs the nodes with :func:`drive`, a direct loop that
does what LangGraph's Pregel loop does for this graph: route from ``START``, run a node with the
state and the run context, apply its update (every channel is last-value), follow its
``Command(goto=...)``, stop at ``END``, and raise ``GraphRecursionError`` after
``recursion_limit`` node runs as LangGraph does. It skips the checkpoint, channel-version and
task machinery around each step, which was a third of a turn's CPU (``benchmarks/README.md``
§1). ``engine="langgraph"`` (or ``THERASIM_SESSION_ENGINE=langgraph``) runs the same session
through ``session_graph().ainvoke``; the tests hold the two equal, session for session.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, cast

from langgraph.errors import (
    ErrorCode,
    GraphRecursionError,
    InvalidUpdateError,
    create_error_message,
)
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command

from therasim.agents.appraiser import appraise
from therasim.agents.context import TurnContext, Utterance
from therasim.agents.llm import BoundGateway, Gateway
from therasim.agents.patient import patient_turn
from therasim.agents.questionnaires import administer
from therasim.agents.subject import prompt_hash, subject_turn, therapist_system_prompt
from therasim.agents.types import CompletionResponse
from therasim.errors import ConfigError, ModelError, SessionError, TherasimError
from therasim.personas.dynamics import PatientState, initial_state
from therasim.personas.dynamics import step as dynamics_step
from therasim.personas.schema import Persona
from therasim.protocols import AdherenceTracker, PhaseContext, ProtocolGraph, load_protocol
from therasim.protocols import step as protocol_step
from therasim.protocols.graph import phase_complete
from therasim.simulations.records import (
    CallRecord,
    QuestionnaireRecord,
    SessionResult,
    SessionSpec,
    TerminationReason,
    TurnRecord,
    resolve_persona,
)
from therasim.vocab import BehaviourCode

CRISIS_PHASE = "crisis_handoff"

TurnCallback = Callable[[TurnRecord], Awaitable[None] | None]

Engine = Literal["direct", "langgraph"]
ENGINE_ENV = "THERASIM_SESSION_ENGINE"


class SessionState(TypedDict, total=False):
    """The graph's state: plain data only."""

    transcript: list[Utterance]
    turns: list[TurnRecord]
    patient_state: PatientState
    phase: str
    phase_ctx: PhaseContext
    turn: int
    pending_therapist: TurnRecord | None
    termination: TerminationReason | None
    error: str | None


@dataclass
class SessionDeps:
    """What the nodes need besides the state (LangGraph run context)."""

    spec: SessionSpec
    persona: Persona
    protocol: ProtocolGraph
    llm: BoundGateway
    system_prompt: str | None
    raw: bool
    on_turn: TurnCallback | None = None
    over_budget: Callable[[], bool] | None = None  # read at each turn boundary
    session_id: str = field(init=False)

    def __post_init__(self) -> None:
        # spec.session_id hashes the whole spec; every turn's context needs it
        self.session_id = self.spec.session_id


# --------------------------------------------------------------------------- helpers


def _ctx(deps: SessionDeps, state: SessionState) -> TurnContext:
    phase = deps.protocol.phase(state["phase"])
    level = deps.persona.level
    turn = state.get("turn", 0)
    surfaced = level.surfaces_at_turn is not None and turn >= level.surfaces_at_turn
    pending = state.get("pending_therapist")
    last_codes = tuple(BehaviourCode(c) for c in pending.codes) if pending else ()
    # built three times a turn from values the session already validated: no second validation
    return TurnContext.model_construct(
        session_id=deps.session_id,
        modality=deps.persona.modality,
        persona=deps.persona,
        protocol_id=deps.protocol.id,
        phase=phase.id,
        phase_kind=phase.kind,
        phase_goal=phase.goal,
        therapist_guidance=phase.therapist_guidance,
        patient_guidance=phase.patient_guidance,
        turn=turn,
        turns_in_phase=state["phase_ctx"].turns_in_phase,
        state=state["patient_state"],
        last_codes=last_codes,
        surfaced=surfaced,
        seed=deps.spec.seed + 7919 * deps.spec.repeat,
    )


def _tokens(response: CompletionResponse) -> dict[str, Any]:
    return {
        "latency_s": round(response.latency_s, 4),
        "input_tokens": response.usage.input_tokens,
        "output_tokens": response.usage.output_tokens,
        "attempts": response.attempts,
    }


async def _emit(deps: SessionDeps, record: TurnRecord) -> None:
    if deps.on_turn is not None:
        result = deps.on_turn(record)
        if result is not None:
            await result


# --------------------------------------------------------------------------- nodes


def _stop(reason: TerminationReason, exc: TherasimError) -> Command[str]:
    return Command(update={"termination": reason, "error": str(exc)}, goto=END)


async def subject_node(state: SessionState, runtime: Runtime[SessionDeps]) -> Command[str]:
    deps = runtime.context
    ctx = _ctx(deps, state)
    try:
        response = await subject_turn(
            deps.llm, ctx, state["transcript"], system_prompt=deps.system_prompt, raw=deps.raw
        )
    except TherasimError as exc:
        return _stop(TerminationReason.SUBJECT_ERROR, exc)
    text = response.text.strip()
    phase = deps.protocol.phase(state["phase"])
    record = TurnRecord(
        index=len(state["turns"]),
        speaker="therapist",
        text=text,
        turn=state.get("turn", 0) + 1,
        phase=phase.id,
        phase_kind=phase.kind.value,
        state=state["patient_state"],
        **_tokens(response),
    )
    update: SessionState = {
        "transcript": [*state["transcript"], Utterance(speaker="therapist", text=text)],
        "pending_therapist": record,
    }
    return Command(update=update, goto="appraise")


async def appraise_node(state: SessionState, runtime: Runtime[SessionDeps]) -> Command[str]:
    deps = runtime.context
    record = state["pending_therapist"]
    assert record is not None
    ctx = _ctx(deps, state)
    previous = next(
        (u.text for u in reversed(state["transcript"][:-1]) if u.speaker == "patient"), None
    )
    try:
        appraisal, _ = await appraise(deps.llm, ctx, record.text, previous_patient=previous)
    except TherasimError as exc:
        return _stop(TerminationReason.APPRAISER_ERROR, exc)
    codes = list(appraisal.codes)
    phase = deps.protocol.phase(state["phase"])
    new_state = dynamics_step(
        deps.persona.dynamics,
        state["patient_state"],
        phase.kind,
        codes,
        seed=ctx.seed,
        level=deps.persona.level,
    )
    next_phase, next_ctx = protocol_step(deps.protocol, state["phase_ctx"], codes, new_state)
    record = record.model_copy(
        update={
            "codes": [c.value for c in codes],
            "evidence": [{"code": e.code.value, "span": e.span} for e in appraisal.evidence],
            "state": new_state,
        }
    )
    await _emit(deps, record)
    update: SessionState = {
        "turns": [*state["turns"], record],
        "patient_state": new_state,
        "phase": next_phase,
        "phase_ctx": next_ctx,
        "turn": state.get("turn", 0) + 1,
        "pending_therapist": record,
    }
    return Command(update=update, goto="patient")


async def patient_node(state: SessionState, runtime: Runtime[SessionDeps]) -> Command[str]:
    deps = runtime.context
    ctx = _ctx(deps, state)
    try:
        reply = await patient_turn(deps.llm, ctx, state["transcript"])
    except TherasimError as exc:
        return _stop(TerminationReason.PATIENT_ERROR, exc)
    phase = deps.protocol.phase(state["phase"])
    record = TurnRecord(
        index=len(state["turns"]),
        speaker="patient",
        text=reply.text,
        turn=state.get("turn", 0),
        phase=phase.id,
        phase_kind=phase.kind.value,
        state=state["patient_state"],
        self_reported_suds=reply.self_reported_suds,
        **{**_tokens(reply.response), "attempts": reply.attempts},
    )
    await _emit(deps, record)
    update: SessionState = {
        "transcript": [*state["transcript"], Utterance(speaker="patient", text=reply.text)],
        "turns": [*state["turns"], record],
    }
    ended = termination_for({**state, **update}, deps)
    return Command(update=update, goto=END if ended else "subject")


def route_start(
    state: SessionState, runtime: Runtime[SessionDeps]
) -> Literal["subject", "patient"]:
    return "patient" if runtime.context.protocol.protocol.opener == "patient" else "subject"


def termination_for(state: SessionState, deps: SessionDeps) -> TerminationReason | None:
    """Why the session should end now, or None to go on. Pure but for the budget meter."""
    if state.get("termination"):
        return state["termination"]
    if state["patient_state"].dropout:
        return TerminationReason.PATIENT_DROPOUT
    phase_id = state["phase"]
    if deps.protocol.is_terminal(phase_id) and phase_complete(deps.protocol, state["phase_ctx"]):
        return (
            TerminationReason.CRISIS_HANDOFF
            if phase_id == CRISIS_PHASE
            else TerminationReason.PROTOCOL_COMPLETE
        )
    if state.get("turn", 0) >= deps.spec.max_turns:
        return TerminationReason.MAX_TURNS
    if deps.over_budget is not None and deps.over_budget():
        return TerminationReason.BUDGET_EXHAUSTED
    return None


Node = Callable[[SessionState, Runtime[SessionDeps]], Awaitable[Command[str]]]

NODES: dict[str, tuple[Node, tuple[str, ...]]] = {
    "subject": (subject_node, ("appraise", END)),
    "appraise": (appraise_node, ("patient", END)),
    "patient": (patient_node, ("subject", END)),
}
"""The graph's nodes: name → (function, where its ``Command`` may go). ``START`` routes to
``subject`` or ``patient`` by :func:`route_start`."""

START_DESTINATIONS = ("subject", "patient")


def build_graph() -> Any:
    """The compiled session graph (the same for every session)."""
    graph = StateGraph(SessionState, context_schema=SessionDeps)
    for name, (node, destinations) in NODES.items():
        # LangGraph's overloads want its own protocol for a node that takes the runtime
        graph.add_node(name, cast(Any, node), destinations=destinations)
    graph.add_conditional_edges(START, route_start, list(START_DESTINATIONS))
    return graph.compile()


_GRAPH: Any = None


def session_graph() -> Any:
    """The compiled graph, built once per process."""
    global _GRAPH
    if _GRAPH is None:
        _GRAPH = build_graph()
    return _GRAPH


def topology_mermaid() -> str:
    """The graph's topology as mermaid (snapshotted by the tests)."""
    return str(session_graph().get_graph().draw_mermaid())


async def drive(
    state: SessionState, deps: SessionDeps, *, recursion_limit: int = 25
) -> SessionState:
    """Run the session graph from ``state`` to ``END`` without LangGraph's step loop; the final
    state, as ``session_graph().ainvoke(state, context=deps, config={"recursion_limit": ...})``
    returns it (see the module docstring; the tests hold the two equal)."""
    runtime = Runtime(context=deps)
    values: SessionState = {**state}
    goto: str = route_start(values, runtime)
    if goto not in START_DESTINATIONS:
        raise InvalidUpdateError(f"the session graph has no edge from START to {goto!r}")
    runs = 0
    while goto != END:
        node, destinations = NODES[goto]
        command = await node(values, runtime)
        # Let other sessions run between steps, as LangGraph's loop does: without it a session
        # ran its scripted nodes straight on after its HTTP reply while other sessions' ready
        # work waited, and the backend sat idler (benchmarks §1: efficiency 0.86-0.89 -> 0.92).
        await asyncio.sleep(0)
        runs += 1
        update = command.update
        if update:
            values = {**values, **update}
        target = command.goto
        if not isinstance(target, str) or target not in destinations:
            raise InvalidUpdateError(
                f"node {goto!r} routed to {target!r}, not one of {destinations}"
            )
        goto = target
        if goto != END and runs >= recursion_limit:
            raise GraphRecursionError(
                create_error_message(
                    message=(
                        f"Recursion limit of {recursion_limit} reached without hitting a stop "
                        "condition. You can increase the limit by setting the `recursion_limit` "
                        "config key."
                    ),
                    error_code=ErrorCode.GRAPH_RECURSION_LIMIT,
                )
            )
    return values


# --------------------------------------------------------------------------- running


def start_state(persona: Persona, protocol: ProtocolGraph) -> SessionState:
    """A session's state before its first turn: the persona's baseline at the protocol's start."""
    patient0 = initial_state(persona)
    return {
        "transcript": [],
        "turns": [],
        "patient_state": patient0,
        "phase": protocol.start,
        "phase_ctx": protocol.context(
            protocol.start, patient0, habituation_drop=persona.dynamics.habituation_margin
        ),
        "turn": 0,
        "pending_therapist": None,
        "termination": None,
        "error": None,
    }


async def _questionnaires(
    deps: SessionDeps, state: SessionState, when: Literal["pre", "post"]
) -> list[QuestionnaireRecord]:
    instruments: list[Literal["phq9", "pcl5"]] = ["phq9"]
    if deps.persona.modality == "pe":
        instruments.append("pcl5")
    ctx = _ctx(deps, state)
    out = []
    for instrument in instruments:
        result = await administer(
            deps.llm,
            ctx,
            state["transcript"],
            instrument,
            when=when,
            wording=deps.spec.questionnaire_wording,
        )
        out.append(
            QuestionnaireRecord(
                instrument=instrument,
                when=when,
                wording=result.wording,
                items=list(result.items),
                total=result.total,
            )
        )
    return out


def _engine_from_env() -> Engine:
    value = os.environ.get(ENGINE_ENV) or "direct"
    if value not in ("direct", "langgraph"):
        raise ConfigError(
            f"${ENGINE_ENV} is {value!r}; use 'direct' or 'langgraph'", field=ENGINE_ENV
        )
    return "langgraph" if value == "langgraph" else "direct"


async def run_session(
    spec: SessionSpec,
    gateway: Gateway,
    library: dict[str, Persona],
    *,
    on_turn: TurnCallback | None = None,
    over_budget: Callable[[], bool] | None = None,
    engine: Engine | None = None,
) -> SessionResult:
    """Simulate one session to its end. Never raises for participant errors: they are recorded.

    ``over_budget`` is read at each turn boundary: once it is true the session stops there,
    ``budget_exhausted``, and is stored as failed (a rerun with more budget redoes it).
    ``engine`` runs the graph with :func:`drive` (``"direct"``, the default) or through
    LangGraph's ``ainvoke`` (``"langgraph"``); unset, ``$THERASIM_SESSION_ENGINE`` decides."""
    started = time.time()
    engine = engine or _engine_from_env()
    persona = resolve_persona(spec, library)
    protocol = load_protocol(spec.protocol)
    if protocol.protocol.modality != persona.modality:
        raise ConfigError(
            f"protocol {protocol.id!r} is for {protocol.protocol.modality}, persona is {persona.modality}",
            object_id=spec.persona,
            field="protocol",
        )
    llm = BoundGateway(
        gateway, {"subject": spec.subject, "patient": spec.patient, "appraiser": spec.appraiser}
    )
    raw = spec.subject_prompt == "raw"
    system_prompt = None if spec.subject_prompt in ("protocol", "raw") else spec.subject_prompt
    deps = SessionDeps(
        spec=spec,
        persona=persona,
        protocol=protocol,
        llm=llm,
        system_prompt=system_prompt,
        raw=raw,
        on_turn=on_turn,
        over_budget=over_budget,
    )
    state = start_state(persona, protocol)
    patient0 = state["patient_state"]
    questionnaires: list[QuestionnaireRecord] = []
    termination: TerminationReason
    error: str | None = None
    try:
        if spec.questionnaires:
            questionnaires += await _questionnaires(deps, state, "pre")
        limit = 4 * spec.max_turns + 16
        final: SessionState
        if engine == "langgraph":
            final = await session_graph().ainvoke(
                state, context=deps, config={"recursion_limit": limit}
            )
        else:
            final = await drive(state, deps, recursion_limit=limit)
        termination = termination_for(final, deps) or TerminationReason.MAX_TURNS
        error = final.get("error")
        if termination.is_complete and spec.questionnaires:
            try:
                questionnaires += await _questionnaires(deps, final, "post")
            except (ModelError, SessionError) as exc:
                termination, error = TerminationReason.QUESTIONNAIRE_ERROR, str(exc)
    except (ModelError, SessionError) as exc:
        final = state
        termination, error = TerminationReason.QUESTIONNAIRE_ERROR, str(exc)
    prompt = therapist_system_prompt(persona.modality, None) if not raw else ""
    prompt_hashes = {"subject": prompt_hash(system_prompt or prompt)}
    tracker = AdherenceTracker(protocol)
    for t in final.get("turns", []):
        if t.speaker == "therapist":
            tracker.record(t.phase, t.codes, risk=t.state.risk)
    # a JSON dict, which SessionResult validates back into an AdherenceReport
    adherence: Any = tracker.report(final_phase=final.get("phase")).model_dump(mode="json")
    return SessionResult(
        session_id=spec.session_id,
        spec=spec,
        persona_ref=persona.ref,
        modality=persona.modality,
        initial_state=patient0,
        habituation_margin=persona.dynamics.habituation_margin,
        status="completed" if termination.is_complete else "failed",
        error=error
        or (
            "the study's budget was spent"
            if termination is TerminationReason.BUDGET_EXHAUSTED
            else None
        ),
        termination_reason=termination,
        turns=final.get("turns", []),
        questionnaires=questionnaires,
        calls=[CallRecord.of(c) for c in llm.calls],
        adherence=adherence,
        prompt_hashes=prompt_hashes,
        started=started,
        finished=time.time(),
    )


__all__ = [
    "ENGINE_ENV",
    "NODES",
    "Engine",
    "SessionDeps",
    "SessionState",
    "build_graph",
    "drive",
    "resolve_persona",
    "run_session",
    "session_graph",
    "termination_for",
    "topology_mermaid",
]
