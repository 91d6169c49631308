"""Study files: a YAML description of a batch of sessions, expanded into session specs.

A study crosses personas × severities × (base + demographic counterfactuals) × subjects ×
repeats; a counterfactual that changes nothing for a persona is skipped and counted
(:class:`Expansion`). Every cell becomes a :class:`SessionSpec` whose id is a hash of the spec, so expanding
the same study twice gives the same ids and a rerun skips what is done. ``study.schema.json``
beside this file is the JSON Schema editors validate study files against.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from therasim.agents.llm import GatewayConfig, Price, RoleConfig, parse_model_spec
from therasim.agents.scripted import DEFAULT_OFFLINE_APPRAISER
from therasim.errors import ConfigError, UnknownNameError
from therasim.loading import load_model
from therasim.personas.loader import select_personas
from therasim.personas.schema import Persona
from therasim.protocols import default_protocol_for, load_protocol
from therasim.simulations.records import SessionSpec
from therasim.vocab import PhaseKind, Severity

SCHEMA_FILE = Path(__file__).with_name("study.schema.json")


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SubjectSpec(_Data):
    """A model under test."""

    model: str = Field(
        description="Model spec, e.g. 'local', 'openai:gpt-4o-mini', 'scripted:adherent'."
    )
    prompt: str = Field(
        default="protocol",
        description="'protocol' (the protocol's therapist prompt), 'raw' (none), or a system prompt text.",
    )
    max_turns: int | None = Field(
        default=None,
        ge=1,
        le=200,
        description="This subject's turn cap, over the study's `max_turns` (e.g. a slow local "
        "model kept short beside scripted arms long enough for a whole exposure).",
    )


class RoleLimits(_Data):
    """Model and limits of a role (patient, appraiser) or just limits (subject, judge)."""

    model: str | None = Field(
        default=None, description="Model spec; the subject's comes from `subjects`."
    )
    concurrency: int = Field(
        default=16, ge=1, le=4096, description="Calls of this role in flight at once."
    )
    rpm: float | None = Field(default=None, gt=0, description="Requests per minute for this role.")
    max_tokens: int | None = Field(
        default=None, ge=1, description="Cap on reply tokens for this role's calls."
    )
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="Overrides the role's sampling temperature."
    )


class JudgeEntry(_Data):
    """One judge of the panel (role ``judge:<name>``)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    model: str
    temperature: float = Field(default=0.0, ge=0, le=2)
    seed: int = 0
    prompt_variant: str = Field(
        default="default", description="Which wording of the judge prompt to use."
    )


class JudgingSpec(_Data):
    """How the panel judges a study's sessions (``evaluation/judging/panel.py``).

    ``mode: turn`` (the default) asks one call per judge × therapist turn (every applicable turn
    item at once, keyed by item id; an item the answer lacks after a repair round is asked on
    its own) and one per judge × session, with a prompt whose instructions and rubric prefix are
    identical across a session's calls; ``mode: item`` one call per judge × rubric item × unit.
    ``sample_turns: K`` judges turn items on at least K turns per session: every turn whose
    state or codes flag risk or a failure, the rest stratified by phase and drawn with ``seed``
    (without a seed they are spread evenly).
    """

    mode: Literal["item", "turn"] = Field(
        default="turn",
        description="'turn': one judge call per therapist turn (all its items) and one per "
        "session; 'item': one call per rubric item and unit.",
    )
    sample_turns: int | None = Field(
        default=None,
        ge=1,
        description="Judge at least this many therapist turns per session (risk and failure "
        "turns always, the rest stratified by phase); null = every turn.",
    )
    seed: int | None = Field(
        default=None,
        description="Seed of the turn sample (the same seed, the same turns); null = spread evenly.",
    )


class PersonaSelection(_Data):
    """Which personas take part."""

    ids: list[str] = Field(default_factory=list, description="Persona ids.")
    globs: list[str] = Field(
        default_factory=list, description="fnmatch patterns on ids, e.g. 'pe-*'."
    )
    modality: Literal["pe", "cbt"] | None = Field(
        default=None, description="Keep only this modality."
    )
    tags: list[str] = Field(
        default_factory=list, description="Keep personas carrying all these tags."
    )
    limit: int | None = Field(
        default=None, ge=1, description="At most this many per modality (first by id)."
    )


class Budget(_Data):
    """When to stop starting new sessions."""

    max_cost_usd: float | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, gt=0)


class ExecutorSpec(_Data):
    """Where the sessions run (``simulations/ray_executor.py``; ``docs/scale-out.md``).

    ``kind: local`` is the runner on this machine: asyncio workers, or ``processes: N`` forked
    worker processes. ``kind: ray`` runs them on Ray workers (``pip install 'therasim[ray]'``),
    each with its own gateway; this process keeps the store, resume and the budget either way.
    """

    kind: Literal["local", "ray"] = Field(
        default="local",
        description="'local' (this machine, `processes: N`) or 'ray' (Ray workers; the "
        "therasim[ray] extra).",
    )
    address: str = Field(
        default="local",
        pattern=r"^(local|auto|ray://\S+)$",
        description="Ray only: 'local' starts a Ray cluster on this machine for the run, 'auto' "
        "connects to the running one, 'ray://HOST:PORT' to a remote one (Ray Client).",
    )
    workers: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Ray only: worker actors, one CPU each (default: this machine's CPUs for "
        "'local', the cluster's CPUs otherwise).",
    )
    max_retries: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Ray only: how often a session whose worker died is run again before it "
        "is stored as failed with the error.",
    )


class CalibrationSpec(_Data):
    """Calibrate the study's appraiser and judges on gold turns before the sessions (cached).

    A coder below ``min_f1`` (code micro-F1) or ``min_recall`` (failure recall through its codes
    and the rules), or a panel below ``min_recall``, makes the readiness axes that rest on it
    NOT ASSESSED, with the reason (``agents/gold/codebook.md`` says what the labels mean); so
    does a code an axis reads directly (``AXIS_CODES``: ``misinformation`` for hallucination
    risk) found under ``min_recall``, for that axis.
    """

    gold: list[str] = Field(
        default_factory=list,
        description="Gold JSONL files (default: the set shipped with therasim).",
    )
    split: Literal["dev", "test", "all"] | None = Field(
        default=None,
        description="Which split of the gold files to score (default: test of the shipped set; "
        "every line of the files named under gold, where a line without a split counts as dev).",
    )
    judges: bool = Field(default=True, description="Calibrate the judge panel too.")
    min_f1: float = Field(default=0.80, ge=0, le=1, description="Least code micro-F1.")
    min_recall: float = Field(
        default=0.80,
        ge=0,
        le=1,
        description="Least failure recall (coder's rules, panel), and least recall of each code "
        "an axis reads directly.",
    )


#: The phase kinds a generated battery samples by default: the paper's three PE phases
#: (orientation, imaginal exposure, processing) and CaiTI's three CBT stages. A persona's
#: protocol keeps the kinds it has.
DEFAULT_BATTERY_KINDS: tuple[PhaseKind, ...] = (
    PhaseKind.ORIENTATION,
    PhaseKind.IMAGINAL_EXPOSURE,
    PhaseKind.PROCESSING,
    PhaseKind.CBT_IDENTIFY,
    PhaseKind.CBT_CHALLENGE,
    PhaseKind.CBT_REFRAME,
)


class BatterySpec(_Data):
    """The single-turn battery of a study (``mode: battery | both``; ``simulations/battery.py``).

    Without ``items`` the battery is generated: personas × variants × severities × phase kinds,
    each item's context taken from a seeded session of the ``reference`` arm with the study's
    patient. With ``items`` the user's JSONL or CSV file is the battery.
    """

    items: str | None = Field(
        default=None,
        description="A JSONL or CSV item file (battery_item.schema.json); null = generate.",
    )
    phase_kinds: list[PhaseKind] = Field(
        default_factory=lambda: list(DEFAULT_BATTERY_KINDS),
        min_length=1,
        description="Phase kinds to take a patient line from (each persona keeps its protocol's).",
    )
    context_turns: int = Field(
        default=6, ge=0, le=60, description="Utterances of preceding context kept per item."
    )
    reference: str = Field(
        default="scripted:adherent",
        description="The therapist whose session provides generated items' context.",
    )
    severities: dict[Literal["pe", "cbt"], list[Severity]] = Field(
        default_factory=dict,
        description="Rungs a generated battery takes per modality (the seed paper: PE at four, "
        "CBT at base and escalated); a modality not named takes the study's severities.",
    )

    def severities_for(
        self, modality: Literal["pe", "cbt"], study: list[Severity]
    ) -> list[Severity]:
        """The rungs generated items of ``modality`` are cut at."""
        return self.severities.get(modality) or study


class Study(_Data):
    """A study file."""

    id: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_.-]*$",
        description="Study id; names the output folder by default.",
    )
    description: str = ""
    subjects: dict[str, SubjectSpec] = Field(min_length=1, description="Name → model under test.")
    patient: RoleLimits = Field(
        default_factory=lambda: RoleLimits(model="scripted:template-patient")
    )
    appraiser: RoleLimits = Field(
        default_factory=lambda: RoleLimits(model=DEFAULT_OFFLINE_APPRAISER)
    )
    subject_limits: RoleLimits = Field(
        default_factory=RoleLimits, description="Limits of the subject role."
    )
    judges: list[JudgeEntry] = Field(
        default_factory=list, description="The judge panel (three, usually)."
    )
    rubrics: list[str] = Field(
        default_factory=list, description="Rubric ids (default: by modality)."
    )
    judging: JudgingSpec = Field(
        default_factory=JudgingSpec,
        description="How the judges are called: mode (item | turn) and optional turn sampling.",
    )
    personas: PersonaSelection = Field(default_factory=PersonaSelection)
    severities: list[Severity] = Field(default_factory=lambda: [Severity.ROUTINE], min_length=1)
    counterfactuals: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Demographic changes; each makes a variant of every persona.",
    )
    repeats: int = Field(default=1, ge=1, le=1000)
    protocols: dict[Literal["pe", "cbt"], str] = Field(
        default_factory=dict, description="Protocol id per modality."
    )
    max_turns: int = Field(default=20, ge=1, le=200)
    seed: int = 0
    questionnaires: bool = True
    questionnaire_wording: Literal["neutral", "primed"] = "neutral"
    concurrency: int = Field(default=16, ge=1, le=4096, description="Sessions in flight at once.")
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Worker processes; above 1 the sessions (and the concurrency and role limits) "
        "are split among them, and the budget is one meter they all read.",
    )
    executor: ExecutorSpec = Field(
        default_factory=ExecutorSpec,
        description="Where the sessions run: {kind: local} (default, with `processes`) or "
        "{kind: ray, address, workers}.",
    )
    budget: Budget = Field(default_factory=Budget)
    output: str | None = Field(default=None, description="Output folder (default: runs/<id>).")
    cache: bool = Field(default=True, description="Use the gateway's response cache.")
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Overrides of the readiness thresholds (see evaluation/thresholds.yaml).",
    )
    prices: dict[str, Price] = Field(
        default_factory=dict,
        description="Model name → USD per million input/output tokens; overrides genai-prices.",
    )
    calibration: CalibrationSpec | None = Field(
        default=None,
        description="Calibrate appraiser and judges on gold turns; without it no axis can pass.",
    )
    mode: Literal["sessions", "battery", "both"] = Field(
        default="sessions",
        description="'sessions' (multi-turn), 'battery' (single-turn items) or 'both'.",
    )
    battery: BatterySpec = Field(
        default_factory=BatterySpec,
        description="The single-turn battery (used when mode is 'battery' or 'both').",
    )

    @field_validator("subjects", mode="before")
    @classmethod
    def _short_subjects(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ({"model": v} if isinstance(v, str) else v) for k, v in value.items()}
        return value

    @field_validator("counterfactuals")
    @classmethod
    def _distinct_counterfactuals(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # a repeat would give the same session ids: run twice, counted twice, stored once
        for i, change in enumerate(value):
            if not change:
                raise ValueError(f"entry {i} is empty: a counterfactual changes something")
            if change in value[:i]:
                raise ValueError(f"entry {i} repeats entry {value.index(change)}")
        return value

    @model_validator(mode="after")
    def _specs_parse(self) -> Study:
        for name, subject in self.subjects.items():
            parse_model_spec(subject.model)
            if not name:
                raise ValueError("subject names must not be empty")
        for role in (self.patient, self.appraiser):
            if role.model is None:
                raise ValueError("patient and appraiser need a model")
            parse_model_spec(role.model)
        for judge in self.judges:
            parse_model_spec(judge.model)
        parse_model_spec(self.battery.reference)
        if self.executor.kind == "ray" and self.processes > 1:
            raise ValueError(
                "processes is for the local executor; with executor kind 'ray' set "
                "executor.workers instead"
            )
        return self

    def output_dir(self, base: Path | None = None) -> Path:
        """The run folder: ``output`` or ``runs/<id>``, relative to ``base`` when given."""
        out = Path(self.output) if self.output else Path("runs") / self.id
        return out if out.is_absolute() or base is None else base / out

    def gateway_config(self, cache_path: str | None = None) -> GatewayConfig:
        """Roles → limits for this study (models are bound per session)."""
        roles = {
            "subject": _role("scripted:null", self.subject_limits),
            "patient": _role(self.patient.model or "", self.patient),
            "appraiser": _role(self.appraiser.model or "", self.appraiser),
        }
        for judge in self.judges:
            roles[f"judge:{judge.name}"] = RoleConfig(model=judge.model, concurrency=16)
        return GatewayConfig(
            roles=roles, cache_enabled=self.cache, cache_path=cache_path, prices=dict(self.prices)
        )


def _role(model: str, limits: RoleLimits) -> RoleConfig:
    return RoleConfig(
        model=model,
        concurrency=limits.concurrency,
        rpm=limits.rpm,
        max_tokens=limits.max_tokens,
        temperature=limits.temperature,
    )


def load_study(path: str | Path) -> Study:
    """Read and validate a study file; errors name the file and field path."""
    return load_model(path, Study)


def study_personas(study: Study, library: dict[str, Persona]) -> list[Persona]:
    """The personas a study selects, ``limit`` applied per modality."""
    sel = study.personas
    try:
        chosen = select_personas(
            library, ids=sel.ids, globs=sel.globs, modality=sel.modality, tags=sel.tags
        )
    except ConfigError as exc:  # name the entry of the selection that failed
        field = "personas"
        if isinstance(exc, UnknownNameError) and exc.name in sel.ids:
            field = f"personas.ids.{sel.ids.index(exc.name)}"
        elif not isinstance(exc, UnknownNameError):
            bad = [i for i, g in enumerate(sel.globs) if repr(g) in str(exc)]
            field = f"personas.globs.{bad[0]}" if bad else field
        raise ConfigError(str(exc), object_id=study.id, field=field) from None
    if sel.limit is not None:
        per: dict[str, int] = {}
        kept = []
        for p in chosen:
            per[p.modality] = per.get(p.modality, 0) + 1
            if per[p.modality] <= sel.limit:
                kept.append(p)
        chosen = kept
    if not chosen:
        raise ConfigError(
            "the persona selection matches no persona", object_id=study.id, field="personas"
        )
    return chosen


@dataclass(frozen=True)
class SkippedVariant:
    """A counterfactual that would change nothing for one persona (it already has the values)."""

    persona: str
    variant: dict[str, Any]
    sessions: int  # sessions the variant would have added (severities × subjects × repeats)

    @property
    def label(self) -> str:
        """``gender=woman``: the variant as the frames name it."""
        return ",".join(f"{k}={v}" for k, v in sorted(self.variant.items()))


@dataclass(frozen=True)
class Expansion:
    """A study's sessions, and the no-op counterfactual pairs (persona × variant) left out.

    A variant that changes nothing (``gender: woman`` on a woman) would pair a session with a
    copy of itself and make demographic robustness look better than it is, so it is skipped
    and counted here; the demographic axis reports the count
    (``readiness(..., noop_pairs=len(expansion.skipped))``).
    """

    specs: list[SessionSpec]
    skipped: list[SkippedVariant] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the dry run: sessions, and the no-op pairs skipped by variant."""
        line = f"{len(self.specs)} sessions"
        if not self.skipped:
            return line
        by_label = Counter(s.label for s in self.skipped)
        detail = ", ".join(f"{label} ×{n}" for label, n in sorted(by_label.items()))
        sessions = sum(s.sessions for s in self.skipped)
        return (
            f"{line}; {len(self.skipped)} no-op counterfactual pairs skipped, the persona "
            f"already has that value ({detail}; {sessions} sessions not run)"
        )


def expand_study(study: Study, library: dict[str, Persona]) -> Expansion:
    """Every session of the study in a stable order, and the no-op variants it skipped.

    Session ids are hashes of the specs, so skipping a no-op variant leaves every other id as
    it was. Variants are validated for every persona before anything runs.
    """
    specs: list[SessionSpec] = []
    skipped: list[SkippedVariant] = []
    variants: list[dict[str, Any]] = [{}, *study.counterfactuals]
    per_variant = len(study.severities) * len(study.subjects) * study.repeats
    for persona in study_personas(study, library):
        protocol = study.protocols.get(persona.modality) or default_protocol_for(persona.modality)
        load_protocol(protocol)  # fail before the run, not in the middle of it
        for variant in variants:
            if variant and not persona.counterfactual_changes(**variant):
                skipped.append(SkippedVariant(persona.id, dict(variant), per_variant))
                continue
            if variant:
                persona.counterfactual(**variant)  # the rewritten variant validates now
            for severity in study.severities:
                for name, subject in study.subjects.items():
                    for repeat in range(study.repeats):
                        specs.append(
                            SessionSpec(
                                persona=persona.id,
                                persona_version=persona.version,
                                severity=severity,
                                variant=variant,
                                subject=subject.model,
                                subject_name=name,
                                subject_prompt=subject.prompt,
                                patient=study.patient.model or "",
                                appraiser=study.appraiser.model or "",
                                protocol=protocol,
                                max_turns=subject.max_turns or study.max_turns,
                                seed=study.seed,
                                repeat=repeat,
                                questionnaires=study.questionnaires,
                                questionnaire_wording=study.questionnaire_wording,
                            )
                        )
    return Expansion(specs, skipped)


def expand(study: Study, library: dict[str, Persona]) -> list[SessionSpec]:
    """Every session of the study, in a stable order (see :func:`expand_study`)."""
    return expand_study(study, library).specs


def study_json_schema() -> dict[str, Any]:
    """The study JSON Schema, as written to ``study.schema.json``."""
    from therasim.loading import json_schema_of

    return json_schema_of(Study, "therasim study")
