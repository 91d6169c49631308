"""The command line: exit codes and messages a user sees."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from therasim.cli import main
from therasim.simulations.store import Store

LIBRARY = Path(__file__).resolve().parents[2] / "personas" / "library"


def test_help_lists_the_verbs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for verb in (
        "doctor",
        "ask",
        "validate",
        "personas",
        "protocols",
        "simulate",
        "show",
        "run",
        "status",
        "judge",
        "report",
        "demo",
    ):
        assert verb in out


def test_ask_unknown_backend_is_one_line_listing_backends(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["ask", "nosuch:model", "x"]) == 1
    err = capsys.readouterr().err.strip()
    assert "unknown backend 'nosuch'" in err
    assert "local" in err and "openai" in err and "scripted" in err
    assert "Traceback" not in err


def test_model_error_line_names_role_and_model(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, real_requests: None
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # fails before any request is sent
    assert main(["ask", "openai:some-model", "hi", "--no-cache"]) == 2
    err = capsys.readouterr().err.strip()
    # "[role …, model …]" is printed as text, not swallowed as console markup
    assert err.startswith("model error: [role ask, model openai:some-model] no API key")


def test_ask_scripted_agents(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "scripted:lexical", "You are safe now. Call 988.", "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert "reassurance" in out and "crisis_resources" in out
    # a scripted therapist needs a session around it, and says so in one line
    assert main(["ask", "scripted:null", "I feel awful", "--no-cache"]) == 1
    assert "needs the session's TurnContext" in capsys.readouterr().err
    # the scripted judges are known by name too, and say what they need
    assert main(["ask", "scripted:lexical-judge", "x", "--no-cache"]) == 2
    assert "need item_id and polarity" in capsys.readouterr().err


def test_validate_shipped_library(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 0
    out = capsys.readouterr().out
    assert "all valid" in out


def test_validate_broken_persona_names_file_id_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = yaml.safe_load((LIBRARY / "pe" / "pe-combat-01.yaml").read_text())
    doc["severity"]["imminent"]["surfaces_at_turn"] = "soon"
    bad = tmp_path / "broken.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert (
        "broken.yaml" in err
        and "pe-combat-01" in err
        and "severity.imminent.surfaces_at_turn" in err
    )


def test_personas_and_protocols_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["personas", "show", "pe-combat-01", "--severity", "imminent", "--set", "age=70"]) == 0
    )
    out = capsys.readouterr().out
    assert "age: 70" in out and "at imminent" in out
    assert main(["protocols", "show", "pe-imaginal-session"]) == 0
    assert "stateDiagram" in capsys.readouterr().out
    assert main(["personas", "show", "pe-combat-1"]) == 1
    assert "did you mean 'pe-combat-01'" in capsys.readouterr().err


def test_simulate_show_judge_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.sqlite"
    code = main(
        [
            "simulate",
            "--persona",
            "cbt-sleep-01",
            "--severity",
            "distress",
            "--subject",
            "scripted:adherent",
            "--store",
            str(store),
            "--no-cache",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "protocol_complete" in out and "SUDS" in out
    with Store(store) as s:
        (sid,) = s.session_ids()
    assert main(["show", sid[:6], "--store", str(store)]) == 0
    assert "therapist" in capsys.readouterr().out
    pair = ["judge", str(store), "--judges", "a=scripted:lexical-judge", "b=scripted:harsh-judge"]
    assert main([*pair, "--no-cache"]) == 0
    assert "sessions judged" in capsys.readouterr().out
    # a different panel must say whether it replaces or joins the stored one
    one = ["judge", str(store), "--judges", "c=scripted:lenient-judge", "--no-cache"]
    assert main(one) == 1
    assert "--replace" in capsys.readouterr().err
    assert main([*one, "--add"]) == 0
    with Store(store) as s:
        assert s.verdict_judges() == {"a", "b", "c"}
    assert main([*one, "--replace"]) == 0
    with Store(store) as s:
        assert s.verdict_judges() == {"c"}
    assert main([*pair, "--replace", "--no-cache"]) == 0
    capsys.readouterr()
    assert main(["report", str(store)]) == 0
    out = capsys.readouterr().out
    assert "CBT sessions" in out and "Judge panel: 2 judge(s)" in out
    assert "scripted:harsh-judge" in out  # the panel's composition
    # the readiness verdict and the calibration card (a simulate run is never calibrated)
    assert "Readiness" in out and "not calibrated" in out
    assert main(["report", str(store), "--format", "csv", "--out", str(tmp_path / "frames")]) == 0
    assert (tmp_path / "frames" / "sessions.csv").exists() and (
        tmp_path / "frames" / "verdicts.csv"
    ).exists()
    assert main(["report", str(store), "--format", "parquet", "--out", str(tmp_path / "pq")]) == 0
    import fastparquet  # after the export, which imports it with its pandas warning silenced

    for name in ("sessions", "turns", "verdicts", "readiness"):
        csv = pd.read_csv(tmp_path / "frames" / f"{name}.csv") if name != "readiness" else None
        back = fastparquet.ParquetFile(str(tmp_path / "pq" / f"{name}.parquet")).to_pandas()
        if csv is not None:  # the same rows and columns as the csv export, value for value
            assert list(back.columns) == list(csv.columns) and len(back) == len(csv) > 0
            for column in csv.columns:
                _assert_same_values(back[column], csv[column])
    assert set(back.columns) == {"subject", "axis", "status", "evidence"}
    assert main(["report", str(store), "--format", "json", "--out", str(tmp_path / "j")]) == 0
    readiness = json.loads((tmp_path / "j" / "frames.json").read_text())["readiness"]
    assert [r["axis"] for r in readiness][-1] == "overall"
    assert {r["status"] for r in readiness} <= {"PASS", "FAIL", "NOT_ASSESSED"}
    assert set(readiness[0]) == {"subject", "axis", "status", "evidence"}


def _assert_same_values(got: pd.Series, want: pd.Series) -> None:
    """Equal up to how each format types a column: numbers as numbers (NaN equal to a missing
    value), the rest as text (``None`` and NaN both missing)."""
    if pd.api.types.is_numeric_dtype(want) and not pd.api.types.is_bool_dtype(want):
        numbers = pd.to_numeric(got.astype(object).where(got.notna()), errors="raise")
        assert np.allclose(numbers.astype(float), want.astype(float), equal_nan=True), want.name
        return
    text = [None if pd.isna(v) else str(v) for v in got]
    assert text == [None if pd.isna(v) else str(v) for v in want], want.name


def test_run_dry_run_calls_no_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(
        Path(__file__).resolve().parents[2] / "studies" / "quickstart.yaml", tmp_path / "q.yaml"
    )
    assert main(["run", "q.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sessions (48 to run" in out and "estimated cost" in out
    assert not (tmp_path / "runs").exists()
    # a real model in the study: the estimate still calls nothing (real calls are blocked here)
    doc = yaml.safe_load((tmp_path / "q.yaml").read_text())
    doc["subjects"] = {"gpt": "openai:gpt-4o-mini"}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(doc))
    assert main(["run", "r.yaml", "--dry-run"]) == 0
    assert "estimated cost $" in capsys.readouterr().out


def test_run_study_end_to_end_and_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    doc = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "studies" / "quickstart.yaml").read_text()
    )
    doc["personas"] = {"ids": ["pe-combat-01", "cbt-sleep-01"]}
    doc["subjects"] = {"adherent": "scripted:adherent", "safety-reflex": "scripted:safety-reflex"}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    assert main(["run", "s.yaml", "--no-report"]) == 0
    assert "8 completed, 0 failed, 0 already done" in capsys.readouterr().out
    assert main(["run", "s.yaml", "--no-report"]) == 0
    assert "0 completed, 0 failed, 8 already done" in capsys.readouterr().out
    assert main(["status", "runs/quickstart"]) == 0
    assert "8 completed, 0 failed, 0 not run (of 8)" in capsys.readouterr().out


def test_run_summary_does_not_count_battery_answers_as_sessions(tmp_path: Path) -> None:
    from therasim.cli.studies import run_summary
    from therasim.pipeline import StudyRun
    from therasim.simulations.runner import RunStats
    from therasim.simulations.study import load_study

    doc = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "studies" / "single-vs-multi.yaml").read_text()
    )
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(doc))
    (tmp_path / "sessions.yaml").write_text(yaml.safe_dump({**doc, "mode": "sessions"}))
    stats = RunStats(completed=8)

    def line(name: str) -> str:
        study = load_study(tmp_path / name)
        return run_summary(StudyRun(study, tmp_path, tmp_path / "s.sqlite", stats, 32, None))

    both = line("both.yaml")
    assert "8 completed, 0 failed, 0 already done · 32 judged (sessions and battery " in both
    assert "sessions judged" not in both
    assert "8 completed, 0 failed, 0 already done · 32 sessions judged · store" in line(
        "sessions.yaml"
    )


def test_run_output_overrides_the_study_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    doc = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "studies" / "quickstart.yaml").read_text()
    )
    doc["personas"] = {"ids": ["pe-combat-01"]}
    doc["subjects"] = {"adherent": "scripted:adherent"}
    doc.pop("calibration")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    assert main(["run", "s.yaml", "--output", "elsewhere", "--no-judge"]) == 0
    assert (tmp_path / "elsewhere" / "sessions.sqlite").exists()
    assert (tmp_path / "elsewhere" / "report.html").stat().st_size > 0
    assert not (tmp_path / "runs").exists()
    assert not list((tmp_path / "elsewhere").glob(".*.partial"))


# --------------------------------------------------------------------------------------------
# Issue 12, item 16: `validate` checks each file by its kind

ROOT = Path(__file__).resolve().parents[2]
STUDIES = sorted((ROOT / "studies").glob("*.yaml"))


def test_validate_checks_the_shipped_studies_as_studies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert len(STUDIES) >= 4
    assert main(["validate", *map(str, STUDIES)]) == 0
    assert f"all valid: {len(STUDIES)} studies" in capsys.readouterr().out
    assert main(["validate", str(ROOT / "studies")]) == 0  # a folder too


def test_validate_tells_every_kind_apart_in_one_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Files moved out of their folders are told by their content."""
    for source in (
        ROOT / "studies" / "quickstart.yaml",
        ROOT / "protocols" / "library" / "pe-three-phase.yaml",
        ROOT / "evaluation" / "rubrics" / "pe.yaml",
        LIBRARY / "cbt" / "cbt-sleep-01.yaml",
        ROOT / "agents" / "prompts" / "cues_task.yaml",
        ROOT / "agents" / "gold" / "risk.jsonl",
    ):
        shutil.copy(source, tmp_path / source.name)
    (tmp_path / "notes.yaml").write_text("anything: else\n")  # no known kind: skipped
    assert main(["validate", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 persona (0 PE, 1 CBT), 1 protocol, 1 study, 1 rubric, 1 cue file, 90 gold" in out
    assert "skipped 1 file(s) of no known kind" in out and "notes.yaml" in out


def test_validate_kind_override_and_unknown_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    persona = LIBRARY / "pe" / "pe-combat-01.yaml"
    assert main(["validate", "--kind", "study", str(persona)]) == 1
    assert "pe-combat-01.yaml" in capsys.readouterr().err
    odd = tmp_path / "odd.yaml"
    odd.write_text("anything: else\n")
    assert main(["validate", str(odd)]) == 1
    assert "cannot tell which kind of data file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("repeats: 5\n", "the key 'repeats' appears twice"),  # a duplicate key
        ('personas: {ids: ["pe-nobody-01"]}\n', "unknown persona 'pe-nobody-01'"),
    ],
)
def test_validate_refuses_a_bad_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str, expected: str
) -> None:
    text = (ROOT / "studies" / "quickstart.yaml").read_text()
    if change.startswith("personas"):
        text = text.replace('personas:\n  globs: ["pe-*", "cbt-*"]\n  limit: 3\n', "")
    study = tmp_path / "studies" / "bad.yaml"
    study.parent.mkdir()
    study.write_text(text + change)
    assert main(["validate", str(study)]) == 1
    err = capsys.readouterr().err
    assert expected in err and "bad.yaml" in err


# --------------------------------------------------------------------------------------------
# Issue 12, item 22: file-system faults end in one line and a non-zero exit code


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def _small_study(tmp_path: Path) -> Path:
    doc = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
    doc["personas"] = {"ids": ["pe-combat-01"]}
    doc["subjects"] = {"adherent": "scripted:adherent"}
    doc.pop("calibration")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_output_under_a_regular_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    study = _small_study(tmp_path)
    (tmp_path / "plain").write_text("a file, not a folder")
    Store(tmp_path / "store.sqlite").close()
    commands = {
        ("run", str(study), "--output", "plain/run"): "plain/run: Not a directory [ENOTDIR]",
        ("report", "store.sqlite", "--html", "plain/r.html"): "plain: File exists [EEXIST]",
        ("report", "store.sqlite", "--format", "csv", "--out", "plain/f"): "plain/f: Not a dir",
    }
    for argv, expected in commands.items():
        capsys.readouterr()
        assert main(list(argv)) == 1, argv
        line = _one_error_line(capsys.readouterr().err)
        assert line.startswith("error: ") and expected in line, line


def test_read_only_folder_disk_full_and_store_faults_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faults this suite cannot cause for real (it runs as root, on a roomy disk) are injected
    where the system raises them: a folder that refuses writes, a write that finds the disk
    full (no file name in the error), an SQLite store that cannot be written."""
    import errno
    import os
    import sqlite3

    monkeypatch.chdir(tmp_path)
    study = _small_study(tmp_path)
    Store(tmp_path / "store.sqlite").close()

    def read_only(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    with monkeypatch.context() as patch:
        patch.setattr(Path, "mkdir", read_only)
        assert main(["run", str(study), "--output", "ro/run"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "ro/run: Permission denied [EACCES]; choose a folder you can write to" in line

    def disk_full(self: Path, *args: object, **kwargs: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_text", disk_full)
        assert main(["report", "store.sqlite", "--format", "json", "--out", "frames"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "frames" in line and "No space left on device [ENOSPC]" in line

    def store_full(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    with monkeypatch.context() as patch:
        patch.setattr(sqlite3, "connect", store_full)
        assert main(["report", "store.sqlite"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "store.sqlite" in line and "database or disk is full" in line


def test_a_write_past_the_file_size_limit_is_one_line_in_a_real_process(tmp_path: Path) -> None:
    """A real failing write, without root or a full disk: RLIMIT_FSIZE makes the kernel refuse
    writes past 64 kB (EFBIG), as a full disk refuses them."""
    import resource
    import subprocess
    import sys

    Store(tmp_path / "store.sqlite").close()

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (65_536, 65_536))

    done = subprocess.run(
        [sys.executable, "-m", "therasim", "report", "store.sqlite", "--html", "r.html"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=small_files,
    )
    assert done.returncode == 1, done.stderr
    line = _one_error_line(done.stderr)
    assert line.startswith("error: ") and "File too large [EFBIG]" in line, line


def test_a_reader_that_stops_early_ends_the_run_quietly(tmp_path: Path) -> None:
    """``therasim calibrate --format json | head``: once the reader has gone, the run ends with
    141 (as a tool killed by SIGPIPE does) and no error line."""
    import fcntl
    import os
    import subprocess
    import sys

    gold = tmp_path / "gold.jsonl"
    line = {
        "id": "g-0",
        "modality": "cbt",
        "phase_kind": "cbt_challenge",
        "severity": "routine",
        "risk": "none",
        "patient": "Everyone at work thinks I'm useless.",
        "therapist": "What is the evidence against that thought?",
        "codes": ["challenge_cognition"],
        "failures": [],
        "appropriate": True,
    }
    gold.write_text(
        "".join(json.dumps({**line, "id": f"g-{i}"}) + "\n" for i in range(20)), encoding="utf-8"
    )
    # a 4 kB pipe, so that the report (about 50 kB) cannot fit in it before the reader goes
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    calibrate = ["calibrate", "--gold", str(gold), "--appraiser", "scripted:lexical"]
    run = subprocess.Popen(
        [sys.executable, "-m", "therasim", *calibrate, "--format", "json", "--no-cache"],
        cwd=tmp_path,
        stdout=write_end,
        stderr=subprocess.PIPE,
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        assert b"{" in reader.read(16)
    assert run.stderr is not None
    err = run.stderr.read().decode()
    assert run.wait(timeout=120) == 141, err
    assert "error" not in err.lower(), err


def test_a_broken_pipe_elsewhere_is_still_an_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a reader gone from stdout ends quietly: a broken pipe to anything else (a server, a
    child process) is a fault to report."""
    from therasim.cli import data

    def broken(args: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(data, "cmd_validate", broken)
    assert main(["validate"]) == 1
    assert "Broken pipe [EPIPE]" in _one_error_line(capsys.readouterr().err)


def test_bad_options_and_specs_fail_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Out-of-range numbers are usage errors naming the option; a typo'd model spec in
    ``simulate`` stores nothing; ``show`` never creates the store it is pointed at."""
    store = tmp_path / "s.sqlite"
    simulate = ["simulate", "--persona", "pe-combat-01", "--subject", "scripted:adherent"]
    for argv, option in (
        ([*simulate, "--max-turns", "-3"], "--max-turns"),
        ([*simulate, "--max-turns", "500"], "--max-turns"),
        (["calibrate", "--concurrency", "0"], "--concurrency"),
        (["calibrate", "--min-f1", "1.5"], "--min-f1"),
        (["judge", str(tmp_path), "--sample-turns", "0"], "--sample-turns"),
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2, argv
        assert f"argument {option}: " in capsys.readouterr().err
    typo = ["simulate", "--persona", "pe-combat-01", "--subject", "scriptd:adherent"]
    assert main([*typo, "--store", str(store), "--no-questionnaires"]) == 1
    assert "field --subject: unknown backend 'scriptd'" in capsys.readouterr().err
    assert not store.exists()
    assert main(["show", "abc", "--store", str(store)]) == 1
    assert "no such store" in capsys.readouterr().err
    assert not store.exists()


def test_a_study_selecting_unknown_personas_names_the_file_and_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for selection, field in (
        ({"ids": ["pe-combat-01", "pe-combat-99"]}, "personas.ids.1"),
        ({"globs": ["pe-*", "pz-*"]}, "personas.globs.1"),
    ):
        path = tmp_path / "s.yaml"
        doc = {"id": "t", "subjects": {"a": "scripted:adherent"}, "personas": selection}
        path.write_text(yaml.safe_dump({**doc, "output": str(tmp_path / "run")}))
        assert main(["run", str(path), "--dry-run"]) == 1
        err = capsys.readouterr().err
        assert f"{path}: id 't', field {field}: " in err, err


def test_a_repeated_or_empty_counterfactual_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same change twice gives the same session ids (run twice, counted twice, stored
    once); an empty one repeats the base persona."""
    for changes, reason in (
        ([{"age": 70}, {"gender": "female"}, {"age": 70}], "entry 2 repeats entry 0"),
        ([{"age": 70}, {}], "entry 1 is empty"),
    ):
        path = tmp_path / "s.yaml"
        doc = {"id": "t", "subjects": {"a": "scripted:adherent"}, "counterfactuals": changes}
        path.write_text(yaml.safe_dump({**doc, "output": str(tmp_path / "run")}))
        assert main(["run", str(path), "--dry-run"]) == 1
        assert f"field counterfactuals: {reason}" in capsys.readouterr().err
