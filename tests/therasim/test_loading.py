"""The one loader: strict YAML, then pydantic, then a ConfigError naming file, id and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from therasim.errors import ConfigError
from therasim.loading import load_model, parse_model


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    weight: float = Field(ge=0, description="How much the item counts.")


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    items: list[_Item]


def test_load_model_returns_the_model(tmp_path: Path) -> None:
    path = tmp_path / "doc.yaml"
    path.write_text("id: d\nitems:\n  - {id: a, weight: 1}\n", encoding="utf-8")
    assert load_model(path, _Doc) == _Doc(id="d", items=[_Item(id="a", weight=1)])


def test_an_error_names_file_entry_field_and_the_fields_description(tmp_path: Path) -> None:
    path = tmp_path / "doc.yaml"
    path.write_text("id: d\nitems:\n  - {id: a, weight: 1}\n  - {id: b, weight: -2}\n")
    with pytest.raises(ConfigError) as info:
        load_model(path, _Doc)
    assert info.value.file == str(path)
    assert info.value.object_id == "b"  # the list entry that failed, not only the document
    assert info.value.field == "items.1.weight"
    assert "How much the item counts" in str(info.value)


def test_an_unknown_field_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'weight'\? Allowed here: id, weight"):
        parse_model("id: d\nitems:\n  - {id: a, wieght: 1}\n", _Doc, source="x.yaml")


def test_every_problem_is_listed_in_one_error() -> None:
    with pytest.raises(ConfigError, match=r"2 problems:\n  - 'a', items.0.weight: .*\n  - 'b'"):
        parse_model("id: d\nitems: [{id: a, weight: -1}, {id: b}]\n", _Doc, source="x.yaml")


def test_duplicate_keys_are_refused_with_both_lines() -> None:
    with pytest.raises(ConfigError, match=r"line 3.*'id' appears twice \(first on line 1\)"):
        parse_model("id: d\nitems: []\nid: e\n", _Doc, source="x.yaml")


@pytest.mark.parametrize(
    ("text", "needle"),
    [("", "is empty"), ("- 1\n- 2\n", "holds a list"), ("id: [\n", "not valid YAML")],
)
def test_documents_that_are_not_one_mapping_are_refused(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        parse_model(text, _Doc, source="x.yaml")
    assert info.value.file == "x.yaml"


def test_an_override_replaces_the_reason_for_its_field() -> None:
    with pytest.raises(ConfigError, match=r"^x\.yaml, field id: custom reason$"):
        parse_model(
            "items: []\nid: 3\n", _Doc, source="x.yaml", overrides={("id",): "custom reason"}
        )
