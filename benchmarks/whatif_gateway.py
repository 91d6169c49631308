"""Ablations of the runner's hot path, to see what each part costs (an experiment, not a fix).

Runs one case of ``bench_efficiency.py`` (200 sessions × 10 turns, fake backend in its own
process, 0.2 s a call, 64 slots) with internals changed by monkeypatches in THIS process only;
no file of the package is changed. Patches (comma-separated):

- ``sdk``: the OpenAI-compatible call through the openai client that langchain-openai
  configures (``root_async_client.post`` with the finished body, over 8 httpx pools), as the
  gateway did before it switched to one aiohttp POST a call;
- ``raw``: the call as one plain httpx POST (8 pools), without the openai client;
- ``nofreeze``: the runner does not ``gc.freeze()`` what exists before the sessions start;
- ``uvloop``: uvloop's event loop (``pip install uvloop`` first);
- ``gcstats``: print the time spent in the cyclic garbage collector, and each full collection.

Run: ``.venv/bin/python benchmarks/whatif_gateway.py a 1 sdk,gcstats``
(config a|b as in bench_efficiency.py, variant 1|2, patches; no patches = the code as it is;
``WHATIF_PROCESSES=2`` sets the study's ``processes``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Callable
from typing import Any

from _common import (
    LATENCY_S,
    SLOTS,
    BackendProcess,
    run_inprocess,
    study_200,
    temp_home,
    warm_up,
)

HTTPX_POOLS = 8


def _httpx_call(post: Callable[[Any, Any, dict[str, Any]], Any]) -> None:
    """Replace the OpenAI-compatible backend's call by ``post(backend, model, body)``."""
    from therasim.agents.llm.backends import OpenAIBackend, RawCompletion
    from therasim.agents.llm.spec import ModelSpec
    from therasim.agents.types import CompletionRequest, Usage

    async def call_openai(
        self: OpenAIBackend, request: CompletionRequest, model: ModelSpec, mode: Any, schema: Any
    ) -> Any:
        body = {
            "model": model.name,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        }
        data = await post(self, model, body)
        usage = data.get("usage") or {}
        return RawCompletion(
            data["choices"][0]["message"]["content"],
            Usage(
                input_tokens=usage.get("prompt_tokens", 0),
                output_tokens=usage.get("completion_tokens", 0),
            ),
        )

    OpenAIBackend.complete = call_openai  # type: ignore[method-assign]


def _pools(gateway: Any, key: str, make: Callable[[Any], Any]) -> Any:
    """The next of ``HTTPX_POOLS`` clients for ``key``, made on first use, closed at exit."""
    pools: dict[str, Any] = gateway.__dict__.setdefault("_whatif_pools", {})
    if key not in pools:
        import httpx

        clients = [httpx.AsyncClient(timeout=120.0) for _ in range(HTTPX_POOLS)]
        original = gateway.aclose

        async def aclose() -> None:
            for client in clients:
                await client.aclose()
            await original()

        gateway.aclose = aclose
        pools[key] = itertools.cycle([make(c) for c in clients])
    return next(pools[key])


def patch_sdk() -> None:
    """The openai client langchain-openai configures, given the finished body (the old path)."""
    import httpx
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    async def post(gateway: Any, model: Any, body: dict[str, Any]) -> Any:
        def make(client: httpx.AsyncClient) -> Any:
            return ChatOpenAI(
                http_async_client=client,
                model=model.name,
                base_url=model.base_url,
                api_key=SecretStr("not-needed"),
                max_retries=0,
            ).root_async_client

        sdk = _pools(gateway, "sdk:" + model.raw, make)
        response = await sdk.post("/chat/completions", body=body, cast_to=httpx.Response)
        return response.json()

    _httpx_call(post)


def patch_raw() -> None:
    """One plain httpx POST a call (8 pools, round-robin)."""

    async def post(gateway: Any, model: Any, body: dict[str, Any]) -> Any:
        client = _pools(gateway, "raw:" + model.raw, lambda c: c)
        response = await client.post(f"{model.base_url}/chat/completions", json=body)
        response.raise_for_status()
        return response.json()

    _httpx_call(post)


def patch_nofreeze() -> None:
    from therasim.simulations import runner

    runner._collector_skips_startup = contextlib.nullcontext  # type: ignore[assignment]


def patch_uvloop() -> None:
    import asyncio

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def patch_gcstats() -> None:
    import atexit
    import gc
    import time

    spent = [0.0, 0.0, 0.0]
    counts = [0, 0, 0]
    started = [0.0]
    pauses: list[float] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        took = time.perf_counter() - started[0]
        spent[info["generation"]] += took
        counts[info["generation"]] += 1
        if info["generation"] == 2:
            pauses.append(round(took, 3))

    gc.callbacks.append(callback)
    atexit.register(
        lambda: print(
            f"gc (whole process): collections by generation {counts}, seconds "
            f"{[round(s, 2) for s in spent]}; full collections took {pauses} s"
        )
    )


PATCHES: dict[str, Callable[[], None]] = {
    "sdk": patch_sdk,
    "raw": patch_raw,
    "nofreeze": patch_nofreeze,
    "uvloop": patch_uvloop,
    "gcstats": patch_gcstats,
}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("a", "b") or argv[1] not in ("1", "2"):
        print(__doc__)
        return 2
    config, variant = argv[0], argv[1]
    names = [n for n in (argv[2].split(",") if len(argv) > 2 else []) if n]
    for name in names:
        if name not in PATCHES:
            print(f"unknown patch {name!r} (known: {', '.join(PATCHES)})", file=sys.stderr)
            return 2
        PATCHES[name]()
    warm_up()
    with temp_home("whatif") as root, BackendProcess() as backend:
        doc = study_200(
            backend.base_url,
            patient_fake=variant == "2",
            sessions_in_flight=200 if config == "a" else SLOTS,
            processes=int(os.environ.get("WHATIF_PROCESSES", "1")),
        )
        r = run_inprocess(doc, root / "s.sqlite", backend)
    ideal = r.backend_calls * LATENCY_S / SLOTS
    ok = r.completed == 200 and set(r.turns) == {10}
    print(
        f"RESULT whatif {variant}-call ({config}) patches={names or 'none'}: {r.wall_s:.2f} s wall, "
        f"{r.cpu_s:.2f} s runner CPU, {r.backend_cpu_s:.2f} s backend CPU, {r.backend_calls} "
        f"backend calls, ideal {ideal:.2f} s → efficiency {ideal / r.wall_s:.2f}"
        f"{'' if ok else ' (INCOMPLETE RUN)'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
