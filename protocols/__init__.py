"""Protocols: therapy session phases as validated data, loaded into networkx graphs."""

if __name__ != "therasim.protocols":  # pragma: no cover - only reached when imported the wrong way
    raise ImportError(
        "the 'protocols' folder is installed as 'therasim.protocols'; import it as that "
        "(pip install -e . from the repository root)"
    )

from therasim.protocols.adherence import (
    AdherenceReport,
    AdherenceTracker,
    TurnRecord,
    assess_adherence,
)
from therasim.protocols.graph import (
    ProtocolGraph,
    ProtocolValidationError,
    UnknownGuardError,
    ValidationReason,
    default_protocol_for,
    list_protocols,
    load_protocol,
    next_phase,
    phase_complete,
    session_complete,
    step,
)
from therasim.protocols.guards import PhaseContext, get_guard, guard_names, register_guard
from therasim.protocols.mermaid import to_mermaid
from therasim.protocols.schema import Phase, Protocol, Transition

__all__ = [
    "AdherenceReport",
    "AdherenceTracker",
    "Phase",
    "PhaseContext",
    "Protocol",
    "ProtocolGraph",
    "ProtocolValidationError",
    "Transition",
    "TurnRecord",
    "UnknownGuardError",
    "ValidationReason",
    "assess_adherence",
    "default_protocol_for",
    "get_guard",
    "guard_names",
    "list_protocols",
    "load_protocol",
    "next_phase",
    "phase_complete",
    "register_guard",
    "session_complete",
    "step",
    "to_mermaid",
]
