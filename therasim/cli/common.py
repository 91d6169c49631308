"""What the verb modules share: the two consoles and the parsing and running they all repeat.

Kept light on purpose (rich only): every verb module imports it at start-up, so heavy packages
(pandas, numpy, langgraph, the gateway) are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import Console

from therasim.errors import ConfigError

if TYPE_CHECKING:
    from rich.table import Table

    from therasim.agents.llm import Gateway
    from therasim.evaluation.judging.panel import JudgeSpec

# Logs and CI output are not terminals; give tables room there instead of rich's 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

#: What a verb's ``set_defaults(handler=...)`` names: parsed arguments in, exit code out.
Handler = Callable[[argparse.Namespace], int]

#: The severity levels a persona can be shown or simulated at (``personas show``, ``simulate``).
SEVERITIES = ["routine", "distress", "crisis_adjacent", "imminent"]

T = TypeVar("T")


def table(columns: tuple[str, ...], **options: Any) -> Table:
    """A rich table with these column headers (``options`` go to ``Table``: title, ...)."""
    from rich.table import Table

    out = Table(**options)
    for column in columns:
        out.add_column(column)
    return out


def bounded(
    kind: Callable[[str], Any], low: float, high: float | None = None
) -> Callable[[str], Any]:
    """An argparse ``type``: ``kind`` of the argument, from ``low`` to ``high`` inclusive, so a
    value out of range is a usage error naming the option, not a traceback further in."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{text} is out of range ({span})")
        return value

    return parse


def parse_sets(pairs: list[str]) -> dict[str, str]:
    """``--set ATTR=VALUE`` pairs (counterfactual demographic changes) as a dict."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes ATTRIBUTE=VALUE, got {pair!r}", field="--set")
        out[key.strip()] = value.strip()
    return out


def parse_judges(entries: list[str]) -> list[JudgeSpec]:
    """A judge panel from ``NAME=MODEL`` entries; an entry without a name is called ``j<n>``."""
    from therasim.evaluation.judging.panel import JudgeSpec

    judges = []
    for i, entry in enumerate(entries):
        name, sep, model = entry.partition("=")
        if not sep:
            name, model = f"j{i + 1}", entry
        judges.append(JudgeSpec(name=name, model=model))
    return judges


def run_then_close(gateway: Gateway, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work()`` on a new event loop and close ``gateway`` after it, whether it failed or not."""
    import asyncio

    async def go() -> T:
        try:
            return await work()
        finally:
            await gateway.aclose()

    return asyncio.run(go())
