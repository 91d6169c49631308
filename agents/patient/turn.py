"""One LLM patient turn through the gateway, checked by the guards.

:func:`patient_turn` asks the ``patient`` role for the next utterance with the messages of
:mod:`therasim.agents.patient.prompt`. Every attempt is cleaned and checked by the guards
(:mod:`therasim.agents.patient.guards`); a rejected attempt is retried with ``repeat=attempt``
so the response cache yields a fresh sample, and after ``max_attempts`` rejections
:class:`~therasim.errors.GuardFailure` is raised. A rejected text is never returned as a turn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from therasim.agents.context import TurnContext, Utterance
from therasim.agents.patient.guards import clean_patient_text, failed_guard
from therasim.agents.patient.prompt import build_patient_messages
from therasim.agents.types import CompletionRequest, CompletionResponse
from therasim.errors import GuardFailure
from therasim.personas.dynamics import self_report_suds

if TYPE_CHECKING:
    from therasim.agents.llm import BoundGateway, Gateway


class PatientReply(BaseModel):
    """One accepted patient utterance and how it was obtained."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The utterance, cleaned of speaker labels; passed every guard.")
    response: CompletionResponse = Field(
        description="The gateway response of the accepted attempt."
    )
    attempts: int = Field(ge=1, description="Attempts made, the accepted one included.")
    guard_failures: list[str] = Field(
        default_factory=list,
        description="Name of the guard each rejected attempt failed, in order.",
    )
    self_reported_suds: int | None = Field(
        default=None, description="The SUDS number the utterance states, if any (self_report_suds)."
    )


async def patient_turn(
    gateway: Gateway | BoundGateway,
    ctx: TurnContext,
    transcript: list[Utterance],
    *,
    max_attempts: int = 3,
) -> PatientReply:
    """The patient's next utterance, from the ``patient`` role, checked by the guards.

    Each attempt is one request with ``seed = ctx.seed * 1000 + ctx.turn`` and
    ``repeat = attempt`` (0, 1, ...), so a retry is a new sample rather than the cached reply
    (a new cache key, and a new seed for a seeded backend: ``CompletionRequest.sampling_seed``).
    Raises :class:`GuardFailure` (naming the last guard hit) when every attempt is rejected; model
    errors from the gateway propagate unchanged.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    messages = tuple(build_patient_messages(ctx, transcript))
    failures: list[str] = []
    for attempt in range(max_attempts):
        request = CompletionRequest(
            role="patient",
            messages=messages,
            context=ctx,
            seed=ctx.seed * 1000 + ctx.turn,
            repeat=attempt,
            temperature=0.8,
            max_tokens=200,
        )
        response = await gateway.complete(request)
        text = clean_patient_text(response.text)
        guard = failed_guard(text)
        if guard is None:
            return PatientReply(
                text=text,
                response=response,
                attempts=attempt + 1,
                guard_failures=failures,
                self_reported_suds=self_report_suds(text),
            )
        failures.append(guard)
    raise GuardFailure(
        f"patient output rejected on every attempt ({', '.join(failures)}) in session "
        f"{ctx.session_id}, turn {ctx.turn}",
        guard=failures[-1],
        attempts=max_attempts,
    )
