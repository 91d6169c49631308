"""Batched judging (``mode: turn``): one structured call per judge × unit, every item at once.

A unit is a therapist turn (its applicable turn items) or the session (its session items). The
call goes through the gateway's ``structured`` with a schema built for exactly the items asked
(:func:`~therasim.evaluation.judging.verdicts.batch_model`), so the gateway's output-mode
fallbacks (json_schema → json_object with schema → prompt) and its repair round apply as for
single verdicts. What comes back is sorted per item:

- a valid entry becomes the item's row, as an item-by-item call would have written it;
- a **missing or invalid** entry gets one repair round of its own: the answer is shown back with
  a request for exactly the items still lacking (and a schema of only those); an item still
  lacking afterwards is asked on its own, as item mode asks it
  (:func:`~therasim.evaluation.judging.item_judging.ask_item`, whose row then carries the item
  template's prompt hash), and only if that fails too does it become an error row
  (``met=None``, reason starting ``"error: "``) — never dropped. So a judge that cannot hold a
  many-key JSON object together (the bundled 135M model) costs more calls, not verdicts; a
  batched call that yields no valid entry at all (``StructuredOutputError``) falls back the same
  way, while a transport error (the server is down) is recorded on every row without more calls;
- an **unknown key** (an item not asked) is ignored and reported on this module's logger.

**The answer's schema, by how the backend takes it.** A backend that takes a response format
(``json_schema``/``json_object``: OpenAI-compatible servers, llama.cpp's grammar, LangChain) gets
the full schema of :func:`~therasim.evaluation.judging.verdicts.batch_model`, every item id a
property, so constrained decoding emits every key. A backend that takes structured output only
as a prompt (scripted judges, ``python:``/function backends) reads the schema as text in the
gateway's last user message, after the prompt has already given the entry format (system
message) and named the items asked (last line of the user message); for it the schema is
:func:`prompt_answer_model`'s short one (an object whose every value has ``reason`` and
``met``), about 40 tokens where the full schema as text took ~300 for 13 items
(``benchmarks/README.md`` §6). Both validate answers the same way.

A call's tokens (the repair round's included) are shared among its rows, and a fallback row adds
its own call's, so per-row sums still add up to what the judge cost (a call that failed outright
has no answer: the gateway's accounting counts it). The answers themselves (the call, its repair
round, the fallback's calls) are returned too, and stored as the judge's call rows.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from therasim.agents.types import CompletionRequest, CompletionResponse, Message
from therasim.errors import ModelError, StructuredOutputError, TherasimError
from therasim.evaluation.judging.context import Unit
from therasim.evaluation.judging.item_judging import (
    JudgeGateway,
    ask_item,
    base_row,
    error_reason,
    fill_row,
    model_name,
)
from therasim.evaluation.judging.judges import JudgeSpec, PanelOptions
from therasim.evaluation.judging.prompts import batch_messages, batch_template
from therasim.evaluation.judging.rubric import RubricItem
from therasim.evaluation.judging.verdicts import BatchAnswer, batch_model, read_batch

__all__ = ["answer_model", "ask_batch", "batch_request", "prompt_answer_model"]

log = logging.getLogger(__name__)

#: A verdict entry as a prompt-mode judge's schema gives it: the keys that must be there. The
#: system message gives the entry's format, the user message the item ids (module docstring).
_ENTRY_SCHEMA: dict[str, Any] = {"type": "object", "required": ["reason", "met"]}


@functools.cache
def prompt_answer_model(scope: str, ids: tuple[str, ...]) -> type[BaseModel]:
    """:func:`batch_model` ``(scope, ids)`` with the short schema a prompt-mode backend reads as
    text: an object whose every value has ``reason`` and ``met``. It repeats neither the item ids
    (the prompt's "Items to rate" line, just before it, names them) nor the entry's format (the
    system message gives it). Validation is the batch model's own, so a missing, invalid or
    unknown entry is handled exactly as with the full schema."""
    full = batch_model(scope, ids)

    def model_json_schema(cls: type[BaseModel], *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": dict(_ENTRY_SCHEMA)}

    return type(
        full.__name__,
        (full,),
        {"model_json_schema": classmethod(model_json_schema), "__module__": __name__},
    )


def _schema_as_prompt(gateway: Any, judge: JudgeSpec) -> bool:
    """Whether the judge's backend takes structured output only as a prompt (False when the
    gateway cannot say: the full schema is always valid)."""
    model_for = getattr(gateway, "model_for", None)
    backend_for = getattr(gateway, "backend_for", None)
    if model_for is None or backend_for is None:
        return False
    try:
        model = model_for(CompletionRequest(role=judge.role, model=judge.model, messages=()))
        modes = tuple(backend_for(model).structured_modes)
    except TherasimError:
        return False
    return modes == ("prompt",)


def answer_model(
    gateway: Any, judge: JudgeSpec, scope: str, ids: tuple[str, ...]
) -> type[BaseModel]:
    """The schema a batched answer about ``ids`` is asked for (module docstring)."""
    if _schema_as_prompt(gateway, judge):
        return prompt_answer_model(scope, ids)
    return batch_model(scope, ids)


def batch_request(
    judge: JudgeSpec,
    unit: Unit,
    rubric: Sequence[RubricItem],
    options: PanelOptions,
) -> CompletionRequest:
    """The batched call of ``judge`` about ``unit``; ``rubric`` is the prompt's fixed rubric."""
    asked = [item for _, item in unit.items]
    metadata = {
        **unit.metadata,
        "items": [{"item_id": i.id, "polarity": i.polarity, "scale": i.scale} for i in asked],
        "scope": unit.scope,
        "judge": judge.name,
        "variant": judge.prompt_variant,
    }
    return CompletionRequest(
        role=judge.role,
        model=judge.model,
        messages=batch_messages(unit.scope, rubric, asked, judge.prompt_variant, unit.values),
        temperature=judge.temperature,
        seed=judge.seed,
        max_tokens=options.max_tokens * len(asked),
        metadata=metadata,
    )


def _repair_request(
    request: CompletionRequest, reply: str, lacking: Sequence[str], answer: BatchAnswer
) -> CompletionRequest:
    problems = [
        f"{item_id} ({answer.invalid[item_id]})" if item_id in answer.invalid else item_id
        for item_id in lacking
    ]
    ask = Message(
        role="user",
        content=(
            "Your answer lacked a valid verdict for these items: "
            + "; ".join(problems)
            + ". Reply with one JSON object with exactly these keys ("
            + ", ".join(lacking)
            + '), each {"reason": "...", "met": true | false | null, "score": ...}.'
        ),
    )
    wanted = set(lacking)
    items = [i for i in request.metadata.get("items", []) if i.get("item_id") in wanted]
    return request.model_copy(
        update={
            "messages": (*request.messages, Message(role="assistant", content=reply), ask),
            "metadata": {**request.metadata, "items": items},
        }
    )


def _share(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _detail(exc: BaseException, limit: int = 160) -> str:
    """An exception in a few words (the row names the judge and model already), for a reason
    that must also say what happened next."""
    text = exc.detail if isinstance(exc, ModelError) else str(exc)
    detail = f"{type(exc).__name__}: {' '.join(text.split())}"
    return detail if len(detail) <= limit else detail[: limit - 1] + "…"


def _report_unknown(judge: JudgeSpec, unit: Unit, session_id: str, unknown: list[str]) -> None:
    if unknown:
        where = "the session" if unit.turn < 0 else f"turn {unit.turn}"
        log.warning(
            "judge %s answered item(s) it was not asked about %s of session %s: %s (ignored)",
            judge.name,
            where,
            session_id,
            ", ".join(unknown),
        )


async def ask_batch(
    gateway: JudgeGateway,
    session_id: str,
    judge: JudgeSpec,
    unit: Unit,
    rubric: Sequence[RubricItem],
    options: PanelOptions,
) -> tuple[list[dict[str, Any]], list[CompletionResponse]]:
    """One judge's verdict rows on every item of ``unit``, from one call (plus a repair round),
    and the answers they came from."""
    template = batch_template(unit.scope)
    model = model_name(gateway, judge)
    rows = {
        item.id: base_row(
            session_id, judge, r, item, unit.turn, template, model, weight=unit.weight
        )
        for r, item in unit.items
    }
    ids = tuple(rows)
    request = batch_request(judge, unit, rubric, options)
    responses: list[CompletionResponse] = []
    failure = "no valid verdict for this item in the batched answer, nor after a repair round"
    answer = BatchAnswer()
    try:
        _, response = await gateway.structured(
            request, answer_model(gateway, judge, unit.scope, ids)
        )
    except StructuredOutputError as exc:  # no valid entry at all: every item falls back
        failure = "no valid verdict in the batched answer (" + _detail(exc) + ")"
    except Exception as exc:  # a failed call never stops the panel (cancellation still does)
        for row in rows.values():
            row["reason"] = error_reason(exc)
        return list(rows.values()), []
    else:
        responses.append(response)
        answer = read_batch(response.text, ids)
        _report_unknown(judge, unit, session_id, answer.unknown)
        lacking = answer.missing(ids)
        if lacking:
            repair = _repair_request(request, response.text, lacking, answer)
            try:
                _, repaired = await gateway.structured(
                    repair, answer_model(gateway, judge, unit.scope, tuple(lacking))
                )
            except Exception as exc:
                failure += f" ({_detail(exc)})"
            else:
                responses.append(repaired)
                again = read_batch(repaired.text, tuple(lacking))
                _report_unknown(judge, unit, session_id, again.unknown)
                answer.verdicts.update(again.verdicts)
    pairs = {item.id: (r, item) for r, item in unit.items}
    for item_id, row in rows.items():
        verdict = answer.verdicts.get(item_id)
        if verdict is not None:
            fill_row(row, pairs[item_id][1], verdict)
            row["model"] = responses[0].model
    tokens_in = _share(sum(r.usage.input_tokens for r in responses), len(rows))
    tokens_out = _share(sum(r.usage.output_tokens for r in responses), len(rows))
    for row, n_in, n_out in zip(rows.values(), tokens_in, tokens_out, strict=True):
        row.update(input_tokens=n_in, output_tokens=n_out)
    lacking = answer.missing(ids)
    alone = await asyncio.gather(
        *(ask_item(gateway, session_id, judge, unit, *pairs[i], options) for i in lacking)
    )
    for item_id, (row, own) in zip(lacking, alone, strict=True):
        shared = rows[item_id]
        if row["met"] is None and row["reason"].startswith("error:"):
            why = answer.invalid.get(item_id, "missing")
            alone_why = row["reason"].removeprefix("error: ")[:200]
            row["reason"] = f"error: {failure}; first answer: {why}; asked alone: {alone_why}"[:500]
        row["input_tokens"] += shared["input_tokens"]
        row["output_tokens"] += shared["output_tokens"]
        rows[item_id] = row
        responses.extend(own)
    return list(rows.values()), responses
