"""Load protocols into validated ``networkx`` graphs and step through them.

Nodes carry their :class:`~therasim.protocols.schema.Phase` (attribute ``phase``); edges carry
``guard``, ``priority``, ``exceptional`` and ``order`` (position of the transition in the file,
the tie-breaker). Graphs are frozen after validation, so a loaded protocol can be shared.

Validation rules, each raised as :class:`ProtocolValidationError` (a ``ConfigError``) whose
``reason`` attribute and message start with the named reason (:class:`ValidationReason`):
unique phase ids; a start phase that exists; at least one terminal; endpoints that exist; no
self loops or duplicate edges; terminals without outgoing transitions (but an exceptional ``*``
transition, the crisis exit, which leaves them too); known guards (raised as
:class:`UnknownGuardError`, which is also an ``UnknownNameError`` with "did you mean"); every
phase reachable from the start; every phase reaching a terminal; a canonical path.

The **canonical path** is the longest start → terminal path over non-exceptional transitions
that go forward in the file's phase order (so loops back and crisis exits are left out, and a
shortcut is never mistaken for the intended route). Adherence measures skips against it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, NoReturn

import networkx as nx
import yaml
from pydantic import ValidationError

from therasim.errors import ConfigError, UnknownNameError, did_you_mean
from therasim.loading import describe_error, load_yaml
from therasim.personas.dynamics import PatientState
from therasim.protocols.guards import (
    DEFAULT_HABITUATION_DROP,
    PhaseContext,
    evaluate_guard,
    guard_names,
)
from therasim.protocols.schema import ANY_SOURCE, Phase, Protocol
from therasim.vocab import BehaviourCode

DEFAULT_PROTOCOLS: dict[str, str] = {"pe": "pe-imaginal-session", "cbt": "cbt-three-stage"}
"""Protocol used when a study names only the modality: the richer PE session model, and the
three-stage CBT variant the reproduced study's CBT items come from."""


class ValidationReason(StrEnum):
    """Named reasons a protocol file is rejected."""

    FILE_NOT_FOUND = "file not found"
    INVALID_YAML = "invalid yaml"
    SCHEMA = "schema violation"
    ID_MISMATCH = "id does not match file name"
    DUPLICATE_PHASE = "duplicate phase id"
    UNKNOWN_START = "unknown start phase"
    NO_TERMINAL = "no terminal"
    UNKNOWN_ENDPOINT = "unknown transition endpoint"
    SELF_LOOP = "self loop"
    DUPLICATE_TRANSITION = "duplicate transition"
    TERMINAL_OUTGOING = "terminal has outgoing transition"
    UNKNOWN_GUARD = "unknown guard"
    UNREACHABLE_PHASE = "unreachable phase"
    NO_TERMINAL_REACHABLE = "no terminal reachable"
    NO_CANONICAL_PATH = "no canonical path"


class ProtocolValidationError(ConfigError):
    """A protocol file breaks a rule; ``reason`` names the rule, ``phase`` the phase (if any)."""

    def __init__(
        self,
        reason: ValidationReason,
        message: str,
        *,
        file: str | None = None,
        object_id: str | None = None,
        field: str | None = None,
        phase: str | None = None,
    ) -> None:
        self.reason = reason
        self.phase = phase
        # explicit base call: in UnknownGuardError's MRO, super() would be UnknownNameError
        ConfigError.__init__(
            self, f"{reason.value}: {message}", file=file, object_id=object_id, field=field
        )


class UnknownGuardError(ProtocolValidationError, UnknownNameError):
    """A transition or completion criterion names a guard that is not registered."""

    def __init__(
        self,
        name: str,
        known: list[str],
        *,
        where: str,
        file: str | None = None,
        object_id: str | None = None,
        field: str | None = None,
        phase: str | None = None,
    ) -> None:
        close = did_you_mean(name, known)
        hint = f"; {close}" if close else ""
        self.kind = "guard"
        self.name = name
        self.known = sorted(known)
        ProtocolValidationError.__init__(
            self,
            ValidationReason.UNKNOWN_GUARD,
            f"{name!r} in {where}{hint} (known: {', '.join(self.known)})",
            file=file,
            object_id=object_id,
            field=field,
            phase=phase,
        )


@dataclass(frozen=True, eq=False)
class TransitionEdge:
    """One outgoing edge of a phase, as ``next_phase`` evaluates it."""

    source: str
    target: str
    guard: str
    priority: int
    exceptional: bool
    order: int


@dataclass(frozen=True, eq=False)
class ProtocolGraph:
    """A validated protocol: the pydantic model plus its frozen ``networkx.DiGraph``."""

    protocol: Protocol
    graph: nx.DiGraph
    source: str
    canonical_path: tuple[str, ...]

    @property
    def id(self) -> str:
        """The protocol id."""
        return self.protocol.id

    @property
    def ref(self) -> str:
        """``id@version``."""
        return self.protocol.ref

    @property
    def start(self) -> str:
        """Id of the start phase."""
        return self.protocol.start

    @property
    def phase_ids(self) -> list[str]:
        """Phase ids in file order."""
        return [p.id for p in self.protocol.phases]

    @property
    def terminals(self) -> list[str]:
        """Ids of terminal phases, in file order."""
        return [p.id for p in self.protocol.phases if p.terminal]

    def phase(self, phase_id: str) -> Phase:
        """The phase ``phase_id``; ``UnknownNameError`` if the protocol has none."""
        phase = self._phases.get(phase_id)
        if phase is None:
            raise UnknownNameError(f"phase of protocol {self.id!r}", phase_id, self.phase_ids)
        return phase

    # The graph is frozen, so what every turn asks of it is read once: networkx's views cost
    # more than the lookups themselves.

    @functools.cached_property
    def _phases(self) -> dict[str, Phase]:
        return {phase_id: data["phase"] for phase_id, data in self.graph.nodes(data=True)}

    @functools.cached_property
    def _transitions(self) -> dict[str, tuple[TransitionEdge, ...]]:
        index = {pid: i for i, pid in enumerate(self.phase_ids)}
        out = {}
        for phase_id in self.graph:
            edges = [
                TransitionEdge(
                    source=phase_id,
                    target=target,
                    guard=data["guard"],
                    priority=data["priority"],
                    exceptional=data["exceptional"],
                    order=data["order"],
                )
                for target, data in self.graph.adj[phase_id].items()
            ]
            out[phase_id] = tuple(
                sorted(edges, key=lambda e: (-e.priority, e.order, index[e.target]))
            )
        return out

    def is_terminal(self, phase_id: str) -> bool:
        """True if the session ends in ``phase_id``."""
        return self.phase(phase_id).terminal

    def transitions_from(self, phase_id: str) -> list[TransitionEdge]:
        """Outgoing edges of ``phase_id`` in evaluation order (priority high→low, then file order)."""
        self.phase(phase_id)
        return list(self._transitions[phase_id])

    def context(
        self,
        phase_id: str,
        state: PatientState,
        *,
        habituation_drop: float = DEFAULT_HABITUATION_DROP,
    ) -> PhaseContext:
        """A fresh context for entering ``phase_id`` with the patient in ``state``."""
        return PhaseContext.enter(self.phase(phase_id), state, habituation_drop=habituation_drop)


# ---------------------------------------------------------------------------------------------
# Loading


def _library() -> Traversable:
    return files("therasim.protocols") / "library"


def _library_files() -> Iterator[Traversable]:
    for entry in _library().iterdir():
        if entry.name.endswith(".yaml") and entry.is_file():
            yield entry


def list_protocols() -> list[str]:
    """Ids of every protocol shipped in ``protocols/library``, sorted."""
    return sorted(entry.name.removesuffix(".yaml") for entry in _library_files())


def default_protocol_for(modality: str) -> str:
    """Id of the protocol used for ``modality`` ('pe' or 'cbt') when a study names no protocol."""
    try:
        return DEFAULT_PROTOCOLS[modality]
    except KeyError:
        raise UnknownNameError("modality", modality, list(DEFAULT_PROTOCOLS)) from None


def _looks_like_path(value: str | os.PathLike[str]) -> bool:
    if isinstance(value, os.PathLike):
        return True
    return value.endswith((".yaml", ".yml")) or "/" in value or os.sep in value


def load_protocol(path_or_id: str | os.PathLike[str]) -> ProtocolGraph:
    """Load and validate a protocol, by library id (``'pe-imaginal-session'``) or by file path.

    Raises ``UnknownNameError`` for an id not in the library and ``ProtocolValidationError``
    (``ConfigError``) for an invalid file. Library protocols are cached (their graphs are frozen).
    """
    if _looks_like_path(path_or_id):
        path = Path(path_or_id)
        if not path.is_file():
            raise ProtocolValidationError(
                ValidationReason.FILE_NOT_FOUND,
                f"no protocol file at {str(path)!r}",
                file=str(path),
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = "is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
            raise ProtocolValidationError(
                ValidationReason.INVALID_YAML, f"cannot be read: {reason}", file=str(path)
            ) from None
        return protocol_from_text(text, source=str(path))
    return _load_library(str(path_or_id))


@functools.lru_cache(maxsize=64)
def _load_library(protocol_id: str) -> ProtocolGraph:
    entry = _library() / f"{protocol_id}.yaml"
    if not entry.is_file():
        raise UnknownNameError("protocol", protocol_id, list_protocols())
    graph = protocol_from_text(entry.read_text(encoding="utf-8"), source=str(entry))
    if graph.id != protocol_id:
        raise ProtocolValidationError(
            ValidationReason.ID_MISMATCH,
            f"library file {protocol_id}.yaml declares id {graph.id!r}",
            file=str(entry),
            object_id=graph.id,
            field="id",
        )
    return graph


def protocol_from_text(text: str, *, source: str = "<string>") -> ProtocolGraph:
    """Parse YAML text into a validated :class:`ProtocolGraph`; ``source`` names it in errors."""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ProtocolValidationError(
            ValidationReason.INVALID_YAML, str(exc), file=source
        ) from None
    except RecursionError:
        raise ProtocolValidationError(
            ValidationReason.INVALID_YAML, "nested too deeply to be a protocol", file=source
        ) from None
    return protocol_from_data(data, source=source)


def protocol_from_data(data: Any, *, source: str = "<data>") -> ProtocolGraph:
    """Validate a parsed mapping into a :class:`ProtocolGraph`; ``source`` names it in errors."""
    object_id = data.get("id") if isinstance(data, dict) else None
    object_id = object_id if isinstance(object_id, str) else None
    try:
        protocol = Protocol.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {describe_error(err, Protocol)}"
            for err in exc.errors()
        )
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        raise ProtocolValidationError(
            ValidationReason.SCHEMA,
            problems,
            file=source,
            object_id=object_id,
            field=".".join(str(p) for p in first) or None,
        ) from None
    return build_graph(protocol, source=source)


# ---------------------------------------------------------------------------------------------
# Validation


def build_graph(protocol: Protocol, *, source: str = "<protocol>") -> ProtocolGraph:
    """Check the graph-level rules and build the frozen ``DiGraph`` of ``protocol``."""

    def fail(
        reason: ValidationReason,
        message: str,
        *,
        field: str | None = None,
        phase: str | None = None,
    ) -> NoReturn:
        raise ProtocolValidationError(
            reason, message, file=source, object_id=protocol.id, field=field, phase=phase
        )

    known_guards = guard_names()

    def check_guards(names: Iterable[str], *, where: str, field: str, phase: str | None) -> None:
        for name in names:
            if name not in known_guards:
                raise UnknownGuardError(
                    name,
                    known_guards,
                    where=where,
                    file=source,
                    object_id=protocol.id,
                    field=field,
                    phase=phase,
                )

    index: dict[str, int] = {}
    for i, phase in enumerate(protocol.phases):
        if phase.id in index:
            fail(
                ValidationReason.DUPLICATE_PHASE,
                f"phase {phase.id!r} is declared twice (phases[{index[phase.id]}] and phases[{i}])",
                field=f"phases[{i}].id",
                phase=phase.id,
            )
        index[phase.id] = i
        check_guards(
            phase.completion,
            where=f"completion of phase {phase.id!r}",
            field=f"phases[{i}].completion",
            phase=phase.id,
        )
    if protocol.start not in index:
        fail(
            ValidationReason.UNKNOWN_START,
            f"start phase {protocol.start!r} is not among the phases ({', '.join(index)})",
            field="start",
            phase=protocol.start,
        )
    terminals = [p.id for p in protocol.phases if p.terminal]
    if not terminals:
        fail(
            ValidationReason.NO_TERMINAL,
            "no phase is marked terminal: add 'terminal: true' to the last phase",
        )

    graph: nx.DiGraph = nx.DiGraph(protocol=protocol.id)
    for phase in protocol.phases:
        graph.add_node(phase.id, phase=phase)

    explicit = {(t.source, t.target) for t in protocol.transitions if t.source != ANY_SOURCE}
    for order, t in enumerate(protocol.transitions):
        field = f"transitions[{order}]"
        if t.target not in index:
            fail(
                ValidationReason.UNKNOWN_ENDPOINT,
                f"transition {t.source} -> {t.target}: target phase {t.target!r} does not exist",
                field=f"{field}.target",
                phase=t.target,
            )
        if t.source == ANY_SOURCE:
            # explicit edges to the same target win over the wildcard (documented in the schema)
            # an exceptional exit (the crisis handoff) leaves terminal phases too: a patient who
            # discloses a plan in the last task phase is handed off, not "complete"
            sources = [
                p.id
                for p in protocol.phases
                if (t.exceptional or not p.terminal)
                and p.id != t.target
                and (p.id, t.target) not in explicit
            ]
        else:
            if t.source not in index:
                fail(
                    ValidationReason.UNKNOWN_ENDPOINT,
                    f"transition {t.source} -> {t.target}: source phase {t.source!r} does not exist",
                    field=f"{field}.source",
                    phase=t.source,
                )
            if t.source == t.target:
                fail(
                    ValidationReason.SELF_LOOP,
                    f"phase {t.source!r} has a transition to itself (a phase stays put when no guard holds)",
                    field=field,
                    phase=t.source,
                )
            if protocol.phases[index[t.source]].terminal:
                fail(
                    ValidationReason.TERMINAL_OUTGOING,
                    f"terminal phase {t.source!r} has an outgoing transition to {t.target!r}",
                    field=f"{field}.source",
                    phase=t.source,
                )
            sources = [t.source]
        check_guards(
            t.guard_names,
            where=f"transition {t.source} -> {t.target}",
            field=f"{field}.guard",
            phase=t.source,
        )
        for origin in sources:
            if graph.has_edge(origin, t.target):
                fail(
                    ValidationReason.DUPLICATE_TRANSITION,
                    f"two transitions {origin} -> {t.target}; combine their guards with ' | '",
                    field=field,
                    phase=origin,
                )
            graph.add_edge(
                origin,
                t.target,
                guard=t.guard,
                priority=t.priority,
                exceptional=t.exceptional,
                order=order,
            )

    reachable = nx.descendants(graph, protocol.start) | {protocol.start}
    unreachable = [p.id for p in protocol.phases if p.id not in reachable]
    if unreachable:
        fail(
            ValidationReason.UNREACHABLE_PHASE,
            f"phase {unreachable[0]!r} cannot be reached from start phase {protocol.start!r}"
            + (f" (also unreachable: {', '.join(unreachable[1:])})" if unreachable[1:] else ""),
            field=f"phases[{index[unreachable[0]]}]",
            phase=unreachable[0],
        )
    reaches_terminal = set(terminals).union(*(nx.ancestors(graph, t) for t in terminals))
    stuck = [p.id for p in protocol.phases if p.id not in reaches_terminal]
    if stuck:
        fail(
            ValidationReason.NO_TERMINAL_REACHABLE,
            f"no terminal phase can be reached from phase {stuck[0]!r}"
            + (f" (same for: {', '.join(stuck[1:])})" if stuck[1:] else ""),
            field=f"phases[{index[stuck[0]]}]",
            phase=stuck[0],
        )

    canonical = _canonical_path(protocol, graph, index)
    if canonical is None:
        fail(
            ValidationReason.NO_CANONICAL_PATH,
            f"no terminal is reachable from {protocol.start!r} through non-exceptional transitions that go "
            "forward in the order the phases are listed",
            field="transitions",
            phase=protocol.start,
        )
    return ProtocolGraph(
        protocol=protocol, graph=nx.freeze(graph), source=source, canonical_path=canonical
    )


def _canonical_path(
    protocol: Protocol, graph: nx.DiGraph, index: dict[str, int]
) -> tuple[str, ...] | None:
    # Forward, non-exceptional edges form a DAG whose topological order is the file order, so one
    # pass in that order finds the longest path; ties keep the earliest-declared predecessor.
    dist: dict[str, int] = {protocol.start: 0}
    pred: dict[str, str] = {}
    for phase in protocol.phases[index[protocol.start] :]:
        u = phase.id
        if u not in dist:
            continue
        for v in sorted(graph.adj[u], key=index.__getitem__):
            data = graph.edges[u, v]
            if data["exceptional"] or index[v] <= index[u]:
                continue
            if dist[u] + 1 > dist.get(v, -1):
                dist[v] = dist[u] + 1
                pred[v] = u
    ends = [p.id for p in protocol.phases if p.terminal and p.id in dist]
    if not ends:
        return None
    end = max(ends, key=lambda pid: (dist[pid], -index[pid]))
    path = [end]
    while path[-1] in pred:
        path.append(pred[path[-1]])
    return tuple(reversed(path))


# ---------------------------------------------------------------------------------------------
# Stepping


def next_phase(graph: ProtocolGraph, phase_id: str, ctx: PhaseContext) -> str:
    """The phase after this turn: the highest-priority transition whose guard holds, else ``phase_id``.

    Pure. A terminal phase leaves only by an exceptional exit (the crisis handoff). ``ctx``
    must be the context of ``phase_id`` (``ValueError`` otherwise) as it stands after the
    current therapist turn.
    """
    if ctx.phase_id != phase_id:
        raise ValueError(f"context is for phase {ctx.phase_id!r}, asked about {phase_id!r}")
    for edge in graph.transitions_from(phase_id):
        if evaluate_guard(edge.guard, ctx):
            return edge.target
    return phase_id


def step(
    graph: ProtocolGraph,
    ctx: PhaseContext,
    codes: Iterable[BehaviourCode | str],
    state: PatientState,
) -> tuple[str, PhaseContext]:
    """Observe one therapist turn and advance: returns the next phase id and its context.

    On a phase change the returned context is a fresh one for the new phase; otherwise it is
    ``ctx`` with the turn observed. Pure.
    """
    observed = ctx.observe(codes, state)
    target = next_phase(graph, observed.phase_id, observed)
    if target == observed.phase_id:
        return target, observed
    return target, graph.context(target, state, habituation_drop=ctx.habituation_drop)


def phase_complete(graph: ProtocolGraph, ctx: PhaseContext) -> bool:
    """True when every completion criterion of the context's phase holds (none: ``min_turns`` done)."""
    phase = graph.phase(ctx.phase_id)
    criteria = phase.completion or ["min_turns_done"]
    return all(evaluate_guard(name, ctx) for name in criteria)


def session_complete(graph: ProtocolGraph, ctx: PhaseContext) -> bool:
    """True when the session is in a terminal phase and that phase is complete."""
    return graph.is_terminal(ctx.phase_id) and phase_complete(graph, ctx)
