"""The simulated patient: an LLM patient behind guards, and the offline template patient.

:func:`patient_turn` asks the ``patient`` role for the next patient utterance. The patient model
gets a system prompt built from templates in ``agents/prompts/`` (``patient_system.md`` plus
``patient_pe.md`` or ``patient_cbt.md``): the fictional persona, its current
:class:`~therasim.personas.dynamics.PatientState` told as feelings with the SUDS number, the
phase's patient guidance, and what the severity schedule brings up in this turn. It sees the
conversation with the roles flipped (therapist lines as ``user``, its own as ``assistant``) and
never the system prompt of the model under test, nor the protocol's therapist guidance.

Every attempt goes through the guards (:data:`GUARDS`, pure functions of the text after
:func:`clean_patient_text` strips speaker labels): ``empty``, ``runaway``, ``character_break``
and ``role_reversal``. A rejected attempt is retried with ``repeat=attempt`` so the response
cache yields a fresh sample; after ``max_attempts`` rejections :class:`GuardFailure` is raised.
A rejected text is never returned as a patient turn.

``scripted:template-patient`` (:func:`template_patient`) is a deterministic, offline patient: it
speaks from the persona's ``utterances`` or the default banks in ``prompts/patient_banks.yaml``,
shaped by the state, and it also answers questionnaire requests (metadata key
``questionnaire``, see :mod:`therasim.agents.questionnaires`) with JSON derived from the state,
so a session whose patient role is ``scripted:template-patient`` needs no other scripted agent.

One job a module: ``guards`` (cleaning and the reply guards), ``asks`` (which rating or answer a
therapist line asks for), ``prompt`` (the LLM patient's system prompt and messages), ``turn``
(one LLM patient turn through the gateway), ``template`` (the template patient and its banks).
Every public name is re-exported here, so ``from therasim.agents.patient import ...`` is the
import to use.
"""

from __future__ import annotations

from therasim.agents.patient.asks import (
    asks_about_safety,
    asks_for_belief,
    asks_for_suds,
    requested_ratings,
)
from therasim.agents.patient.guards import (
    GUARDS,
    MAX_CHARS,
    MAX_SENTENCES,
    clean_patient_text,
    failed_guard,
    is_character_break,
    is_empty,
    is_role_reversal,
    is_runaway,
)
from therasim.agents.patient.prompt import (
    CONTINUE_DIRECTION,
    OPENING_DIRECTION,
    OVERWHELMED_SUDS,
    PROMPT_FILES,
    alliance_words,
    build_patient_messages,
    build_system_prompt,
    describe_communication,
    describe_persona,
    describe_phase,
    describe_profile,
    describe_schedule,
    describe_state,
    engagement_words,
    prompt_hash,
    suds_requested,
    suds_words,
)
from therasim.agents.patient.template import (
    AVOIDANT_ENGAGEMENT,
    Banks,
    load_banks,
    template_patient,
    template_reply,
)
from therasim.agents.patient.turn import PatientReply, patient_turn

__all__ = [
    "AVOIDANT_ENGAGEMENT",
    "CONTINUE_DIRECTION",
    "GUARDS",
    "MAX_CHARS",
    "MAX_SENTENCES",
    "OPENING_DIRECTION",
    "OVERWHELMED_SUDS",
    "PROMPT_FILES",
    "Banks",
    "PatientReply",
    "alliance_words",
    "asks_about_safety",
    "asks_for_belief",
    "asks_for_suds",
    "build_patient_messages",
    "build_system_prompt",
    "clean_patient_text",
    "describe_communication",
    "describe_persona",
    "describe_phase",
    "describe_profile",
    "describe_schedule",
    "describe_state",
    "engagement_words",
    "failed_guard",
    "is_character_break",
    "is_empty",
    "is_role_reversal",
    "is_runaway",
    "load_banks",
    "patient_turn",
    "prompt_hash",
    "requested_ratings",
    "suds_requested",
    "suds_words",
    "template_patient",
    "template_reply",
]
