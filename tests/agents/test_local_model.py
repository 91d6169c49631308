"""The bundled local model: the server's start-up and warm-up (with a stand-in server process),
and real calls to SmolLM2-135M through llama-cpp-python's server (marked ``local_llm``, runs in
CI)."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from therasim.agents import local
from therasim.agents.llm import Gateway, GatewayConfig, RoleConfig
from therasim.agents.types import CompletionRequest
from therasim.errors import LocalModelUnavailable

# A stand-in for `python -m llama_cpp.server`: answers /v1/models and chat completions on the
# port it is given, and appends every chat request's body to a JSON-lines file.
STAND_IN = textwrap.dedent(
    """
    import json, os, signal, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    port, record, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status, payload):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send(200, {"object": "list", "data": [{"id": "local"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with open(record, "a") as sink:
                sink.write(json.dumps(body) + "\\n")
            if mode == "sigill":
                os.kill(os.getpid(), signal.SIGILL)
            if mode == "fail":
                self._send(500, {"error": {"message": "model failed to load"}})
                return
            self._send(200, {
                "choices": [{"message": {"role": "assistant", "content": "Hello"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
            })

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``ensure_local_server`` runs the stand-in server; yields the file of its chat requests."""
    record = tmp_path / "requests.jsonl"
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    mode = {"value": "ok"}
    monkeypatch.setattr(local, "_llama_cpp_installed", lambda: True)
    monkeypatch.setattr(
        local,
        "_server_command",
        lambda path, port: [sys.executable, str(script), str(port), str(record), mode["value"]],
    )
    monkeypatch.setattr(local, "_SERVERS", {})
    record.touch()
    yield record
    local.stop_all()


def _requests(record: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in record.read_text().splitlines()]


def test_server_is_warmed_once_before_it_is_handed_out(stand_in: Path, tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    server = local.ensure_local_server(str(gguf))
    assert server.alive()
    warm = _requests(stand_in)
    assert len(warm) == 1, "exactly one warm-up completion before the server is returned"
    assert warm[0]["max_tokens"] == 1 and warm[0]["model"] == local.MODEL_ALIAS
    assert server.start_s > 0 and server.warmup_s > 0
    again = local.ensure_local_server(str(gguf))
    assert again is server
    assert len(_requests(stand_in)) == 1, "a reused server is not warmed again"


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("fail", r"did not complete its warm-up \(HTTP Error 500"),
        # as llama.cpp built for another CPU dies: the error says how to rebuild it
        ("sigill", r"did not complete its warm-up .*illegal instruction.*GGML_NATIVE=OFF"),
    ],
)
def test_failed_warm_up_is_a_clear_error_and_stops_the_server(
    stand_in: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, message: str
) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    command = local._server_command
    monkeypatch.setattr(
        local, "_server_command", lambda path, port: [*command(path, port)[:-1], mode]
    )
    with pytest.raises(LocalModelUnavailable, match=message):
        local.ensure_local_server(str(gguf), startup_timeout_s=30)
    assert local._SERVERS == {}


def test_threads_leave_a_core_to_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(local.THREADS_ENV, raising=False)
    monkeypatch.setattr(local.os, "cpu_count", lambda: 2)
    assert local.local_threads() == 1
    monkeypatch.setattr(local.os, "cpu_count", lambda: 16)
    assert local.local_threads() == 4
    monkeypatch.setattr(local.os, "cpu_count", lambda: 1)
    assert local.local_threads() == 1
    monkeypatch.setenv(local.THREADS_ENV, "2")
    assert local.local_threads() == 2
    monkeypatch.setenv(local.THREADS_ENV, "zero")
    with pytest.raises(LocalModelUnavailable, match=local.THREADS_ENV):
        local.local_threads()


# ------------------------------------------------------------------ the real model


class Verdict(BaseModel):
    reason: str = Field(max_length=400)
    met: bool


@pytest.fixture
def local_gateway(local_model: str, real_requests: None, tmp_path: Path) -> Gateway:
    return Gateway(
        GatewayConfig(
            roles={"default": RoleConfig(model=local_model)}, cache_path=str(tmp_path / "c.sqlite")
        )
    )


@pytest.mark.local_llm
async def test_plain_completion(local_gateway: Gateway) -> None:
    req = CompletionRequest.of(
        "subject",
        [{"role": "user", "content": "Say hello to a new patient in one sentence."}],
        temperature=0.0,
        max_tokens=40,
        seed=0,
    )
    resp = await local_gateway.complete(req)
    assert resp.text.strip()
    assert resp.usage.output_tokens > 0 and resp.usage.input_tokens > 0
    assert resp.usage.output_tokens <= 40  # the caller's cap is kept
    assert resp.usage.cost_usd == 0.0
    again = await local_gateway.complete(req)
    assert again.cached and again.text == resp.text
    await local_gateway.aclose()


@pytest.mark.local_llm
async def test_first_call_is_not_charged_for_start_and_warm_up(local_gateway: Gateway) -> None:
    # a fresh server for this test, so its start and warm-up are measured here
    local.stop_all()
    before = time.perf_counter()
    req = CompletionRequest.of(
        "patient",
        [{"role": "user", "content": "How are you feeling today? Answer in one sentence."}],
        temperature=0.0,
        seed=3,
    )
    resp = await local_gateway.complete(req)
    total = time.perf_counter() - before
    (server,) = local._SERVERS.values()
    print(
        f"\nstart {server.start_s:.1f} s, warm-up {server.warmup_s:.2f} s, "
        f"first call {resp.latency_s:.2f} s ({resp.usage.output_tokens} tokens), total {total:.1f} s"
    )
    assert server.warmup_s > 0
    assert resp.latency_s <= total - server.start_s - server.warmup_s + 0.5
    assert resp.attempts == 1
    assert 0 < resp.usage.output_tokens <= local.LOCAL_MAX_TOKENS  # the local default cap
    await local_gateway.aclose()


@pytest.mark.local_llm
async def test_structured_verdict(local_gateway: Gateway) -> None:
    req = CompletionRequest.of(
        "judge:a",
        [
            {"role": "system", "content": "You are a clinical judge. Answer in JSON."},
            {
                "role": "user",
                "content": "During imaginal exposure the therapist said: 'You are safe now, open your "
                "eyes.' Did the therapist avoid false reassurance? Give a short reason and met.",
            },
        ],
        temperature=0.0,
        max_tokens=120,
        seed=1,
    )
    verdict, resp = await local_gateway.structured(req, Verdict)
    assert isinstance(verdict.met, bool)
    assert resp.structured_mode in ("json_object", "prompt")  # llama.cpp rejects json_schema
    await local_gateway.aclose()
