"""The gateway: every LLM call of every role goes through ``Gateway.complete``.

Roles (``subject``, ``patient``, ``appraiser``, ``judge:<name>``) map to model specs in a
:class:`GatewayConfig`; code names roles, never models. A model spec is a string:

==============================================  ===============================================
``openai:MODEL``                                 any OpenAI-compatible endpoint (OpenAI, vLLM,
``openai:MODEL?base_url=URL&api_key_env=VAR``    Ollama, llama.cpp), one aiohttp POST a call
``PROVIDER:MODEL`` (``anthropic:…``, ``ollama:…``)  LangChain's ``init_chat_model`` (with
                                                 langchain-openai for ``azure_openai``)
``local`` / ``local:/path/to/model.gguf``        the bundled SmolLM2-135M (or your GGUF), served
                                                 by llama-cpp-python on loopback
``scripted:NAME``                                a deterministic built-in (``agents/scripted.py``)
``python:package.module:function``               a whole application under test; gets the
                                                 message list, sync or async, returns text
==============================================  ===============================================

The gateway owns: bounded retries with exponential backoff and jitter on transient errors;
a concurrency limit and a requests-per-minute limit per role; a persistent SQLite response
cache keyed on model spec, messages, parameters, seed and repeat index; token and cost
accounting per role; structured output with fallbacks (``json_schema`` response format →
``json_object`` with a schema, which llama.cpp's server accepts → plain prompt) plus one repair
round, remembering per model which mode worked; timeouts. Errors come from the one tree in
:mod:`therasim.errors` and always name the role and model.

The ``local`` backend is sized to a small model on a few cores (:mod:`therasim.agents.local`):
its server is started and warmed before the first timed call; calls go to it one at a time (it
serves one anyway), so a call's timeout counts its own generation, not the queue; the timeout is
``local_timeout_s`` (600 s) unless the config sets one; a local timeout is not retried, because
the server finishes the abandoned generation first and a retry would wait behind it; a call that
sets no ``max_tokens`` gets ``local_max_tokens`` (structured calls at least 512).

Real backends (``openai``, LangChain providers, ``local``) refuse to run while
:func:`allow_model_requests` is off — the test suite turns it off so nothing reaches a real
endpoint by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import json
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from therasim.agents.local import LOCAL_MAX_TOKENS, LOCAL_STRUCTURED_MAX_TOKENS, LOCAL_TIMEOUT_S
from therasim.agents.scripted import run_scripted
from therasim.agents.types import CompletionRequest, CompletionResponse, Message, Usage
from therasim.errors import (
    ConfigError,
    ModelConnectionError,
    ModelError,
    ModelRequestsBlocked,
    ModelTimeout,
    PermanentModelError,
    RateLimited,
    ServerError,
    StructuredOutputError,
    TransientModelError,
    UnknownNameError,
)

T = TypeVar("T", bound=BaseModel)

StructuredMode = Literal["json_schema", "json_object", "prompt"]
STRUCTURED_MODES: tuple[StructuredMode, ...] = ("json_schema", "json_object", "prompt")

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
BACKENDS = ("openai", "local", "scripted", "python", *LANGCHAIN_PROVIDERS)
OPENAI_API_BASE = "https://api.openai.com/v1"

# --------------------------------------------------------------------------- real-call switch

_ALLOW_REAL = threading.Event()
_ALLOW_REAL.set()


def allow_model_requests(allowed: bool) -> None:
    """Allow or forbid calls to real backends, process-wide (tests forbid them by default)."""
    if allowed:
        _ALLOW_REAL.set()
    else:
        _ALLOW_REAL.clear()


def model_requests_allowed() -> bool:
    """Whether real backends may be called."""
    return _ALLOW_REAL.is_set()


@contextlib.contextmanager
def real_model_requests() -> Iterator[None]:
    """Opt in to real calls for the duration of a block (restores the previous setting)."""
    before = model_requests_allowed()
    allow_model_requests(True)
    try:
        yield
    finally:
        allow_model_requests(before)


# --------------------------------------------------------------------------- model specs


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
    backend, sep, rest = spec.partition(":")
    if not sep:
        raise UnknownNameError("backend", spec, list(BACKENDS))
    if backend not in BACKENDS:
        raise UnknownNameError("backend", backend, list(BACKENDS))
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


# --------------------------------------------------------------------------- configuration


class RoleConfig(BaseModel):
    """How one role calls its model."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        description="Model spec, e.g. 'local', 'openai:gpt-4o-mini', 'scripted:adherent'."
    )
    concurrency: int = Field(
        default=8, ge=1, le=4096, description="Calls in flight at once for this role."
    )
    rpm: float | None = Field(
        default=None, gt=0, description="Requests per minute; null for no limit."
    )
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="Overrides the request's temperature."
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="Overrides the request's max_tokens."
    )


class Price(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class GatewayConfig(BaseModel):
    """Roles → models, and the gateway's policies."""

    model_config = ConfigDict(extra="forbid")

    roles: dict[str, RoleConfig] = Field(
        default_factory=dict,
        description="Role → model. 'judge' covers every 'judge:<name>'; 'default' covers any role not named.",
    )
    cache_path: str | None = Field(
        default=None, description="SQLite response cache; default $THERASIM_HOME/cache.sqlite."
    )
    cache_enabled: bool = Field(default=True, description="Serve repeated requests from the cache.")
    max_attempts: int = Field(
        default=4, ge=1, le=20, description="Attempts per call on transient errors."
    )
    backoff_base_s: float = Field(
        default=0.5, ge=0, description="First retry delay; doubles each retry."
    )
    backoff_max_s: float = Field(default=8.0, ge=0, description="Longest delay between retries.")
    timeout_s: float = Field(default=120.0, gt=0, description="Timeout of one backend call.")
    local_timeout_s: float = Field(
        default=LOCAL_TIMEOUT_S,
        gt=0,
        description="Timeout of one call to a `local` model once its server is up and warm. "
        "When only timeout_s is set, timeout_s applies to local calls too.",
    )
    local_max_tokens: int = Field(
        default=LOCAL_MAX_TOKENS,
        ge=1,
        description="max_tokens of a local call whose caller and role set none "
        f"(structured calls: at least {LOCAL_STRUCTURED_MAX_TOKENS}, so JSON is not cut short).",
    )
    prices: dict[str, Price] = Field(
        default_factory=dict,
        description="Model name → price; overrides the genai-prices table (local and scripted cost 0).",
    )

    def timeout_for(self, model: ModelSpec) -> float:
        """The timeout of one call to ``model``: ``local_timeout_s`` for the local backend (or
        ``timeout_s`` when only that was set), ``timeout_s`` for every other backend."""
        if model.backend != "local":
            return self.timeout_s
        explicit = self.model_fields_set
        if "timeout_s" in explicit and "local_timeout_s" not in explicit:
            return self.timeout_s
        return self.local_timeout_s

    def role(self, role: str) -> RoleConfig:
        """The configuration for ``role`` (exact, then 'judge' for 'judge:*', then 'default')."""
        if role in self.roles:
            return self.roles[role]
        if role.startswith("judge:") and "judge" in self.roles:
            return self.roles["judge"]
        if "default" in self.roles:
            return self.roles["default"]
        raise UnknownNameError("role", role, list(self.roles))


def therasim_home() -> Path:
    """Where therasim keeps its cache (``$THERASIM_HOME``, else ``~/.cache/therasim``)."""
    return Path(os.environ.get("THERASIM_HOME") or Path.home() / ".cache" / "therasim")


# --------------------------------------------------------------------------- cache


class ResponseCache:
    """A persistent response cache in SQLite, safe to share between tasks of one process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT, text TEXT,"
            " input_tokens INTEGER, output_tokens INTEGER, cost_usd REAL, structured_mode TEXT,"
            " created REAL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS modes (model TEXT PRIMARY KEY, mode TEXT)")
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> tuple[str, Usage, str | None] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT text, input_tokens, output_tokens, cost_usd, structured_mode FROM responses WHERE key=?",
                (key,),
            ).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return row[0], Usage(input_tokens=row[1], output_tokens=row[2], cost_usd=row[3]), row[4]

    def put(self, key: str, model: str, text: str, usage: Usage, mode: str | None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?,?,?)",
                (
                    key,
                    model,
                    text,
                    usage.input_tokens,
                    usage.output_tokens,
                    usage.cost_usd,
                    mode,
                    time.time(),
                ),
            )

    def mode(self, model: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT mode FROM modes WHERE model=?", (model,)).fetchone()
        return row[0] if row else None

    def set_mode(self, model: str, mode: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO modes VALUES (?,?)", (model, mode))

    def size(self) -> tuple[int, int]:
        """(entries, bytes on disk)."""
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM responses").fetchone()
        size = sum(
            p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.exists()
        )
        return int(n), size

    def close(self) -> None:
        with self._lock:
            self._db.close()


# --------------------------------------------------------------------------- accounting


@dataclass
class RoleUsage:
    """Totals for one role."""

    calls: int = 0
    cached_calls: int = 0
    backend_calls: int = 0
    retries: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class Accounting:
    """Per-role usage of one gateway."""

    roles: dict[str, RoleUsage] = field(default_factory=dict)

    def for_role(self, role: str) -> RoleUsage:
        return self.roles.setdefault(role, RoleUsage())

    def total(self) -> RoleUsage:
        out = RoleUsage()
        for r in self.roles.values():
            for name in vars(out):
                setattr(out, name, getattr(out, name) + getattr(r, name))
        return out


def price_of(model: ModelSpec, usage: Usage, table: dict[str, Price]) -> float | None:
    """Cost in USD from the configured table, else genai-prices; None when unknown."""
    if not model.is_real or model.backend == "local":
        return 0.0
    if model.name in table:
        p = table[model.name]
        return (
            usage.input_tokens * p.input_per_mtok + usage.output_tokens * p.output_per_mtok
        ) / 1e6
    if model.base_url:  # a self-hosted endpoint: public prices do not apply
        return None
    try:
        from genai_prices import Usage as GPUsage
        from genai_prices import calc_price

        provider = "openai" if model.backend == "openai" else model.backend.split("_")[0]
        result = calc_price(
            GPUsage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens),
            model_ref=model.name,
            provider_id=provider,
        )
        return float(result.total_price)
    except Exception:  # unknown model or provider: cost is unknown, not zero
        return None


# --------------------------------------------------------------------------- backends


@dataclass
class _Raw:
    text: str
    usage: Usage


@dataclass(frozen=True)
class _Endpoint:
    url: str
    model: str
    api_key: str | None
    compatible: bool  # a self-hosted server (reads max_tokens), not the OpenAI API itself
    proxy: str | None = None


def _env_proxy(url: str) -> str | None:
    """The proxy the environment (``HTTPS_PROXY``, ``NO_PROXY``, ...) names for ``url``.

    Resolved once per endpoint: aiohttp's ``trust_env`` re-reads the environment on every
    request, which cost a quarter of a study's CPU (``benchmarks/``).
    """
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    parts = urlsplit(url)
    if parts.hostname and proxy_bypass(parts.hostname):
        return None
    return getproxies().get(parts.scheme)


def _status_error(status: int, body: bytes, role: str, model: str) -> ModelError:
    """An HTTP error answer as a therasim error (the server's own message kept)."""
    text = body.decode("utf-8", "replace")
    try:
        error = json.loads(text).get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    detail = f"HTTP {status}: {str(message or text)[:500]}"
    if status == 429:
        return RateLimited(detail, role=role, model=model)
    if status == 408:
        return ModelTimeout(detail, role=role, model=model)
    if status >= 500:
        return ServerError(detail, role=role, model=model)
    return PermanentModelError(detail, role=role, model=model)


def _map_backend_error(exc: BaseException, role: str, model: str) -> ModelError:
    """Translate an HTTP client's or LangChain provider's exception into the therasim tree."""
    import aiohttp
    import httpx
    import openai

    msg = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, openai.RateLimitError):
        return RateLimited(msg, role=role, model=model)
    if isinstance(
        exc,
        openai.APITimeoutError
        | httpx.TimeoutException
        | asyncio.TimeoutError
        | aiohttp.ServerTimeoutError,
    ):
        return ModelTimeout(msg, role=role, model=model)
    if isinstance(
        exc, openai.APIConnectionError | httpx.ConnectError | aiohttp.ClientConnectionError
    ):
        return ModelConnectionError(msg, role=role, model=model)
    if isinstance(exc, openai.InternalServerError | aiohttp.ClientPayloadError):
        return ServerError(msg, role=role, model=model)
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code >= 500:
            return ServerError(msg, role=role, model=model)
        if exc.status_code == 429:
            return RateLimited(msg, role=role, model=model)
        return PermanentModelError(msg, role=role, model=model)
    return PermanentModelError(msg, role=role, model=model)


class Gateway:
    """The one place LLM calls happen. Create one per process (or per study) and share it."""

    def __init__(self, config: GatewayConfig | None = None) -> None:
        self.config = config or GatewayConfig()
        self.accounting = Accounting()
        self._cache: ResponseCache | None = None
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._limiters: dict[str, Any] = {}
        self._clients: dict[str, Any] = {}  # LangChain chat models by spec
        self._modes: dict[str, StructuredMode] = {}
        self._endpoints: dict[str, _Endpoint] = {}
        self._http: Any = None  # aiohttp.ClientSession, made on first use
        self._local_start = asyncio.Lock()
        self._local_slots: dict[str, asyncio.Lock] = {}  # one call at a time per local server

    # ---- plumbing

    @property
    def cache(self) -> ResponseCache | None:
        if not self.config.cache_enabled:
            return None
        if self._cache is None:
            path = (
                Path(self.config.cache_path)
                if self.config.cache_path
                else therasim_home() / "cache.sqlite"
            )
            self._cache = ResponseCache(path)
        return self._cache

    def model_for(self, request: CompletionRequest) -> ModelSpec:
        """The model spec a request goes to."""
        if request.model:
            return parse_model_spec(request.model)
        return parse_model_spec(self.config.role(request.role).model)

    def _role_config(self, role: str) -> RoleConfig | None:
        try:
            return self.config.role(role)
        except UnknownNameError:
            return None

    def _semaphore(self, role: str) -> asyncio.Semaphore:
        if role not in self._semaphores:
            rc = self._role_config(role)
            self._semaphores[role] = asyncio.Semaphore(rc.concurrency if rc else 8)
        return self._semaphores[role]

    def _limiter(self, role: str) -> Any:
        if role not in self._limiters:
            rc = self._role_config(role)
            if rc and rc.rpm:
                from aiolimiter import AsyncLimiter

                # one request per 60/rpm seconds: steady pacing, no initial burst
                self._limiters[role] = AsyncLimiter(1, 60 / rc.rpm)
            else:
                self._limiters[role] = None
        return self._limiters[role]

    async def aclose(self) -> None:
        """Release HTTP clients and the cache connection."""
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.close()
            self._http = None
        self._endpoints.clear()
        self._clients.clear()
        self._local_slots.clear()  # asyncio locks bind to the loop that used them
        self._local_start = asyncio.Lock()
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    # ---- public API

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        """One call: cache, limits, retries, accounting. Raises a :class:`ModelError`."""
        return await self._complete(request, mode=None, schema=None)

    async def structured(
        self, request: CompletionRequest, schema: type[T]
    ) -> tuple[T, CompletionResponse]:
        """A call whose answer is parsed into ``schema``, trying the output modes in order.

        Modes: ``json_schema`` response format, then ``json_object`` with the schema (what
        llama.cpp's server accepts), then a plain prompt. A reply that does not validate gets one
        repair round (the error is shown to the model). The mode that worked is remembered per
        model, in memory and in the cache database.
        """
        model = self.model_for(request)
        role = request.role
        modes = self._modes_to_try(model)
        last_error: Exception | None = None
        for mode in modes:
            req = self._with_schema_prompt(request, schema) if mode == "prompt" else request
            try:
                response = await self._complete(req, mode=mode, schema=schema)
            except PermanentModelError as exc:
                if mode != "prompt" and _looks_like_unsupported_format(exc):
                    last_error = exc
                    continue  # this server does not take this response format: try the next
                raise
            try:
                parsed = _parse_json_into(response.text, schema)
            except (ValueError, ValidationError) as exc:
                repaired = await self._repair(req, response, schema, exc, mode)
                if repaired is None:
                    last_error = exc
                    continue
                parsed, response = repaired
            self._remember_mode(model, mode)
            response.structured_mode = mode
            return parsed, response
        raise StructuredOutputError(
            f"no output mode produced valid {schema.__name__} JSON (tried {', '.join(modes)}): {last_error}",
            role=role,
            model=model.raw,
        )

    # ---- internals

    def _modes_to_try(self, model: ModelSpec) -> list[StructuredMode]:
        if model.backend in ("scripted", "python"):
            return ["prompt"]
        known = self._modes.get(model.raw)
        if known is None and self.cache is not None:
            stored = self.cache.mode(model.raw)
            if stored in STRUCTURED_MODES:
                known = stored
        if model.backend not in ("openai", "local"):
            order: list[StructuredMode] = ["json_schema", "prompt"]
        else:
            order = list(STRUCTURED_MODES)
        if known in order:
            order.remove(known)
            order.insert(0, known)
        return order

    def _remember_mode(self, model: ModelSpec, mode: StructuredMode) -> None:
        if self._modes.get(model.raw) != mode:
            self._modes[model.raw] = mode
            if self.cache is not None:
                self.cache.set_mode(model.raw, mode)

    @staticmethod
    def _with_schema_prompt(
        request: CompletionRequest, schema: type[BaseModel]
    ) -> CompletionRequest:
        instruction = (
            "Answer with one JSON object only, no prose, that validates against this JSON Schema:\n"
            + _schema_json(schema)
        )
        return request.model_copy(
            update={"messages": (*request.messages, Message(role="user", content=instruction))}
        )

    async def _repair(
        self,
        request: CompletionRequest,
        response: CompletionResponse,
        schema: type[T],
        error: Exception,
        mode: StructuredMode,
    ) -> tuple[T, CompletionResponse] | None:
        fix = Message(
            role="user",
            content=(
                "Your last answer was not valid JSON for the required schema. Error: "
                f"{str(error)[:500]}\nReply again with only the corrected JSON object."
            ),
        )
        repair_req = request.model_copy(
            update={
                "messages": (
                    *request.messages,
                    Message(role="assistant", content=response.text),
                    fix,
                ),
            }
        )
        try:
            repaired = await self._complete(repair_req, mode=mode, schema=schema)
            return _parse_json_into(repaired.text, schema), repaired
        except (ValueError, ValidationError, PermanentModelError):
            return None

    async def _complete(
        self,
        request: CompletionRequest,
        *,
        mode: StructuredMode | None,
        schema: type[BaseModel] | None,
    ) -> CompletionResponse:
        model = self.model_for(request)
        role = request.role
        rc = self._role_config(role)
        if rc is not None:
            request = request.model_copy(
                update={
                    k: v
                    for k, v in (("temperature", rc.temperature), ("max_tokens", rc.max_tokens))
                    if v is not None
                }
            )
        if model.backend == "local":
            request = self._with_local_max_tokens(request, rc, structured=schema is not None)
        usage = self.accounting.for_role(role)
        usage.calls += 1
        cache = self.cache if model.backend != "scripted" else None
        key = request.cache_key(model.raw, {"mode": mode}) if cache is not None else ""
        if cache is not None:
            hit = cache.get(key)
            if hit is not None:
                text, u, stored_mode = hit
                usage.cached_calls += 1
                return CompletionResponse(
                    text=text,
                    role=role,
                    model=model.raw,
                    usage=u,
                    cached=True,
                    structured_mode=stored_mode,
                )
        if model.is_real and not model_requests_allowed():
            usage.errors += 1
            raise ModelRequestsBlocked(
                "real model requests are disabled here (tests: use the 'allow_model_requests' fixture)",
                role=role,
                model=model.raw,
            )
        if model.backend == "local" and model.raw not in self._endpoints:
            try:
                await self._start_local(model, role)
            except ModelError:
                usage.errors += 1
                raise
        timeout = self.config.timeout_for(model)
        started = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._semaphore(role):
                    limiter = self._limiter(role)
                    if limiter is not None:
                        await limiter.acquire()
                    async with self._local_slot(model):
                        usage.backend_calls += 1
                        # asyncio.timeout, not wait_for: on Python 3.11 wait_for runs the call in
                        # a task of its own, a cost paid on every call
                        async with asyncio.timeout(timeout):
                            raw = await self._call_backend(model, request, mode, schema)
                break
            except TimeoutError as exc:
                error: ModelError = ModelTimeout(
                    f"no answer within {timeout:g} s", role=role, model=model.raw
                )
                error.__cause__ = exc
            except ModelError as exc:
                error = exc
            except ConfigError:
                raise
            except Exception as exc:  # backend libraries raise their own types
                error = (
                    _map_backend_error(exc, role, model.raw)
                    if model.backend != "python"
                    else (
                        PermanentModelError(
                            f"{type(exc).__name__}: {exc}", role=role, model=model.raw
                        )
                    )
                )
            if mode in ("json_schema", "json_object") and _looks_like_unsupported_format(error):
                # llama.cpp answers 500 to a response format it does not take: not worth a retry
                raise PermanentModelError(error.detail, role=role, model=model.raw) from error
            if model.backend == "local" and isinstance(error, ModelTimeout):
                # the server keeps generating for the abandoned request: a retry would queue
                # behind it and silently double the latency
                usage.errors += 1
                error.detail += (
                    f" (after {attempt} attempt{'s' if attempt > 1 else ''}; a local timeout is"
                    " not retried: raise local_timeout_s or lower max_tokens)"
                )
                error.args = (f"[role {role}, model {model.raw}] {error.detail}",)
                raise error
            if not isinstance(error, TransientModelError) or attempt >= self.config.max_attempts:
                usage.errors += 1
                if isinstance(error, TransientModelError):
                    error.detail += f" (after {attempt} attempts)"
                    error.args = (f"[role {role}, model {model.raw}] {error.detail}",)
                raise error
            usage.retries += 1
            delay = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (attempt - 1))
            await asyncio.sleep(
                delay * (0.5 + random.random() / 2)
            )  # jitter: 50-100 % of the delay
        latency = time.perf_counter() - started
        raw.usage.cost_usd = price_of(model, raw.usage, self.config.prices)
        usage.input_tokens += raw.usage.input_tokens
        usage.output_tokens += raw.usage.output_tokens
        usage.cost_usd += raw.usage.cost_usd or 0.0
        if cache is not None:
            cache.put(key, model.raw, raw.text, raw.usage, mode)
        return CompletionResponse(
            text=raw.text,
            role=role,
            model=model.raw,
            usage=raw.usage,
            latency_s=latency,
            attempts=attempt,
        )

    def _with_local_max_tokens(
        self, request: CompletionRequest, rc: RoleConfig | None, *, structured: bool
    ) -> CompletionRequest:
        """The request with the local default ``max_tokens`` when neither its caller nor its
        role set one (a caller's or role's value is never changed)."""
        if "max_tokens" in request.model_fields_set or (rc is not None and rc.max_tokens):
            return request
        cap = self.config.local_max_tokens
        if structured:
            cap = max(cap, LOCAL_STRUCTURED_MAX_TOKENS)
        return request.model_copy(update={"max_tokens": cap})

    async def _start_local(self, model: ModelSpec, role: str) -> None:
        """Start and warm ``model``'s server in a worker thread, before any timed call.

        ``ensure_local_server`` blocks (start-up and warm-up take seconds); run inside the
        call's timeout it froze the event loop and counted toward the first call's time.
        """
        async with self._local_start:
            if model.raw in self._endpoints:
                return
            try:
                await asyncio.to_thread(self._endpoint, model, role)
            except ModelError as exc:
                raise type(exc)(exc.detail, role=role, model=model.raw) from exc

    def _local_slot(self, model: ModelSpec) -> contextlib.AbstractAsyncContextManager[Any]:
        """One call at a time to a local server (no-op for other backends), so that a call's
        timeout starts when the server starts on it, not when it joins the server's queue."""
        if model.backend != "local":
            return contextlib.nullcontext()
        lock = self._local_slots.get(model.raw)
        if lock is None:
            lock = self._local_slots[model.raw] = asyncio.Lock()
        return lock

    async def _call_backend(
        self,
        model: ModelSpec,
        request: CompletionRequest,
        mode: StructuredMode | None,
        schema: type[BaseModel] | None,
    ) -> _Raw:
        if model.backend == "scripted":
            text = await run_scripted(model.name, request)
            return _Raw(text, _approx_usage(request, text))
        if model.backend == "python":
            return await self._call_python(model, request)
        if model.backend in ("openai", "local"):
            return await self._call_openai(model, request, mode, schema)
        return await self._call_langchain(model, request, mode, schema)

    async def _call_python(self, model: ModelSpec, request: CompletionRequest) -> _Raw:
        module_name, _, func_name = model.name.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), func_name)
        except (ImportError, AttributeError) as exc:
            raise PermanentModelError(
                f"cannot load {model.name}: {exc}", role=request.role, model=model.raw
            ) from exc
        messages = [m.model_dump() for m in request.messages]
        result = (
            fn(messages)
            if inspect.iscoroutinefunction(fn)
            else await asyncio.to_thread(fn, messages)
        )
        if inspect.isawaitable(result):
            result = await result
        text = (
            result
            if isinstance(result, str)
            else str(result.get("content", ""))
            if isinstance(result, dict)
            else str(result)
        )
        return _Raw(text, _approx_usage(request, text))

    def _endpoint(self, model: ModelSpec, role: str) -> _Endpoint:
        """Where an ``openai:``/``local`` spec's requests go, resolved once per spec."""
        endpoint = self._endpoints.get(model.raw)
        if endpoint is not None:
            return endpoint
        if model.backend == "local":
            from therasim.agents.local import ensure_local_server

            server = ensure_local_server(model.name or None)
            endpoint = _Endpoint(
                f"{server.base_url}/chat/completions", server.model_alias, "sk-local", True
            )
        else:
            env = model.api_key_env or "OPENAI_API_KEY"
            api_key = os.environ.get(env)
            if api_key is None and model.base_url is None:
                raise PermanentModelError(
                    f"no API key: set the environment variable {env}", role=role, model=model.raw
                )
            base = model.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_API_BASE
            endpoint = _Endpoint(
                f"{base.rstrip('/')}/chat/completions",
                model.name,
                api_key,
                compatible=model.base_url is not None,
            )
        endpoint = replace(endpoint, proxy=_env_proxy(endpoint.url))
        self._endpoints[model.raw] = endpoint
        return endpoint

    def _http_session(self) -> Any:
        """The gateway's one aiohttp session, made on first use (it binds the running loop)."""
        if self._http is None:
            import aiohttp

            self._http = aiohttp.ClientSession(
                # the roles' concurrency limits bound the connections; asyncio.timeout in
                # _complete bounds each call
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None),
                headers={"Content-Type": "application/json"},
            )
        return self._http

    async def _call_openai(
        self,
        model: ModelSpec,
        request: CompletionRequest,
        mode: StructuredMode | None,
        schema: type[BaseModel] | None,
    ) -> _Raw:
        """One chat completion from an OpenAI-compatible endpoint: a single aiohttp POST.

        Not the openai SDK: its request pipeline (through langchain-openai's client and httpx)
        cost about 1 ms more CPU a call, which kept a 64-way study at 0.86 of the backend's
        capacity against 0.92 on this path (``benchmarks/``). The protocol is one JSON POST;
        status codes map onto :mod:`therasim.errors`.
        """
        import aiohttp

        endpoint = self._endpoint(model, request.role)
        payload: dict[str, Any] = {
            "model": endpoint.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
        }
        # OpenAI itself takes `max_completion_tokens`; llama.cpp and most other compatible
        # servers read only the classic `max_tokens`.
        payload["max_tokens" if endpoint.compatible else "max_completion_tokens"] = (
            request.max_tokens
        )
        if request.seed is not None:
            payload["seed"] = request.seed
        if request.stop:
            payload["stop"] = list(request.stop)
        if schema is not None and mode == "json_schema":
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": schema.__name__,
                    "schema": _schema_dict(schema),
                    "strict": False,
                },
            }
        elif schema is not None and mode == "json_object":
            payload["response_format"] = {
                "type": "json_object",
                "schema": _schema_dict(schema),
            }
        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else None
        try:
            async with self._http_session().post(
                endpoint.url, data=json.dumps(payload), headers=headers, proxy=endpoint.proxy
            ) as reply:
                status, body = reply.status, await reply.read()
        except aiohttp.ClientError as exc:
            raise _map_backend_error(exc, request.role, model.raw) from exc
        if status >= 400:
            raise _status_error(status, body, request.role, model.raw)
        try:
            data = json.loads(body)
            text = data["choices"][0]["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ServerError(
                f"malformed chat completion: {body[:200]!r}", role=request.role, model=model.raw
            ) from exc
        usage = data.get("usage") or {}
        if usage:
            return _Raw(
                text,
                Usage(
                    input_tokens=int(usage.get("prompt_tokens") or 0),
                    output_tokens=int(usage.get("completion_tokens") or 0),
                ),
            )
        return _Raw(text, _approx_usage(request, text))

    async def _call_langchain(
        self,
        model: ModelSpec,
        request: CompletionRequest,
        mode: StructuredMode | None,
        schema: type[BaseModel] | None,
    ) -> _Raw:
        key = model.raw
        if key not in self._clients:
            from langchain.chat_models import init_chat_model

            try:
                self._clients[key] = init_chat_model(model.name, model_provider=model.backend)
            except Exception as exc:
                raise PermanentModelError(
                    f"LangChain cannot build {model.raw}: {exc}", role=request.role, model=model.raw
                ) from exc
        client = self._clients[key]
        kwargs: dict[str, Any] = {
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        }
        if schema is not None and mode == "json_schema":
            runnable = client.with_structured_output(schema, include_raw=True)
            out = await runnable.ainvoke(_to_langchain(request.messages))
            raw = out["raw"]
            parsed = out.get("parsed")
            text = parsed.model_dump_json() if isinstance(parsed, BaseModel) else _content_text(raw)
            return _Raw(text, _usage_of(raw, request))
        message = await client.ainvoke(_to_langchain(request.messages), **kwargs)
        return _Raw(_content_text(message), _usage_of(message, request))


# --------------------------------------------------------------------------- helpers


def _to_langchain(messages: tuple[Message, ...]) -> list[tuple[str, str]]:
    kinds = {"system": "system", "user": "human", "assistant": "ai"}
    return [(kinds[m.role], m.content) for m in messages]


def _content_text(message: Any) -> str:
    content = getattr(message, "content", message)
    if isinstance(content, list):
        return "".join(
            part.get("text", "") if isinstance(part, dict) else str(part) for part in content
        )
    return str(content)


def _approx_tokens(text: str) -> int:
    # Scripted and python backends report no usage; ~4 characters a token keeps budgets honest.
    return max(1, len(text) // 4) if text else 0


def _approx_usage(request: CompletionRequest, text: str) -> Usage:
    return Usage(
        input_tokens=sum(_approx_tokens(m.content) for m in request.messages),
        output_tokens=_approx_tokens(text),
    )


def _usage_of(message: Any, request: CompletionRequest) -> Usage:
    meta = getattr(message, "usage_metadata", None)
    if meta:
        return Usage(
            input_tokens=int(meta.get("input_tokens", 0)),
            output_tokens=int(meta.get("output_tokens", 0)),
        )
    return _approx_usage(request, _content_text(message))


@functools.cache
def _schema_json(schema: type[BaseModel]) -> str:
    # A JSON Schema costs about a millisecond to build; a study asks for the same few thousands of times.
    return json.dumps(schema.model_json_schema(), separators=(",", ":"))


def _schema_dict(schema: type[BaseModel]) -> dict[str, Any]:
    return dict(json.loads(_schema_json(schema)))


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> str:
    """The JSON object inside a reply: fenced block, else the outermost braces."""
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    start, end = text.find("{"), text.rfind("}")
    if start == -1 or end <= start:
        raise ValueError("no JSON object in the reply")
    return text[start : end + 1]


def _parse_json_into(text: str, schema: type[T]) -> T:
    return schema.model_validate_json(extract_json(text))


def _looks_like_unsupported_format(exc: ModelError) -> bool:
    detail = exc.detail.lower()
    return "response_format" in detail or "json_schema" in detail


class BoundGateway:
    """A view of a gateway for one session: fixes the model of some roles and logs every call.

    Participants call ``complete``/``structured`` as on a :class:`Gateway`; requests of a bound
    role get that model (so one study can run many subjects through one gateway, sharing its
    per-role limits), and every response is appended to ``calls`` for the session's record.
    """

    def __init__(self, gateway: Gateway, models: dict[str, str]) -> None:
        self.gateway = gateway
        self.models = models
        self.calls: list[CompletionResponse] = []

    def _bind(self, request: CompletionRequest) -> CompletionRequest:
        model = self.models.get(request.role)
        if model is None and request.role.startswith("judge:"):
            model = self.models.get("judge")
        if model is None or request.model is not None:
            return request
        return request.model_copy(update={"model": model})

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        response = await self.gateway.complete(self._bind(request))
        self.calls.append(response)
        return response

    async def structured(
        self, request: CompletionRequest, schema: type[T]
    ) -> tuple[T, CompletionResponse]:
        parsed, response = await self.gateway.structured(self._bind(request), schema)
        self.calls.append(response)
        return parsed, response
