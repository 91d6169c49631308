"""The gateway's configuration: roles → models, retry and timeout policies, prices."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from therasim.agents.llm.spec import ModelSpec
from therasim.agents.local import LOCAL_MAX_TOKENS, LOCAL_STRUCTURED_MAX_TOKENS, LOCAL_TIMEOUT_S
from therasim.errors import UnknownNameError


class RoleConfig(BaseModel):
    """How the roles an entry of :attr:`GatewayConfig.roles` covers call their model.

    The limits belong to the entry, not to each role it covers: ``'judge'`` with
    ``concurrency: 4, rpm: 60`` is one provider quota that every ``judge:<name>`` draws on (at
    most 4 judge calls in flight and 60 a minute in all), and ``'default'`` is one quota for
    every role not named. Give roles entries of their own for limits of their own.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        description="Model spec, e.g. 'local', 'openai:gpt-4o-mini', 'scripted:adherent'."
    )
    concurrency: int = Field(
        default=8,
        ge=1,
        le=4096,
        description="Calls in flight at once for this entry: one limit shared by every role it "
        "covers ('judge': all judges together; 'default': all roles not named).",
    )
    rpm: float | None = Field(
        default=None,
        gt=0,
        description="Requests per minute for this entry, shared like `concurrency`; null for no "
        "limit.",
    )
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="Overrides the request's temperature."
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="Overrides the request's max_tokens."
    )


class Price(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class GatewayConfig(BaseModel):
    """Roles → models, and the gateway's policies."""

    model_config = ConfigDict(extra="forbid")

    roles: dict[str, RoleConfig] = Field(
        default_factory=dict,
        description="Role → model. 'judge' covers every 'judge:<name>'; 'default' covers any "
        "role not named. An entry's concurrency and rpm are one limit shared by the roles it "
        "covers.",
    )
    cache_path: str | None = Field(
        default=None, description="SQLite response cache; default $THERASIM_HOME/cache.sqlite."
    )
    cache_enabled: bool = Field(default=True, description="Serve repeated requests from the cache.")
    max_attempts: int = Field(
        default=4, ge=1, le=20, description="Attempts per call on transient errors."
    )
    backoff_base_s: float = Field(
        default=0.5, ge=0, description="First retry delay; doubles each retry."
    )
    backoff_max_s: float = Field(default=8.0, ge=0, description="Longest delay between retries.")
    timeout_s: float = Field(default=120.0, gt=0, description="Timeout of one backend call.")
    local_timeout_s: float = Field(
        default=LOCAL_TIMEOUT_S,
        gt=0,
        description="Timeout of one call to a `local` model once its server is up and warm. "
        "When only timeout_s is set, timeout_s applies to local calls too.",
    )
    local_max_tokens: int = Field(
        default=LOCAL_MAX_TOKENS,
        ge=1,
        description="max_tokens of a local call whose caller and role set none "
        f"(structured calls: at least {LOCAL_STRUCTURED_MAX_TOKENS}, so JSON is not cut short).",
    )
    prices: dict[str, Price] = Field(
        default_factory=dict,
        description="Model name → price; overrides the genai-prices table (local and scripted cost 0).",
    )

    def timeout_for(self, model: ModelSpec) -> float:
        """The timeout of one call to ``model``: ``local_timeout_s`` for the local backend (or
        ``timeout_s`` when only that was set), ``timeout_s`` for every other backend."""
        if model.backend != "local":
            return self.timeout_s
        explicit = self.model_fields_set
        if "timeout_s" in explicit and "local_timeout_s" not in explicit:
            return self.timeout_s
        return self.local_timeout_s

    def entry_name(self, role: str) -> str | None:
        """The key of the ``roles`` entry that configures ``role`` (exact, then 'judge' for
        'judge:*', then 'default'), or None when no entry does."""
        if role in self.roles:
            return role
        if role.startswith("judge:") and "judge" in self.roles:
            return "judge"
        if "default" in self.roles:
            return "default"
        return None

    def role(self, role: str) -> RoleConfig:
        """The configuration for ``role`` (exact, then 'judge' for 'judge:*', then 'default')."""
        name = self.entry_name(role)
        if name is None:
            raise UnknownNameError("role", role, list(self.roles))
        return self.roles[name]


def therasim_home() -> Path:
    """Where therasim keeps its cache (``$THERASIM_HOME``, else ``~/.cache/therasim``)."""
    return Path(os.environ.get("THERASIM_HOME") or Path.home() / ".cache" / "therasim")
