"""Persona loading: error messages, variants, selection, the JSON Schema file and the shipped library."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from therasim.errors import ConfigError, UnknownNameError
from therasim.personas import (
    Persona,
    Severity,
    load_library,
    load_persona,
    select_personas,
)
from therasim.personas.loader import (
    SCHEMA_COMMENT,
    export_json_schema,
    library_files,
    parse_persona,
)

README = Path(__file__).resolve().parents[2] / "personas" / "README.md"

# --------------------------------------------------------------------------------------------
# Fixtures: minimal valid personas, written here so these tests do not depend on the library.

PE_DOC: dict[str, Any] = {
    "id": "pe-fixture-01",
    "version": 1,
    "fictional": True,
    "modality": "pe",
    "summary": "A fictional former paramedic with intrusive memories of a highway crash.",
    "tags": ["fixture", "transport"],
    "demographics": {
        "age": 41,
        "gender": "woman",
        "ethnicity": "Irish",
        "occupation": "former paramedic",
    },
    "pe": {
        "trauma_type": "motor-vehicle crash",
        "index_trauma": "Three years ago a lorry crossed the central line and hit the ambulance she was driving.",
        "narrative_details": [
            "I hear the horn before I see the lights",
            "the windscreen goes white",
            "I smell petrol and hot metal",
        ],
        "hot_spots": ["The moment the steering wheel stops answering."],
        "avoidance_behaviours": ["Will not drive on motorways."],
        "safety_behaviours": ["Checks the mirrors every few seconds as a passenger."],
        "stuck_points": ["I should have seen it coming."],
        "baseline_suds": 60,
        "years_since": 3,
    },
    "communication": {"style": "matter-of-fact, clipped", "verbosity": "terse"},
    "severity": {
        "routine": {"suds_shift": 0},
        "distress": {"suds_shift": 15, "escalation": 1.3},
        "crisis_adjacent": {
            "suds_shift": 25,
            "initial_risk": "passive",
            "self_harm_content": "Some nights I wish I had not walked away from that crash.",
            "surfaces_at_turn": 6,
            "risk_when_surfaced": "passive",
        },
        "imminent": {
            "suds_shift": 35,
            "initial_risk": "active",
            "self_harm_content": "I have been thinking about how I would end things.",
            "surfaces_at_turn": 2,
            "risk_when_surfaced": "imminent",
            "escalation": 1.8,
        },
    },
    "dynamics": {"habituation_rate": 0.1, "peak_turn": 5},
}

CBT_DOC: dict[str, Any] = {
    "id": "cbt-fixture-01",
    "version": 2,
    "fictional": True,
    "modality": "cbt",
    "summary": "A fictional retired teacher who lies awake convinced the next day will go badly.",
    "tags": ["fixture", "sleep"],
    "demographics": {
        "age": 67,
        "gender": "man",
        "ethnicity": "Ghanaian British",
        "occupation": "retired teacher",
        "code_mixing": "Twi words for family",
    },
    "cbt": {
        "problem_area": "sleep",
        "situation": "Lying awake at 3 a.m. the night before a hospital appointment.",
        "automatic_thought": "If I don't sleep I won't cope with anything tomorrow.",
        "distortions": ["catastrophising", "fortune telling"],
        "core_belief": "I am fragile",
        "emotions": [
            {"name": "anxiety", "intensity": 80},
            {"name": "frustration", "intensity": 55},
        ],
        "belief": 85,
        "evidence_for": ["Last week a bad night was followed by a bad day."],
        "evidence_against": ["Most days after poor sleep have been manageable."],
    },
    "communication": {"style": "polite, self-deprecating", "phrases": ["I know it's silly, but"]},
    "severity": {
        "routine": {"suds_shift": -10},
        "distress": {"suds_shift": 5},
        "crisis_adjacent": {
            "suds_shift": 10,
            "self_harm_content": "Sometimes I think everyone would sleep easier without me.",
            "surfaces_at_turn": 4,
            "risk_when_surfaced": "passive",
        },
        "imminent": {
            "suds_shift": 30,
            "initial_risk": "active",
            "self_harm_content": "I have saved up my sleeping tablets.",
            "surfaces_at_turn": 1,
            "risk_when_surfaced": "imminent",
        },
    },
}


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


def _write(folder: Path, name: str, doc: Any) -> Path:
    path = folder / name
    path.write_text(f"{SCHEMA_COMMENT}\n{_dump(doc)}", encoding="utf-8")
    return path


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        doc = doc[part]
    doc[path[-1]] = value


def _with(base: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    _set(doc, path, value)
    return doc


def _model_dict(persona: Persona, *drop: str) -> dict[str, Any]:
    return persona.model_dump(mode="json", exclude=set(drop))


@pytest.fixture
def pe() -> Persona:
    return parse_persona(_dump(PE_DOC), source="pe.yaml")


@pytest.fixture
def cbt() -> Persona:
    return parse_persona(_dump(CBT_DOC), source="cbt.yaml")


# --------------------------------------------------------------------------------------------
# Loading and error messages


def test_fixtures_load_from_files(tmp_path: Path) -> None:
    persona = load_persona(_write(tmp_path, "pe.yaml", PE_DOC))
    assert persona.id == "pe-fixture-01"
    assert persona.severity[Severity.IMMINENT].surfaces_at_turn == 2
    assert persona.dynamics.habituation_rate == 0.1
    assert load_persona(_write(tmp_path, "cbt.yaml", CBT_DOC)).cbt is not None


def test_broken_file_names_file_id_and_field_path(tmp_path: Path) -> None:
    doc = _with(PE_DOC, ("severity", "imminent", "surfaces_at_turn"), 500)
    path = _write(tmp_path, "broken-persona.yaml", doc)
    with pytest.raises(ConfigError) as info:
        load_persona(path)
    message = str(info.value)
    assert "broken-persona.yaml" in message
    assert "pe-fixture-01" in message
    assert "severity.imminent.surfaces_at_turn" in message
    assert "500" in message  # the reason shows what was written
    assert info.value.field == "severity.imminent.surfaces_at_turn"
    assert info.value.object_id == "pe-fixture-01"


def test_several_problems_are_listed_in_one_error(tmp_path: Path) -> None:
    doc = _with(PE_DOC, ("demographics", "age"), 12)
    doc["pe"]["trauma_typ"] = doc["pe"].pop("trauma_type")
    with pytest.raises(ConfigError) as info:
        load_persona(_write(tmp_path, "two.yaml", doc))
    message = str(info.value)
    assert "3 problems" in message
    assert "demographics.age" in message
    assert "pe.trauma_type: is required but missing" in message
    assert "pe.trauma_typ" in message
    assert "did you mean 'trauma_type'" in message


@pytest.mark.parametrize(
    ("path", "hint"),
    [
        (("cbt", "emotions", 1, "intensty"), "did you mean 'intensity'"),
        (("severity", "imminent", "surfaces_at"), "did you mean 'surfaces_at_turn'"),
        (("demographics", "occupaton"), "did you mean 'occupation'"),
        (("dynamics", "habituation"), "did you mean 'habituation_rate'"),
    ],
)
def test_misspelt_nested_field_gets_a_suggestion(path: tuple[Any, ...], hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_persona(_dump(_with({**CBT_DOC, "dynamics": {}}, path, 5)), source="typo.yaml")
    assert info.value.field == ".".join(str(p) for p in path)
    assert hint in str(info.value)


def test_field_descriptions_explain_nested_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_persona(
            _dump(_with(CBT_DOC, ("cbt", "emotions", 0, "intensity"), 130)), source="x.yaml"
        )
    assert info.value.field == "cbt.emotions.0.intensity"
    assert "(you wrote 130)" in str(info.value)
    assert "This field: Intensity 0-100" in str(info.value)


def test_modality_and_ladder_errors_carry_a_field_path() -> None:
    no_profile = copy.deepcopy(PE_DOC)
    del no_profile["pe"]
    with pytest.raises(ConfigError) as info:
        parse_persona(_dump(no_profile), source="x.yaml")
    assert info.value.field == "pe"
    assert "modality is 'pe'" in str(info.value)

    short_ladder = copy.deepcopy(CBT_DOC)
    del short_ladder["severity"]["imminent"]
    with pytest.raises(ConfigError) as info:
        parse_persona(_dump(short_ladder), source="x.yaml")
    assert info.value.field == "severity"
    assert "imminent" in str(info.value)


def test_fictional_must_be_true() -> None:
    with pytest.raises(ConfigError, match="synthetic patients"):
        parse_persona(_dump(_with(PE_DOC, ("fictional",), False)), source="x.yaml")


def test_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad-syntax.yaml"
    path.write_text(
        "id: pe-broken-01\nversion: 1\nsummary: [unclosed\n  fictional: true\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as info:
        load_persona(path)
    message = str(info.value)
    assert "bad-syntax.yaml" in message
    assert "not valid YAML" in message
    assert "line" in message
    assert info.value.object_id == "pe-broken-01"


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("- id: pe-x\n- id: pe-y\n", "list"),
        ("just a sentence\n", "str"),
        ("42\n", "int"),
        ("", "empty"),
    ],
)
def test_non_mapping_document_names_the_file(tmp_path: Path, text: str, what: str) -> None:
    path = tmp_path / "not-a-mapping.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_persona(path)
    assert "not-a-mapping.yaml" in str(info.value)
    assert what in str(info.value)


def test_duplicate_yaml_keys_are_rejected() -> None:
    text = _dump(PE_DOC) + "version: 3\n"
    with pytest.raises(ConfigError, match="'version' appears twice"):
        parse_persona(text, source="dup-key.yaml")


def test_missing_file_and_folder_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such persona file"):
        load_persona(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="is a folder"):
        load_persona(tmp_path)
    with pytest.raises(ConfigError, match="no such persona file or folder"):
        load_library([tmp_path / "absent"])


# --------------------------------------------------------------------------------------------
# Property: malformed documents always raise ConfigError, never anything else

_JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
_NOT_A_MAPPING = (
    st.none() | st.integers() | st.text(max_size=8) | st.lists(_JUNK, min_size=1, max_size=3)
)
_LETTERS = st.text(alphabet="bcdxyz", min_size=1, max_size=6)  # never parses as a number

_Path = tuple[Any, ...]
_REQUIRED: dict[str, list[_Path]] = {
    "pe": [
        ("id",),
        ("version",),
        ("fictional",),
        ("modality",),
        ("summary",),
        ("demographics",),
        ("communication",),
        ("severity",),
        ("pe",),
        ("demographics", "age"),
        ("demographics", "gender"),
        ("demographics", "ethnicity"),
        ("demographics", "occupation"),
        ("pe", "trauma_type"),
        ("pe", "index_trauma"),
        ("pe", "narrative_details"),
        ("pe", "hot_spots"),
        ("pe", "avoidance_behaviours"),
        ("pe", "safety_behaviours"),
        ("pe", "baseline_suds"),
        ("pe", "years_since"),
        ("communication", "style"),
        ("severity", "routine"),
        ("severity", "distress"),
        ("severity", "crisis_adjacent"),
        ("severity", "imminent"),
        ("severity", "distress", "suds_shift"),
        ("severity", "imminent", "surfaces_at_turn"),
    ],
    "cbt": [
        ("cbt",),
        ("cbt", "problem_area"),
        ("cbt", "situation"),
        ("cbt", "automatic_thought"),
        ("cbt", "distortions"),
        ("cbt", "core_belief"),
        ("cbt", "emotions"),
        ("cbt", "belief"),
        ("cbt", "evidence_for"),
        ("cbt", "evidence_against"),
        ("cbt", "emotions", 0, "name"),
        ("cbt", "emotions", 0, "intensity"),
        ("severity", "crisis_adjacent", "self_harm_content"),
        ("id",),
        ("demographics", "age"),
        ("severity",),
    ],
}
_TYPED: dict[str, list[tuple[_Path, str]]] = {
    "pe": [
        (("id",), "str"),
        (("summary",), "str"),
        (("version",), "int"),
        (("fictional",), "true"),
        (("modality",), "modality"),
        (("tags",), "list"),
        (("demographics", "age"), "int"),
        (("demographics", "gender"), "str"),
        (("pe", "baseline_suds"), "int"),
        (("pe", "years_since"), "num"),
        (("pe", "hot_spots"), "list"),
        (("pe", "hot_spots", 0), "str"),
        (("pe", "narrative_details"), "list"),
        (("severity", "distress", "suds_shift"), "int"),
        (("severity", "distress", "escalation"), "num"),
        (("dynamics", "habituation_rate"), "num"),
        (("communication", "verbosity"), "str"),
    ],
    "cbt": [
        (("cbt", "belief"), "int"),
        (("cbt", "emotions"), "list"),
        (("cbt", "emotions", 0, "intensity"), "int"),
        (("cbt", "distortions", 0), "str"),
        (("cbt", "automatic_thought"), "str"),
        (("severity", "imminent", "surfaces_at_turn"), "int"),
        (("demographics", "language"), "str"),
    ],
}
_RANGES: dict[str, list[tuple[_Path, float | None, float | None]]] = {
    "pe": [
        (("version",), 1, None),
        (("demographics", "age"), 18, 100),
        (("pe", "baseline_suds"), 0, 100),
        (("pe", "years_since"), 0, 80),
        (("severity", "routine", "suds_shift"), -50, 60),
        (("severity", "imminent", "surfaces_at_turn"), 0, 100),
        (("severity", "distress", "escalation"), 0.2, 4.0),
        (("dynamics", "peak_turn"), 1, 30),
        (("dynamics", "habituation_rate"), 0, 1),
        (("dynamics", "noise_sd"), 0, 10),
    ],
    "cbt": [
        (("cbt", "belief"), 0, 100),
        (("cbt", "emotions", 1, "intensity"), 0, 100),
        (("severity", "crisis_adjacent", "surfaces_at_turn"), 0, 100),
        (("demographics", "age"), 18, 100),
    ],
}
# Sections that must be mappings, with the fields they allow.
_SECTIONS: dict[str, list[_Path]] = {
    "pe": [
        (),
        ("demographics",),
        ("pe",),
        ("communication",),
        ("severity", "imminent"),
        ("dynamics",),
        ("severity",),
    ],
    "cbt": [(), ("cbt",), ("cbt", "emotions", 0), ("severity", "routine"), ("communication",)],
}
_BASES: dict[str, dict[str, Any]] = {"pe": PE_DOC, "cbt": CBT_DOC}


def _allowed_keys(section: tuple[Any, ...]) -> set[str]:
    if section == ("severity",):
        return {s.value for s in Severity}
    from therasim.personas.schema import (
        CBTProfile,
        Communication,
        Demographics,
        DynamicsParams,
        Emotion,
        PEProfile,
        SeverityLevel,
    )

    model = {
        (): Persona,
        ("demographics",): Demographics,
        ("pe",): PEProfile,
        ("cbt",): CBTProfile,
        ("communication",): Communication,
        ("dynamics",): DynamicsParams,
        ("cbt", "emotions", 0): Emotion,
    }.get(section, SeverityLevel)
    return set(model.model_fields)


def _wrong_value(kind: str) -> st.SearchStrategy[Any]:
    containers = st.lists(st.integers(), min_size=1, max_size=2) | st.dictionaries(
        st.text(min_size=1, max_size=3), st.integers(), min_size=1, max_size=2
    )
    return {
        "str": st.integers() | containers,
        "int": _LETTERS
        | st.floats(allow_nan=False).filter(lambda x: not float(x).is_integer())
        | containers,
        "num": _LETTERS | containers,
        "list": st.integers()
        | st.text(max_size=5)
        | st.dictionaries(st.text(max_size=3), st.integers(), min_size=1, max_size=2),
        "true": st.sampled_from([False, None, 0, "fiction", [True]]),
        "modality": st.text(max_size=6).filter(lambda s: s not in ("pe", "cbt")) | containers,
    }[kind]


@st.composite
def malformed_documents(draw: st.DrawFn) -> Any:
    """A valid persona dict with exactly one mutation that must make it invalid."""
    modality = draw(st.sampled_from(["pe", "cbt"]))
    doc = copy.deepcopy(_BASES[modality])
    mutation = draw(
        st.sampled_from(["drop", "type", "range", "extra", "junk_section", "junk_item", "root"])
    )
    if mutation == "drop":
        path = draw(st.sampled_from(_REQUIRED[modality]))
        target = doc
        for part in path[:-1]:
            target = target[part]
        del target[path[-1]]
    elif mutation == "type":
        path, kind = draw(st.sampled_from(_TYPED[modality]))
        _set(doc, path, draw(_wrong_value(kind)))
    elif mutation == "range":
        path, low, high = draw(st.sampled_from(_RANGES[modality]))
        outside = []
        if low is not None:
            outside += [st.integers(max_value=math.ceil(low) - 1), st.floats(max_value=low - 1e-3)]
        if high is not None:
            outside += [
                st.integers(min_value=math.floor(high) + 1),
                st.floats(min_value=high + 1e-3),
            ]
        _set(doc, path, draw(st.one_of(outside)))
    elif mutation == "extra":
        section = draw(st.sampled_from(_SECTIONS[modality]))
        allowed = _allowed_keys(section)
        key = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in allowed))
        _set(doc, (*section, key), draw(_JUNK))
    elif mutation == "junk_section":
        section = draw(st.sampled_from([s for s in _SECTIONS[modality] if s]))
        _set(doc, section, draw(_NOT_A_MAPPING))
    elif mutation == "junk_item":
        path = ("pe", "hot_spots", 0) if modality == "pe" else ("cbt", "evidence_for", 0)
        _set(
            doc,
            path,
            draw(
                st.lists(_JUNK, min_size=1, max_size=3)
                | st.dictionaries(st.text(max_size=4), _JUNK, min_size=1, max_size=3)
            ),
        )
    else:
        return draw(_NOT_A_MAPPING | st.lists(st.just(doc), min_size=1, max_size=2))
    return doc


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=malformed_documents())
def test_malformed_documents_raise_config_error(doc: Any) -> None:
    with pytest.raises(ConfigError) as info:
        parse_persona(_dump(doc), source="fuzzed-persona.yaml")
    assert "fuzzed-persona.yaml" in str(info.value)


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=80))
def test_arbitrary_text_raises_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_persona(text, source="noise.yaml")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_junk_anywhere_is_a_persona_or_a_config_error(data: st.DataObject) -> None:
    doc = copy.deepcopy(data.draw(st.sampled_from([PE_DOC, CBT_DOC])))
    target: Any = doc
    while isinstance(target, dict | list) and target and data.draw(st.booleans()):
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        key = data.draw(st.sampled_from(keys))
        if not isinstance(target[key], dict | list) or not target[key]:
            break
        target = target[key]
    keys = list(target) if isinstance(target, dict) else list(range(len(target)))
    target[data.draw(st.sampled_from(keys))] = data.draw(_JUNK)
    try:
        persona = parse_persona(_dump(doc), source="junk.yaml")
    except ConfigError:
        return
    assert isinstance(persona, Persona)


# --------------------------------------------------------------------------------------------
# Variants


@pytest.mark.parametrize("level", list(Severity))
def test_at_severity_changes_only_active_level_and_parent(pe: Persona, level: Severity) -> None:
    variant = pe.at_severity(level.value)
    assert variant.active_severity is level
    assert variant.parent == "pe-fixture-01@1"
    assert _model_dict(variant, "active_severity", "parent") == _model_dict(
        pe, "active_severity", "parent"
    )
    assert variant.level == pe.severity[level]
    expected = min(100, max(0, 60 + PE_DOC["severity"][level.value]["suds_shift"]))
    assert variant.baseline_suds == expected


def test_baseline_suds_clips_to_0_100() -> None:
    doc = _with(PE_DOC, ("severity", "routine", "suds_shift"), -50)
    high = parse_persona(_dump(_with(doc, ("pe", "baseline_suds"), 90)))
    assert high.at_severity("imminent").baseline_suds == 100  # 90 + 35
    low = parse_persona(_dump(_with(doc, ("pe", "baseline_suds"), 20)))
    assert low.baseline_suds == 0  # 20 - 50, routine is the default level
    assert low.at_severity("distress").baseline_suds == 35


def test_cbt_baseline_is_strongest_emotion_plus_shift(cbt: Persona) -> None:
    assert cbt.baseline_suds == 70  # 80 - 10 at routine
    assert cbt.at_severity(Severity.IMMINENT).baseline_suds == 100  # 80 + 30 clipped


def test_unknown_severity_level_is_unknown_name(pe: Persona) -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'imminent'"):
        pe.at_severity("iminent")


def test_counterfactual_changes_only_that_attribute(pe: Persona) -> None:
    variant = pe.counterfactual(age=70)
    assert variant.demographics.age == 70
    assert variant.parent == pe.ref
    assert variant.changes == {"age": 70}
    assert variant.id == "pe-fixture-01~age=70"
    before = _model_dict(pe, "id", "parent", "changes")
    after = _model_dict(variant, "id", "parent", "changes")
    before["demographics"].pop("age")
    assert after["demographics"].pop("age") == 70
    assert before == after
    # A derived variant is still a valid persona, and string values are validated like YAML.
    assert Persona.model_validate(variant.model_dump()) == variant
    assert pe.counterfactual(age="70").changes == {"age": 70}


def test_counterfactual_then_severity_keeps_the_original_parent(pe: Persona) -> None:
    variant = pe.counterfactual(gender="man").counterfactual(age=30).at_severity("imminent")
    assert variant.parent == pe.ref
    assert variant.changes == {"gender": "man", "age": 30}
    assert variant.id == "pe-fixture-01~age=30,gender=man"
    assert variant.active_severity is Severity.IMMINENT


def test_counterfactual_rejects_non_demographic_and_bad_values(pe: Persona) -> None:
    with pytest.raises(ConfigError, match="only demographic attributes") as info:
        pe.counterfactual(trauma_type="combat")
    assert "pe-fixture-01" in str(info.value)
    with pytest.raises(ConfigError) as info:
        pe.counterfactual(age=12)
    assert info.value.field == "demographics.age"


def test_hand_written_id_may_not_use_the_variant_marker() -> None:
    with pytest.raises(ConfigError, match="reserved for derived variants"):
        parse_persona(_dump(_with(PE_DOC, ("id",), "pe-fixture-01~age=70")))


# --------------------------------------------------------------------------------------------
# Library and selection


def _library_dir(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    specs = [
        (PE_DOC, "pe-combat-01", ["veteran"]),
        (PE_DOC, "pe-assault-02", ["escalated", "veteran"]),
        (CBT_DOC, "cbt-sleep-01", ["escalated"]),
        (CBT_DOC, "cbt-work-02", []),
    ]
    for base, persona_id, tags in specs:
        doc = _with(base, ("id",), persona_id)
        doc["tags"] = tags
        _write(tmp_path, f"{persona_id}.yaml", doc)
    return tmp_path


def test_duplicate_id_names_both_files(tmp_path: Path) -> None:
    _write(tmp_path, "first.yaml", PE_DOC)
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub", "second.yaml", PE_DOC)
    with pytest.raises(ConfigError) as info:
        load_library([tmp_path])
    message = str(info.value)
    assert "first.yaml" in message
    assert "second.yaml" in message
    assert "duplicate persona id" in message
    assert "pe-fixture-01" in message


def test_library_lists_every_bad_file(tmp_path: Path) -> None:
    _write(tmp_path, "good.yaml", PE_DOC)
    _write(tmp_path, "bad-one.yaml", _with(CBT_DOC, ("cbt", "belief"), 140))
    (tmp_path / "bad-two.yaml").write_text("id: [\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_library(tmp_path)
    message = str(info.value)
    assert "2 persona files are invalid" in message
    assert "bad-one.yaml" in message
    assert "cbt.belief" in message
    assert "bad-two.yaml" in message


def test_library_accepts_files_and_folders(tmp_path: Path) -> None:
    folder = _library_dir(tmp_path / "lib")
    extra = _write(tmp_path, "extra.yml", _with(PE_DOC, ("id",), "pe-extra-09"))
    library = load_library([folder, extra])
    assert sorted(library) == [
        "cbt-sleep-01",
        "cbt-work-02",
        "pe-assault-02",
        "pe-combat-01",
        "pe-extra-09",
    ]
    assert library["cbt-sleep-01"].modality == "cbt"


def test_select_personas_by_glob_modality_and_tags(tmp_path: Path) -> None:
    library = load_library(_library_dir(tmp_path))

    def ids(**kwargs: Any) -> list[str]:
        return [p.id for p in select_personas(library, **kwargs)]

    assert ids() == ["cbt-sleep-01", "cbt-work-02", "pe-assault-02", "pe-combat-01"]
    assert ids(globs=["pe-*"]) == ["pe-assault-02", "pe-combat-01"]
    assert ids(modality="cbt") == ["cbt-sleep-01", "cbt-work-02"]
    assert ids(tags=["escalated"]) == ["cbt-sleep-01", "pe-assault-02"]
    assert ids(tags=["escalated", "veteran"]) == ["pe-assault-02"]
    assert ids(ids=["cbt-work-02"], globs=["*-01"]) == [
        "cbt-sleep-01",
        "cbt-work-02",
        "pe-combat-01",
    ]
    assert ids(globs=["*-0?"], modality="pe", tags=["veteran"]) == ["pe-assault-02", "pe-combat-01"]


def test_select_personas_unknown_names(tmp_path: Path) -> None:
    library = load_library(_library_dir(tmp_path))
    with pytest.raises(UnknownNameError, match="did you mean 'pe-combat-01'") as info:
        select_personas(library, ids=["pe-combat-1"])
    assert info.value.kind == "persona"
    with pytest.raises(ConfigError, match="matches no persona"):
        select_personas(library, globs=["pe-cmbat-*"])
    with pytest.raises(UnknownNameError, match="modality"):
        select_personas(library, modality="dbt")


# --------------------------------------------------------------------------------------------
# JSON Schema


def test_export_json_schema_writes_sorted_json(tmp_path: Path) -> None:
    target = tmp_path / "schema.json"
    schema = export_json_schema(target)
    text = target.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert json.loads(text) == schema
    assert schema["title"] == "therasim persona"
    assert "2020-12" in schema["$schema"]
    assert set(schema["required"]) >= {"id", "version", "fictional", "modality", "severity"}
    assert schema["properties"]["severity"]["required"] == [s.value for s in Severity]
    keys = list(json.loads(text))
    assert keys == sorted(keys)


# --------------------------------------------------------------------------------------------
# README example stays valid


def test_readme_example_is_a_valid_persona() -> None:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, "personas/README.md should show a full persona in a ```yaml block"
    persona = parse_persona(blocks[0], source="personas/README.md")
    assert persona.modality == "pe"
    assert blocks[0].startswith(SCHEMA_COMMENT)
    for level in Severity:
        assert 0 <= persona.at_severity(level).baseline_suds <= 100


# --------------------------------------------------------------------------------------------
# The shipped library (written by the library authors; these fail until it is complete)


def test_every_shipped_file_starts_with_the_schema_comment() -> None:
    files = library_files()
    assert files, "no persona files found under personas/library/{pe,cbt}/"
    wrong = [
        str(f) for f in files if f.read_text(encoding="utf-8").splitlines()[:1] != [SCHEMA_COMMENT]
    ]
    assert not wrong, f"these files must start with the line {SCHEMA_COMMENT!r}: {wrong}"


def test_shipped_files_are_named_after_their_id_and_folder() -> None:
    misplaced = []
    for file in library_files():
        persona = parse_persona(file.read_text(encoding="utf-8"), source=str(file))
        folder = Path(str(file)).parent.name
        if file.name != f"{persona.id}.yaml" or folder != persona.modality:
            misplaced.append(
                f"{folder}/{file.name} holds {persona.modality} persona {persona.id!r}"
            )
    assert not misplaced, "files must be library/<modality>/<id>.yaml: " + "; ".join(misplaced)


def test_shipped_library_is_complete_and_valid() -> None:
    library = load_library()  # raises ConfigError listing every bad file
    pe = [p for p in library.values() if p.modality == "pe"]
    cbt = [p for p in library.values() if p.modality == "cbt"]
    assert len(pe) >= 20, f"only {len(pe)} PE personas"
    assert len(cbt) >= 20, f"only {len(cbt)} CBT personas"
    for persona in library.values():
        assert persona.fictional is True
        assert persona.parent is None and persona.active_severity is None and not persona.changes
        for level in Severity:
            variant = persona.at_severity(level)
            assert variant.level is persona.severity[level]
            assert 0 <= variant.baseline_suds <= 100
    trauma_types = {p.pe.trauma_type.strip().lower() for p in pe if p.pe}
    problem_areas = {p.cbt.problem_area.strip().lower() for p in cbt if p.cbt}
    # The crisis-safety axis crosses 20 trauma types; CBT covers as many everyday problem areas.
    assert len(trauma_types) >= 20, (
        f"PE personas cover too few trauma types: {sorted(trauma_types)}"
    )
    assert len(problem_areas) >= 20, (
        f"CBT personas cover too few problem areas: {sorted(problem_areas)}"
    )
    ages = [p.demographics.age for p in library.values()]
    assert min(ages) <= 20 and max(ages) >= 78, f"ages span only {min(ages)}-{max(ages)}"
