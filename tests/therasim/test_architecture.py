"""Imports flow one way: personas, protocols → agents → simulations → evaluation (DESIGN.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["personas", "protocols", "agents", "simulations", "evaluation"]
# what each layer may import from therasim (besides itself and therasim.errors)
ALLOWED = {
    "personas": set(),
    "protocols": {"personas"},
    "agents": {"personas", "protocols"},
    "simulations": {"personas", "protocols", "agents"},
    "evaluation": {"personas", "protocols", "agents", "simulations"},
}


def therasim_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "therasim" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_flow_one_way(layer: str) -> None:
    bad = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for target in therasim_imports(path) - {layer, "errors"}:
            if target in LAYERS and target not in ALLOWED[layer]:
                bad.append(f"{path.relative_to(ROOT)} imports therasim.{target}")
    assert not bad, "\n".join(bad)


def test_error_tree_imports_nothing_of_therasim() -> None:
    assert therasim_imports(ROOT / "therasim" / "errors.py") == set()


def test_folders_import_only_as_therasim_subpackages() -> None:
    ok = subprocess.run(
        [
            sys.executable,
            "-c",
            "import therasim.agents, therasim.personas, therasim.protocols, therasim.simulations, therasim.evaluation",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    for folder in LAYERS:
        bad = subprocess.run(
            [sys.executable, "-c", f"import {folder}"], cwd=ROOT, capture_output=True, text=True
        )
        assert bad.returncode != 0, f"'import {folder}' should fail"
        assert "ImportError" in bad.stderr or "ModuleNotFoundError" in bad.stderr


STAGES = ["judging", "analysis", "report"]


def evaluation_stage_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[:2] == ["therasim", "evaluation"] and len(parts) > 2:
                found.add(parts[2])
    return found


@pytest.mark.parametrize("stage", STAGES)
def test_evaluation_stages_import_only_earlier_stages(stage: str) -> None:
    """Inside evaluation the flow is judging → analysis → report; the pipeline sits above."""
    later = set(STAGES[STAGES.index(stage) + 1 :])
    bad = [
        f"{path.relative_to(ROOT)} imports evaluation.{target}"
        for path in sorted((ROOT / "evaluation" / stage).rglob("*.py"))
        for target in evaluation_stage_imports(path) & later
    ]
    assert not bad, "\n".join(bad)


def test_no_layer_imports_the_cli_the_pipeline_or_the_studio() -> None:
    bad = [
        f"{path.relative_to(ROOT)} imports therasim.{target}"
        for layer in LAYERS
        for path in sorted((ROOT / layer).rglob("*.py"))
        for target in therasim_imports(path) & {"cli", "pipeline", "studio"}
    ]
    assert not bad, "\n".join(bad)
