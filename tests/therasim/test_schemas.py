"""Every data-file kind's JSON Schema file matches its model (personas, protocols, rubrics,
studies, gold turns), and the shipped YAML files point their editors at it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from therasim.schemas import SCHEMAS, schema_of, schema_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", SCHEMAS)
def test_the_schema_file_is_up_to_date(kind: str) -> None:
    path = schema_path(kind)
    assert path.is_file(), f"{path} is missing: run scripts/export_schemas.py"
    assert json.loads(path.read_text(encoding="utf-8")) == schema_of(kind), (
        f"{path.relative_to(ROOT)} is stale: run scripts/export_schemas.py"
    )


@pytest.mark.parametrize(
    ("folder", "kind"),
    [("protocols/library", "protocol"), ("evaluation/rubrics", "rubric"), ("studies", "study")],
)
def test_shipped_files_name_their_schema(folder: str, kind: str) -> None:
    for path in sorted((ROOT / folder).glob("*.yaml")):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), path
        target = (path.parent / first.split("$schema=", 1)[1].strip()).resolve()
        assert target == schema_path(kind), path
