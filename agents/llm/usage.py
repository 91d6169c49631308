"""Token and cost accounting: per-role totals, prices, and a token estimate for backends that
report no usage."""

from __future__ import annotations

from dataclasses import dataclass, field

from therasim.agents.llm.config import Price
from therasim.agents.llm.spec import ModelSpec
from therasim.agents.types import CompletionRequest, Usage


@dataclass
class RoleUsage:
    """Totals for one role."""

    calls: int = 0
    cached_calls: int = 0
    backend_calls: int = 0
    retries: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class Accounting:
    """Per-role usage of one gateway."""

    roles: dict[str, RoleUsage] = field(default_factory=dict)

    def for_role(self, role: str) -> RoleUsage:
        return self.roles.setdefault(role, RoleUsage())

    def total(self) -> RoleUsage:
        out = RoleUsage()
        for r in self.roles.values():
            for name in vars(out):
                setattr(out, name, getattr(out, name) + getattr(r, name))
        return out


def price_of(model: ModelSpec, usage: Usage, table: dict[str, Price]) -> float | None:
    """Cost in USD from the configured table, else genai-prices; None when unknown."""
    if not model.is_real or model.backend == "local":
        return 0.0
    if model.name in table:
        p = table[model.name]
        return (
            usage.input_tokens * p.input_per_mtok + usage.output_tokens * p.output_per_mtok
        ) / 1e6
    if model.base_url:  # a self-hosted endpoint: public prices do not apply
        return None
    try:
        from genai_prices import Usage as GPUsage
        from genai_prices import calc_price

        provider = "openai" if model.backend == "openai" else model.backend.split("_")[0]
        result = calc_price(
            GPUsage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens),
            model_ref=model.name,
            provider_id=provider,
        )
        return float(result.total_price)
    except Exception:  # unknown model or provider: cost is unknown, not zero
        return None


def approx_tokens(text: str) -> int:
    """About four characters a token: budgets stay honest for backends that report no usage."""
    return max(1, len(text) // 4) if text else 0


def approx_usage(request: CompletionRequest, text: str) -> Usage:
    """Estimated usage of answering ``request`` with ``text``."""
    return Usage(
        input_tokens=sum(approx_tokens(m.content) for m in request.messages),
        output_tokens=approx_tokens(text),
    )
