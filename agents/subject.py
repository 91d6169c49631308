"""The model under test (role ``subject``) and the scripted reference therapists.

:func:`subject_turn` asks the ``subject`` role for the therapist's next line. Its messages are a
therapist system prompt, then the visible transcript with therapist lines as ``assistant`` and
patient lines as ``user``:

- The default system prompt is ``agents/prompts/therapist_pe.md`` or ``therapist_cbt.md`` with
  ``{phase}``, ``{phase_kind}``, ``{phase_goal}``, ``{therapist_guidance}`` and ``{case_note}``
  filled in for the current phase, so it changes as the protocol moves on.
- An explicit ``system_prompt`` replaces it (the same placeholders are filled if it uses them;
  other braces are left alone). Record :func:`prompt_hash` of what you pass.
- ``raw=True`` sends no system prompt at all: a general assistant as people actually use it.

Session opener. Chat templates and several provider APIs need the first non-system message to
come from the user, and a model answers as therapist only after a user turn. So when the
therapist opens (empty transcript) or the transcript starts with a therapist line, the user line
:data:`SESSION_OPENER` ("(The session begins.)") is put first. When the patient opened, nothing
is added. The scripted therapists know this line and never treat it as patient speech.

The scripted reference therapists (``scripted:adherent``, ``scripted:safety-reflex``,
``scripted:abandoning``, ``scripted:null``) are the control arms of the subject role: what each
says lives in :mod:`therasim.agents.therapists` (re-exported here); this module reads a request
into a :class:`ScriptedTurn` (the context from ``request.context``, the visible history without
the session opener) and serves each arm as a ``scripted:<name>`` backend function.
"""

from __future__ import annotations

import functools
import hashlib
import random
from typing import TYPE_CHECKING

from therasim.agents.appraiser_prompt import fill_template
from therasim.agents.context import TurnContext, Utterance
from therasim.agents.resources import read_prompt
from therasim.agents.therapists import (
    REFERENCE_THERAPISTS,
    SUDS_PROBE_EVERY,
    ScriptedTurn,
    abandoning_text,
    adherent_text,
    null_text,
    safety_reflex_text,
)
from therasim.agents.types import CompletionRequest, CompletionResponse, Message, chat_message
from therasim.errors import ConfigError
from therasim.personas.schema import Persona

if TYPE_CHECKING:  # the gateway loads this module lazily (scripted registry); no import cycle
    from therasim.agents.llm import BoundGateway, Gateway

__all__ = [
    "PROMPT_FILES",
    "REFERENCE_THERAPISTS",
    "SESSION_OPENER",
    "SUDS_PROBE_EVERY",
    "ScriptedTurn",
    "abandoning_text",
    "adherent_text",
    "case_note",
    "default_prompt_template",
    "null_text",
    "prompt_hash",
    "safety_reflex_text",
    "scripted_abandoning",
    "scripted_adherent",
    "scripted_null",
    "scripted_safety_reflex",
    "subject_messages",
    "subject_turn",
    "therapist_system_prompt",
]

SESSION_OPENER = "(The session begins.)"
"""User line put first when the therapist opens (see the module docstring)."""

PROMPT_FILES = {"pe": "therapist_pe.md", "cbt": "therapist_cbt.md"}


# --------------------------------------------------------------------------- prompts


def prompt_hash(text: str) -> str:
    """First 12 hex digits of the SHA-256 of ``text``: which prompt a session used."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def default_prompt_template(modality: str) -> str:
    """The unfilled default therapist prompt for ``'pe'`` or ``'cbt'`` (hash it for the record)."""
    try:
        name = PROMPT_FILES[modality]
    except KeyError:
        raise ConfigError(
            f"no therapist prompt for modality {modality!r} (known: {', '.join(PROMPT_FILES)})",
            field="modality",
        ) from None
    return read_prompt(name)


def case_note(persona: Persona) -> str:
    """What the treating therapist knows from intake, in one phrase (no names, no hidden profile)."""
    if persona.pe is not None:
        years = persona.pe.years_since
        when = "less than a year ago" if years < 1 else f"about {years:g} years ago"
        return f"an adult patient with PTSD after a {persona.pe.trauma_type} ({when})"
    if persona.cbt is not None:
        return f"an adult patient working on a problem with {persona.cbt.problem_area}"
    return "an adult patient"


def _prompt_values(ctx: TurnContext) -> dict[str, str]:
    return {
        "phase": ctx.phase,
        "phase_kind": ctx.phase_kind.value,
        "phase_goal": ctx.phase_goal or "(none given)",
        "therapist_guidance": ctx.therapist_guidance or "(none given)",
        "case_note": case_note(ctx.persona),
    }


def therapist_system_prompt(ctx: TurnContext | str, template: str | None = None) -> str:
    """The therapist system prompt for the current phase (``template`` defaults to the modality's).

    Given a modality (``'pe'``/``'cbt'``) instead of a context, the template is returned unfilled:
    the phase-independent text a session records the :func:`prompt_hash` of.
    """
    if isinstance(ctx, str):
        return default_prompt_template(ctx) if template is None else template
    text = default_prompt_template(ctx.modality) if template is None else template
    return _filled(text, tuple(_prompt_values(ctx).items()))


@functools.lru_cache(maxsize=512)
def _filled(template: str, values: tuple[tuple[str, str], ...]) -> str:
    # one text per phase and persona's case note, asked for on every turn: filled once
    return fill_template(template, dict(values))


def subject_messages(
    ctx: TurnContext,
    transcript: list[Utterance],
    *,
    system_prompt: str | None = None,
    raw: bool = False,
) -> list[Message]:
    """The messages :func:`subject_turn` sends (see the module docstring for the rules)."""
    if raw and system_prompt is not None:
        raise ConfigError(
            "subject: raw=True sends no system prompt, so system_prompt must not be given",
            field="system_prompt",
        )
    messages: list[Message] = []
    if not raw:
        messages.append(Message(role="system", content=therapist_system_prompt(ctx, system_prompt)))
    if not transcript or transcript[0].speaker == "therapist":
        messages.append(Message(role="user", content=SESSION_OPENER))
    messages.extend(
        chat_message("assistant" if u.speaker == "therapist" else "user", u.text)
        for u in transcript
    )
    return messages


async def subject_turn(
    gateway: Gateway | BoundGateway,
    ctx: TurnContext,
    transcript: list[Utterance],
    *,
    system_prompt: str | None = None,
    raw: bool = False,
) -> CompletionResponse:
    """The therapist's next line from the ``subject`` role. Raises the gateway's ``ModelError``s."""
    request = CompletionRequest(
        role="subject",
        messages=tuple(subject_messages(ctx, transcript, system_prompt=system_prompt, raw=raw)),
        context=ctx,
        seed=ctx.seed + ctx.turn,
        temperature=0.7,
        max_tokens=300,
    )
    return await gateway.complete(request)


# --------------------------------------------------------------------------- scripted therapists


def _turn_of(request: CompletionRequest, name: str) -> ScriptedTurn:
    """The request as the arm ``name`` sees it; a request without a session context is refused."""
    ctx = request.context
    if ctx is None:
        raise ConfigError(
            f"scripted therapist {name!r} needs the session's TurnContext in request.context "
            "(it runs inside a session, not on a bare prompt)",
            field="context",
        )
    history = tuple(
        ("therapist" if m.role == "assistant" else "patient", m.content)
        for m in request.messages
        if m.role in ("user", "assistant") and m.content != SESSION_OPENER
    )
    patient = next((text for who, text in reversed(history) if who == "patient"), None)
    return ScriptedTurn(
        ctx=ctx, rng=random.Random(f"{ctx.seed}:{ctx.turn}"), patient=patient, history=history
    )


def scripted_adherent(request: CompletionRequest) -> str:
    """``scripted:adherent``: a protocol-adherent reference therapist."""
    return adherent_text(_turn_of(request, "adherent"))


def scripted_safety_reflex(request: CompletionRequest) -> str:
    """``scripted:safety-reflex``: the seed paper's safety-training failure modes."""
    return safety_reflex_text(_turn_of(request, "safety-reflex"))


def scripted_abandoning(request: CompletionRequest) -> str:
    """``scripted:abandoning``: starts the task, then drops or truncates it."""
    return abandoning_text(_turn_of(request, "abandoning"))


def scripted_null(request: CompletionRequest) -> str:
    """``scripted:null``: generic empathic reflections only."""
    return null_text(_turn_of(request, "null"))
