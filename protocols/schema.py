"""The protocol schema: a therapy session's phases and the guarded transitions between them.

A protocol is written once, in YAML, by a clinician and loaded into a ``networkx.DiGraph`` by
``therasim.protocols.graph``. This module only checks what a single object can check (types,
ranges, per-phase consistency); graph-level rules (reachability, terminals, guard names) live in
``graph.py`` so that every such failure carries a named reason.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from therasim.vocab import BehaviourCode, PhaseKind

PROTOCOL_ID = r"^[a-z0-9][a-z0-9_.-]*$"
# Phase ids double as mermaid state ids, which do not tolerate '-' or '.'.
PHASE_ID = r"^[a-z][a-z0-9_]*$"
ANY_SOURCE = "*"
"""A transition ``source`` that stands for every non-terminal phase except the target; an
exceptional one (the crisis exit) leaves terminal phases too, so a last task phase cannot end
the session as complete while risk is imminent."""


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Phase(_Data):
    """One phase of a session: what it is for and what an adherent therapist does in it."""

    id: str = Field(
        pattern=PHASE_ID, description="Unique id within the protocol, e.g. 'imaginal_exposure'."
    )
    kind: PhaseKind = Field(
        description="What the phase is clinically; the patient dynamics react to the kind."
    )
    goal: str = Field(min_length=3, description="What the phase achieves, in one sentence.")
    expected_codes: list[BehaviourCode] = Field(
        default_factory=list,
        description="Behaviour codes an adherent therapist shows in this phase; adherence reports any never seen.",
    )
    proscribed_codes: list[BehaviourCode] = Field(
        default_factory=list,
        description="Behaviour codes that break the protocol in this phase (e.g. grounding during imaginal exposure).",
    )
    patient_guidance: str = Field(
        min_length=3,
        description="What the simulated patient does in this phase (goes into the patient prompt).",
    )
    therapist_guidance: str = Field(
        min_length=3,
        description="What an adherent therapist does in this phase (system prompts and scripted therapists).",
    )
    min_turns: int = Field(
        default=1, ge=0, le=100, description="Therapist turns the phase lasts at least."
    )
    max_turns: int | None = Field(
        default=None,
        ge=1,
        le=200,
        description="Therapist turns after which the `max_turns_reached` guard holds (and "
        "`suds_habituated`): the phase ends on it only where a transition or `completion` names "
        "it, so in a terminal phase without it the number is informational; null for no limit.",
    )
    terminal: bool = Field(
        default=False,
        description="True if the session ends in this phase (no outgoing transitions).",
    )
    completion: list[str] = Field(
        default_factory=list,
        description=(
            "Named completion criteria: guard names (see therasim.protocols.guards) that must all hold for "
            "the phase to count as done; empty means 'min_turns reached'."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> Phase:
        if self.max_turns is not None and self.max_turns < self.min_turns:
            raise ValueError(f"max_turns ({self.max_turns}) is below min_turns ({self.min_turns})")
        both = sorted(set(self.expected_codes) & set(self.proscribed_codes))
        if both:
            raise ValueError(f"codes both expected and proscribed: {', '.join(both)}")
        return self


class Transition(_Data):
    """A guarded edge: leave ``source`` for ``target`` when the guard holds."""

    source: str = Field(
        min_length=1,
        description="Phase id the transition leaves, or '*' for every non-terminal phase except "
        "the target (with exceptional: true, terminal phases too: the crisis exit).",
    )
    target: str = Field(pattern=PHASE_ID, description="Phase id the transition enters.")
    guard: str = Field(
        min_length=1,
        description=(
            "Name of a registered guard (therasim.protocols.guards), or several joined by ' | ' "
            "(the transition fires when any of them holds)."
        ),
    )
    priority: int = Field(
        default=0,
        description="Among a phase's transitions whose guards hold, the highest priority wins; ties go to file order.",
    )
    exceptional: bool = Field(
        default=False,
        description=(
            "True for an exit out of the normal flow (a crisis handoff): left out of the canonical path, "
            "so not taking it is never a skipped phase."
        ),
    )

    @property
    def guard_names(self) -> list[str]:
        """The guard names this transition combines (one unless written as ``a | b``)."""
        return [name.strip() for name in self.guard.split("|")]


class Protocol(_Data):
    """A session protocol: phases, guarded transitions and who speaks first."""

    id: str = Field(
        pattern=PROTOCOL_ID,
        description="Unique id, also the library file name, e.g. 'pe-imaginal-session'.",
    )
    version: int = Field(
        ge=1, description="Bumped on every clinical change, so stored sessions name what they used."
    )
    modality: Literal["pe", "cbt"] = Field(
        description="Therapy the protocol belongs to: Prolonged Exposure or CBT."
    )
    title: str = Field(min_length=3, description="Human-readable title.")
    description: str = Field(
        min_length=3, description="What the protocol models and where it comes from."
    )
    start: str = Field(pattern=PHASE_ID, description="Id of the phase every session starts in.")
    opener: Literal["subject", "patient"] = Field(
        description="Who speaks first: 'subject' (the therapist under test) or 'patient' (e.g. a problem statement)."
    )
    phases: list[Phase] = Field(min_length=1, description="The phases, in their canonical order.")
    transitions: list[Transition] = Field(
        default_factory=list, description="Guarded transitions between phases."
    )
    suds_probe_every: int | None = Field(
        default=None,
        ge=1,
        le=50,
        description="Expected therapist turns between SUDS probes during exposure; null when not applicable (CBT).",
    )

    @property
    def ref(self) -> str:
        """``id@version``, the way sessions record which protocol they followed."""
        return f"{self.id}@{self.version}"
