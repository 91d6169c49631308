"""Model spec strings (``backend:name[?base_url=…&api_key_env=…]``) and the backend names.

``base_url`` may list several OpenAI-compatible replicas of one model, comma-separated
(``openai:MODEL?base_url=URL1,URL2``); ``replica_concurrency`` and ``replica_rpm`` limit each of
them (:mod:`therasim.agents.llm.replicas`, ``docs/scale-out.md``). A spec's ``raw`` string is
what the cache key and the records name, so a one-URL spec keys and records exactly as before.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qsl, urlsplit

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
N = TypeVar("N", int, float)
SPEC_OPTIONS = ("base_url", "api_key_env", "replica_concurrency", "replica_rpm")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec string."""

    raw: str
    backend: str
    name: str
    base_url: str | None = None  # the first of ``base_urls``: one URL reads as it always did
    api_key_env: str | None = None
    #: every replica's base URL, in the spec's order (empty when the spec names none)
    base_urls: tuple[str, ...] = ()
    #: calls in flight at once on each replica (None: only the role's limit)
    replica_concurrency: int | None = None
    #: requests per minute to each replica (None: only the role's limit)
    replica_rpm: float | None = None

    @property
    def is_real(self) -> bool:
        """Whether calls reach a model that costs time or money (not scripted or Python)."""
        return self.backend not in ("scripted", "python")

    @property
    def replicated(self) -> bool:
        """Whether calls go through a replica pool (several URLs, or a per-replica limit)."""
        return (
            len(self.base_urls) > 1
            or self.replica_concurrency is not None
            or self.replica_rpm is not None
        )


@functools.lru_cache(maxsize=1024)
def parse_model_spec(spec: str) -> ModelSpec:
    """Parse ``backend:name[?base_url=URL[,URL…]&api_key_env=…&replica_…=…]`` (or ``local``).

    Errors are ``ConfigError``s that quote the spec and name the bad option or URL."""
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
    unknown = sorted(set(params) - set(SPEC_OPTIONS))
    if unknown:
        raise ConfigError(
            f"model spec {spec!r}: unknown option(s) {', '.join(unknown)} (allowed: {', '.join(SPEC_OPTIONS)})",
            field="model",
        )
    if not name and backend != "local":
        raise ConfigError(f"model spec {spec!r} names no model after '{backend}:'", field="model")
    if backend == "python" and name.count(":") != 1:
        raise ConfigError(
            f"model spec {spec!r}: write python:package.module:function", field="model"
        )
    urls = _base_urls(spec, params["base_url"]) if "base_url" in params else ()
    model = ModelSpec(
        raw=spec,
        backend=backend,
        name=name,
        base_url=urls[0] if urls else None,
        api_key_env=params.get("api_key_env"),
        base_urls=urls,
        replica_concurrency=_positive(spec, params, "replica_concurrency", int),
        replica_rpm=_positive(spec, params, "replica_rpm", float),
    )
    if model.replicated and not urls:
        raise ConfigError(
            f"model spec {spec!r}: replica_concurrency and replica_rpm limit the replicas named"
            " in base_url: add base_url=URL1,URL2",
            field="model",
        )
    if model.replicated and backend in BUILTIN_BACKENDS and backend != "openai":
        raise ConfigError(
            f"model spec {spec!r}: replicas (several base URLs, replica_concurrency, replica_rpm)"
            " need an OpenAI-compatible endpoint: write openai:MODEL?base_url=URL1,URL2",
            field="model",
        )
    return model


def _base_urls(spec: str, value: str) -> tuple[str, ...]:
    """The comma-separated ``base_url`` option as URLs; an error names the bad one."""
    parts = [part.strip() for part in value.split(",")]
    urls: list[str] = []
    for position, url in enumerate(parts, 1):
        where = f"base URL {position} of {len(parts)}" if len(parts) > 1 else "base URL"
        if not url:
            raise ConfigError(f"model spec {spec!r}: {where} is empty", field="model")
        problem = _url_problem(url)
        if problem:
            raise ConfigError(f"model spec {spec!r}: {where} {url!r} {problem}", field="model")
        if url in urls:
            raise ConfigError(
                f"model spec {spec!r}: {where} {url!r} is listed twice", field="model"
            )
        urls.append(url)
    return tuple(urls)


def _url_problem(url: str) -> str:
    """Why ``url`` cannot be an HTTP endpoint, or ``""``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port that is not a number in range)
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "needs an http:// or https:// scheme"
    if not parts.hostname:
        return "names no host"
    return ""


def _positive(spec: str, params: dict[str, str], option: str, kind: type[N]) -> N | None:
    """A positive number option (``kind`` int or float), or None when absent."""
    if option not in params:
        return None
    try:
        number = kind(params[option])
    except ValueError:
        number = kind(0)
    if not (number > 0 and math.isfinite(number)):
        raise ConfigError(
            f"model spec {spec!r}: {option} must be a positive {kind.__name__}, not {params[option]!r}",
            field="model",
        )
    return number
