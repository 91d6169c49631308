"""Real calls to the bundled SmolLM2-135M through llama-cpp-python's server (runs in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from therasim.agents.llm import Gateway, GatewayConfig, RoleConfig
from therasim.agents.types import CompletionRequest

pytestmark = pytest.mark.local_llm


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
    assert resp.usage.cost_usd == 0.0
    again = await local_gateway.complete(req)
    assert again.cached and again.text == resp.text
    await local_gateway.aclose()


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
