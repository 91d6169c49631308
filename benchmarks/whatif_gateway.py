"""Ablations of the gateway's HTTP path, to see what each part costs (an experiment, not a fix).

Runs one case of ``bench_efficiency.py`` (200 sessions × 10 turns, fake backend in its own
process, 0.2 s a call, 64 slots) with gateway internals changed by monkeypatches in THIS process
only; no file of the package is changed. Patches (comma-separated):

- ``poolsN``: N httpx connection pools per endpoint, used in turn, instead of the gateway's
  ``HTTP_POOL_SHARDS`` (``pools1`` is the single pool the gateway had before: httpcore 1.0.x walks
  every pooled connection, O(N²) in idle ones, each time a request is queued or released);
- ``raw``: the OpenAI-compatible call as one plain httpx POST over 8 pools, without the openai
  client's request machinery: the CPU floor of the HTTP path.

Run: ``.venv/bin/python benchmarks/whatif_gateway.py a 1 pools1``
(config a|b as in bench_efficiency.py, variant 1|2, patches; no patches = the code as it is).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Awaitable, Callable
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


def patch_pools(n: int) -> None:
    """``n`` connection pools per endpoint (the gateway reads the constant per new client)."""
    from therasim.agents import llm

    llm.HTTP_POOL_SHARDS = n


def patch_raw(k: int = 8) -> None:
    """The OpenAI-compatible call as a plain httpx POST (``k`` pools, round-robin)."""
    import httpx

    from therasim.agents import llm
    from therasim.agents.types import CompletionRequest, Usage

    def call_openai(
        self: llm.Gateway, model: llm.ModelSpec, request: CompletionRequest, mode: Any, schema: Any
    ) -> Awaitable[Any]:
        pools: dict[str, Any] = self.__dict__.setdefault("_whatif_raw", {})
        if model.raw not in pools:
            clients = [httpx.AsyncClient(timeout=self.config.timeout_s) for _ in range(k)]
            self._http_clients.extend(clients)  # closed by Gateway.aclose
            pools[model.raw] = itertools.cycle(clients)
        client = next(pools[model.raw])

        async def go() -> Any:
            body = {
                "model": model.name,
                "messages": [{"role": m.role, "content": m.content} for m in request.messages],
                "temperature": request.temperature,
                "max_tokens": request.max_tokens,
            }
            response = await client.post(f"{model.base_url}/chat/completions", json=body)
            response.raise_for_status()
            data = response.json()
            usage = data.get("usage") or {}
            return llm._Raw(
                data["choices"][0]["message"]["content"],
                Usage(
                    input_tokens=usage.get("prompt_tokens", 0),
                    output_tokens=usage.get("completion_tokens", 0),
                ),
            )

        return go()

    llm.Gateway._call_openai = call_openai


PATCHES: dict[str, Callable[[str], None]] = {
    "pools": lambda name: patch_pools(int(name[len("pools") :] or 1)),
    "raw": lambda _: patch_raw(),
}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("a", "b") or argv[1] not in ("1", "2"):
        print(__doc__)
        return 2
    config, variant = argv[0], argv[1]
    names = [n for n in (argv[2].split(",") if len(argv) > 2 else []) if n]
    for name in names:
        key = next((k for k in PATCHES if name.startswith(k)), None)
        if key is None:
            print(f"unknown patch {name!r} (known: poolsN, raw)", file=sys.stderr)
            return 2
        PATCHES[key](name)
    warm_up()
    with temp_home("whatif") as root, BackendProcess() as backend:
        doc = study_200(
            backend.base_url,
            patient_fake=variant == "2",
            sessions_in_flight=200 if config == "a" else SLOTS,
        )
        r = run_inprocess(doc, root / "s.sqlite", backend)
    ideal = r.backend_calls * LATENCY_S / SLOTS
    ok = r.completed == 200 and set(r.turns) == {10}
    print(
        f"RESULT whatif {variant}-call ({config}) patches={names or 'none'}: {r.wall_s:.2f} s wall, "
        f"{r.cpu_s:.2f} s runner CPU, {r.backend_calls} backend calls, ideal {ideal:.2f} s → "
        f"efficiency {ideal / r.wall_s:.2f}{'' if ok else ' (INCOMPLETE RUN)'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
