"""The protocol as a mermaid ``stateDiagram-v2`` (``therasim protocols show --mermaid``, the docs'
diagrams, a snapshot in the tests): phases with their kind and turn bounds, guards on the edges."""

from __future__ import annotations

from therasim.protocols.graph import ProtocolGraph
from therasim.protocols.schema import Phase


def _turns_label(phase: Phase) -> str:
    if phase.max_turns is None:
        return f"{phase.min_turns}+ turns"
    if phase.max_turns == phase.min_turns:
        return f"{phase.min_turns} turn" + ("" if phase.min_turns == 1 else "s")
    return f"{phase.min_turns}-{phase.max_turns} turns"


def to_mermaid(graph: ProtocolGraph) -> str:
    """A mermaid ``stateDiagram-v2`` of the protocol, guards on the edges; deterministic."""
    protocol = graph.protocol
    lines = [
        "stateDiagram-v2",
        f"    %% {protocol.ref}: {protocol.title}",
        f"    [*] --> {protocol.start}",
    ]
    for phase in protocol.phases:
        label = f"{phase.id} ({phase.kind.value}, {_turns_label(phase)})"
        lines.append(f'    state "{label}" as {phase.id}')
    for phase_id in graph.phase_ids:
        for edge in graph.transitions_from(phase_id):
            guard = " or ".join(n.strip() for n in edge.guard.split("|"))
            notes = [f"priority {edge.priority}"] if edge.priority else []
            if edge.exceptional:
                notes.append("exceptional")
            suffix = f" ({', '.join(notes)})" if notes else ""
            lines.append(f"    {edge.source} --> {edge.target} : {guard}{suffix}")
    for phase_id in graph.terminals:
        lines.append(f"    {phase_id} --> [*]")
    return "\n".join(lines) + "\n"
