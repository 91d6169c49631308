"""Try it: a clinician (or a model) in the therapist's seat, one turn at a time.

The seam is the session graph's own nodes (``simulations/session.py``): ``appraise_node`` and
``patient_node`` (and ``subject_node`` when a model holds the seat) are called directly, in the
order the graph runs them, with the same :class:`SessionDeps` run context, and
``termination_for`` decides when the session ends. The graph is not ``ainvoke``d because that
runs a whole session at once, and a human turn has to pause for typing. The only thing made
here is the clinician's line: a :class:`TurnRecord` built exactly as ``subject_node`` builds the
subject's (no model call, so no call record).

A saved session is the :class:`SessionResult` ``run_session`` would build: the same adherence
report, calls and states, so ``therasim show``, ``judge`` and ``report`` read it like any other.
A clinician's session records ``subject = "human:clinician"``; a session ended before its
natural end is stored as cut at the turns played (``max_turns`` set to them, termination
``max_turns``), the truthful reading of "the session stopped there". Questionnaires are off.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, cast

from langgraph.graph import END
from langgraph.runtime import Runtime

from therasim.agents.context import Utterance
from therasim.agents.llm import BoundGateway, Gateway
from therasim.agents.subject import prompt_hash, therapist_system_prompt
from therasim.errors import ConfigError
from therasim.personas.schema import Persona
from therasim.protocols import AdherenceTracker, default_protocol_for, load_protocol
from therasim.simulations.records import (
    CallRecord,
    SessionResult,
    SessionSpec,
    TerminationReason,
    TurnRecord,
    resolve_persona,
)
from therasim.simulations.session import (
    SessionDeps,
    SessionState,
    appraise_node,
    patient_node,
    start_state,
    subject_node,
    termination_for,
)
from therasim.vocab import Severity

#: The subject a clinician's own session records.
CLINICIAN = "human:clinician"
MAX_LINE = 4000


@dataclass
class PlaySettings:
    """What the Try-it form chose."""

    persona: str
    severity: str = "routine"
    variant: dict[str, Any] = field(default_factory=dict)
    therapist: str = CLINICIAN
    patient: str = "scripted:template-patient"
    appraiser: str = "scripted:statistical"
    max_turns: int = 20
    seed: int | None = None

    def spec(self, persona: Persona) -> SessionSpec:
        """The session spec; a clinician's session gets a random seed unless one is given, so
        two sessions never share an id (the id hashes the spec, not what was typed)."""
        seed = self.seed
        if seed is None:
            seed = secrets.randbelow(2**31) if self.therapist == CLINICIAN else 0
        return SessionSpec(
            persona=persona.id,
            persona_version=persona.version,
            severity=cast(Severity, self.severity),  # pydantic validates the name
            variant=self.variant,
            subject=self.therapist,
            subject_name="clinician" if self.therapist == CLINICIAN else "",
            patient=self.patient,
            appraiser=self.appraiser,
            protocol=default_protocol_for(persona.modality),
            max_turns=self.max_turns,
            seed=seed,
            questionnaires=False,
        )


class LiveSession:
    """One session being played; turns are serialised by a lock."""

    def __init__(self, deps: SessionDeps, state: SessionState) -> None:
        self.key = secrets.token_urlsafe(12)
        self.deps = deps
        self.state = state
        self.initial = state["patient_state"]
        self.started = time.time()
        self.lock = asyncio.Lock()
        self.stop_requested = False
        self.allowance = 0  # model turns the stream may still play
        self.ended: TerminationReason | None = None
        self.error: str | None = None
        self._runtime = Runtime(context=deps)

    @classmethod
    async def start(
        cls, settings: PlaySettings, library: dict[str, Persona], gateway: Gateway
    ) -> LiveSession:
        """A new session at its first therapist turn (the patient speaks first if the protocol
        opens with the patient). ``ConfigError`` for an unknown persona, severity or variant."""
        if settings.persona not in library:
            from therasim.errors import UnknownNameError

            raise UnknownNameError("persona", settings.persona, list(library))
        spec = settings.spec(library[settings.persona])
        persona = resolve_persona(spec, library)
        protocol = load_protocol(spec.protocol)
        llm = BoundGateway(
            gateway,
            {"subject": spec.subject, "patient": spec.patient, "appraiser": spec.appraiser},
        )
        deps = SessionDeps(
            spec=spec,
            persona=persona,
            protocol=protocol,
            llm=llm,
            system_prompt=None,
            raw=False,
        )
        live = cls(deps, start_state(persona, protocol))
        if protocol.protocol.opener == "patient":
            await live._run("patient")
        return live

    # ---- reading

    @property
    def persona(self) -> Persona:
        """The session's persona."""
        return self.deps.persona

    @property
    def spec(self) -> SessionSpec:
        """The session's spec."""
        return self.deps.spec

    @property
    def turns(self) -> list[TurnRecord]:
        """The utterances so far."""
        return list(self.state["turns"])

    @property
    def phase(self) -> str:
        """The protocol phase the session is in."""
        return self.state["phase"]

    @property
    def therapist_turns(self) -> int:
        """Therapist turns taken so far."""
        return self.state.get("turn", 0)

    @property
    def finished(self) -> bool:
        """Whether the session has ended."""
        return self.ended is not None

    @property
    def model_seat(self) -> bool:
        """A model, not the clinician, holds the therapist's seat."""
        return self.spec.subject != CLINICIAN

    # ---- playing

    async def _run(self, node: str) -> bool:
        """Run one graph node on the state; True when the session goes on."""
        nodes = {"subject": subject_node, "appraise": appraise_node, "patient": patient_node}
        command = await nodes[node](self.state, self._runtime)
        self.state = {**self.state, **(command.update or {})}
        if command.goto == END:
            self.ended = termination_for(self.state, self.deps) or TerminationReason.MAX_TURNS
            self.error = self.state.get("error")
            return False
        return True

    async def _after_therapist(self) -> list[TurnRecord]:
        before = len(self.state["turns"])
        if await self._run("appraise"):
            await self._run("patient")
        return self.state["turns"][before:]

    async def clinician_turn(self, text: str) -> list[TurnRecord]:
        """The clinician says ``text``; returns the new utterances (theirs, coded, and the
        patient's reply). ``ConfigError`` for an empty or over-long line or a finished session."""
        text = text.strip()
        if not text:
            raise ConfigError("write what the therapist says first", field="line")
        if len(text) > MAX_LINE:
            raise ConfigError(f"a line is at most {MAX_LINE} characters", field="line")
        async with self.lock:
            self._check_open()
            if self.model_seat:
                raise ConfigError("a model holds the therapist's seat in this session")
            phase = self.deps.protocol.phase(self.state["phase"])
            record = TurnRecord(
                index=len(self.state["turns"]),
                speaker="therapist",
                text=text,
                turn=self.state.get("turn", 0) + 1,
                phase=phase.id,
                phase_kind=phase.kind.value,
                state=self.state["patient_state"],
            )
            self.state = {
                **self.state,
                "transcript": [
                    *self.state["transcript"],
                    Utterance(speaker="therapist", text=text),
                ],
                "pending_therapist": record,
            }
            return await self._after_therapist()

    async def model_turn(self) -> list[TurnRecord]:
        """The model in the therapist's seat takes one turn (subject, appraise, patient)."""
        async with self.lock:
            self._check_open()
            before = len(self.state["turns"])
            if await self._run("subject"):
                await self._after_therapist()
            return self.state["turns"][before:]

    def _check_open(self) -> None:
        if self.finished:
            raise ConfigError(f"the session has ended ({self.ended}); start a new one")

    # ---- saving

    def result(self) -> SessionResult:
        """The session as ``run_session`` would have returned it (see the module docstring)."""
        if self.therapist_turns < 1:
            raise ConfigError("play at least one therapist turn before saving")
        spec, termination = self.spec, self.ended
        if termination is None:
            spec = spec.model_copy(update={"max_turns": self.therapist_turns})
            termination = TerminationReason.MAX_TURNS
        tracker = AdherenceTracker(self.deps.protocol)
        for t in self.state["turns"]:
            if t.speaker == "therapist":
                tracker.record(t.phase, t.codes, risk=t.state.risk)
        adherence = tracker.report(final_phase=self.state.get("phase"))
        hashes = {}
        if self.model_seat:
            hashes["subject"] = prompt_hash(therapist_system_prompt(self.persona.modality, None))
        return SessionResult(
            session_id=spec.session_id,
            spec=spec,
            persona_ref=self.persona.ref,
            modality=self.persona.modality,
            initial_state=self.initial,
            habituation_margin=self.persona.dynamics.habituation_margin,
            status="completed" if termination.is_complete else "failed",
            error=self.error,
            termination_reason=termination,
            turns=self.state["turns"],
            calls=[CallRecord.of(c) for c in self.deps.llm.calls],
            adherence=adherence,
            prompt_hashes=hashes,
            started=self.started,
            finished=time.time(),
        )


def trajectory(initial: Any, turns: list[TurnRecord]) -> dict[str, list[Any]]:
    """The state after each therapist turn (turn 0 = the start), for the chart."""
    from therasim.vocab import RiskLevel

    points = [(0, initial)] if initial is not None else []
    points += [(t.turn, t.state) for t in turns if t.speaker == "therapist"]
    return {
        "turn": [n for n, _ in points],
        "suds": [round(s.suds, 1) for _, s in points],
        "belief": [round(s.belief, 1) for _, s in points],
        "alliance": [round(s.alliance, 3) for _, s in points],
        "engagement": [round(s.engagement, 3) for _, s in points],
        "risk": [RiskLevel(s.risk).rank for _, s in points],
    }


class Sessions:
    """The live sessions of this studio process (in memory, the oldest dropped past a cap)."""

    def __init__(self, cap: int = 50) -> None:
        self.cap = cap
        self._live: dict[str, LiveSession] = {}

    def add(self, live: LiveSession) -> None:
        """Keep ``live``, dropping the oldest session past the cap."""
        self._live[live.key] = live
        while len(self._live) > self.cap:
            self._live.pop(next(iter(self._live)))

    def get(self, key: str) -> LiveSession:
        """The live session ``key``; ``ConfigError`` when it is not (or no longer) kept."""
        try:
            return self._live[key]
        except KeyError:
            raise ConfigError(
                "no such live session (it ended with the studio, or was dropped); start a new one"
            ) from None
