"""The persona schema: a fictional patient as validated, frozen data.

A persona is written once, in YAML, by a clinician; severity levels and demographic
counterfactuals are derived from it (``at_severity``, ``counterfactual``), never copied.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from therasim.errors import ConfigError, UnknownNameError
from therasim.personas.dynamics import DynamicsParams, PhaseKind, RiskLevel, Severity

# A hand-written id is lower-case letters, digits, '_', '.', '-'. Derived counterfactual variants
# append '~attribute=value,...' so they still validate (see ``Persona.counterfactual``).
_ID = r"^[a-z0-9][a-z0-9_.-]*(~[a-z0-9_.,=-]+)?$"
_UNSAFE_IN_ID = re.compile(r"[^a-z0-9_.-]+")


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Demographics(_Data):
    """Who the patient is. Counterfactual variants change only these attributes."""

    age: int = Field(ge=18, le=100, description="Age in years.")
    gender: str = Field(
        min_length=1,
        description="Gender as the patient describes it, e.g. 'woman', 'man', 'non-binary'.",
    )
    ethnicity: str = Field(
        min_length=1, description="Ethnicity or cultural background, in the patient's own terms."
    )
    language: str = Field(
        default="English", min_length=1, description="Language the patient speaks in session."
    )
    code_mixing: str | None = Field(
        default=None,
        description="Second language mixed into speech, with how (e.g. 'Spanish words for family and feelings'); null for none.",
    )
    occupation: str = Field(min_length=1, description="Current or last occupation.")
    living_situation: str | None = Field(
        default=None, description="Who the patient lives with, where."
    )
    religion: str | None = Field(
        default=None, description="Faith or worldview, when it matters to the patient."
    )


class Emotion(_Data):
    """An emotion with its intensity, as rated on a thought record."""

    name: str = Field(min_length=1, description="The emotion, in one word (e.g. 'shame').")
    intensity: int = Field(ge=0, le=100, description="Intensity 0-100.")


class PEProfile(_Data):
    """Clinical profile of a Prolonged Exposure (PTSD) patient."""

    trauma_type: str = Field(
        min_length=1,
        description="Kind of index trauma, e.g. 'combat', 'sexual assault', 'motor-vehicle crash'.",
    )
    index_trauma: str = Field(
        min_length=10,
        description="The index trauma in two or three sentences, past tense, third person.",
    )
    narrative_details: list[str] = Field(
        min_length=3,
        description="Concrete sensory details the patient recalls during imaginal exposure (present tense, first person).",
    )
    hot_spots: list[str] = Field(
        min_length=1, description="The worst moments of the memory, one line each."
    )
    avoidance_behaviours: list[str] = Field(
        min_length=1, description="What the patient avoids in daily life."
    )
    safety_behaviours: list[str] = Field(
        min_length=1, description="What the patient does to feel safe (and keeps the fear alive)."
    )
    stuck_points: list[str] = Field(
        default_factory=list,
        description="Distorted beliefs about the trauma (e.g. 'It was my fault').",
    )
    baseline_suds: int = Field(
        ge=0,
        le=100,
        description="SUDS at the start of a session at the 'routine' level, before severity shifts.",
    )
    years_since: float = Field(ge=0, le=80, description="Years since the index trauma.")


class CBTProfile(_Data):
    """Clinical profile of a CBT cognitive-restructuring patient."""

    problem_area: str = Field(
        min_length=1,
        description="Everyday problem area, e.g. 'sleep', 'work stress', 'medication adherence'.",
    )
    situation: str = Field(
        min_length=10, description="The situation that triggered the thought, one or two sentences."
    )
    automatic_thought: str = Field(
        min_length=5,
        description="The hot automatic thought, first person, as the patient would say it.",
    )
    distortions: list[str] = Field(
        min_length=1,
        description="Cognitive distortions in the thought, e.g. 'catastrophising', 'mind reading', 'all-or-nothing'.",
    )
    core_belief: str = Field(
        min_length=3, description="The core belief under the thought, e.g. 'I am a failure'."
    )
    emotions: list[Emotion] = Field(
        min_length=1, description="Emotions the situation brings up, with intensity."
    )
    belief: int = Field(
        ge=0,
        le=100,
        description="How much the patient believes the automatic thought at the start, 0-100 %.",
    )
    evidence_for: list[str] = Field(
        min_length=1, description="What the patient offers as evidence for the thought."
    )
    evidence_against: list[str] = Field(
        min_length=1, description="Evidence against it that the patient can reach when asked well."
    )


class Communication(_Data):
    """How the patient talks."""

    style: str = Field(
        min_length=3,
        description="Manner of speech in a phrase, e.g. 'guarded, short sentences, dark humour'.",
    )
    verbosity: Literal["terse", "moderate", "verbose"] = Field(
        default="moderate", description="Typical length of a turn."
    )
    phrases: list[str] = Field(
        default_factory=list, description="Characteristic phrases the patient uses."
    )


class SeverityLevel(_Data):
    """What one rung of the severity ladder changes."""

    suds_shift: int = Field(
        ge=-50, le=60, description="Added to the baseline SUDS at session start."
    )
    initial_risk: RiskLevel = Field(
        default=RiskLevel.NONE, description="Self-harm risk at session start."
    )
    self_harm_content: str | None = Field(
        default=None,
        description="What the patient says about self-harm at this level, first person; null for nothing.",
    )
    surfaces_at_turn: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Therapist turn after which the self-harm content surfaces (0 = in the opening); null = never.",
    )
    risk_when_surfaced: RiskLevel = Field(
        default=RiskLevel.NONE, description="Risk level once the content has surfaced."
    )
    escalation: float = Field(
        default=1.0,
        ge=0.2,
        le=4.0,
        description="Multiplier on how fast distress rises (1 = the persona's normal pace).",
    )

    @model_validator(mode="after")
    def _content_needs_turn(self) -> SeverityLevel:
        if (self.self_harm_content is None) != (self.surfaces_at_turn is None):
            raise ValueError("self_harm_content and surfaces_at_turn must be given together")
        return self


class Persona(_Data):
    """A fictional patient. Every persona in the library is synthetic and says so (``fictional: true``)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        # Mirrors the modality check below so editors flag a missing profile section too.
        json_schema_extra={
            "allOf": [
                {"if": {"properties": {"modality": {"const": "pe"}}}, "then": {"required": ["pe"]}},
                {
                    "if": {"properties": {"modality": {"const": "cbt"}}},
                    "then": {"required": ["cbt"]},
                },
            ]
        },
    )

    id: str = Field(
        pattern=_ID,
        description="Stable identifier, lower-case letters, digits, '_', '.', '-', e.g. 'pe-combat-01'. "
        "A '~' suffix is reserved for derived counterfactual variants.",
    )
    version: int = Field(
        ge=1, description="Bumped on every clinical change, so stored sessions name what they used."
    )
    fictional: Literal[True] = Field(
        description="Must be true: personas are synthetic patients, never real people."
    )
    modality: Literal["pe", "cbt"] = Field(
        description="Therapy the persona is written for: Prolonged Exposure or CBT."
    )
    summary: str = Field(
        min_length=10, description="One line a clinician can scan: who, what, why they came."
    )
    tags: list[str] = Field(
        default_factory=list, description="Free labels for selecting personas in studies."
    )
    demographics: Demographics = Field(description="Who the patient is.")
    pe: PEProfile | None = Field(
        default=None,
        validate_default=True,
        description="PE clinical profile; required when modality is 'pe'.",
    )
    cbt: CBTProfile | None = Field(
        default=None,
        validate_default=True,
        description="CBT clinical profile; required when modality is 'cbt'.",
    )
    communication: Communication = Field(description="How the patient talks.")
    severity: dict[Severity, SeverityLevel] = Field(
        description="The severity ladder: one entry for each of routine, distress, crisis_adjacent, imminent.",
        json_schema_extra={"required": [s.value for s in Severity]},
    )
    dynamics: DynamicsParams = Field(
        default_factory=DynamicsParams, description="Overrides of the dynamics parameters."
    )
    false_belief: str | None = Field(
        default=None,
        description="A false clinical belief the patient voices (a hallucination probe: the therapist must not endorse it).",
    )
    utterances: dict[PhaseKind, list[str]] = Field(
        default_factory=dict, description="Optional lines for the template patient, per phase kind."
    )
    # Set only on derived variants; never written by hand.
    active_severity: Severity | None = Field(
        default=None, description="Derived: the severity level this variant is at."
    )
    parent: str | None = Field(
        default=None, description="Derived: id@version of the persona this variant came from."
    )
    changes: dict[str, Any] = Field(
        default_factory=dict,
        description="Derived: demographic attributes a counterfactual changed.",
    )

    # Field validators (not one model validator) so that errors carry the field path, e.g. 'pe'.
    @field_validator("pe", "cbt", mode="after")
    @classmethod
    def _profile_matches_modality(cls, value: Any, info: ValidationInfo) -> Any:
        modality = info.data.get("modality")
        if modality is None:  # modality itself is invalid and reported on its own
            return value
        if info.field_name == modality and value is None:
            raise ValueError(
                f"required because modality is {modality!r}: add a '{modality}:' section"
            )
        if info.field_name != modality and value is not None:
            raise ValueError(
                f"must be left out because modality is {modality!r} (this is the '{info.field_name}' section)"
            )
        return value

    @field_validator("severity", mode="after")
    @classmethod
    def _full_ladder(cls, value: dict[Severity, SeverityLevel]) -> dict[Severity, SeverityLevel]:
        missing = [s.value for s in Severity if s not in value]
        if missing:
            raise ValueError(
                f"the severity ladder is missing level(s) {', '.join(missing)}; every persona needs "
                f"{', '.join(s.value for s in Severity)}"
            )
        return value

    @model_validator(mode="after")
    def _derived_id_has_parent(self) -> Persona:
        if "~" in self.id and self.parent is None:
            raise ValueError(
                f"id {self.id!r}: '~' is reserved for derived variants (which have a parent)"
            )
        return self

    @property
    def ref(self) -> str:
        """``id@version``, the way sessions record which persona they used."""
        return f"{self.id}@{self.version}"

    @property
    def level(self) -> SeverityLevel:
        """The severity rung in force (``routine`` for a base persona)."""
        return self.severity[self.active_severity or Severity.ROUTINE]

    @property
    def baseline_suds(self) -> int:
        """Session-start SUDS at the active severity, clipped to 0-100.

        PE personas start from ``pe.baseline_suds``; CBT personas from their strongest emotion's
        intensity. The active level's ``suds_shift`` is added.
        """
        if self.pe is not None:
            base = self.pe.baseline_suds
        elif self.cbt is not None:
            base = max(e.intensity for e in self.cbt.emotions)
        else:  # unreachable for a validated persona
            base = 50
        return max(0, min(100, base + self.level.suds_shift))

    def at_severity(self, level: Severity | str) -> Persona:
        """This persona at one rung of the severity ladder; records its parent.

        Raises ``UnknownNameError`` (a ``ConfigError``) for a level that is not on the ladder.
        """
        try:
            severity = Severity(level)
        except ValueError:
            raise UnknownNameError(
                "severity level", str(level), [s.value for s in Severity]
            ) from None
        return self.model_copy(
            update={"active_severity": severity, "parent": self.parent or self.ref}
        )

    def counterfactual_changes(self, **attributes: Any) -> dict[str, Any]:
        """The validated attributes that would really change (empty: the variant is a no-op).

        Strings compare case- and space-insensitively, so ``gender="Woman"`` on a ``woman`` is a
        no-op; values are validated as in :meth:`counterfactual` (same errors).
        """
        demographics = self._changed_demographics(attributes)
        changed = {}
        for name in attributes:
            old, new = getattr(self.demographics, name), getattr(demographics, name)
            same = (
                old.strip().casefold() == new.strip().casefold()
                if isinstance(old, str) and isinstance(new, str)
                else old == new
            )
            if not same:
                changed[name] = new
        return changed

    def _changed_demographics(self, attributes: dict[str, Any]) -> Demographics:
        unknown = sorted(set(attributes) - set(Demographics.model_fields))
        if unknown:
            raise ConfigError(
                f"counterfactual may change only demographic attributes "
                f"({', '.join(Demographics.model_fields)}), not {', '.join(unknown)}",
                object_id=self.id,
                field="demographics",
            )
        try:
            return Demographics.model_validate({**self.demographics.model_dump(), **attributes})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ConfigError(
                f"counterfactual value rejected: {first['msg']} (got {first.get('input')!r})",
                object_id=self.id,
                field=f"demographics.{where}",
            ) from None

    def counterfactual(self, **attributes: Any) -> Persona:
        """The same patient with only the named demographic attributes changed.

        The variant's id gains a suffix naming the change (``pe-combat-01~age=70``), ``parent``
        points at the original and ``changes`` records the validated new values, so paired
        comparisons can find both. Values are validated like the YAML (``age="70"`` becomes 70).
        With no attributes the persona itself is returned. Raises ``ConfigError`` for an
        attribute that is not demographic or a value the schema rejects.

        The free text is rewritten to match (:func:`rewrite_narrative`), so a 70-year-old
        variant's summary does not still say "34-year-old":

        - **age**: in every text, the old age as a numeral in "34-year-old", "34 years old" and
          "aged 34" becomes the new age. Spelled-out ages ("thirty-four"), decades ("in his
          thirties") and age-laden words ("grandfather", "retired", tags like ``age-75-plus``)
          are left as written; so is another person who happens to share the patient's age.
        - **gender**: in the summary's opening phrase the old gender as written becomes the
          new one ("41-year-old Irish woman" → "Irish man"), else a gendered noun is swapped
          (mother ↔ father, widow ↔ widower, ...; neutral "parent" for non-binary) or
          "non-binary" becomes "female"/"male". Between she and he, the patient's pronouns in
          the third-person texts (:data:`THIRD_PERSON_FIELDS`) change (his → her; her → his or
          him by the next word). A text that names another person of the patient's old gender
          keeps its pronouns, since they could refer to either ("the boy ... found him"); a
          person the patient possesses ("her daughter") counts only when a subject or object
          pronoun follows. Known limits: a person named without a gendered noun ("a young
          labourer ... trying to grab him") has their pronoun changed too, and a text whose
          other people already use the new pronouns becomes ambiguous, not contradictory. To or
          from non-binary (they) pronouns are left as written: "they" needs verb agreement a
          word swap cannot give. First-person lines change only an unambiguous "I'm (just)
          a/an ... <noun>" ("I'm just an old woman"). Tags (selection labels of the base
          persona) are not rewritten.
        - **name**: personas have no name field, so there is nothing to rewrite.
        - other attributes (ethnicity, language, code-mixing, occupation, ...) change only the
          field itself: the narrative details that follow from them cannot be rewritten by rule.
        """
        if not attributes:
            return self
        demographics = self._changed_demographics(attributes)
        changes = {**self.changes, **{name: getattr(demographics, name) for name in attributes}}
        suffix = ",".join(
            f"{name}={_UNSAFE_IN_ID.sub('-', str(value).lower()).strip('-') or 'none'}"
            for name, value in sorted(changes.items())
        )
        data = {**self.model_dump(), "demographics": demographics.model_dump()}
        rewritten = rewrite_narrative(data, self.demographics, demographics)
        rewritten.update(
            id=f"{self.id.split('~')[0]}~{suffix}",
            parent=self.parent or self.ref,
            changes=changes,
        )
        return Persona.model_validate(rewritten)


# --------------------------------------------------------------------------- narrative rewriting

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
# After these words "her" is an object ("told her to"), otherwise a determiner ("her son").
_AFTER_OBJECT_HER = _words(
    "to in on at for with from into onto out up down off away over under against during behind "
    "beside near inside outside across toward towards upon among without via since until till "
    "and or but nor that as when whenever while whilst before after because if unless though "
    "although so yet a an the this these those again alone too about through by like than "
    "around everywhere anywhere what why how where wherever who whom whether then there here "
    "now just also not many every each instead later today tonight anyway enough"
)
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


def _swap_pronouns(text: str, old: str, new: str) -> str:
    table = _PRONOUN_SWAP[(old, new)]

    def one(m: re.Match[str]) -> str:
        word, after, then = m.group(1), (m.group(2) or "").casefold(), m.group(3) or ""
        low = word.casefold()
        if low == "his":  # he -> she: "his son" -> "her son", "was his" -> "hers"
            return _same_case(word, "her" if after else "hers")
        if low == "her":  # she -> he: "her son" -> "his son", "told her to" -> "him to"
            obj = not after or after in _AFTER_OBJECT_HER
            if after == "home":  # "walk her home from" vs "her home village"
                obj = not then or then.casefold() in _AFTER_OBJECT_HER
            return _same_case(word, "him" if obj else "his")
        return _same_case(word, table[low])

    words = sorted({*table, "his" if old == "he" else "her"}, key=len, reverse=True)
    follow = r"(?:(?=\s+(\w[\w'-]*)(?:\s+(\w[\w'-]*))?)|)"
    return re.sub(rf"\b({'|'.join(words)})\b{follow}", one, text, flags=re.IGNORECASE)


def _mentions_others(text: str, old: str) -> bool:
    """Whether ``text`` names another person of the patient's old gender who may be referred
    to by a pronoun: one the patient possesses ("her daughter") counts only when a subject or
    object pronoun of that gender follows ("... to check she is alive")."""
    words = [w.casefold() for w in re.findall(r"[\w'-]+", text)]
    for i, w in enumerate(words):
        if w not in _OTHERS[old]:
            continue
        if not _POSSESSIVE & set(words[max(0, i - 3) : i]):
            return True
        for j in range(i + 1, len(words)):
            if words[j] in _OWN[old] - {"his", "her"}:
                return True
            nxt = words[j + 1] if j + 1 < len(words) else ""
            if words[j] == "her" and (not nxt or nxt in _AFTER_OBJECT_HER):
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
    return text[:rest_from] + _swap_pronouns(text[rest_from:], p_old, p_new)


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
