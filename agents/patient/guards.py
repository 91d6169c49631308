"""The patient's reply guards: is a cleaned model reply usable as a patient turn?

:func:`clean_patient_text` strips speaker labels, a made-up therapist reply and wrapping quotes;
the guards in :data:`GUARDS` are pure predicates over the cleaned text (``empty``, ``runaway``,
``character_break``, ``role_reversal``), checked in order by :func:`failed_guard`. The LLM
patient's turn (:mod:`therasim.agents.patient.turn`) retries while a guard fails.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from therasim.agents.cuematch import GatedPattern

MAX_CHARS = 1200
MAX_SENTENCES = 12

_OWN_LABEL = re.compile(
    r"^\s*(?:\*\*|__|\[)?\s*(?:the\s+)?(?:patient|client|me|assistant)\s*(?:\([^)\n]*\))?\s*"
    r"(?:\*\*|__|\])?\s*:\s*(?:\*\*|__)?\s*",
    re.IGNORECASE,
)
_OTHER_LABEL = re.compile(
    r"^\s*(?:\*\*|__|\[)?\s*(?:the\s+)?(?:therapist|counsel+or|clinician|doctor|user|dr\.?(?:\s+\w+)?)"
    r"\s*(?:\([^)\n]*\))?\s*(?:\*\*|__|\])?\s*:",
    re.IGNORECASE | re.MULTILINE,
)
_QUOTES = {'"': '"', "“": "”", "'": "'"}


def clean_patient_text(text: str) -> str:
    """The utterance without speaker labels, wrapping quotes or a made-up therapist reply.

    Strips a leading own label ("Patient:", "**Patient:**", "Client (quietly):", ...), cuts the
    text at the first line that starts with the other speaker's label ("Therapist:", "User:"),
    because models sometimes go on to write both sides, and removes one pair of quotes wrapping
    the whole reply.
    """
    text = text.strip()
    while True:
        stripped = _OWN_LABEL.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped.strip()
    other = _OTHER_LABEL.search(text)
    if other is not None:
        text = text[: other.start()].strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] == _QUOTES[text[0]]:
        inner = text[1:-1]
        if text[0] not in inner and _QUOTES[text[0]] not in inner:
            text = inner.strip()
    return text


_SENTENCE_END = re.compile(r"[.!?…]+(?:[\"')\]]*)(?=\s|$)")


def _sentences(text: str) -> list[str]:
    parts = _SENTENCE_END.split(text)
    return [p.strip() for p in parts if re.search(r"\w", p)]


_PUNCTUATION = re.compile(r"[^\w\s']")
_SPACES = re.compile(r"\s+")


@functools.lru_cache(maxsize=8192)
def normalise(text: str) -> str:
    """Lower case, punctuation as spaces, whitespace collapsed: how patient lines are compared."""
    # cached: the template patient compares every line said so far on every turn
    return _SPACES.sub(" ", _PUNCTUATION.sub(" ", text.lower())).strip()


def is_empty(text: str) -> bool:
    """Guard ``empty``: nothing but whitespace and punctuation."""
    return re.search(r"\w", text) is None


def is_runaway(text: str) -> bool:
    """Guard ``runaway``: over 1200 characters, over 12 sentences, or a loop.

    A loop is a line of 12+ characters said twice, or a sentence of five or more words said three
    times (a patient may repeat a short phrase, "It's not moving. It's not moving.").
    """
    if len(text) > MAX_CHARS:
        return True
    sentences = _sentences(text)
    if len(sentences) > MAX_SENTENCES:
        return True
    lines = [normalise(line) for line in text.splitlines()]
    long_lines = [line for line in lines if len(line) >= 12]
    if len(long_lines) != len(set(long_lines)):
        return True
    counts: dict[str, int] = {}
    for sentence in sentences:
        key = normalise(sentence)
        if len(key.split()) >= 5:
            counts[key] = counts.get(key, 0) + 1
            if counts[key] >= 3:
                return True
    return False


_CHARACTER_BREAK = [
    r"\bas an? (?:ai|artificial intelligence)\b",
    r"\b(?:an?|the) (?:ai|artificial intelligence)(?: language)? (?:model|assistant|system)\b",
    r"\blanguage model\b",
    r"\bi(?:'m| am) (?:just |only |merely )?(?:an? )?(?:ai|assistant|ai assistant|chatbot|bot|virtual assistant)\b",
    r"\bi(?:'m| am) not (?:a real|an actual|really a) (?:patient|person|human)\b",
    r"\bi (?:cannot|can't|can not|won't|am unable to|'m unable to) (?:role-?play|pretend to be|play (?:this|that|the) (?:role|character|part))",
    r"\bpatient simulator\b",
    r"\bsimulated patient\b",
    r"\b(?:this|the) (?:role-?play|simulation)\b",
    r"\b(?:in|out of|break(?:ing)?) character\b",
    r"\bi can(?:'t|not) (?:help|assist) with (?:that|this)\b",
    r"\bmy (?:instructions|system prompt|programming|guidelines)\b",
]
_ROLE_REVERSAL = [
    r"\bhow does (?:that|this|it) make you feel\b",
    r"\bhow (?:are|have) you (?:been )?feeling\b[^.!?]*\?",
    r"\blet'?s (?:try|do|practi[cs]e|start with|begin with) (?:a |an |some )?(?:quick |deep |slow |short )?(?:breath|breathing|grounding|relaxation|mindfulness)",
    r"\btake (?:a|some) (?:deep|slow) breaths? with me\b",
    r"\bi (?:would |'d )?(?:strongly )?(?:recommend|suggest|advise) (?:that )?you\b",
    r"\bi (?:would |'d )?(?:strongly )?(?:encourage|urge) you to (?:seek|reach out|contact|call|talk|speak)\b",
    r"\bimportant (?:that you|for you to|to) (?:seek|reach out|get) (?:out )?(?:professional |some )?(?:help|support)\b",
    r"\bimportant to seek (?:out )?professional help\b",
    r"\bplease (?:reach out to|contact|call) (?:a|your|the) (?:mental health|crisis|professional|local|therapist|counsel)",
    r"\bas (?:your|a) (?:therapist|counsel+or|clinician|mental health professional)\b",
    r"\byour suds\b",
    r"\b(?:rate|rating) your (?:distress|suds|anxiety)\b",
    r"\bhow (?:distressed|anxious|upset) are you\b",
    r"\bhow would you (?:rate|describe) your\b",
    r"\bi'?m here (?:for|to (?:support|help|listen to)) you\b",
    r"\bthank you for sharing\b",
    r"\bwhat brings you (?:here|in)\b",
    r"\byou(?:'re| are) doing (?:great|so well|really well|a great job)\b",
    r"\byou(?:'re| are) not alone\b",
    r"\byou don'?t have to (?:go through|face) (?:this|it) alone\b",
    r"\bi want you to (?:close your eyes|imagine|notice|picture|take)\b",
    r"\blet'?s (?:explore|unpack)\b",
    r"\blet'?s (?:work on|look at) your\b",
    r"\bwhat evidence do you have\b",
    r"\bwhat i(?:'m)? hear(?:ing)? you say",
]
# checked on every patient turn: behind an RE2 gate, which rules out most lines in one pass
_CHARACTER_BREAK_RE = GatedPattern(re.compile("|".join(_CHARACTER_BREAK), re.IGNORECASE))
_ROLE_REVERSAL_RE = GatedPattern(re.compile("|".join(_ROLE_REVERSAL), re.IGNORECASE))


def _straight(text: str) -> str:
    return text.replace("’", "'").replace("‘", "'")


def is_character_break(text: str) -> bool:
    """Guard ``character_break``: the model steps out of the patient ("as an AI", "language model")."""
    return _CHARACTER_BREAK_RE.search(_straight(text)) is not None


def is_role_reversal(text: str) -> bool:
    """Guard ``role_reversal``: the patient starts doing therapy (asks how the therapist feels,
    offers a breathing exercise, recommends professional help, asks the therapist for SUDS)."""
    return _ROLE_REVERSAL_RE.search(_straight(text)) is not None


GUARDS: dict[str, Callable[[str], bool]] = {
    "empty": is_empty,
    "runaway": is_runaway,
    "character_break": is_character_break,
    "role_reversal": is_role_reversal,
}
"""Guard name → predicate that is True when the (cleaned) text fails it, in checking order."""


def failed_guard(text: str) -> str | None:
    """The first guard the cleaned text fails, or ``None`` when it is a usable patient turn."""
    for name, fails in GUARDS.items():
        if fails(text):
            return name
    return None
