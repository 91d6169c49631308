"""``--dry-run`` fails, naming the file and field, on what the real run would fail on, and a
run whose verdicts are all errors does not exit 0 (issue 12, item 17)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from factories import study_file

from therasim.cli import main


def _study(tmp_path: Path, **kw: Any) -> Path:
    return study_file(tmp_path, id="preflight", **kw)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"subjects": {"a": "scripted:adherant"}}, "subjects.a.model", "did you mean 'adherent'"),
        (
            {"subjects": {"a": "python:no_such_module_x:reply"}},
            "subjects.a.model",
            "does not import",
        ),
        ({"subjects": {"a": "python:json:no_such_function"}}, "subjects.a.model", "no function"),
        ({"subjects": {"a": "local:/nowhere/model.gguf"}}, "subjects.a.model", "no GGUF file"),
        ({"patient": {"model": "scripted:template-patent"}}, "patient.model", "did you mean"),
        (
            {"judges": [{"name": "x", "model": "scripted:lexical-jugde"}]},
            "judges.0.model",
            "did you mean 'lexical-judge'",
        ),
        (
            {
                "judges": [
                    {"name": "x", "model": "scripted:lexical-judge", "prompt_variant": "strikt"}
                ]
            },
            "judges.0",
            "strict",
        ),
        ({"rubrics": ["pee"]}, "rubrics", "unknown rubric"),
    ],
)
def test_dry_run_fails_fast_naming_file_and_field(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: dict[str, Any],
    field: str,
    message: str,
) -> None:
    path = _study(tmp_path, **change)
    assert main(["run", str(path), "--dry-run"]) == 1
    err = capsys.readouterr()
    text = " ".join((err.out + err.err).split())
    assert str(path) in text and f"field {field}" in text and message in text
    assert "Traceback" not in text
    assert not (tmp_path / "run").exists()  # nothing was simulated


def test_a_run_whose_verdicts_are_all_errors_does_not_exit_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from factories import scripted_agents

    from therasim.agents.types import CompletionRequest

    def broken(request: CompletionRequest) -> str:
        return "not json at all"

    path = _study(tmp_path, judges=[{"name": "broken", "model": "scripted:test-broken-judge"}])
    with scripted_agents({"test-broken-judge": broken}):
        assert main(["run", str(path), "--no-report"]) == 3
    assert "judge broken: all" in " ".join(capsys.readouterr().out.split())
