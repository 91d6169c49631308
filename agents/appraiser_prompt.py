"""The LLM appraiser's prompt: the instructions of ``agents/prompts/appraiser.md`` filled for the
turn's phase, coded dev-split gold turns as few-shot examples, and the session text as delimited,
untrusted JSON data (:func:`appraisal_messages`)."""

from __future__ import annotations

import functools
import json
import re
from typing import TYPE_CHECKING

from therasim.agents.context import TurnContext
from therasim.agents.resources import read_prompt
from therasim.agents.types import Message, chat_message
from therasim.errors import ConfigError
from therasim.vocab import BehaviourCode

if TYPE_CHECKING:
    from therasim.agents.gold import GoldTurn

APPRAISER_PROMPT_FILE = "appraiser.md"
DATA_OPEN = "<data>"
DATA_CLOSE = "</data>"

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{(\w+)\}")


def fill_template(template: str, values: dict[str, str]) -> str:
    """Replace ``{name}`` for known names; ``{{``/``}}`` become braces; anything else stays."""

    def repl(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        return values.get(match.group(1), token)

    return _PLACEHOLDER.sub(repl, template)


FEW_SHOT_PER_MODALITY = 6


@functools.lru_cache(maxsize=1)
def few_shot_turns() -> tuple[GoldTurn, ...]:
    """Labelled examples for the LLM appraiser's prompt: dev-split gold turns only.

    Per modality, short replies (40–320 characters) picked in id order so that each adds codes
    not yet shown; at most :data:`FEW_SHOT_PER_MODALITY` each. Deterministic.
    """
    from therasim.agents.gold import dev_turns

    try:
        pool = dev_turns()
    except ConfigError:
        return ()
    chosen: list[GoldTurn] = []
    for modality in ("pe", "cbt"):
        shown: set[BehaviourCode] = set()
        picked = 0
        for turn in sorted(pool, key=lambda t: t.id):
            if turn.modality != modality or not 40 <= len(turn.therapist) <= 320:
                continue
            if not set(turn.codes) - shown:
                continue
            chosen.append(turn)
            shown |= set(turn.codes)
            picked += 1
            if picked == FEW_SHOT_PER_MODALITY:
                break
    return tuple(chosen)


@functools.lru_cache(maxsize=4)
def _few_shot_block(modality: str) -> str:
    lines: list[str] = []
    for turn in few_shot_turns():
        if turn.modality != modality:
            continue
        lines.append(f"Example {len(lines) // 2 + 1}:")
        data = json.dumps(
            {
                "phase_kind": turn.phase_kind.value,
                "risk": turn.risk.value,
                "therapist_turn": turn.therapist,
            },
            ensure_ascii=False,
        )
        codes = json.dumps([c.value for c in turn.codes])
        lines.append(f"{data}\ncodes: {codes}")
    if not lines:
        return ""
    return "\n\n# Coded examples (from the therasim codebook's gold turns)\n\n" + "\n".join(lines)


def appraiser_system_prompt(ctx: TurnContext) -> str:
    """The appraiser's instructions for this turn: the code vocabulary, the current phase, and
    coded examples of the modality (:func:`few_shot_turns`)."""
    return _appraiser_system_prompt(
        ctx.modality, ctx.protocol_id, ctx.phase, ctx.phase_kind.value, ctx.phase_goal
    )


@functools.lru_cache(maxsize=512)
def _appraiser_system_prompt(
    modality: str, protocol_id: str, phase: str, phase_kind: str, phase_goal: str
) -> str:
    # the same few texts every turn of every session (one per phase): built once, not per turn
    values = {
        "modality_name": "Prolonged Exposure for PTSD"
        if modality == "pe"
        else "CBT cognitive restructuring",
        "protocol_id": protocol_id,
        "phase": phase,
        "phase_kind": phase_kind,
        "phase_goal": phase_goal or "(no goal given)",
    }
    return fill_template(read_prompt(APPRAISER_PROMPT_FILE), values) + _few_shot_block(modality)


def appraisal_messages(
    ctx: TurnContext, therapist_text: str, *, previous_patient: str | None
) -> list[Message]:
    """System prompt plus one user message holding the session text as JSON data."""
    data = {"previous_patient_turn": previous_patient, "therapist_turn": therapist_text}
    user = (
        "Code the therapist turn below. The previous patient turn is context only; do not code it.\n"
        f"{DATA_OPEN}\n{json.dumps(data, ensure_ascii=False)}\n{DATA_CLOSE}"
    )
    return [
        chat_message("system", appraiser_system_prompt(ctx)),
        Message(role="user", content=user),
    ]
