"""What the gateway changes proposed in benchmarks/README.md would buy (an experiment, not a fix).

Runs one case of ``bench_efficiency.py`` (200 sessions × 10 turns, fake backend in its own
process, 0.2 s a call, 64 slots) with some gateway internals replaced by monkeypatches in THIS
process only; no file of the package is changed. Patches (comma-separated):

- ``schema``: the JSON Schema text the prompt-mode structured call appends is built once per
  schema (``Gateway._with_schema_prompt`` calls ``model_json_schema()`` on every call, also for
  the scripted appraiser);
- ``shardsN``: N langchain-openai clients per model, each with its own httpx pool, used in turn
  (httpcore 1.0.x walks every pooled connection — O(N²) in idle connections — each time a
  request is queued or released, so one pool of 64+ connections costs more CPU than 8 of 8);
- ``raw``: the OpenAI-compatible call as one plain httpx POST over 8 pools (no langchain-openai,
  no openai SDK request transform): the CPU floor of the HTTP path.

Run: ``.venv/bin/python benchmarks/whatif_gateway.py a 1 schema,shards8``
(config a|b, variant 1|2, patches; no patches = the code as it is).
"""

from __future__ import annotations

import functools
import itertools
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from _common import BackendProcess, run_inprocess, study_200, temp_home, warm_up


def patch_schema() -> None:
    """Build each schema's prompt text once."""
    from pydantic import BaseModel

    from therasim.agents import llm
    from therasim.agents.types import CompletionRequest, Message

    @functools.lru_cache(maxsize=64)
    def schema_text(schema: type[BaseModel]) -> str:
        return json.dumps(schema.model_json_schema(), separators=(",", ":"))

    def with_schema_prompt(
        request: CompletionRequest, schema: type[BaseModel]
    ) -> CompletionRequest:
        instruction = (
            "Answer with one JSON object only, no prose, that validates against this JSON Schema:\n"
            + schema_text(schema)
        )
        return request.model_copy(
            update={"messages": (*request.messages, Message(role="user", content=instruction))}
        )

    llm.Gateway._with_schema_prompt = staticmethod(with_schema_prompt)


def patch_shards(k: int) -> None:
    """``k`` langchain-openai clients (own httpx pools) per model, round-robin."""
    from therasim.agents import llm

    original = llm.Gateway._openai_client

    def openai_client(self: llm.Gateway, model: llm.ModelSpec) -> Any:
        shards: dict[str, Any] = self.__dict__.setdefault("_whatif_shards", {})
        if model.raw not in shards:
            clients = []
            for _ in range(k):
                self._clients.pop((model.raw, model.base_url, model.name), None)
                clients.append(original(self, model))
            shards[model.raw] = itertools.cycle(clients)
        return next(shards[model.raw])

    llm.Gateway._openai_client = openai_client


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
                "messages": [m.model_dump() for m in request.messages],
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
    "schema": lambda _: patch_schema(),
    "shards": lambda name: patch_shards(int(name[len("shards") :] or 8)),
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
            print(f"unknown patch {name!r} (known: schema, shardsN, raw)", file=sys.stderr)
            return 2
        PATCHES[key](name)
    warm_up()
    with temp_home("whatif") as root, BackendProcess() as backend:
        doc = study_200(
            backend.base_url,
            patient_fake=variant == "2",
            sessions_in_flight=200 if config == "a" else 64,
        )
        r = run_inprocess(doc, root / "s.sqlite", backend)
    ideal = r.backend_calls * 0.2 / 64
    ok = r.completed == 200 and set(r.turns) == {10}
    print(
        f"RESULT whatif {variant}-call ({config}) patches={names or 'none'}: {r.wall_s:.2f} s wall, "
        f"{r.cpu_s:.2f} s runner CPU, {r.backend_calls} backend calls, ideal {ideal:.2f} s → "
        f"efficiency {ideal / r.wall_s:.2f}{'' if ok else ' (INCOMPLETE RUN)'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
