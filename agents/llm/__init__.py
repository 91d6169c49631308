"""The gateway: every LLM call of every role goes through ``Gateway.complete``.

Roles (``subject``, ``patient``, ``appraiser``, ``judge:<name>``) map to model specs in a
:class:`GatewayConfig`; code names roles, never models. A model spec is a string:

==============================================  ===============================================
``openai:MODEL``                                 any OpenAI-compatible endpoint (OpenAI, vLLM,
``openai:MODEL?base_url=URL&api_key_env=VAR``    Ollama, llama.cpp), one aiohttp POST a call
``openai:MODEL?base_url=URL1,URL2``              replicas of one model: least-outstanding
                                                 choice, failover, ``replica_concurrency``/
                                                 ``replica_rpm`` per replica (``replicas``)
``PROVIDER:MODEL`` (``anthropic:…``, ``ollama:…``)  LangChain's ``init_chat_model`` (with
                                                 langchain-openai for ``azure_openai``)
``local`` / ``local:/path/to/model.gguf``        the bundled SmolLM2-135M (or your GGUF), served
                                                 by llama-cpp-python on loopback
``scripted:NAME``                                a deterministic built-in (``agents/scripted.py``)
``python:package.module:function``               a whole application under test; gets the
                                                 message list, sync or async, returns text
==============================================  ===============================================

Each backend sits behind one :class:`~therasim.agents.llm.backends.Backend` protocol and is
looked up by name in a :class:`~therasim.agents.llm.backends.BackendRegistry`;
:class:`FunctionBackend` scripts a model in tests. The package, one job a module:

- ``spec``: model spec strings; ``config``: roles, policies, prices; ``cache``: the SQLite
  response cache; ``usage``: accounting and prices; ``structured``: output modes, schema
  prompt, JSON repair; ``gateway``: :class:`Gateway` and :class:`BoundGateway`; ``replicas``:
  the pool that balances one model's endpoints;
  ``backends/``: the protocol, the registry and one module per backend.

The gateway owns: bounded retries with exponential backoff and jitter on transient errors;
a concurrency limit and a requests-per-minute limit per role entry of the config (an entry
that covers several roles, ``judge`` or ``default``, is one limit they share); a persistent
SQLite response cache keyed on model spec, messages, parameters, seed and repeat index; token
and cost accounting per role; structured output with fallbacks (``json_schema`` response format →
``json_object`` with a schema, which llama.cpp's server accepts → plain prompt) plus one repair
round, remembering per model which mode worked; timeouts. Errors come from the one tree in
:mod:`therasim.errors` and always name the role and model: a backend raises a ``ModelError`` or
its library's exception, which the backend's ``map_error`` translates (HTTP 429 →
``RateLimited``, 408 and timeouts → ``ModelTimeout``, 5xx → ``ServerError``, unreachable →
``ModelConnectionError``, anything else → ``PermanentModelError``); only ``TransientModelError``
is retried. A reply that is not valid Unicode text (a lone surrogate, which UTF-8 cannot hold)
is refused, not repaired: ``PermanentModelError`` for the role that produced it, its tokens
counted, nothing cached, so a session records it as that participant's error.

The ``local`` backend is sized to a small model on a few cores (:mod:`therasim.agents.local`):
its server is started and warmed before the first timed call; calls go to it one at a time (it
serves one anyway), so a call's timeout counts its own generation, not the queue; the timeout is
``local_timeout_s`` (600 s) unless the config sets one; a local timeout is not retried, because
the server finishes the abandoned generation first and a retry would wait behind it; a call that
sets no ``max_tokens`` gets ``local_max_tokens`` (structured calls at least 512).

Real backends (``openai``, LangChain providers, ``local``) refuse to run while
:func:`allow_model_requests` is off — the test suite turns it off so nothing reaches a real
endpoint by accident.
"""

from __future__ import annotations

from therasim.agents.llm.backends import (
    BACKENDS,
    Backend,
    BackendRegistry,
    FunctionBackend,
    RawCompletion,
    builtin_backends,
)
from therasim.agents.llm.cache import ResponseCache
from therasim.agents.llm.config import GatewayConfig, Price, RoleConfig, therasim_home
from therasim.agents.llm.gateway import (
    BoundGateway,
    Gateway,
    allow_model_requests,
    model_requests_allowed,
    real_model_requests,
)
from therasim.agents.llm.spec import (
    BUILTIN_BACKENDS,
    LANGCHAIN_PROVIDERS,
    ModelSpec,
    parse_model_spec,
)
from therasim.agents.llm.structured import STRUCTURED_MODES, StructuredMode, extract_json
from therasim.agents.llm.usage import Accounting, RoleUsage, price_of

__all__ = [
    "BACKENDS",
    "BUILTIN_BACKENDS",
    "LANGCHAIN_PROVIDERS",
    "STRUCTURED_MODES",
    "Accounting",
    "Backend",
    "BackendRegistry",
    "BoundGateway",
    "FunctionBackend",
    "Gateway",
    "GatewayConfig",
    "ModelSpec",
    "Price",
    "RawCompletion",
    "ResponseCache",
    "RoleConfig",
    "RoleUsage",
    "StructuredMode",
    "allow_model_requests",
    "builtin_backends",
    "extract_json",
    "model_requests_allowed",
    "parse_model_spec",
    "price_of",
    "real_model_requests",
    "therasim_home",
]
