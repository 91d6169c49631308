"""The gateway: retries, limits, timeouts, the cache, accounting and structured output around
the backends, which it reaches only through :class:`~therasim.agents.llm.backends.Backend`."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from therasim.agents.llm.backends import BACKENDS, Backend, BackendRegistry
from therasim.agents.llm.cache import ResponseCache
from therasim.agents.llm.config import GatewayConfig, RoleConfig, therasim_home
from therasim.agents.llm.spec import ModelSpec, parse_model_spec
from therasim.agents.llm.structured import (
    STRUCTURED_MODES,
    StructuredMode,
    T,
    looks_like_unsupported_format,
    order_modes,
    parse_json_into,
    repair_request,
    schema_json,
    with_schema_prompt,
)
from therasim.agents.llm.usage import Accounting, Totals, price_of
from therasim.agents.local import LOCAL_STRUCTURED_MAX_TOKENS
from therasim.agents.types import CompletionRequest, CompletionResponse, Usage
from therasim.errors import (
    ConfigError,
    ModelError,
    ModelRequestsBlocked,
    ModelTimeout,
    PermanentModelError,
    StructuredOutputError,
    TransientModelError,
    UnknownNameError,
)

# --------------------------------------------------------------------------- real-call switch

_ALLOW_REAL = threading.Event()
_ALLOW_REAL.set()


def _sum_usage(usages: list[Usage]) -> Usage:
    """The usages added up (``Totals.sum``), as one call's: the cost is unknown if one was."""
    total = Totals.sum(usages)
    return Usage(
        input_tokens=total.input_tokens,
        output_tokens=total.output_tokens,
        cost_usd=total.known_cost,
        cached_input_tokens=total.cached_input_tokens,
    )


def _unencodable(text: str) -> str | None:
    """Why ``text`` cannot be stored as UTF-8 (a lone surrogate), or None when it can.

    A reply is refused, not repaired: a lone surrogate (half of an emoji cut by a ``python:``
    app, a JSON ``\\ud83d`` escape) is no character at all, the store, cache and reports keep
    UTF-8 only, and the transcript is the log, so it holds what the model said or nothing
    (replacing the code point with U+FFFD would file an edited reply as the model's). The call
    fails ``PermanentModelError`` for the role that produced it: for the subject, the session
    ends ``subject_error`` and the batch goes on.
    """
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        return (
            f"the reply is not valid Unicode text and cannot be stored: {exc.reason}"
            f" (U+{ord(bad):04X} at character {exc.start} of {len(text)});"
            " it is refused, not repaired"
        )
    return None


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


# --------------------------------------------------------------------------- the gateway


class Gateway:
    """The one place LLM calls happen. Create one per process (or per study) and share it.

    ``backends`` replaces the backend of some names for this gateway (e.g. a
    :class:`~therasim.agents.llm.backends.FunctionBackend` for ``openai`` in a test); the others
    come from ``registry`` (by default :data:`BACKENDS`: the built-ins and any plugin's), one
    instance per name and gateway.
    """

    def __init__(
        self,
        config: GatewayConfig | None = None,
        *,
        backends: Mapping[str, Backend] | None = None,
        registry: BackendRegistry | None = None,
    ) -> None:
        self.config = config or GatewayConfig()
        self.accounting = Accounting()
        self._registry = registry or BACKENDS
        self._backends: dict[str, Backend] = dict(backends or {})
        self._cache: ResponseCache | None = None
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._limiters: dict[str, Any] = {}
        self._limit_keys: dict[str, str] = {}  # role -> whose limits it draws on
        self._modes: dict[str, StructuredMode] = {}
        self._local_slots: dict[str, asyncio.Lock] = {}  # one call at a time per local server

    # ---- plumbing

    @property
    def cache(self) -> ResponseCache | None:
        """The response cache, opened on first use; None when the config turns caching off."""
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

    def backend_for(self, model: ModelSpec) -> Backend:
        """The backend that serves ``model`` (made on first use)."""
        backend = self._backends.get(model.backend)
        if backend is None:
            backend = self._backends[model.backend] = self._registry.create(model.backend)
        return backend

    def _role_config(self, role: str) -> RoleConfig | None:
        try:
            return self.config.role(role)
        except UnknownNameError:
            return None

    def _limit_key(self, role: str) -> str:
        """Whose limits a call of ``role`` draws on: its config entry's, shared by every role
        that entry covers ('judge', 'default'); a role no entry covers has its own."""
        key = self._limit_keys.get(role)
        if key is None:
            entry = self.config.entry_name(role)
            key = self._limit_keys[role] = f"entry:{entry}" if entry is not None else f"role:{role}"
        return key

    def _semaphore(self, role: str) -> asyncio.Semaphore:
        key = self._limit_key(role)
        if key not in self._semaphores:
            rc = self._role_config(role)
            self._semaphores[key] = asyncio.Semaphore(rc.concurrency if rc else 8)
        return self._semaphores[key]

    def _limiter(self, role: str) -> Any:
        key = self._limit_key(role)
        if key not in self._limiters:
            rc = self._role_config(role)
            if rc and rc.rpm:
                from aiolimiter import AsyncLimiter

                # one request per 60/rpm seconds: steady pacing, no initial burst
                self._limiters[key] = AsyncLimiter(1, 60 / rc.rpm)
            else:
                self._limiters[key] = None
        return self._limiters[key]

    async def aclose(self) -> None:
        """Release HTTP clients and the cache connection."""
        for backend in self._backends.values():
            with contextlib.suppress(Exception):
                await backend.aclose()
        self._local_slots.clear()  # asyncio locks bind to the loop that used them
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
        llama.cpp's server accepts), then a plain prompt, as far as the backend takes them. A
        reply that does not validate gets one repair round (the error is shown to the model). The
        mode that worked is remembered per model, in memory and in the cache database.
        """
        model = self.model_for(request)
        role = request.role
        modes = self._modes_to_try(model)
        last_error: Exception | None = None
        spent: list[CompletionResponse] = []  # answers that did not validate: their tokens count
        for mode in modes:
            req = with_schema_prompt(request, schema) if mode == "prompt" else request
            try:
                response = await self._complete(req, mode=mode, schema=schema)
            except PermanentModelError as exc:
                if mode != "prompt" and looks_like_unsupported_format(exc):
                    last_error = exc
                    continue  # this server does not take this response format: try the next
                raise
            try:
                parsed = parse_json_into(response.text, schema)
            except (ValueError, ValidationError) as exc:
                spent.append(response)
                repaired = await self._repair(req, response, schema, exc, mode)
                if repaired is None:
                    last_error = exc
                    continue
                parsed, response = repaired
            self._remember_mode(model, mode)
            response.structured_mode = mode
            # one stored call row stands for the whole structured call (a cached answer's
            # tokens were spent before, so they join a cached row only)
            spent = [r for r in spent if r.cached == response.cached]
            if spent:
                response.usage = _sum_usage([*(r.usage for r in spent), response.usage])
                response.attempts += sum(r.attempts for r in spent)
            return parsed, response
        raise StructuredOutputError(
            f"no output mode produced valid {schema.__name__} JSON (tried {', '.join(modes)}): {last_error}",
            role=role,
            model=model.raw,
        )

    # ---- internals

    def _modes_to_try(self, model: ModelSpec) -> list[StructuredMode]:
        offered = self.backend_for(model).structured_modes
        if len(offered) == 1:
            return list(offered)
        known: str | None = self._modes.get(model.raw)
        if known is None and self.cache is not None:
            stored = self.cache.mode(model.raw)
            if stored in STRUCTURED_MODES:
                known = stored
        return order_modes(offered, known)

    def _remember_mode(self, model: ModelSpec, mode: StructuredMode) -> None:
        if self._modes.get(model.raw) != mode:
            self._modes[model.raw] = mode
            if self.cache is not None:
                self.cache.set_mode(model.raw, mode)

    async def _repair(
        self,
        request: CompletionRequest,
        response: CompletionResponse,
        schema: type[T],
        error: Exception,
        mode: StructuredMode,
    ) -> tuple[T, CompletionResponse] | None:
        try:
            repaired = await self._complete(
                repair_request(request, response.text, error), mode=mode, schema=schema
            )
            return parse_json_into(repaired.text, schema), repaired
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
        backend = self.backend_for(model)
        role = request.role
        rc = self._role_config(role)
        if rc is not None:
            update = {
                k: v
                for k, v in (("temperature", rc.temperature), ("max_tokens", rc.max_tokens))
                if v is not None
            }
            if update:  # most roles set neither: no copy then
                request = request.model_copy(update=update)
        if backend.local:
            request = self._with_local_max_tokens(request, rc, structured=schema is not None)
        usage = self.accounting.for_role(role)
        usage.calls += 1
        cache = self.cache if backend.cacheable else None
        key = ""
        if cache is not None:
            extra: dict[str, Any] = {"mode": mode}
            if schema is not None and mode != "prompt":  # (in "prompt" it is in the messages)
                extra["schema"] = schema_json(schema)  # it travels in response_format
            key = request.cache_key(model.raw, extra)
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
        if backend.real and not model_requests_allowed():
            usage.errors += 1
            raise ModelRequestsBlocked(
                "real model requests are disabled here (tests: use the 'allow_model_requests' fixture)",
                role=role,
                model=model.raw,
            )
        try:
            await backend.start(model, role)  # outside the timed call (a local server's warm-up)
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
                    async with self._local_slot(model, backend):
                        usage.backend_calls += 1
                        # asyncio.timeout, not wait_for: on Python 3.11 wait_for runs the call
                        # in a task of its own, a cost paid on every call; and no timer at all
                        # for a call that cannot be interrupted
                        timer: contextlib.AbstractAsyncContextManager[Any] = (
                            asyncio.timeout(timeout)
                            if backend.interruptible(model)
                            else contextlib.nullcontext()
                        )
                        async with timer:
                            raw = await backend.complete(request, model, mode, schema)
                break
            except TimeoutError as exc:
                expired = getattr(timer, "expired", None)
                if callable(expired) and not expired():
                    # raised by the backend itself (a python: app's own I/O): its error
                    error = backend.map_error(exc, role, model.raw)
                else:
                    error = ModelTimeout(
                        f"no answer within {timeout:g} s", role=role, model=model.raw
                    )
                    error.__cause__ = exc
            except ModelError as exc:
                error = exc
            except ConfigError:
                raise
            except Exception as exc:  # backend libraries raise their own types
                error = backend.map_error(exc, role, model.raw)
            if mode in ("json_schema", "json_object") and looks_like_unsupported_format(error):
                # llama.cpp answers 500 to a response format it does not take: not worth a retry
                raise PermanentModelError(error.detail, role=role, model=model.raw) from error
            if backend.local and isinstance(error, ModelTimeout):
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
        usage.add(raw.usage)  # spent even when the reply is refused below
        unencodable = _unencodable(raw.text)
        if unencodable is not None:
            usage.errors += 1
            raise PermanentModelError(unencodable, role=role, model=model.raw)
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

    def _local_slot(
        self, model: ModelSpec, backend: Backend
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        """One call at a time to a local server (no-op for other backends), so that a call's
        timeout starts when the server starts on it, not when it joins the server's queue."""
        if not backend.local:
            return contextlib.nullcontext()
        lock = self._local_slots.get(model.raw)
        if lock is None:
            lock = self._local_slots[model.raw] = asyncio.Lock()
        return lock


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
        """``Gateway.complete`` with the bound model, the response logged in ``calls``."""
        response = await self.gateway.complete(self._bind(request))
        self.calls.append(response)
        return response

    async def structured(
        self, request: CompletionRequest, schema: type[T]
    ) -> tuple[T, CompletionResponse]:
        """``Gateway.structured`` with the bound model, the response logged in ``calls``."""
        parsed, response = await self.gateway.structured(self._bind(request), schema)
        self.calls.append(response)
        return parsed, response
