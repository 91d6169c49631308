"""Bad data files of every kind end in one clear ConfigError naming the file, never a traceback:
invalid UTF-8, binary content, nesting too deep for the parser, duplicate keys."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from therasim.agents.gold import load_gold
from therasim.agents.statcoder import load_cues
from therasim.cli import main
from therasim.errors import ConfigError
from therasim.evaluation.rubric import load_rubric
from therasim.personas.loader import load_persona, read_data_file
from therasim.protocols import load_protocol
from therasim.simulations.study import load_study

MUTANTS: dict[str, bytes] = {
    "invalid-utf8": b"id: x\nname: \xff\xfe broken\n",
    "binary": b"\x00\x01\x02PK\x03\x04" * 50,
    "deep-nesting": b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "duplicate-key": b"id: x\nrepeats: 1\nrepeats: 5\n",
}

LOADERS: dict[str, Callable[[Path], Any]] = {
    "study": load_study,
    "rubric": load_rubric,
    "persona": load_persona,
    "protocol": load_protocol,
    "data file": read_data_file,
    "cues": lambda p: load_cues([p]),
}


@pytest.mark.parametrize("kind", sorted(LOADERS))
@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_every_loader_names_the_file(tmp_path: Path, kind: str, mutant: str) -> None:
    path = tmp_path / f"{mutant}.yaml"
    path.write_bytes(MUTANTS[mutant])
    with pytest.raises(ConfigError) as info:
        LOADERS[kind](path)
    assert path.name in str(info.value)


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_gold_files_and_the_cli_end_in_one_line(
    tmp_path: Path, mutant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"{mutant}.jsonl"
    path.write_bytes(MUTANTS[mutant])
    with pytest.raises(ConfigError):
        load_gold([path])
    study = tmp_path / f"{mutant}.yaml"
    study.write_bytes(MUTANTS[mutant])
    assert main(["run", str(study), "--dry-run"]) == 1
    assert main(["validate", str(study)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and study.name in err
