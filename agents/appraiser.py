"""The appraiser: codes one therapist turn with the closed behaviour-code vocabulary.

Two coders share one output model, :class:`Appraisal`:

- :func:`lexical_appraisal` is pure and deterministic: phrase and regex lists kept as data in
  ``agents/prompts/lexicon.yaml`` (code → patterns, case-insensitive). It is registered as the
  scripted backend ``scripted:lexical``, so a fully offline pipeline codes turns through the
  gateway like any LLM appraiser would.
- :func:`appraise` asks the ``appraiser`` role through ``Gateway.structured``, with the prompt in
  ``agents/prompts/appraiser.md``: the code vocabulary with one-line definitions, the current
  phase, and the session text as delimited, untrusted JSON data.

What the lexicon codes is what a turn *does*, never whether it was right: crisis_resources is a
code in any phase at any risk; whether a hotline was a misfire is for the dynamics
(``therasim.personas.dynamics``) and the judges. The few context rules (documented in the
lexicon's header) only disambiguate phrases whose meaning depends on the phase: "0 to 100" is a
SUDS probe in PE but a rating step in CBT; "let's stop here" abandons a task only inside one; a
reply of five words or fewer abandons a CBT step.

LLM output is taken leniently: unknown codes (and evidence for them) are dropped rather than
failing the call, code names are normalised ("Crisis Resources" → crisis_resources), unknown
top-level keys are ignored, and evidence is kept only when its span occurs in the therapist
text (a span that differs only in case or spacing is replaced by the exact text).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from therasim.agents.appraiser_prompt import DATA_CLOSE, DATA_OPEN, appraisal_messages
from therasim.agents.context import TurnContext
from therasim.agents.resources import read_prompt
from therasim.agents.types import CompletionRequest, CompletionResponse, TolerantOutput
from therasim.errors import ConfigError
from therasim.vocab import BehaviourCode, PhaseKind

if TYPE_CHECKING:  # the gateway loads this module lazily (scripted registry); no import cycle
    from therasim.agents.cuematch import Prefilter
    from therasim.agents.llm import BoundGateway, Gateway

LEXICON_FILE = "lexicon.yaml"

_KNOWN_CODES = {c.value for c in BehaviourCode}


# --------------------------------------------------------------------------- output model


def normalise_code(value: Any) -> BehaviourCode | None:
    """The behaviour code ``value`` names (case, spaces and hyphens forgiven), else None."""
    if isinstance(value, BehaviourCode):
        return value
    if not isinstance(value, str):
        return None
    key = re.sub(r"[\s-]+", "_", value.strip().lower())
    return BehaviourCode(key) if key in _KNOWN_CODES else None


class Evidence(BaseModel):
    """One piece of evidence: the code and the exact words of the therapist turn that show it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: BehaviourCode = Field(description="The behaviour code this span is evidence for.")
    span: str = Field(description="The exact substring of the therapist turn.")


class Appraisal(TolerantOutput):
    """The coding of one therapist turn."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    phase: str | None = Field(
        default=None, description="Protocol phase id the turn belongs to, if the coder can say."
    )
    codes: list[BehaviourCode] = Field(
        default_factory=list, description="Behaviour codes of the turn, each once, stable order."
    )
    evidence: list[Evidence] = Field(
        default_factory=list, description="Spans of the turn that show the codes."
    )

    @field_validator("phase", mode="before")
    @classmethod
    def _blank_phase(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "null", "none", "unknown"):
            return None
        return value

    @field_validator("codes", mode="before")
    @classmethod
    def _known_codes(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            return value
        out: list[BehaviourCode] = []
        for item in value:
            code = normalise_code(item)
            if code is not None and code not in out:
                out.append(code)
        return out

    @field_validator("evidence", mode="before")
    @classmethod
    def _known_evidence(cls, value: Any) -> Any:
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            return value
        out: list[Any] = []
        for item in value:
            if isinstance(item, Evidence):
                out.append(item)
                continue
            if not isinstance(item, dict) or not isinstance(item.get("span"), str):
                continue
            code = normalise_code(item.get("code"))
            if code is not None and item["span"].strip():
                out.append({"code": code, "span": item["span"]})
        return out

    def grounded(self, text: str) -> Appraisal:
        """A copy keeping only evidence whose span occurs in ``text`` (spans made exact)."""
        if all(ev.span and ev.span in text for ev in self.evidence):
            return self  # the common case, every span exact already: no copy (the model is frozen)
        kept: list[Evidence] = []
        for ev in self.evidence:
            span = locate_span(ev.span, text)
            if span is not None:
                kept.append(Evidence(code=ev.code, span=span))
        return self.model_copy(update={"evidence": kept})


def locate_span(span: str, text: str) -> str | None:
    """``span`` as it occurs in ``text``: exact, else ignoring case and runs of whitespace."""
    if span and span in text:
        return span
    words = span.split()
    if not words:
        return None
    pattern = r"\s+".join(re.escape(w) for w in words)
    match = re.search(pattern, text, flags=re.IGNORECASE)
    return match.group(0) if match else None


# --------------------------------------------------------------------------- lexicon

_GROUPS = {"exposure", "cbt", "task"}


def _kind_in(kind: PhaseKind, names: Iterable[str]) -> bool:
    for name in names:
        if name == kind.value:
            return True
        if name == "exposure" and kind.is_exposure:
            return True
        if name == "cbt" and kind.is_cbt:
            return True
        if name == "task" and (kind.is_exposure or kind.is_cbt):
            return True
    return False


def _check_scopes(value: list[str]) -> list[str]:
    allowed = _GROUPS | {k.value for k in PhaseKind}
    bad = [v for v in value if v not in allowed]
    if bad:
        raise ValueError(
            f"unknown phase kind or group {', '.join(bad)} (allowed: {', '.join(sorted(allowed))})"
        )
    return value


class _RuleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: str = Field(min_length=1)
    only_in: list[str] = Field(default_factory=list)
    not_in: list[str] = Field(default_factory=list)

    @field_validator("only_in", "not_in")
    @classmethod
    def _known_scopes(cls, value: list[str]) -> list[str]:
        return _check_scopes(value)


class _ShortReplySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: BehaviourCode
    max_words: int = Field(ge=0, le=50)
    only_in: list[str] = Field(default_factory=list)

    @field_validator("only_in")
    @classmethod
    def _known_scopes(cls, value: list[str]) -> list[str]:
        return _check_scopes(value)


class _LexiconSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=1)
    codes: dict[BehaviourCode, list[str | _RuleSpec] | None]
    short_reply: _ShortReplySpec | None = None
    patient_cues: dict[str, list[str]] = Field(default_factory=dict)


@dataclass(frozen=True)
class LexiconRule:
    """One compiled pattern with its phase scope."""

    code: BehaviourCode
    regex: re.Pattern[str]
    only_in: tuple[str, ...] = ()
    not_in: tuple[str, ...] = ()

    def applies(self, kind: PhaseKind | None) -> bool:
        """Whether the rule may fire in a phase of ``kind`` (None: phase unknown)."""
        if self.only_in and (kind is None or not _kind_in(kind, self.only_in)):
            return False
        return not (self.not_in and kind is not None and _kind_in(kind, self.not_in))


@dataclass(frozen=True)
class _CodeMatcher:
    """One code's rules as one alternation: a single search finds the earliest match of any
    rule (ties go to the rule listed first), as searching rule by rule would, in less than half
    the time. An empty match, or patterns that cannot be joined, fall back to rule by rule."""

    code: BehaviourCode
    rules: tuple[LexiconRule, ...]
    joined: re.Pattern[str] | None

    @property
    def patterns(self) -> tuple[re.Pattern[str], ...]:
        """What :meth:`earliest` searches with."""
        return (self.joined,) if self.joined is not None else tuple(r.regex for r in self.rules)

    @classmethod
    def of(cls, code: BehaviourCode, rules: tuple[LexiconRule, ...]) -> _CodeMatcher:
        try:
            joined = re.compile("|".join(f"(?:{r.regex.pattern})" for r in rules), re.IGNORECASE)
        except re.error:  # e.g. the same group name in two patterns
            joined = None
        return cls(code, rules, joined)

    def earliest(self, haystack: str) -> tuple[int, int] | None:
        """Start and end of the earliest non-empty first match among the rules, if any."""
        if self.joined is not None:
            match = self.joined.search(haystack)
            if match is None:
                return None
            if match.end() > match.start():
                return match.start(), match.end()
        best: tuple[int, int] | None = None
        for rule in self.rules:
            match = rule.regex.search(haystack)
            if match is None or match.end() == match.start():
                continue
            if best is None or match.start() < best[0]:
                best = (match.start(), match.end())
        return best


@dataclass(frozen=True)
class Lexicon:
    """The lexical appraiser's compiled data (see ``agents/prompts/lexicon.yaml``)."""

    rules: tuple[LexiconRule, ...]
    short_reply_code: BehaviourCode | None
    short_reply_max_words: int
    short_reply_only_in: tuple[str, ...]
    patient_cues: dict[str, tuple[re.Pattern[str], ...]]
    _matchers: dict[PhaseKind | None, tuple[_CodeMatcher, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _prefilters: dict[PhaseKind | None, Prefilter] = field(
        default_factory=dict, compare=False, repr=False
    )

    def matchers(self, kind: PhaseKind | None) -> tuple[_CodeMatcher, ...]:
        """Per code, the rules that apply in a phase of ``kind`` (None: unknown), built once."""
        if kind not in self._matchers:
            by_code: dict[BehaviourCode, list[LexiconRule]] = {}
            for rule in self.rules:
                if rule.applies(kind):
                    by_code.setdefault(rule.code, []).append(rule)
            self._matchers[kind] = tuple(
                _CodeMatcher.of(code, tuple(rules)) for code, rules in by_code.items()
            )
        return self._matchers[kind]

    def candidates(self, kind: PhaseKind | None, haystack: str) -> list[_CodeMatcher]:
        """The matchers of :meth:`matchers` that may match ``haystack``: the others cannot
        (:class:`~therasim.agents.cuematch.Prefilter`). One RE2 pass instead of a search per
        code, a tenth of the lexicon's time on a reply."""
        matchers = self.matchers(kind)
        prefilter = self._prefilters.get(kind)
        if prefilter is None:
            from therasim.agents.cuematch import Prefilter  # RE2, loaded when first needed

            prefilter = self._prefilters[kind] = Prefilter([m.patterns for m in matchers])
        return [matchers[i] for i in prefilter.candidates(haystack)]

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "<lexicon>") -> Lexicon:
        """Parse and compile a lexicon; ``ConfigError`` naming the file and field on any fault."""
        from therasim.loading import load_yaml  # duplicate keys refused

        try:
            data = load_yaml(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML: {exc}", file=source) from None
        try:
            spec = _LexiconSpec.model_validate(data)
        except ValidationError as exc:
            # An entry is a string or a rule mapping: report the branch that was meant, not both.
            errors = exc.errors()
            first = next((e for e in errors if "str" not in e["loc"]), errors[0])
            where = ".".join(str(p) for p in first["loc"] if p not in ("str", "_RuleSpec"))
            raise ConfigError(first["msg"], file=source, field=where) from None
        rules: list[LexiconRule] = []
        for code, entries in spec.codes.items():
            for i, entry in enumerate(entries or []):
                rule = entry if isinstance(entry, _RuleSpec) else _RuleSpec(pattern=entry)
                regex = _compile(rule.pattern, source, f"codes.{code.value}.{i}")
                rules.append(LexiconRule(code, regex, tuple(rule.only_in), tuple(rule.not_in)))
        cues = {
            name: tuple(
                _compile(p, source, f"patient_cues.{name}.{i}") for i, p in enumerate(patterns)
            )
            for name, patterns in spec.patient_cues.items()
        }
        short = spec.short_reply
        return cls(
            rules=tuple(rules),
            short_reply_code=short.code if short else None,
            short_reply_max_words=short.max_words if short else 0,
            short_reply_only_in=tuple(short.only_in) if short else (),
            patient_cues=cues,
        )


def _compile(pattern: str, source: str, field: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(
            f"invalid regular expression {pattern!r}: {exc}", file=source, field=field
        ) from None


@functools.lru_cache(maxsize=1)
def load_lexicon() -> Lexicon:
    """The bundled lexicon (``agents/prompts/lexicon.yaml``), compiled once."""
    return Lexicon.from_yaml(read_prompt(LEXICON_FILE), source=f"agents/prompts/{LEXICON_FILE}")


def _normalise_quotes(text: str) -> str:
    # One character for one, so match offsets stay valid in the original text.
    return text.replace("\u2019", "'").replace("\u2018", "'")


def lexical_appraisal(
    text: str,
    ctx: TurnContext | None = None,
    *,
    lexicon: Lexicon | None = None,
    phase_kind: PhaseKind | None = None,
) -> Appraisal:
    """Code a therapist turn from the lexicon's phrases; pure and deterministic.

    Each code's evidence is its earliest match, an exact substring of ``text``. Codes come in the
    vocabulary's order (``BehaviourCode``), so paraphrases that reorder sentences code alike.
    ``ctx`` supplies the phase for the lexicon's phase-scoped rules and for ``Appraisal.phase``;
    without it, phase-only rules stay silent unless ``phase_kind`` names the phase's kind.
    """
    kind = ctx.phase_kind if ctx is not None else phase_kind
    evidence = lexical_evidence(text, kind, lexicon)
    return Appraisal(
        phase=ctx.phase if ctx is not None else None,
        codes=list(evidence),
        evidence=[Evidence(code=c, span=span) for c, span in evidence.items() if span],
    )


def lexical_evidence(
    text: str, kind: PhaseKind | None, lexicon: Lexicon | None = None
) -> dict[BehaviourCode, str]:
    """:func:`lexical_appraisal`'s codes (in the vocabulary's order) and their evidence spans
    ("" for an empty reply's code), without building the pydantic records: the statistical
    coder reads the lexicon on every turn."""
    lex = lexicon or load_lexicon()
    haystack = _normalise_quotes(text)
    evidence: dict[BehaviourCode, str] = {}
    for matcher in lex.candidates(kind, haystack):
        span = matcher.earliest(haystack)
        if span is not None:
            evidence[matcher.code] = text[span[0] : span[1]]
    code = lex.short_reply_code
    if (
        code is not None
        and code not in evidence
        and kind is not None
        and (not lex.short_reply_only_in or _kind_in(kind, lex.short_reply_only_in))
        and len(text.split()) <= lex.short_reply_max_words
    ):
        # An empty reply has no span to quote; the code stands without evidence.
        evidence[code] = text.strip()
    if len(evidence) < 2:
        return evidence
    return {c: evidence[c] for c in _CODE_ORDER if c in evidence}


_CODE_ORDER = tuple(BehaviourCode)


def patient_cue(text: str, cue: str = "self_harm", *, lexicon: Lexicon | None = None) -> str | None:
    """The first words of a PATIENT line that match the lexicon's ``patient_cues[cue]``, else None."""
    lex = lexicon or load_lexicon()
    haystack = _normalise_quotes(text)
    for regex in lex.patient_cues.get(cue, ()):
        match = regex.search(haystack)
        if match:
            return text[match.start() : match.end()]
    return None


# --------------------------------------------------------------------------- scripted backend


def _data_block(content: str) -> dict[str, Any] | None:
    """The JSON object between the last ``<data>``/``</data>`` lines of a message, if any."""
    lines = content.split("\n")
    for i in range(len(lines) - 1, 0, -1):
        if lines[i].strip() == DATA_CLOSE and lines[i - 2 : i - 1] == [DATA_OPEN]:
            try:
                data = json.loads(lines[i - 1])
            except json.JSONDecodeError:
                return None
            return data if isinstance(data, dict) else None
    return None


def therapist_text_of(request: CompletionRequest) -> str:
    """The therapist turn an appraisal request is about.

    The request built by :func:`appraise` carries it as JSON inside a ``<data>`` block (the
    gateway may append a schema instruction after that message, so the last user message that
    holds a block wins); a plain request (``therasim ask``) is the last user message itself.
    """
    return appraisal_texts(request)[0]


def patient_text_of(request: CompletionRequest) -> str:
    """The patient line an appraisal request carries as context ("" when there is none)."""
    return appraisal_texts(request)[1]


def appraisal_texts(request: CompletionRequest) -> tuple[str, str]:
    """:func:`therapist_text_of` and :func:`patient_text_of` in one reading of the request."""
    users = [m.content for m in request.messages if m.role == "user"]
    therapist: str | None = None
    patient: str | None = None
    for content in reversed(users):
        data = _data_block(content)
        if data is None:
            continue
        if patient is None:
            value = data.get("previous_patient_turn")
            patient = value if isinstance(value, str) else ""
        if isinstance(data.get("therapist_turn"), str):
            therapist = str(data["therapist_turn"])
            break
    if therapist is None:
        therapist = users[-1] if users else ""
    return therapist, patient or ""


def scripted_lexical(request: CompletionRequest) -> str:
    """``scripted:lexical``: the lexical appraisal of the request's therapist text, as JSON."""
    return lexical_appraisal(therapist_text_of(request), request.context).model_dump_json()


async def appraise(
    gateway: Gateway | BoundGateway,
    ctx: TurnContext,
    therapist_text: str,
    *,
    previous_patient: str | None,
) -> tuple[Appraisal, CompletionResponse]:
    """Code ``therapist_text`` with the ``appraiser`` role; evidence is kept only when grounded.

    With ``scripted:lexical`` this is the same call: the scripted backend answers with the
    lexical appraisal as JSON. Raises the gateway's ``ModelError`` family on failure
    (``StructuredOutputError`` when no valid JSON came back).
    """
    request = CompletionRequest(
        role="appraiser",
        messages=tuple(appraisal_messages(ctx, therapist_text, previous_patient=previous_patient)),
        context=ctx,
        seed=ctx.seed + ctx.turn,
        temperature=0.0,
        max_tokens=600,
    )
    appraisal, response = await gateway.structured(request, Appraisal)
    return appraisal.grounded(therapist_text), response
