"""Many cue patterns matched against one reply in a single pass.

The statistical coder's ~1,000 cue patterns are Python regular expressions; searching a reply
with each in turn costs several milliseconds. RE2's ``Set`` scans the reply once for all of
them, but speaks a smaller dialect (no lookarounds, ASCII ``\\b`` and ``\\w``). So every pattern
is translated into a *looser* RE2 pattern — one that matches wherever the Python pattern does —
and only the few patterns the set reports are searched with Python ``re``, which decides. The
result is exactly that of searching every pattern with ``re``; the set only skips the certain
misses.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from re import _constants as c  # type: ignore[attr-defined]  # the stdlib's parse tree
from re import _parser  # type: ignore[attr-defined]
from typing import Any, cast

import re2

_ANY = r"(?s:.)"
_RE2_MEMORY = 256 << 20  # the compiled set of the bundled cues needs about 40 MB


class _Untranslatable(Exception):
    """A construct with no looser RE2 form here (e.g. a back-reference)."""


def _char(code: int) -> str:
    return rf"\x{{{code:x}}}"


# Class fragments for Python's Unicode categories. ``_WIDER`` holds a superset of each (for a
# positive class), ``_NARROWER`` a subset (for a negated class, whose complement then widens).
_WIDER = {
    c.CATEGORY_DIGIT: r"\p{Nd}",
    c.CATEGORY_NOT_DIGIT: r"\P{Nd}",
    c.CATEGORY_WORD: r"\p{L}\p{N}_",
    c.CATEGORY_SPACE: r"\t\n\x0b\f\r \p{Z}\x{85}\x{1c}-\x{1f}",
}
_NARROWER = {
    c.CATEGORY_DIGIT: r"\p{Nd}",
    c.CATEGORY_NOT_DIGIT: r"\P{Nd}",
    c.CATEGORY_WORD: r"a-zA-Z0-9_",
    c.CATEGORY_SPACE: r"\t\n\x0b\f\r ",
}
_LETTERS = r"[\p{L}\p{N}_]"  # wider than ``[^\W...]``, Python's idiom for word characters


def _in(items: list[tuple[Any, Any]]) -> str:
    """A character class, with categories (``\\w``, ``\\s``...) widened or narrowed so that
    the class as a whole can only grow."""
    negate = bool(items) and items[0][0] is c.NEGATE
    fragments = _NARROWER if negate else _WIDER
    parts = []
    for op, av in items[1:] if negate else items:
        if op is c.LITERAL:
            parts.append(_char(av))
        elif op is c.RANGE:
            parts.append(f"{_char(av[0])}-{_char(av[1])}")
        elif op is c.CATEGORY and av in fragments:
            parts.append(fragments[av])
        elif negate and op is c.CATEGORY and av is c.CATEGORY_NOT_WORD:
            return _LETTERS  # [^\W…] is a subset of the word characters
        else:
            return _ANY
    if not parts:
        return _ANY
    return f"[{'^' if negate else ''}{''.join(parts)}]"


def _repeat(lo: int, hi: int) -> str:
    """A repeat operator; bounds above one are opened (``{0,50}`` becomes ``*``), which only
    loosens the pattern and spares RE2's DFA a state per count."""
    if (lo, hi) == (0, 1):
        return "?"
    lo = lo if lo <= 3 else 0
    return {0: "*", 1: "+"}.get(lo, f"{{{lo},}}")


def _emit(items: Any, multiline: bool) -> str:
    """RE2 text for a parsed Python pattern, loosened: assertions (``\\b``, lookarounds) are
    dropped and Unicode classes widened, so the result matches a superset."""
    out: list[str] = []
    for op, av in items:
        if op is c.LITERAL:
            out.append(_char(av))
        elif op is c.NOT_LITERAL:
            out.append(f"[^{_char(av)}]")
        elif op is c.ANY:
            out.append(_ANY)
        elif op is c.IN:
            out.append(_in(av))
        elif op is c.CATEGORY:  # never outside a class in the parse tree; kept for safety
            out.append(_in([(op, av)]))
        elif op is c.SUBPATTERN:
            # a case-sensitive group (``(?-i:ER)``) stays case-sensitive: RE2 reads it alike, and
            # the set, case-insensitive as a whole, would otherwise report it on every "er"
            add_flags, del_flags = av[1], av[2]
            flags = (
                "-i:" if del_flags & re.IGNORECASE else "i:" if add_flags & re.IGNORECASE else ":"
            )
            out.append(f"(?{flags}{_emit(av[-1], multiline)})")
        elif op is c.BRANCH:
            out.append("(?:" + "|".join(_emit(alt, multiline) for alt in av[1]) + ")")
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            lo, hi, body = av
            out.append(f"(?:{_emit(body, multiline)}){_repeat(lo, hi)}")
        elif op is c.AT and av in (c.AT_BEGINNING, c.AT_BEGINNING_STRING, c.AT_BEGINNING_LINE):
            out.append("(?m:^)" if multiline or av is c.AT_BEGINNING_LINE else r"\A")
        elif op in (c.AT, c.ASSERT, c.ASSERT_NOT):  # \\b, $, lookarounds: dropped, so looser
            continue
        else:
            raise _Untranslatable(str(op))
    return "".join(out)


def loosen(pattern: re.Pattern[str]) -> str:
    """The RE2 form of a Python pattern that matches wherever it does (raises if none)."""
    return _emit(_parser.parse(pattern.pattern, pattern.flags), bool(pattern.flags & re.MULTILINE))


def _search_set(max_mem: int) -> Any:
    """An empty case-insensitive RE2 search set that only reports which patterns match."""
    options = re2.Options()
    options.case_sensitive = False
    options.never_capture = True
    options.max_mem = max_mem
    return re2.Set.SearchSet(options)


class _CodeCues:
    """One code's cues: an RE2 set over their loosened forms, and the Python patterns."""

    def __init__(self, regexes: Sequence[re.Pattern[str]]) -> None:
        self.regexes = tuple(regexes)
        self._set = _search_set(_RE2_MEMORY)
        self._in_set: list[int] = []  # set index -> cue index
        self._always: list[int] = []  # cues with no RE2 form: always searched
        for i, regex in enumerate(self.regexes):
            try:
                self._set.Add(loosen(regex))
            except (_Untranslatable, re2.error):
                self._always.append(i)
            else:
                self._in_set.append(i)
        self._set.Compile()

    def first_match(self, text: str, encoded: bytes | None = None) -> str | None:
        """The text of the first cue (in file order) matching ``text``, if any (``encoded``:
        the text in UTF-8, when the caller has it already)."""
        found = self._set.Match(text.encode() if encoded is None else encoded)
        hits = sorted([self._in_set[j] for j in found or ()] + self._always)
        for i in hits:
            match = self.regexes[i].search(text)
            if match and match.end() > match.start():
                return cast(str, match.group(0))  # re2 ships no type hints
        return None


class CueIndex:
    """Code -> its first matching cue, for cue patterns grouped by code in file order.

    One RE2 set per code: RE2 builds its automaton lazily, and a thousand patterns in one set
    make each new state costly on text it has not seen (about 13 ms a reply, against about
    1 ms for per-code sets)."""

    def __init__(self, cues: Mapping[str, Sequence[re.Pattern[str]]]) -> None:
        self._codes = {code: _CodeCues(regexes) for code, regexes in cues.items()}

    def first_matches(self, text: str) -> dict[str, str]:
        """Code -> the text of its first cue matching ``text``, for the codes with one."""
        encoded = text.encode()  # once, not once a set
        found = {code: cues.first_match(text, encoded) for code, cues in self._codes.items()}
        return {code: span for code, span in found.items() if span is not None}


_PREFILTER_MEMORY = 64 << 20


class Prefilter:
    """Which groups of Python patterns may match a text, from one RE2 set over their loosened
    forms (:func:`loosen`): a group the set does not report cannot match, so only the reported
    ones need searching with Python ``re``, which decides. A group with a pattern that has no
    RE2 form is always reported, and so is every group for a text over :attr:`MAX_TEXT`
    characters (the set is for the many short replies of a study, not for documents)."""

    MAX_TEXT = 20_000

    def __init__(self, groups: Sequence[Sequence[re.Pattern[str]]]) -> None:
        self._size = len(groups)
        self._set = _search_set(_PREFILTER_MEMORY)
        self._group_of: dict[int, int] = {}  # set index -> group
        always: set[int] = set()
        for group, patterns in enumerate(groups):
            for pattern in patterns:
                try:
                    self._group_of[self._set.Add(loosen(pattern))] = group
                except (_Untranslatable, re2.error):
                    always.add(group)
        self._always = frozenset(always)
        self._set.Compile()

    def candidates(self, text: str) -> list[int]:
        """The groups (indices, ascending) that may match ``text``."""
        if len(text) > self.MAX_TEXT:
            return list(range(self._size))
        found = self._set.Match(text) or ()
        return sorted({self._group_of[j] for j in found} | self._always)


class GatedPattern:
    """A Python pattern behind an RE2 gate: :meth:`search` runs Python ``re`` only when the
    pattern's loosened form (:func:`loosen`) matches, so the result is ``pattern.search``'s.
    For long alternations checked on every turn: RE2 rules out most texts in one linear pass
    (in a tight loop about 2 µs against 30-40 µs for ``re`` on a sentence or two; inside a study,
    with cold caches, far less of a gain: ``benchmarks/README.md`` §1)."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern

    @functools.cached_property
    def _gate(self) -> Prefilter:
        return Prefilter([[self.pattern]])

    def search(self, text: str) -> re.Match[str] | None:
        """``pattern.search(text)``."""
        if not self._gate.candidates(text):
            return None
        return self.pattern.search(text)
