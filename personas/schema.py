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
from therasim.personas.dynamics import DynamicsParams
from therasim.vocab import PhaseKind, RiskLevel, Severity

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
          him by the words around it: "him" before punctuation, a preposition, a pronoun or an
          -ing verb with an object, and in "pulling her back", else "his"). A text that names
          another person of the patient's old gender ("her mother's grip" included) keeps its
          pronouns, since they could refer to either ("the boy ... found him"); a person the
          patient possesses ("her daughter") counts only when a subject or object pronoun
          follows. Known limits: a person named without a gendered noun ("a young labourer ...
          trying to grab him") has their pronoun changed too, and a text whose other people
          already use the new pronouns becomes ambiguous, not contradictory. Other people keep
          their gender, so a partnered patient's variant changes the couple as well ("her
          husband" → "his husband"): a gender comparison on such a persona also carries a
          change of sexual orientation. To or from non-binary (they) pronouns are left as
          written: "they" needs verb agreement a word swap cannot give. First-person lines
          change only an unambiguous "I'm (just) a/an ... <noun>" ("I'm just an old woman").
          Tags (selection labels of the base persona) are not rewritten.
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
        from therasim.personas.narrative import rewrite_narrative  # it imports this module

        rewritten = rewrite_narrative(data, self.demographics, demographics)
        rewritten.update(
            id=f"{self.id.split('~')[0]}~{suffix}",
            parent=self.parent or self.ref,
            changes=changes,
        )
        return Persona.model_validate(rewritten)
