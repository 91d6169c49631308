"""Model spec strings (``backend:name[?base_url=…&api_key_env=…]``) and the backend names."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from urllib.parse import parse_qsl

from therasim.errors import ConfigError, UnknownNameError

# Providers LangChain's init_chat_model understands (besides "openai", which is ours).
LANGCHAIN_PROVIDERS = (
    "anthropic",
    "azure_openai",
    "bedrock",
    "bedrock_converse",
    "cohere",
    "deepseek",
    "fireworks",
    "google_genai",
    "google_vertexai",
    "groq",
    "huggingface",
    "mistralai",
    "ollama",
    "perplexity",
    "together",
    "xai",
)
BUILTIN_BACKENDS = ("openai", "local", "scripted", "python", *LANGCHAIN_PROVIDERS)


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec string."""

    raw: str
    backend: str
    name: str
    base_url: str | None = None
    api_key_env: str | None = None

    @property
    def is_real(self) -> bool:
        return self.backend not in ("scripted", "python")


@functools.lru_cache(maxsize=1024)
def parse_model_spec(spec: str) -> ModelSpec:
    """Parse ``backend:name[?base_url=…&api_key_env=…]`` (or ``local``)."""
    spec = spec.strip()
    if not spec:
        raise ConfigError("empty model spec", field="model")
    if spec == "local":
        return ModelSpec(raw=spec, backend="local", name="")
    from therasim.agents.llm.backends import BACKENDS  # the registry imports this module

    backend, sep, rest = spec.partition(":")
    if not sep:
        raise UnknownNameError("backend", spec, BACKENDS.names())
    if backend not in BACKENDS:
        raise UnknownNameError("backend", backend, BACKENDS.names())
    name, _, query = rest.partition("?")
    params = dict(parse_qsl(query)) if query else {}
    unknown = sorted(set(params) - {"base_url", "api_key_env"})
    if unknown:
        raise ConfigError(
            f"model spec {spec!r}: unknown option(s) {', '.join(unknown)} (allowed: base_url, api_key_env)",
            field="model",
        )
    if not name and backend != "local":
        raise ConfigError(f"model spec {spec!r} names no model after '{backend}:'", field="model")
    if backend == "python" and name.count(":") != 1:
        raise ConfigError(
            f"model spec {spec!r}: write python:package.module:function", field="model"
        )
    return ModelSpec(
        raw=spec,
        backend=backend,
        name=name,
        base_url=params.get("base_url"),
        api_key_env=params.get("api_key_env"),
    )
