"""Rewriting a persona's free text for a demographic counterfactual.

A variant at age 70 must not say "34-year-old", nor call a man "she": ``rewrite_narrative``
rewrites the patient's age, the gender words of the summary's opening and the patient's own
pronouns in the third-person fields, leaving other people's ages and pronouns alone. The rules
and their known limits are in the functions' docstrings.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from therasim.personas.schema import Demographics

THIRD_PERSON_FIELDS: frozenset[str] = frozenset(
    {
        "summary",
        "pe.index_trauma",
        "pe.hot_spots",
        "pe.avoidance_behaviours",
        "pe.safety_behaviours",
        "cbt.situation",
        "demographics.living_situation",
        "demographics.occupation",
        "demographics.religion",
        "communication.style",
    }
)
"""Text fields written about the patient in the third person (their pronouns are the patient's)."""

_NARRATIVE_DEMOGRAPHICS = frozenset({"living_situation", "occupation", "religion"})
# Paths never rewritten: identity, selection labels and the demographic values themselves.
_NOT_NARRATIVE = frozenset({"id", "parent", "tags", "changes"}) | {
    f"demographics.{name}"
    for name in Demographics.model_fields
    if name not in _NARRATIVE_DEMOGRAPHICS
}


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# (feminine, masculine, neutral) forms of gendered nouns that may name the patient.
_NOUNS: tuple[tuple[str, str, str], ...] = (
    ("woman", "man", "non-binary person"),
    ("widow", "widower", "widowed person"),
    ("mother", "father", "parent"),
    ("grandmother", "grandfather", "grandparent"),
    ("daughter", "son", "child"),
    ("wife", "husband", "spouse"),
    ("girl", "boy", "young person"),
    ("sister", "brother", "sibling"),
    ("aunt", "uncle", "relative"),
    ("niece", "nephew", "relative"),
    ("fisherwoman", "fisherman", "fisher"),
    ("businesswoman", "businessman", "businessperson"),
    ("policewoman", "policeman", "police officer"),
    ("chairwoman", "chairman", "chair"),
)
_FORM = {"she": 0, "he": 1, "they": 2}
# Other people who may share the patient's old pronouns: a text naming one keeps its pronouns.
_OTHERS = {
    "she": frozenset(
        {f for f, _, _ in _NOUNS}
        | _words("women girls daughters girlfriend mum mom grandma stepmother stepdaughter")
        | _words("granddaughter stranger lady ladies mrs ms")
    ),
    "he": frozenset(
        {m for _, m, _ in _NOUNS}
        | _words("men boys sons boyfriend dad daddy grandpa stepfather stepson grandson")
        | _words("stranger gentleman guy lad mr crewman gunman fireman postman workman")
    ),
}
# Before these words "her" is an object ("told her to", "gave her his coat") -> "him"; before
# any other word it is a determiner ("her son") -> "his". Prepositions, conjunctions,
# determiners, pronouns, quantifiers and adverbs or particles that never follow a determiner.
_OBJECT_CONTEXT = _words(
    "to in on at for with from into onto out up down off away over under against during behind "
    "beside near inside outside across toward towards upon among without via since until till "
    "and or but nor that as when whenever while whilst before after because if unless though "
    "although so yet a an the this these those again alone too about through by like than "
    "around everywhere anywhere what why how where wherever who whom whether then there here "
    "now just also not many every each instead later today tonight anyway enough "
    "me him his her it its us them my your our their "
    "something nothing anything everything someone anyone everyone somebody anybody nobody "
    "everybody some any no more less much once twice "
    "along aside apart together forward forwards backward backwards upstairs downstairs "
    "indoors outdoors overboard alive awake asleep"
)
# "her back" is the body part ("keeps her back to the wall") unless a verb that takes "back" as
# a particle comes first ("pulling her back onto the roof").
_TAKES_BACK = _words(
    "pull pulls pulled pulling drag drags dragged dragging call calls called calling "
    "bring brings brought bringing take takes took taken taking get gets got gotten getting "
    "send sends sent sending hold holds held holding carry carries carried carrying "
    "push pushes pushed pushing want wants wanted wanting wave waves waved waving "
    "win wins won winning fight fights fought fighting welcome welcomes welcomed welcoming "
    "lead leads led leading follow follows followed following walk walks walked walking "
    "drive drives drove driven driving invite invites invited inviting"
)
# Words in -ing that are nouns, not verbs: "her morning swim", "her wedding in June".
_ING_NOUNS = _words(
    "morning mornings evening evenings wedding weddings building buildings clothing ceiling "
    "feeling earring earrings sibling siblings bedding stocking stockings pudding darling "
    "offspring upbringing belongings savings earnings surroundings meeting meetings painting "
    "paintings drawing drawings warning warnings training housing parking funding wording "
    "ending beginning setting settings recording recordings hearing lodging lodgings "
    "stuffing string spring thing swing sling sting"
)


def _her_is_object(before: str, after: str, then: str) -> bool:
    """Whether "her" is an object (-> "him") rather than a determiner (-> "his").

    ``before`` is the word or punctuation mark before it ('' at the start of the text);
    ``after`` and ``then`` are the next two words ('' when punctuation or the end comes first),
    all case-folded. "her" before punctuation or the end, or before a word of
    :data:`_OBJECT_CONTEXT`, is an object ("grabbed her.", "told her to", "gave her his coat");
    "her back" and "her home" are objects only as particles ("pulling her back onto", "walk her
    home from"; but "keeps her back to the wall", "her home village"); "her" before an -ing verb
    followed by such a word is the verb's subject or object ("and her pulling her back", "found
    her lying on the floor"); before anything else it is a determiner ("her sleeping pills").
    """
    if not after:
        return True
    if after == "back":
        return before in _TAKES_BACK
    if after == "home":  # "walk her home from" vs "her home village"
        return not then or then in _OBJECT_CONTEXT
    if after in _OBJECT_CONTEXT:
        return True
    if after.endswith("ing") and len(after) >= 5 and after not in _ING_NOUNS:
        return then in _OBJECT_CONTEXT or then == "back"
    return False


_WORD_OR_MARK = r"[\w'’-]+|[^\w\s]"
_BEFORE = re.compile(rf"({_WORD_OR_MARK})\s*$")
_AFTER = re.compile(r"\s+([\w'’-]+)(?:\s+([\w'’-]+))?")


def _context(text: str, start: int, end: int) -> tuple[str, str, str]:
    """The word or mark before ``text[start:end]`` and the two words after it (case-folded)."""
    m = _BEFORE.search(text, max(0, start - 40), start)  # a word back is enough
    before = m.group(1).casefold() if m else ""
    n = _AFTER.match(text, end)
    after, then = (n.group(1) or "", n.group(2) or "") if n else ("", "")
    return before, after.casefold(), then.casefold()


_OWN = {
    "he": frozenset({"he", "him", "his", "himself"}),
    "she": frozenset({"she", "her", "hers", "herself"}),
}
_PRONOUN_SWAP = {
    ("he", "she"): {"he": "she", "him": "her", "himself": "herself", "hers": "his"},
    ("she", "he"): {"she": "he", "herself": "himself", "hers": "his"},
}


def pronoun_set(gender: str) -> Literal["she", "he", "they"] | None:
    """Which third-person pronouns a ``gender`` value implies (None when it does not say).

    An explicit "(uses she/her)" wins; then non-binary words give "they", "woman"/"female"/
    "girl" give "she" and "man"/"male"/"boy" give "he" (whole words, so "woman" is not "man").
    """
    g = gender.casefold()
    for p in ("she", "he", "they"):
        if re.search(rf"\buses {p}\b", g):
            return p
    if re.search(r"\b(non-?binary|enby|genderqueer|genderfluid|agender|they)\b", g):
        return "they"
    if re.search(r"\b(woman|female|girl|feminine)\b", g):
        return "she"
    if re.search(r"\b(man|male|boy|masculine)\b", g):
        return "he"
    return None


def _same_case(word: str, new: str) -> str:
    if word.isupper() and len(word) > 1:
        return new.upper()
    return new[0].upper() + new[1:] if word[:1].isupper() else new


def _rewrite_age(text: str, old: int, new: int) -> str:
    text = re.sub(rf"(?<![\w.]){old}(?=(?:-|\s)years?(?:-|\s)old\b)", str(new), text)
    return re.sub(rf"\b(aged\s+){old}\b(?!\.\d)", rf"\g<1>{new}", text)


def _swap_pronouns(text: str, old: str, new: str, start: int = 0) -> str:
    """``text`` with the patient's pronouns from ``start`` on changed from ``old`` to ``new``
    (the text before ``start`` is context only)."""
    table = _PRONOUN_SWAP[(old, new)]

    def one(m: re.Match[str]) -> str:
        word = m.group(1)
        if m.start() < start:
            return word
        low = word.casefold()
        before, after, then = _context(text, m.start(), m.end())
        if low == "his":  # he -> she: "his son" -> "her son", "was his" -> "hers"
            return _same_case(word, "her" if after else "hers")
        if low == "her":  # she -> he: "her son" -> "his son", "told her to" -> "him to"
            return _same_case(word, "him" if _her_is_object(before, after, then) else "his")
        return _same_case(word, table[low])

    words = sorted({*table, "his" if old == "he" else "her"}, key=len, reverse=True)
    return re.sub(rf"\b({'|'.join(words)})\b", one, text, flags=re.IGNORECASE)


def _mentions_others(text: str, old: str) -> bool:
    """Whether ``text`` names another person of the patient's old gender who may be referred
    to by a pronoun: one the patient possesses ("her daughter") counts only when a subject or
    object pronoun of that gender follows ("... to check she is alive"). A possessive "'s" does
    not hide the person ("her mother's grip")."""
    tokens = [(m.start(), m.end(), m.group().casefold()) for m in re.finditer(r"[\w'’-]+", text)]
    words = [re.sub(r"['’]s?$", "", w) for _, _, w in tokens]
    for i, w in enumerate(words):
        if w not in _OTHERS[old]:
            continue
        if not _POSSESSIVE & set(words[max(0, i - 3) : i]):
            return True
        for start, end, later in tokens[i + 1 :]:
            if later in _OWN[old] - {"his", "her"}:
                return True
            if later == "her" and _her_is_object(*_context(text, start, end)):
                return True
    return False


_POSSESSIVE = frozenset({"his", "her", "their", "whose", "my"})
_LEAD = re.compile(r"^((?:an?\s+)?(?:\d+-year-old\s+)?)((?:[^\s,;:.]+\s+){0,5}[^\s,;:.]+)")
_LEAD_STOP = _words(
    "who whose which that in with living caring from at on of for after and by to since "
    "recruited laid held hiding"
)


def _opening_phrase(text: str) -> tuple[int, int]:
    """Start and end of the summary's opening noun phrase ("34-year-old Irish woman")."""
    m = _LEAD.match(text)
    if m is None:
        return 0, 0
    start = m.end(1)
    end = start
    for w in re.finditer(r"[^\s,;:.]+", text[start : m.end(2)]):
        if w.group().casefold() in _LEAD_STOP:
            break
        end = start + w.end()
    return start, end


def _plain(gender: str) -> str:
    return re.sub(r"\s*\(.*?\)", "", gender).strip()


def _rewrite_opening(
    text: str, old: str, new: str, old_gender: str, new_gender: str
) -> tuple[str, int]:
    """The summary with its opening phrase's gendered noun rewritten, and where it ends.

    The old gender as written ("trans woman") becomes the new one as written (a non-noun value
    gains "person"); otherwise a gendered noun is swapped, or "non-binary" becomes an adjective.
    """
    start, end = _opening_phrase(text)
    phrase = text[start:end]
    was, now = _plain(old_gender), _plain(new_gender)
    if not re.search(r"\b(woman|man|person|people)$", now, flags=re.IGNORECASE):
        now = f"{now} person"
    as_written = re.compile(rf"\b{re.escape(was)}\b", flags=re.IGNORECASE)
    if was and old != "they" and as_written.search(phrase):
        phrase = as_written.sub(now, phrase, count=1)
    elif old == "they" and new == "they":
        phrase = re.sub(r"\bnon-?binary\b", _plain(new_gender), phrase, count=1, flags=re.I)
    elif old == "they":
        adjective = ("trans " if "trans" in new_gender.casefold() else "") + (
            "female" if new == "she" else "male"
        )
        phrase = re.sub(r"\bnon-?binary\b", adjective, phrase, count=1, flags=re.IGNORECASE)
    else:
        nouns = {forms[_FORM[old]]: forms[_FORM[new]] for forms in _NOUNS}
        pattern = rf"\b({'|'.join(sorted(nouns, key=len, reverse=True))})\b"
        phrase = re.sub(
            pattern,
            lambda m: _same_case(m.group(1), nouns[m.group(1).casefold()]),
            phrase,
            flags=re.IGNORECASE,
        )
    return text[:start] + phrase + text[end:], start + len(phrase)


def _rewrite_first_person(text: str, old: str, new: str) -> str:
    """ "I'm (just) a/an (adj) <noun>" naming the patient's gender, when nothing else in the
    text is of that gender ("a tired daughter who lost her temper" is left whole)."""
    nouns = {forms[_FORM[old]]: forms[_FORM[new]] for forms in _NOUNS}
    pattern = (
        r"(\bI(?:'m|’m| am| was)(?:\s+(?:just|only|such|not|still))?\s+an?\s+(?:[\w-]+\s+){0,2}?)"
        rf"({'|'.join(sorted(nouns, key=len, reverse=True))})\b"
    )
    found = list(re.finditer(pattern, text, flags=re.IGNORECASE))
    words = [w.casefold() for w in re.findall(r"[A-Za-z]+", text)]
    gendered = _OTHERS[old] | _OWN[old]
    if len(found) != 1 or sum(w in gendered for w in words) != 1:
        return text
    m = found[0]
    return (
        text[: m.start(2)] + _same_case(m.group(2), nouns[m.group(2).casefold()]) + text[m.end(2) :]
    )


def _rewrite_text(text: str, path: str, old: Demographics, new: Demographics) -> str:
    if old.age != new.age:
        text = _rewrite_age(text, old.age, new.age)
    p_old, p_new = pronoun_set(old.gender), pronoun_set(new.gender)
    if p_old is None or p_new is None or old.gender == new.gender:
        return text
    rest_from = 0
    if path == "summary":
        text, rest_from = _rewrite_opening(text, p_old, p_new, old.gender, new.gender)
    if p_old == p_new:
        return text
    if path not in THIRD_PERSON_FIELDS:
        return text if p_old == "they" else _rewrite_first_person(text, p_old, p_new)
    if p_old == "they" or p_new == "they" or _mentions_others(text[rest_from:], p_old):
        return text
    return _swap_pronouns(text, p_old, p_new, rest_from)


def rewrite_narrative(data: Any, old: Demographics, new: Demographics, path: str = "") -> Any:
    """``data`` (a dumped persona or part of one) with its free text matched to ``new``.

    Walks every string under ``data``; ``path`` is the dotted field path ("pe.hot_spots"; a
    list's items share the list's path). See :meth:`Persona.counterfactual` for the rules.
    """
    if path in _NOT_NARRATIVE:
        return data
    if isinstance(data, str):
        return _rewrite_text(data, path, old, new)
    if isinstance(data, list):
        return [rewrite_narrative(v, old, new, path) for v in data]
    if isinstance(data, dict):
        return {
            k: rewrite_narrative(v, old, new, f"{path}.{k}" if path else str(k))
            for k, v in data.items()
        }
    return data
