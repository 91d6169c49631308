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
from therasim.evaluation.judging.rubric import load_rubric
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


# --------------------------------------------------------------------------------------------
# Issue 12, item 15: YAML limits (alias expansion, size, depth) and bounded messages

ROOT = Path(__file__).resolve().parents[2]


def _bomb(levels: int = 9) -> str:
    """A billion-laughs value (10**9 strings once expanded) written in about 400 characters."""
    parts = ['&l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    parts += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(f"id: x\nlaughs: {_bomb()}\n")
    with pytest.raises(ConfigError, match=r"expands to more than 100,000 values") as info:
        read_data_file(path)
    assert path.name in str(info.value)


def test_a_bomb_in_a_personas_free_form_field_fails_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`changes:` takes any mapping, so only the loader can stop the bomb (it used to pass
    `validate` and then take 6 GB in `personas show`)."""
    source = (ROOT / "personas" / "library" / "pe" / "pe-combat-01.yaml").read_text()
    path = tmp_path / "pe-bomb-01.yaml"
    path.write_text(source + f"changes: {{laughs: {_bomb()}}}\n")
    with pytest.raises(ConfigError, match="alias"):
        load_persona(path)
    assert main(["validate", str(path)]) == 1
    assert "pe-bomb-01.yaml" in capsys.readouterr().err


def test_aliases_within_the_limits_still_load(tmp_path: Path) -> None:
    path = tmp_path / "shared.yaml"
    path.write_text("base: &b {concurrency: 2, rpm: 60}\npatient: *b\nappraiser: *b\n")
    doc = read_data_file(path)
    assert doc["patient"] == doc["appraiser"] == {"concurrency": 2, "rpm": 60}


def test_an_alias_to_its_own_container_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("a: &x [1, *x]\n")
    with pytest.raises(ConfigError, match="refers to a value that contains it"):
        read_data_file(path)


def test_nesting_past_the_depth_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("a:" + "".join(f"\n{' ' * (i + 1)}k{i}:" for i in range(60)) + " 1\n")
    with pytest.raises(ConfigError, match="nested more than 50 levels"):
        read_data_file(path)


@pytest.mark.parametrize("kind", ["persona", "protocol", "rubric"])
def test_every_loader_refuses_a_file_over_the_size_limit(tmp_path: Path, kind: str) -> None:
    """Persona, protocol and rubric files are parsed from text, not via read_data_file: the
    size limit holds for them too (a 5 MB file used to load)."""
    source = {
        "persona": ROOT / "personas" / "library" / "pe" / "pe-combat-01.yaml",
        "protocol": ROOT / "protocols" / "library" / "pe-three-phase.yaml",
        "rubric": ROOT / "evaluation" / "rubrics" / "pe.yaml",
    }[kind]
    text = source.read_text() + "# " + "x" * 5_000_000 + "\n"  # a comment: valid YAML
    path = tmp_path / source.name
    path.write_text(text)
    assert path.stat().st_size > 5_000_000
    with pytest.raises(ConfigError) as info:
        LOADERS[kind](path)
    assert source.name in str(info.value) and "4,000,000" in str(info.value)


def test_messages_quote_huge_values_cut_short(tmp_path: Path) -> None:
    """A 3 MB `id:` is under the size limit, and the error naming the study must not repeat it."""
    study = (ROOT / "studies" / "quickstart.yaml").read_text()
    path = tmp_path / "long-id.yaml"
    path.write_text(study.replace("id: quickstart", f"id: {'Q' * 3_000_000}"))
    with pytest.raises(ConfigError) as info:
        load_study(path)
    message = str(info.value)
    assert path.name in message and "field id" in message
    assert len(message) < 1_000


def test_config_error_bounds_every_part() -> None:
    error = ConfigError(
        "bad value " + "v" * 10_000,
        file="f.yaml",
        object_id=[["lol"] * 10] * 10,  # not a string: shown through reprlib
        field="a." + "k" * 10_000,
    )
    text = str(error)
    assert len(text) < 1_200 and text.startswith("f.yaml, id [[")
    assert error.object_id == [["lol"] * 10] * 10  # the attribute keeps the value itself


def test_gold_lines_with_a_duplicate_key_or_deep_nesting_are_named(tmp_path: Path) -> None:
    from therasim.agents.gold import load_gold

    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "id": "b"}\n')
    with pytest.raises(ConfigError, match=r"dup.jsonl:1: the key 'id' appears twice"):
        load_gold([dup])
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match=r"deep.jsonl:1: .*nested too deeply"):
        load_gold([deep])


def test_a_bool_or_a_quoted_number_for_a_number_is_an_error_not_a_coercion(
    tmp_path: Path,
) -> None:
    """YAML's `true`/`yes` and a quoted "34" are not numbers, as the shipped JSON Schemas say;
    pydantic's lax mode read them as 1 and 34 (self-harm content surfacing at turn 1)."""
    shipped = Path(__file__).resolve().parents[2] / "personas" / "library" / "pe"
    text = (shipped / "pe-combat-01.yaml").read_text(encoding="utf-8")
    for old, new, field in (
        ("baseline_suds: 55", "baseline_suds: true", "baseline_suds"),
        ("surfaces_at_turn: 4", "surfaces_at_turn: yes", "surfaces_at_turn"),
        ("age: 34", 'age: "34"', "age"),
    ):
        assert old in text
        path = tmp_path / "p.yaml"
        path.write_text(text.replace(old, new, 1), encoding="utf-8")
        with pytest.raises(ConfigError, match=rf"p\.yaml.*field [\w.]*{field}"):
            load_persona(path)
    gold = tmp_path / "g.jsonl"
    line = (shipped.parents[2] / "agents" / "gold" / "risk.jsonl").read_text().splitlines()[0]
    gold.write_text(
        line.replace('"appropriate": true', '"appropriate": "yes"').replace(
            '"appropriate": false', '"appropriate": "yes"'
        )
    )
    with pytest.raises(ConfigError, match=r"g\.jsonl:1.*field appropriate"):
        load_gold([gold])
