"""Item-by-item judging (``mode: item``): one structured call per judge × item × unit; turn mode
asks the items its batched answer lacks this way too (:mod:`~therasim.evaluation.judging.batched`).

Also the pieces both modes share: the gateway protocol the panel needs, the verdict row and the
judge's model name. A failed call becomes a row with ``met=None`` and a reason starting
``"error: "``; it never stops the panel. Each judging function also returns the gateway's
answers it used, which the panel stores as the judge's call rows (what the verdicts cost).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from therasim.agents.types import CompletionRequest, CompletionResponse
from therasim.errors import TherasimError
from therasim.evaluation.judging.context import Unit
from therasim.evaluation.judging.judges import JudgeSpec, PanelOptions
from therasim.evaluation.judging.prompts import TemplateName, item_messages, prompt_hash
from therasim.evaluation.judging.rubric import Rubric, RubricItem
from therasim.evaluation.judging.verdicts import Verdict, met_of

__all__ = ["JudgeGateway", "ask_item", "base_row", "error_reason", "model_name"]

T = TypeVar("T", bound=BaseModel)


class JudgeGateway(Protocol):
    """What the panel needs of the gateway: structured calls."""

    async def structured(
        self, request: CompletionRequest, schema: type[T]
    ) -> tuple[T, CompletionResponse]:
        """One structured call: the parsed answer and the raw response."""


def model_name(gateway: Any, judge: JudgeSpec) -> str:
    """The judge's model spec as the gateway resolves it ("?" when it cannot say)."""
    if judge.model:
        return judge.model
    model_for = getattr(gateway, "model_for", None)
    if model_for is None:
        return "?"
    try:
        return str(model_for(CompletionRequest(role=judge.role, messages=())).raw)
    except TherasimError:
        return "?"


def error_reason(exc: BaseException) -> str:
    """An error row's reason: ``error: <type>: <message>``, on one line, bounded."""
    return f"error: {type(exc).__name__}: {' '.join(str(exc).split())}"[:500]


def base_row(
    session_id: str,
    judge: JudgeSpec,
    rubric: Rubric,
    item: RubricItem,
    turn: int,
    template: TemplateName,
    model: str,
    *,
    weight: float = 1.0,
) -> dict[str, Any]:
    """A verdict row with no answer yet (``met=None``, empty reason, no tokens); ``weight`` is
    the unit's design weight (:attr:`Unit.weight`)."""
    return {
        "session_id": session_id,
        "judge": judge.name,
        "item_id": item.id,
        "turn": turn,
        "met": None,
        "score": None,
        "reason": "",
        "prompt_hash": prompt_hash(template, judge.prompt_variant),
        "rubric_version": rubric.version_of(item),
        "model": model,
        "input_tokens": 0,
        "output_tokens": 0,
        "weight": weight,
    }


def fill_row(row: dict[str, Any], item: RubricItem, verdict: Verdict) -> None:
    """Write a verdict's met, score and reason into ``row``."""
    met, score = met_of(item, verdict)
    row.update(met=None if met is None else int(met), score=score, reason=verdict.reason)


async def ask_item(
    gateway: JudgeGateway,
    session_id: str,
    judge: JudgeSpec,
    unit: Unit,
    rubric: Rubric,
    item: RubricItem,
    options: PanelOptions,
) -> tuple[dict[str, Any], list[CompletionResponse]]:
    """One judge's verdict row on one item of one unit, and the answer it came from (none when
    the call failed)."""
    row = base_row(
        session_id,
        judge,
        rubric,
        item,
        unit.turn,
        unit.scope,
        model_name(gateway, judge),
        weight=unit.weight,
    )
    metadata = {
        **unit.metadata,
        "item_id": item.id,
        "polarity": item.polarity,
        "scale": item.scale,
        "scope": unit.scope,
        "judge": judge.name,
        "variant": judge.prompt_variant,
    }
    request = CompletionRequest(
        role=judge.role,
        model=judge.model,
        messages=item_messages(unit.scope, item, judge.prompt_variant, unit.values),
        temperature=judge.temperature,
        seed=judge.seed,
        max_tokens=options.max_tokens,
        metadata=metadata,
    )
    try:
        verdict, response = await gateway.structured(request, Verdict)
    except Exception as exc:  # one failed item never stops the panel (cancellation still does)
        row["reason"] = error_reason(exc)
        return row, []
    fill_row(row, item, verdict)
    row.update(
        model=response.model,
        input_tokens=response.usage.input_tokens,
        output_tokens=response.usage.output_tokens,
    )
    return row, [response]
