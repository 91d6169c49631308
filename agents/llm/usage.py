"""Token and cost accounting: per-role totals, prices, a token estimate for backends that
report no usage, and :class:`Totals`, the one place tokens and costs are added up.

Cached-prompt tokens (``cached_input_tokens``) are the part of the input tokens a provider
served from its prompt cache; they are carried beside the input tokens, never added to them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from therasim.agents.llm.config import Price
from therasim.agents.llm.spec import ModelSpec
from therasim.agents.types import CompletionRequest, Usage


class Metered(Protocol):
    """Anything that carries one call's (or a sum of calls') tokens and cost."""

    @property
    def input_tokens(self) -> int:
        """Input (prompt) tokens."""

    @property
    def output_tokens(self) -> int:
        """Output (completion) tokens."""

    @property
    def cost_usd(self) -> float | None:
        """Cost in US dollars; None when a price is unknown."""


@dataclass(frozen=True, slots=True)
class Totals:
    """Tokens and cost summed over calls: the one place they are added up (a stored session's
    totals, a run's statistics, the budget's meter all use it).

    A call whose price is unknown adds 0 to ``cost_usd`` and 1 to ``unpriced``, so a budget
    still meters what is known while a session's stored cost can say "unknown"
    (:attr:`known_cost`). ``cached_input_tokens`` is the part of ``input_tokens`` served from a
    provider's prompt cache (a metered item without it counts 0)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0
    cached_input_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    @property
    def known_cost(self) -> float | None:
        """The cost, or None when any call's price was unknown."""
        return None if self.unpriced else self.cost_usd

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cost_usd + other.cost_usd,
            self.unpriced + other.unpriced,
            self.cached_input_tokens + other.cached_input_tokens,
        )

    def __sub__(self, other: Totals) -> Totals:
        """What was spent between two readings of a running total."""
        return Totals(
            self.input_tokens - other.input_tokens,
            self.output_tokens - other.output_tokens,
            self.cost_usd - other.cost_usd,
            self.unpriced - other.unpriced,
            self.cached_input_tokens - other.cached_input_tokens,
        )

    @classmethod
    def of(cls, item: Metered) -> Totals:
        """One call's (or one running total's) tokens and cost."""
        if isinstance(item, Totals):
            return item
        cost = item.cost_usd
        cached = getattr(item, "cached_input_tokens", 0)
        return cls(item.input_tokens, item.output_tokens, cost or 0.0, int(cost is None), cached)

    @classmethod
    def sum(cls, items: Iterable[Metered]) -> Totals:
        """The totals of ``items`` (calls, per-role usage, or totals)."""
        tokens_in = tokens_out = unpriced = cached = 0
        cost = 0.0
        for item in items:
            part = cls.of(item)
            tokens_in += part.input_tokens
            tokens_out += part.output_tokens
            cost += part.cost_usd
            unpriced += part.unpriced
            cached += part.cached_input_tokens
        return cls(tokens_in, tokens_out, cost, unpriced, cached)


@dataclass
class RoleUsage:
    """Totals for one role (``cached_calls`` are answers from therasim's own response cache;
    ``cached_input_tokens`` are input tokens a provider served from its prompt cache)."""

    calls: int = 0
    cached_calls: int = 0
    backend_calls: int = 0
    retries: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cached_input_tokens: int = 0

    def add(self, usage: Usage) -> None:
        """Count one backend answer's tokens and cost (an unknown cost adds 0)."""
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cached_input_tokens += usage.cached_input_tokens
        self.cost_usd += usage.cost_usd or 0.0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


@dataclass
class Accounting:
    """Per-role usage of one gateway."""

    roles: dict[str, RoleUsage] = field(default_factory=dict)

    def for_role(self, role: str) -> RoleUsage:
        """The counters of one role, created on first use."""
        return self.roles.setdefault(role, RoleUsage())

    def total(self) -> RoleUsage:
        """All roles added together."""
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
        counts = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
        if usage.cached_input_tokens:  # priced at the provider's cache-read rate
            counts["cache_read_tokens"] = usage.cached_input_tokens
        result = calc_price(
            GPUsage(**counts),
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
