"""Every data-file kind's JSON Schema, and where it is stored beside its files.

The models are the truth (pydantic, ``extra="forbid"``); the ``*.schema.json`` files are their
exports for editors and for people reading the format, kept current by a test and written by
``scripts/export_schemas.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

from pydantic import BaseModel


def _models() -> dict[str, tuple[type[BaseModel], str, Path]]:
    from therasim.agents.gold import GoldTurn
    from therasim.evaluation.judging.rubric import Rubric
    from therasim.personas.schema import Persona
    from therasim.protocols.schema import Protocol
    from therasim.simulations.battery_items import BatteryItem
    from therasim.simulations.study import Study

    here: dict[str, type[BaseModel]] = {
        "persona": Persona,
        "protocol": Protocol,
        "rubric": Rubric,
        "study": Study,
        "gold": GoldTurn,
        "battery_item": BatteryItem,
    }
    places = {  # the package folder beside the files of that kind (installed with them)
        "persona": "therasim.personas",
        "protocol": "therasim.protocols",
        "rubric": "therasim.evaluation",
        "study": "therasim.simulations",
        "gold": "therasim.agents",
        "battery_item": "therasim.simulations",
    }
    below = {"rubric": "rubrics/", "gold": "gold/"}
    titles = {"gold": "therasim gold turn", "battery_item": "therasim battery item"}
    out = {}
    for kind, model in here.items():
        folder = Path(str(files(places[kind])))
        path = folder / f"{below.get(kind, '')}{kind}.schema.json"
        out[kind] = (model, titles.get(kind, f"therasim {kind}"), path)
    return out


SCHEMAS: tuple[str, ...] = ("persona", "protocol", "rubric", "study", "gold", "battery_item")


def schema_of(kind: str) -> dict[str, Any]:
    """The JSON Schema of one data-file kind."""
    from therasim.loading import json_schema_of

    model, title, _ = _models()[kind]
    return json_schema_of(model, title)


def schema_path(kind: str) -> Path:
    """Where the kind's schema file lives in the source tree."""
    return _models()[kind][2]


def write_schema(kind: str, render: Callable[[dict[str, Any]], str] | None = None) -> Path:
    """Write one kind's schema file; returns its path."""
    from therasim.loading import render_json_schema

    path = schema_path(kind)
    path.write_text((render or render_json_schema)(schema_of(kind)), encoding="utf-8")
    return path
