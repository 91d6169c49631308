"""The report's banner names the tiny local model only in studies that used it (issue 12,
item 11)."""

from __future__ import annotations

from therasim.evaluation.report.html_sections import toy_models_note as _toy_models_note
from therasim.simulations.study import Study


def _study(**subjects: str) -> Study:
    return Study.model_validate(
        {"id": "b", "subjects": subjects, "personas": {"ids": ["pe-combat-01"]}}
    )


def test_the_banner_names_only_the_toy_models_a_study_used() -> None:
    assert "SmolLM2" in _toy_models_note(_study(small="local", arm="scripted:adherent"))
    scripted_only = _toy_models_note(_study(arm="scripted:adherent"))
    assert "SmolLM2" not in scripted_only and "scripted reference" in scripted_only
    assert _toy_models_note(_study(real="openai:gpt-4o-mini")) == ""
    assert _toy_models_note(None) == ""
