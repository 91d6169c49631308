"""``openai:MODEL``: any OpenAI-compatible endpoint, one aiohttp POST a call.

Not the openai SDK: its request pipeline (through langchain-openai's client and httpx) cost about
1 ms more CPU a call, which kept a 64-way study at 0.86 of the backend's capacity against 0.92 on
this path (``benchmarks/``). The protocol is one JSON POST; status codes map onto
:mod:`therasim.errors`. :class:`~therasim.agents.llm.backends.local.LocalBackend` reuses it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Any

import pydantic_core
from pydantic import BaseModel

from therasim.agents.llm.backends.base import (
    BaseBackend,
    RawCompletion,
    error_for_status,
    map_client_error,
)
from therasim.agents.llm.replicas import Replica, ReplicaPolicy, ReplicaPool
from therasim.agents.llm.spec import ModelSpec
from therasim.agents.llm.structured import STRUCTURED_MODES, StructuredMode, schema_dict
from therasim.agents.llm.usage import approx_usage
from therasim.agents.types import CompletionRequest, Usage
from therasim.errors import (
    ModelError,
    PermanentModelError,
    ServerError,
)

OPENAI_API_BASE = "https://api.openai.com/v1"


@dataclass(frozen=True)
class Endpoint:
    """Where one model spec's requests go."""

    url: str
    model: str
    api_key: str | None
    compatible: bool  # a self-hosted server (reads max_tokens), not the OpenAI API itself
    proxy: str | None = None


def env_proxy(url: str) -> str | None:
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


def status_error(status: int, body: bytes, role: str, model: str) -> ModelError:
    """An HTTP error answer as a therasim error (the server's own message kept)."""
    text = body.decode("utf-8", "replace")
    try:
        error = json.loads(text).get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    return error_for_status(status, f"HTTP {status}: {str(message or text)[:500]}", role, model)


def usage_of(usage: dict[str, Any]) -> Usage:
    """A chat completion's ``usage`` object as :class:`Usage`.

    Cached-prompt tokens are read from ``prompt_tokens_details.cached_tokens`` (OpenAI, vLLM,
    llama.cpp's server) or ``prompt_cache_hit_tokens`` (DeepSeek); a provider that reports
    neither leaves them 0."""
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if cached is None:
        cached = usage.get("prompt_cache_hit_tokens")
    try:
        cached_tokens = max(0, int(cached or 0))
    except (TypeError, ValueError):  # a malformed detail never fails the call
        cached_tokens = 0
    input_tokens = int(usage.get("prompt_tokens") or 0)
    return Usage(
        input_tokens=input_tokens,
        output_tokens=int(usage.get("completion_tokens") or 0),
        cached_input_tokens=min(cached_tokens, input_tokens),
    )


class OpenAIBackend(BaseBackend):
    """Chat completions from an OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp)."""

    real = True
    structured_modes = STRUCTURED_MODES

    def __init__(self, *, replica_policy: ReplicaPolicy | None = None) -> None:
        self._endpoints: dict[str, Endpoint] = {}
        self._http: Any = None  # aiohttp.ClientSession, made on first use
        # one pool per replica set: specs naming the same replicas share their state
        self._pools: dict[tuple[object, ...], ReplicaPool] = {}
        self._replica_policy = replica_policy or ReplicaPolicy()

    def endpoint(self, model: ModelSpec, role: str) -> Endpoint:
        """Where ``model``'s requests go, resolved once per spec."""
        endpoint = self._endpoints.get(model.raw)
        if endpoint is None:
            endpoint = self._resolve(model, role)
            endpoint = replace(endpoint, proxy=env_proxy(endpoint.url))
            self._endpoints[model.raw] = endpoint
        return endpoint

    def pool(self, model: ModelSpec) -> ReplicaPool | None:
        """The replica pool of a replicated spec (``replicas.py``); None for one plain URL,
        whose requests go straight to :meth:`endpoint` as they always did."""
        if not model.replicated:
            return None
        key = (model.base_urls, model.replica_concurrency, model.replica_rpm)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = ReplicaPool(
                [f"{url.rstrip('/')}/chat/completions" for url in model.base_urls],
                concurrency=model.replica_concurrency,
                rpm=model.replica_rpm,
                policy=self._replica_policy,
                proxy_for=env_proxy,
            )
        return pool

    def _resolve(self, model: ModelSpec, role: str) -> Endpoint:
        env = model.api_key_env or "OPENAI_API_KEY"
        api_key = os.environ.get(env)
        if api_key is None and model.base_url is None:
            raise PermanentModelError(
                f"no API key: set the environment variable {env}", role=role, model=model.raw
            )
        base = model.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_API_BASE
        return Endpoint(
            f"{base.rstrip('/')}/chat/completions",
            model.name,
            api_key,
            compatible=model.base_url is not None,
        )

    def _http_session(self) -> Any:
        """The backend's one aiohttp session, made on first use (it binds the running loop)."""
        if self._http is None:
            import aiohttp

            self._http = aiohttp.ClientSession(
                # the roles' concurrency limits bound the connections; the gateway's
                # asyncio.timeout bounds each call
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None),
                headers={"Content-Type": "application/json"},
            )
        return self._http

    async def complete(
        self,
        request: CompletionRequest,
        model: ModelSpec,
        mode: StructuredMode | None,
        schema: type[BaseModel] | None,
    ) -> RawCompletion:
        """One answer from the endpoint, or from the least busy of its replicas."""
        endpoint = self.endpoint(model, request.role)
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
            payload["seed"] = request.sampling_seed
        if request.stop:
            payload["stop"] = list(request.stop)
        if schema is not None and mode == "json_schema":
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": schema.__name__,
                    "schema": schema_dict(schema),
                    "strict": False,
                },
            }
        elif schema is not None and mode == "json_object":
            payload["response_format"] = {"type": "json_object", "schema": schema_dict(schema)}
        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else None
        # pydantic-core's encoder: a quarter of json.dumps' time on a long transcript
        blob, role, pool = pydantic_core.to_json(payload), request.role, self.pool(model)
        if pool is None:
            body = await self._post(endpoint.url, endpoint.proxy, blob, headers, role, model.raw)
        else:  # replicas: the pool picks the URL and fails over (replicas.py)

            def send(replica: Replica) -> Awaitable[bytes]:
                return self._post(replica.url, replica.proxy, blob, headers, role, model.raw)

            body = await pool.call(send)
        try:
            data = pydantic_core.from_json(body)
            text = data["choices"][0]["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ServerError(
                f"malformed chat completion: {body[:200]!r}", role=request.role, model=model.raw
            ) from exc
        usage = data.get("usage") or {}
        if isinstance(usage, dict) and usage:
            return RawCompletion(text, usage_of(usage))
        return RawCompletion(text, approx_usage(request, text))

    async def _post(
        self,
        url: str,
        proxy: str | None,
        data: bytes,
        headers: dict[str, str] | None,
        role: str,
        model: str,
    ) -> bytes:
        """One POST's body; a transport error or an HTTP error status as a therasim error."""
        import aiohttp

        try:
            async with self._http_session().post(
                url, data=data, headers=headers, proxy=proxy
            ) as reply:
                body: bytes = await reply.read()
                status = reply.status
        except aiohttp.ClientError as exc:
            raise map_client_error(exc, role, model) from exc
        if status >= 400:
            raise status_error(status, body, role, model)
        return body

    async def aclose(self) -> None:
        """Close the HTTP session and the replica pools."""
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.close()
            self._http = None
        self._endpoints.clear()
        self._pools.clear()  # their waiters and limiters bind to the loop that used them
