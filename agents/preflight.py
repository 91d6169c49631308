"""Check a model spec before any session runs, so that ``--dry-run`` fails on what the real
run would fail on: an unknown ``scripted:`` name, a ``python:`` module or function that does
not import, a ``local:`` model file that is missing or a ``local`` extra not installed.

Nothing here calls a model or starts a server.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from therasim.agents.llm import parse_model_spec
from therasim.agents.scripted import get_scripted
from therasim.errors import ConfigError, LocalModelUnavailable, UnknownNameError


def check_model_spec(spec: str, *, field: str) -> None:
    """Raise a ``ConfigError`` naming ``field`` when ``spec`` could not be called."""
    try:
        model = parse_model_spec(spec)
    except ConfigError as exc:
        raise ConfigError(str(exc), field=field) from None
    if model.backend == "scripted":
        try:
            get_scripted(model.name)
        except UnknownNameError as exc:
            raise ConfigError(str(exc), field=field) from None
    elif model.backend == "python":
        module_name, _, func_name = model.name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"model {spec!r}: module {module_name!r} does not import ({exc})", field=field
            ) from None
        if not callable(getattr(module, func_name, None)):
            raise ConfigError(
                f"model {spec!r}: module {module_name!r} has no function {func_name!r}",
                field=field,
            )
    elif model.backend == "local":
        from therasim.agents.local import INSTALL_HINT, bundled_model_path

        if importlib.util.find_spec("llama_cpp") is None:
            raise ConfigError(f"model {spec!r}: {INSTALL_HINT}", field=field)
        try:
            path = Path(model.name).expanduser() if model.name else bundled_model_path()
        except LocalModelUnavailable as exc:
            raise ConfigError(f"model {spec!r}: {exc}", field=field) from None
        if not path.is_file():
            raise ConfigError(f"model {spec!r}: no GGUF file at {path}", field=field)
