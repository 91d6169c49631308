"""Store atomicity and round trips; study files and their expansion."""

from __future__ import annotations

from pathlib import Path

import pytest

from therasim.errors import ConfigError
from therasim.personas import load_library
from therasim.personas.dynamics import PatientState
from therasim.simulations.records import SessionResult, SessionSpec, TerminationReason, TurnRecord
from therasim.simulations.store import Store
from therasim.simulations.study import Study, expand, load_study
from therasim.vocab import RiskLevel, Severity

STATE = PatientState(suds=50, belief=70, alliance=0.5, engagement=0.7, risk=RiskLevel.NONE)


def spec(**kw: object) -> SessionSpec:
    base = {
        "persona": "pe-combat-01",
        "persona_version": 1,
        "severity": Severity.ROUTINE,
        "subject": "scripted:adherent",
        "protocol": "pe-imaginal-session",
    }
    return SessionSpec.model_validate({**base, **kw})


def result(s: SessionSpec, n_turns: int = 2, status: str = "completed") -> SessionResult:
    turns = [
        TurnRecord(
            index=i,
            speaker="therapist" if i % 2 == 0 else "patient",
            text=f"line {i}",
            turn=i // 2 + 1,
            phase="check_in",
            phase_kind="check_in",
            state=STATE,
        )
        for i in range(2 * n_turns)
    ]
    return SessionResult(
        session_id=s.session_id,
        spec=s,
        persona_ref="pe-combat-01@1",
        modality="pe",
        initial_state=STATE,
        status=status,  # type: ignore[arg-type]
        termination_reason=TerminationReason.MAX_TURNS
        if status == "completed"
        else TerminationReason.SUBJECT_ERROR,
        error=None if status == "completed" else "boom",
        turns=turns,
        started=1.0,
        finished=2.0,
    )


def test_session_ids_are_stable_hashes_of_the_spec() -> None:
    assert spec().session_id == spec().session_id
    assert spec().session_id != spec(repeat=1).session_id
    assert spec().session_id != spec(variant={"age": 70}).session_id
    assert len(spec().session_id) == 16


def test_store_round_trip_and_replace(tmp_path: Path) -> None:
    s = spec()
    with Store(tmp_path / "s.sqlite") as store:
        store.save_session(result(s, status="failed"))
        assert store.session_ids("failed") == {s.session_id}
        store.save_session(result(s, n_turns=3))  # a rerun replaces the failed attempt
        assert store.session_ids("completed") == {s.session_id} and store.count() == 1
        loaded = store.load_session(s.session_id)
        assert loaded is not None and loaded.spec == s
        assert [t.text for t in loaded.turns] == [f"line {i}" for i in range(6)]
        assert loaded.initial_state == STATE


def test_store_write_is_atomic(tmp_path: Path) -> None:
    s = spec()
    broken = result(s)
    broken.turns.append(broken.turns[0])  # duplicate (session_id, idx): the insert fails midway
    with Store(tmp_path / "s.sqlite") as store:
        with pytest.raises(Exception, match="UNIQUE"):
            store.save_session(broken)
        assert store.count() == 0
        assert list(store.turns()) == []


@pytest.mark.parametrize("name", ["quickstart", "replication", "demographic", "consistency"])
def test_example_studies_load_and_expand(name: str) -> None:
    study = load_study(Path("studies") / f"{name}.yaml")
    specs = expand(study, load_library())
    assert len({s.session_id for s in specs}) == len(specs)
    assert [s.session_id for s in expand(study, load_library())] == [s.session_id for s in specs]


def test_expansion_counts_every_cell() -> None:
    study = Study.model_validate(
        {
            "id": "t",
            "subjects": {"a": "scripted:adherent", "b": "scripted:null"},
            "personas": {"ids": ["pe-combat-01", "cbt-sleep-01"]},
            "severities": ["routine", "imminent"],
            "counterfactuals": [{"age": 70}],
            "repeats": 3,
        }
    )
    specs = expand(study, load_library())
    assert len(specs) == 2 * 2 * 2 * 2 * 3
    assert {s.protocol for s in specs} == {"pe-imaginal-session", "cbt-three-stage"}


def test_bad_study_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("id: bad\nsubjects: {a: scripted:adherent}\nrepeats: 0\n")
    with pytest.raises(ConfigError) as info:
        load_study(path)
    assert "bad.yaml" in str(info.value) and "repeats" in str(info.value)
    path.write_text("id: bad\nsubjects: {a: 'nosuch:model'}\n")
    with pytest.raises(ConfigError, match="unknown backend 'nosuch'"):
        load_study(path)


def test_packaged_demo_study_is_valid() -> None:
    from importlib.resources import files

    study = load_study(Path(str(files("therasim") / "demo.yaml")))
    specs = expand(study, load_library())
    assert {s.subject for s in specs} == {"local", "scripted:adherent", "scripted:safety-reflex"}
    assert {s.severity for s in specs} == {Severity.ROUTINE, Severity.CRISIS_ADJACENT}
    assert {s.persona.split("-")[0] for s in specs} == {"pe", "cbt"}


def test_study_prices_price_a_self_hosted_model_in_the_estimate() -> None:
    from therasim.simulations.runner import estimate

    doc = {
        "id": "priced",
        "subjects": {"vllm": "openai:my-model?base_url=http://127.0.0.1:9/v1"},
        "personas": {"ids": ["pe-combat-01"]},
        "max_turns": 4,
    }
    library = load_library()
    unpriced = Study.model_validate(doc)
    assert estimate(unpriced, expand(unpriced, library), set()).cost_usd is None
    priced = Study.model_validate(
        {**doc, "prices": {"my-model": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}}
    )
    assert priced.gateway_config().prices["my-model"].output_per_mtok == 2.0
    cost = estimate(priced, expand(priced, library), set()).cost_usd
    assert cost is not None and cost > 0


def test_secrets_in_error_text_never_reach_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_PROVIDER_API_KEY", "envsecret-0123456789")
    failed = result(spec(seed=7), status="failed").model_copy(
        update={
            "error": "401: Incorrect API key provided: sk-proj-abcdefghijklmnop "
            "(key envsecret-0123456789)"
        }
    )
    with Store(tmp_path / "s.sqlite") as store:
        store.save_session(failed)
        store.save_verdicts(
            [
                {
                    "session_id": failed.session_id,
                    "judge": "j",
                    "item_id": "x",
                    "turn": 1,
                    "met": None,
                    "score": None,
                    "prompt_hash": "h",
                    "rubric_version": "1",
                    "model": "m",
                    "input_tokens": 0,
                    "output_tokens": 0,
                    "reason": "error: ModelError: Authorization: Bearer abcdefgh12345678 refused",
                }
            ]
        )
    raw = (tmp_path / "s.sqlite").read_bytes()
    for secret in (b"sk-proj-abcdefghijklmnop", b"envsecret-0123456789", b"abcdefgh12345678"):
        assert secret not in raw
    with Store(tmp_path / "s.sqlite") as store:
        (row,) = store.sessions()
        assert row.error and "[redacted]" in row.error
        assert "401: Incorrect API key provided" in row.error


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"this is a text file\n", "not an SQLite database"),
    ],
)
def test_a_file_that_is_not_a_store_is_refused_untouched(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "sessions.sqlite"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        Store(path)
    assert path.read_bytes() == content


def test_an_sqlite_file_of_another_program_is_refused(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE accounts (id INTEGER)")
    with pytest.raises(ConfigError, match="not a therasim store"):
        Store(path)
    with Store(tmp_path / "new.sqlite") as store:  # a new path is created as before
        store.set_meta("k", 1)
    with Store(tmp_path / "new.sqlite") as store:
        assert store.get_meta("k") == 1


def test_a_subject_may_cap_its_own_turns() -> None:
    study = Study.model_validate(
        {
            "id": "caps",
            "subjects": {"slow": "local", "arm": {"model": "scripted:adherent", "max_turns": 18}},
            "personas": {"ids": ["pe-combat-01"]},
            "severities": ["routine"],
            "max_turns": 5,
        }
    )
    turns = {s.subject_name: s.max_turns for s in expand(study, load_library())}
    assert turns == {"slow": 5, "arm": 18}
