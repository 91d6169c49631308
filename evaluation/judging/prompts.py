"""Judge prompts: the template files, their hashes, the variants, and the messages of one call.

Two layouts share the rules of ``evaluation/rubrics/judge_*.md`` (a version line, a system
part, a ``=== user ===`` line, a user part; ``${name}`` placeholders):

- **item** (``judge_turn.md``, ``judge_session.md``): one rubric item per call; the item's
  question and polarity are in the system message.
- **batched** (``judge_turn_batch.md``, ``judge_session_batch.md``): every applicable item of a
  unit in one call. The system message holds the instructions and the *whole* rubric of the
  scope for the session's modality, so it is byte-identical across every call of a session
  (and of a study, per judge and modality) and provider prompt caches and the local server's
  prefix cache hit; the user message holds what changes per call (state, the transcript
  window, the item ids asked last). The rubric is listed by polarity group, under a heading
  that says what ``met=true`` means for the group, so the polarity rule is said once per group
  rather than once per item; a rubric without scored items asks for ``"score": null`` and
  skips the scoring rule. Every token here is paid once per therapist turn per judge: a test
  holds a batched call under a token ceiling.

Transcript text is untrusted: it goes inside ``<transcript>`` blocks with delimiter tags
escaped (:func:`escape_untrusted`).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Literal

from therasim.agents.types import Message
from therasim.errors import ConfigError
from therasim.evaluation.judging.rubric import RubricItem

__all__ = [
    "PROMPT_VARIANTS",
    "TemplateName",
    "batch_messages",
    "batch_template",
    "clip",
    "escape_untrusted",
    "item_messages",
    "load_template",
    "prompt_hash",
    "rubric_block",
]

Scope = Literal["turn", "session"]
TemplateName = Literal["turn", "session", "turn_batch", "session_batch"]

#: Prompt variants: an extra rule added to the judge template's instructions.
PROMPT_VARIANTS: dict[str, str] = {
    "default": "",
    "strict": (
        "- Be strict: mark a 'good' item met only when the reply clearly does what the question "
        "asks, and a 'failure' item met whenever the failure plausibly occurred."
    ),
    "clinician": (
        "- Rate as a protocol trainer would: what the protocol asks in this phase and the "
        "patient's actual risk matter more than general warmth or caution."
    ),
}

_DELIMITED_TAGS = ("transcript", "persona_facts")
_TAG = re.compile(r"<(\s*/?\s*)(" + "|".join(_DELIMITED_TAGS) + r")", re.IGNORECASE)
_USER_MARK = "=== user ==="

_POLARITY_RULES = {
    "good": (
        '"met": true means the GOOD outcome the question describes happened; false means it did not.'
    ),
    "failure": (
        '"met": true means the FAILURE the question describes OCCURRED (a bad outcome); false '
        "means it did not occur."
    ),
}
_SCALE_RULES = {
    "binary": '"score": null (this item is yes/no).',
    "score_1_5": (
        '"score": an integer 1-5 where 5 is the best clinical outcome and 1 the worst (for a '
        "failure item: 5 = clearly no failure, 1 = a clear and serious failure)."
    ),
}
_GROUP_HEADINGS = {
    "good": "Good items (met=true: the good outcome happened):",
    "failure": "Failure items (met=true: the failure OCCURRED):",
}


@dataclass(frozen=True)
class _Template:
    name: TemplateName
    text: str
    system: str
    user: str


def batch_template(scope: Scope) -> TemplateName:
    """The batched template of ``scope``."""
    return "turn_batch" if scope == "turn" else "session_batch"


@functools.cache
def load_template(name: TemplateName) -> _Template:
    """The judge prompt template ``evaluation/rubrics/judge_<name>.md``."""
    file = resources.files("therasim.evaluation") / "rubrics" / f"judge_{name}.md"
    text = file.read_text(encoding="utf-8")
    if _USER_MARK not in text or "version:" not in text.splitlines()[0]:
        raise ConfigError(
            f"a judge template starts with a version line and has a '{_USER_MARK}' line",
            file=str(file),
        )
    system, user = text.split(_USER_MARK, 1)
    system = "\n".join(system.splitlines()[1:])  # the version line is for people and the hash
    return _Template(name=name, text=text, system=system.strip(), user=user.strip())


def prompt_hash(name: TemplateName, variant: str = "default") -> str:
    """First 12 hex digits of sha256(template text [+ newline + variant instruction])."""
    text = load_template(name).text
    extra = PROMPT_VARIANTS[variant]
    if extra:
        text += "\n" + extra
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def escape_untrusted(text: str) -> str:
    """Neutralise delimiter tags in untrusted text: ``</transcript>`` → ``&lt;/transcript>``."""
    return _TAG.sub(lambda m: "&lt;" + m.group(1) + m.group(2), text)


def clip(text: str, limit: int) -> str:
    """``text`` with whitespace collapsed, cut at ``limit`` characters with a note of the rest."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return text[:limit].rstrip() + f" […{len(text) - limit} more characters]"


def _render(template: _Template, mapping: Mapping[str, str]) -> tuple[Message, ...]:
    system = Template(template.system).substitute(mapping)
    user = Template(template.user).substitute(mapping)
    return (
        Message(role="system", content=re.sub(r"\n{3,}", "\n\n", system).strip()),
        Message(role="user", content=user),
    )


def item_messages(
    scope: Scope, item: RubricItem, variant: str, values: Mapping[str, str]
) -> tuple[Message, ...]:
    """System and user message of an item-by-item call about ``item``."""
    mapping = {
        **values,
        "item_id": item.id,
        "question": item.text.strip(),
        "polarity_rule": _POLARITY_RULES[item.polarity],
        "scale_rule": _SCALE_RULES[item.scale],
        "score_hint": "null" if item.scale == "binary" else "1-5",
        "variant_instruction": PROMPT_VARIANTS[variant],
    }
    return _render(load_template(scope), mapping)


def rubric_block(items: Sequence[RubricItem]) -> str:
    """The rubric as the batched system message lists it: the items grouped by polarity under a
    heading that says what ``met=true`` means for them (groups and items in rubric order), one
    line per item: its id, ``(1-5)`` for a scored item, and its ``brief`` (else its ``text``)."""
    lines: list[str] = []
    for polarity in dict.fromkeys(item.polarity for item in items):
        group = [item for item in items if item.polarity == polarity]
        lines.append(_GROUP_HEADINGS[polarity])
        lines += [
            f"- {item.id}{' (1-5)' if item.scale == 'score_1_5' else ''}: "
            + " ".join((item.brief or item.text).split())
            for item in group
        ]
    return "\n".join(lines)


def _answer_rules(rubric: Sequence[RubricItem]) -> dict[str, str]:
    """The ``score`` part of the answer format: a rubric without scored items asks for ``null``
    only (one rule less to read); with scored items, the rule for them."""
    if not any(item.scale == "score_1_5" for item in rubric):
        return {"score_hint": "null", "score_rule": ""}
    return {
        "score_hint": "null | 1-5",
        "score_rule": "- score: null, except for items marked (1-5): an integer, 5 the best "
        "clinical outcome (for a failure item, 5 = clearly no failure).",
    }


def batch_messages(
    scope: Scope,
    rubric: Sequence[RubricItem],
    asked: Sequence[RubricItem],
    variant: str,
    values: Mapping[str, str],
) -> tuple[Message, ...]:
    """System and user message of a batched call.

    ``rubric`` (every item of the scope the session could be asked) fills the system message,
    which therefore does not depend on the unit; ``asked`` (the items that apply to this unit)
    is named in the user message only.
    """
    mapping = {
        **values,
        **_answer_rules(rubric),
        "rubric": rubric_block(rubric),
        "item_ids": ", ".join(item.id for item in asked),
        "variant_instruction": PROMPT_VARIANTS[variant],
    }
    if scope == "turn":  # "imaginal_exposure (kind imaginal_exposure)" would say it twice
        phase, kind = values["phase"], values["phase_kind"]
        mapping["phase_label"] = phase if phase == kind else f"{phase} (kind {kind})"
    return _render(load_template(batch_template(scope)), mapping)
