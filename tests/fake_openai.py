"""A loopback OpenAI-compatible chat server for tests and benchmarks (test tooling, not shipped).

It answers ``POST /v1/chat/completions`` and ``GET /v1/models`` on 127.0.0.1, an ``aiohttp.web``
app on its own thread and event loop, with configurable latency, jitter and injected failures, so
the gateway's real HTTP path (one aiohttp POST a call) can be exercised without any network.
Tests import it as ``fake_openai`` (pytest puts this folder on ``sys.path``, ``pythonpath`` in
pyproject.toml); benchmarks add the folder themselves::

    with FakeOpenAIServer(plan=["429", "429", "ok"]) as server:
        spec = f"openai:fake?base_url={server.base_url}"

``plan`` is consumed one entry per request (then ``default`` applies): ``"ok"``, ``"429"``,
``"500"``, ``"401"``, ``"timeout"`` (holds the request for ``hang_s``), ``"broken_json"`` (a
completion whose text is not valid JSON), ``"not_a_completion"`` (200 with an HTML body),
``"disconnect"`` (the connection closes with no answer).
``requests`` and ``headers`` keep every chat request's body and headers. ``reject_json_schema``
answers 400 to the ``json_schema`` response format, as llama.cpp's server does. ``error_rate``
injects those failures at random for load tests. ``reply`` builds the text of a successful
answer from the request body. Subclasses may wrap ``_respond`` (method, path, raw body -> status
line, JSON text) or ``_answer`` (body, outcome -> the same) to count, throttle or edit answers.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

Reply = Callable[[dict[str, Any]], str]
FAILURES = ("429", "500", "timeout", "broken_json")
DISCONNECT = "disconnect"


def _default_reply(body: dict[str, Any]) -> str:
    if body.get("response_format"):
        return json.dumps({"met": True, "reason": "Looks fine.", "score": None})
    last = body.get("messages", [{}])[-1].get("content", "")
    return f"I hear you. You said: {str(last)[:60]}"


class FakeOpenAIServer:
    """An in-process OpenAI-compatible HTTP server (see module docstring)."""

    def __init__(
        self,
        *,
        plan: list[str] | None = None,
        default: str = "ok",
        reply: Reply | None = None,
        latency_s: float = 0.0,
        jitter_s: float = 0.0,
        error_rate: float = 0.0,
        failures: tuple[str, ...] = FAILURES,
        hang_s: float = 30.0,
        reject_json_schema: bool = False,
        seed: int = 0,
    ) -> None:
        self.plan = list(plan or [])
        self.default = default
        self.reply = reply or _default_reply
        self.latency_s = latency_s
        self.jitter_s = jitter_s
        self.error_rate = error_rate
        self.failures = failures
        self.hang_s = hang_s
        self.reject_json_schema = reject_json_schema
        self.rng = random.Random(seed)
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def calls(self) -> int:
        """Chat-completion requests received so far."""
        return len(self.requests)

    def __enter__(self) -> FakeOpenAIServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fake-openai", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._runner is None:
            raise RuntimeError("fake OpenAI server did not start")

    def stop(self) -> None:
        if self._loop and self._runner and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        if self._thread:
            self._thread.join(timeout=5)

    async def _shutdown(self) -> None:
        assert self._runner is not None and self._loop is not None
        # requests still held (a "timeout" hang, a client that gave up) are cancelled, not awaited
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._runner.cleanup()
        self._loop.call_soon(self._loop.stop)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
            self._ready.set()
            loop.run_forever()
        finally:
            self._ready.set()  # start() raises if the server did not come up
            loop.close()

    async def _serve(self) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{path:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024).start()
        self.port = runner.addresses[0][1]
        self._runner = runner

    def _next_outcome(self) -> str:
        with self._lock:
            if self.plan:
                return self.plan.pop(0)
            if self.error_rate and self.rng.random() < self.error_rate:
                return self.rng.choice(self.failures)
            return self.default

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path  # Azure-style clients add ?api-version=...
        if path.endswith("/chat/completions"):
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
        status, payload = await self._respond(request.method, path, await request.read())
        if status == DISCONNECT:
            # drop the connection with no answer; aiohttp then finds nothing to write to
            if request.transport is not None:
                request.transport.close()
            return web.Response()
        code, _, reason = status.partition(" ")
        return web.Response(
            status=int(code),
            reason=reason,
            body=payload.encode(),
            headers={"Content-Type": "application/json"},
        )

    async def _respond(self, method: str, path: str, raw: bytes) -> tuple[str, str]:
        if method == "GET" and path.endswith("/models"):
            return "200 OK", json.dumps(
                {"object": "list", "data": [{"id": "fake", "object": "model"}]}
            )
        if not path.endswith("/chat/completions"):
            return "404 Not Found", json.dumps({"error": {"message": f"no route {path}"}})
        started = asyncio.get_running_loop().time()
        body = json.loads(raw or b"{}")
        self.requests.append(body)
        if (
            self.reject_json_schema
            and (body.get("response_format") or {}).get("type") == "json_schema"
        ):
            # what llama.cpp's server does: it takes json_object with a schema, not json_schema
            return "400 Bad Request", json.dumps(
                {"error": {"message": "response_format json_schema not supported"}}
            )
        outcome = self._next_outcome()
        answer = self._answer(body, outcome)
        delay = self.latency_s + (
            self.rng.uniform(-self.jitter_s, self.jitter_s) if self.jitter_s else 0.0
        )
        # the latency counts from when serving began, so the server's own parsing and encoding
        # do not lengthen it
        remaining = delay - (asyncio.get_running_loop().time() - started)
        if remaining > 0:
            await asyncio.sleep(remaining)
        if outcome == "timeout":
            await asyncio.sleep(self.hang_s)
        return answer

    def _answer(self, body: dict[str, Any], outcome: str) -> tuple[str, str]:
        """Status line and body for ``outcome``."""
        if outcome == "429":
            return "429 Too Many Requests", json.dumps(
                {"error": {"message": "rate limited", "type": "rate_limit"}}
            )
        if outcome == "500":
            return "500 Internal Server Error", json.dumps(
                {"error": {"message": "injected failure"}}
            )
        if outcome == "401":
            return "401 Unauthorized", json.dumps(
                {
                    "error": {
                        "message": "Incorrect API key provided",
                        "type": "invalid_request_error",
                    }
                }
            )
        if outcome == "not_a_completion":
            return "200 OK", "<html>gateway error</html>"
        if outcome == DISCONNECT:
            return DISCONNECT, ""
        text = '{"met": tru, "reason": "broken' if outcome == "broken_json" else self.reply(body)
        prompt_tokens = sum(len(str(m.get("content", ""))) // 4 for m in body.get("messages", []))
        return "200 OK", json.dumps(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": max(1, len(text) // 4),
                    "total_tokens": prompt_tokens + max(1, len(text) // 4),
                },
            }
        )
