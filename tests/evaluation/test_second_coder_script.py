"""``scripts/second_coder.py``: a second coder's labels against the gold, Cohen's κ per label."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "second_coder.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("second_coder", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kappa_matches_the_hand_computed_value_and_is_undefined_for_one_label(
    script: ModuleType,
) -> None:
    # 60 turns: both say no on 40, only the first says yes on 3, only the second on 5, both on 12.
    # p_o = 52/60; p_e = (45/60)(43/60) + (15/60)(17/60) = 0.6083; κ = (0.8667 - 0.6083) / 0.3917
    a = [False] * 45 + [True] * 15
    b = [False] * 40 + [True] * 5 + [False] * 3 + [True] * 12
    k, low, high = script.kappa(a, b)
    assert k == pytest.approx(0.6596, abs=1e-4)
    assert low < k < high
    assert script.kappa([True] * 5, [True] * 5) is None  # chance agreement 1: 0/0
    assert script.kappa([False] * 5, [False] * 4 + [True]) == pytest.approx((0.0, 0.0, 0.0))


def test_labels_equal_to_the_gold_agree_fully_and_the_dump_is_scored_beside(
    tmp_path: Path,
) -> None:
    labels = tmp_path / "second.jsonl"
    labels.write_text(
        "\n".join(
            json.dumps(line)
            for line in (
                {
                    "id": "cbt-chl-088",
                    "codes": ["task_abandonment"],
                    "failures": ["task_abandonment"],
                    "appropriate": False,
                },
                {
                    "id": "risk-038",
                    "codes": ["suds_probe"],
                    "failures": ["missing_escalation"],
                    "appropriate": False,
                },
            )
        ),
        encoding="utf-8",
    )
    dump = tmp_path / "dump.json"  # the coder saw no code in 'Thanks.': the rules make it TA
    dump.write_text(json.dumps({"cbt-chl-088": [], "risk-038": ["suds_probe"]}), encoding="utf-8")
    result = run(str(labels), "--dump", str(dump))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "2 dev turns" in out
    full = "1    1   100%   1.00 [ 1.00,  1.00]     1.00 [ 1.00,  1.00]"  # 2nd and coder
    assert out.count(f"task_abandonment                {full}") == 2  # the code, the failure
    assert f"missing_escalation              {full}" in out
    assert "appropriate: agree 100%, κ 2nd vs gold   n/a" in out  # one label: κ undefined


def test_a_bad_label_names_the_file_line_and_field(tmp_path: Path) -> None:
    labels = tmp_path / "second.jsonl"
    labels.write_text(
        json.dumps({"id": "risk-038", "codes": ["suds_probe"], "failures": [], "appropriate": True})
        + "\n"
        + json.dumps(
            {"id": "risk-038", "codes": ["no_such_code"], "failures": [], "appropriate": 1}
        )
        + "\n",
        encoding="utf-8",
    )
    result = run(str(labels))
    assert result.returncode == 1
    assert f"{labels}:2: codes.0: Input should be" in result.stderr
    assert "Traceback" not in result.stderr


def test_test_split_turns_are_refused(tmp_path: Path) -> None:
    from therasim.agents.gold import load_shipped_gold

    test_id = next(t.id for t in load_shipped_gold() if t.split == "test")
    labels = tmp_path / "second.jsonl"
    line = {"id": test_id, "codes": [], "failures": [], "appropriate": True}
    labels.write_text(json.dumps(line) + "\n", encoding="utf-8")
    result = run(str(labels))
    assert result.returncode == 2 and "dev turns only" in result.stderr


def test_the_shipped_second_coder_labels_give_the_figures_the_docs_quote() -> None:
    """README and benchmarks/README.md §4 quote these; a change to the gold or the labels that
    moves them must move the docs too."""
    result = run()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("360 dev turns, second coder: second_coder_dev.jsonl")
    assert "  task_abandonment               72   71    99%   0.97 [ 0.94,  1.00]" in out
    assert "  generic_empathy                25   29    97%   0.80 [ 0.68,  0.92]" in out
    assert "appropriate: agree 100%, κ 2nd vs gold  0.99 [ 0.98,  1.01]" in out


def test_a_missing_file_or_an_unknown_failure_is_one_line(tmp_path: Path) -> None:
    result = run(str(tmp_path / "none.jsonl"))
    assert result.returncode == 1 and "none.jsonl:" in result.stderr
    assert "Traceback" not in result.stderr
    labels = tmp_path / "second.jsonl"
    line = {"id": "risk-038", "codes": [], "failures": ["made_up"], "appropriate": True}
    labels.write_text(json.dumps(line) + "\n", encoding="utf-8")
    result = run(str(labels))
    assert result.returncode == 1
    assert f"{labels}:1: failures.0: Input should be" in result.stderr
