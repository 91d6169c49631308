"""``scripts/coder_cv.py --from-dump``: saved out-of-fold codes go through the current codebook
rules, so a rule change can be scored without a cross-validation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "coder_cv.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120
    )


def test_saved_codes_are_scored_through_the_codebook_rules(tmp_path: Path) -> None:
    # 'Thanks.' in an evidence step, saved with no model codes: the short-reply rule makes it
    # task_abandonment (its gold code); the SUDS probe keeps its one saved code
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps({"cbt-chl-088": [], "risk-038": ["suds_probe"]}), encoding="utf-8")
    result = run("--from-dump", str(dump), "--misses", "task_abandonment")
    assert result.returncode == 0, result.stderr
    assert "dev CV (2 turns): code micro P/R/F1 1.000/1.000/1.000" in result.stdout
    assert "task_abandonment           n=  1 R=1.00 P=1.00" in result.stdout
    assert "MISSED" not in result.stdout and "WRONG" not in result.stdout


def test_a_dump_with_an_id_outside_the_dev_split_names_the_file(tmp_path: Path) -> None:
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps({"no-such-turn": []}), encoding="utf-8")
    result = run("--from-dump", str(dump))
    assert result.returncode == 2
    assert f"{dump}: 1 ids not in the dev split, e.g. no-such-turn" in result.stderr


def test_a_dump_with_an_unknown_code_names_the_turn_and_entry(tmp_path: Path) -> None:
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps({"risk-038": ["suds_probe", "not_a_code"]}), encoding="utf-8")
    result = run("--from-dump", str(dump))
    assert result.returncode == 2
    assert f"{dump}: 1 problem(s); risk-038.1: Input should be" in result.stderr
    assert "Traceback" not in result.stderr
