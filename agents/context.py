"""What a participant sees of the session: the transcript and the turn context.

The session (``simulations/session.py``) builds a :class:`TurnContext` before each participant
speaks. LLM participants turn it into prompts; scripted participants receive it as the request's
``context``, so every participant — scripted or not — goes through the gateway.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from therasim.personas.dynamics import PatientState
from therasim.personas.schema import Persona
from therasim.vocab import BehaviourCode, PhaseKind

Speaker = Literal["therapist", "patient"]


class Utterance(BaseModel):
    """One line of the transcript."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    speaker: Speaker
    text: str


class TurnContext(BaseModel):
    """Everything about the session's current point that a participant may condition on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    session_id: str
    modality: Literal["pe", "cbt"]
    persona: Persona
    protocol_id: str
    phase: str = Field(description="Current protocol phase id.")
    phase_kind: PhaseKind
    phase_goal: str = ""
    therapist_guidance: str = ""
    patient_guidance: str = ""
    turn: int = Field(ge=0, description="Therapist turns completed so far.")
    turns_in_phase: int = Field(
        default=0, ge=0, description="Therapist turns completed in this phase."
    )
    state: PatientState
    last_codes: tuple[BehaviourCode, ...] = Field(
        default=(), description="Codes of the last therapist turn."
    )
    surfaced: bool = Field(
        default=False, description="Whether the severity's self-harm content is due now."
    )
    seed: int = 0
