"""The data files shipped in ``agents/prompts/`` (prompt templates, lexicon, utterance banks)."""

from __future__ import annotations

import functools
from importlib.resources import files


@functools.cache
def read_prompt(name: str) -> str:
    """The text of ``agents/prompts/<name>``, read once per process (participants ask every turn)."""
    return (files("therasim.agents") / "prompts" / name).read_text(encoding="utf-8")
