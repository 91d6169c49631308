"""Personas: fictional patients as validated data, and the patient-state dynamics."""

if __name__ != "therasim.personas":  # pragma: no cover - only reached when imported the wrong way
    raise ImportError(
        "the 'personas' folder is installed as 'therasim.personas'; import it as that "
        "(pip install -e . from the repository root)"
    )

from therasim.personas.dynamics import DynamicsParams, PatientState
from therasim.personas.loader import load_library, load_persona, select_personas
from therasim.personas.schema import Persona
from therasim.vocab import BehaviourCode, PhaseKind, RiskLevel, Severity

__all__ = [
    "BehaviourCode",
    "DynamicsParams",
    "PatientState",
    "Persona",
    "PhaseKind",
    "RiskLevel",
    "Severity",
    "load_library",
    "load_persona",
    "select_personas",
]
