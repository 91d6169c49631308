"""One small registry for the things therasim looks up by name: scripted agents, guards,
backends. Lookups fail with ``UnknownNameError`` ("unknown guard 'x'; did you mean ...; known:
..."), and tests swap an entry in for a block with :meth:`Registry.temporarily`, so no test leaves
a registry changed.

Built-ins register explicitly when a registry is first read (``builtins``: a function that
registers them); third-party extensions register through the ``therasim.plugins`` entry-point
group, whose functions receive nothing and call ``register`` themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from therasim.errors import UnknownNameError

T = TypeVar("T")

PLUGIN_GROUP = "therasim.plugins"
_plugins_loaded = False


def load_plugins() -> None:
    """Run every ``therasim.plugins`` entry point once per process."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for entry in entry_points(group=PLUGIN_GROUP):
        entry.load()()


class Registry(Generic[T]):
    """Name -> item, for one kind of thing (its name is used in error messages)."""

    def __init__(self, kind: str, builtins: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._builtins = builtins
        self._ready = builtins is None

    def _load(self) -> None:
        if not self._ready:
            self._ready = True  # first, so that the built-ins' own registrations do not recurse
            assert self._builtins is not None
            self._builtins()
            load_plugins()

    def add(self, name: str, item: T) -> T:
        """Register ``item`` as ``name`` (a later registration replaces an earlier one)."""
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def decorate(item: T) -> T:
            return self.add(name, item)

        return decorate

    def get(self, name: str) -> T:
        """The item registered as ``name``; ``UnknownNameError`` with close names otherwise."""
        if name not in self._items:
            self._load()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, list(self._items)) from None

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    @contextlib.contextmanager
    def temporarily(self, name: str, item: T) -> Iterator[T]:
        """Register ``item`` as ``name`` for the block, then restore what was there."""
        self._load()
        missing = object()
        before = self._items.get(name, missing)
        self._items[name] = item
        try:
            yield item
        finally:
            if before is missing:
                self._items.pop(name, None)
            else:
                self._items[name] = before  # type: ignore[assignment]
