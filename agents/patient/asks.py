"""Reading a therapist line from the patient's side: which rating or answer it asks for now.

Pure functions of the text, shared by the LLM patient's prompt (a SUDS answer is due), the
template patient (which number to say) and the scripted therapists (was safety asked about).
"""

from __future__ import annotations

import re

_SUDS_WORDS = re.compile(
    r"\bsuds?\b|\b(?:0|zero)\s*(?:-|–|to)\s*(?:100|a hundred)\b|\bout of (?:100|a hundred)\b"
    r"|\bdistress (?:level|rating|number)\b|\bhow (?:distressed|anxious|upset|high)\b",
    re.IGNORECASE,
)
_RATING_IMPERATIVE = re.compile(
    r"^\s*(?:now,?\s*)?(?:please\s+)?(?:rate|give me|tell me)\b", re.IGNORECASE
)


def asks_for_suds(text: str) -> bool:
    """Whether a therapist line asks for a SUDS rating now.

    True when a question ("What's your SUDS?", "On a scale of 0 to 100, how distressed are
    you?") or an imperative sentence ("Give me a number from 0 to 100.") mentions SUDS or a
    0-100 distress scale; a mere mention ("I'll ask for your SUDS now and then. Ready?") is not.
    """
    for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
        if not _SUDS_WORDS.search(sentence):
            continue
        if sentence.rstrip().endswith("?") or _RATING_IMPERATIVE.search(sentence):
            return True
    return False


_BELIEF_WORDS = re.compile(r"\bbeliev\w*|\bbelief\b", re.IGNORECASE)
_EMOTION_WORDS = re.compile(r"\bemotions?\b|\bfeelings?\b", re.IGNORECASE)
_SCALE = r"\b(?:0|zero)\s*(?:-|–|to)\s*(?:100|a hundred)\b"
_BELIEF_RATING = re.compile(
    rf"\bhow much\b|\bhow (?:strongly|true)\b|%|\bper ?cent\b|{_SCALE}|\b(?:re-?)?rate\b",
    re.IGNORECASE,
)
_EMOTION_RATING = re.compile(
    rf"\bintens\w*|\bhow (?:strong|bad|high)\b|{_SCALE}|\b(?:re-?)?rate\b", re.IGNORECASE
)
_NOW = re.compile(r"\bnow\b|\bright now\b|\bat the moment\b", re.IGNORECASE)


def requested_ratings(text: str) -> frozenset[str]:
    """Which ratings a therapist line asks for now: ``belief``, ``emotion_now``, ``emotion_then``,
    ``suds``.

    Each question (or rating imperative) counts by what it rates (one sentence may ask for an
    emotion and a belief together): a belief in a thought
    ("How much do you believe it, 0 to 100%?") is ``belief`` even though it names the 0-100
    scale; an emotion's intensity is ``emotion_now`` when the sentence says now (the current
    distress, answered like SUDS) and ``emotion_then`` otherwise (the intensity at the time of
    the situation); any other SUDS question (:func:`asks_for_suds`) is ``suds``.
    """
    asked: set[str] = set()
    for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
        if not (sentence.rstrip().endswith("?") or _RATING_IMPERATIVE.search(sentence)):
            continue
        kinds: set[str] = set()
        if _BELIEF_WORDS.search(sentence) and _BELIEF_RATING.search(sentence):
            kinds.add("belief")
        if _EMOTION_WORDS.search(sentence) and _EMOTION_RATING.search(sentence):
            kinds.add("emotion_now" if _NOW.search(sentence) else "emotion_then")
        if not kinds and asks_for_suds(sentence):
            kinds.add("suds")
        asked |= kinds
    return frozenset(asked)


def asks_for_belief(text: str) -> bool:
    """Whether a therapist line asks how much the patient believes a thought (a belief rating)."""
    return "belief" in requested_ratings(text)


_SAFETY_QUESTION = re.compile(
    r"\b(?:suicid\w*|kill(?:ing)? yourself|end(?:ing)? your (?:own )?life|hurt(?:ing)? yourself|"
    r"harm(?:ing)? yourself|self-harm|are you safe|thoughts of (?:death|dying|not being alive)|"
    r"better off dead|want(?:ing)? to die)\b",
    re.IGNORECASE,
)


def asks_about_safety(text: str) -> bool:
    """Whether a therapist line asks directly about self-harm or suicide (a question)."""
    return "?" in text and _SAFETY_QUESTION.search(text) is not None
