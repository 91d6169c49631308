"""The persistent response cache (SQLite) and the structured-output mode that worked per model."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from therasim.agents.types import Usage


class ResponseCache:
    """A persistent response cache in SQLite, safe to share between tasks of one process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT, text TEXT,"
            " input_tokens INTEGER, output_tokens INTEGER, cost_usd REAL, structured_mode TEXT,"
            " created REAL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS modes (model TEXT PRIMARY KEY, mode TEXT)")
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> tuple[str, Usage, str | None] | None:
        """The stored text, usage and structured mode for ``key``, if any (counts a hit or miss)."""
        with self._lock:
            row = self._db.execute(
                "SELECT text, input_tokens, output_tokens, cost_usd, structured_mode FROM responses WHERE key=?",
                (key,),
            ).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return row[0], Usage(input_tokens=row[1], output_tokens=row[2], cost_usd=row[3]), row[4]

    def put(self, key: str, model: str, text: str, usage: Usage, mode: str | None) -> None:
        """Store (or replace) the response for ``key``."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?,?,?)",
                (
                    key,
                    model,
                    text,
                    usage.input_tokens,
                    usage.output_tokens,
                    usage.cost_usd,
                    mode,
                    time.time(),
                ),
            )

    def mode(self, model: str) -> str | None:
        """The structured-output mode remembered for ``model``, if any."""
        with self._lock:
            row = self._db.execute("SELECT mode FROM modes WHERE model=?", (model,)).fetchone()
        return row[0] if row else None

    def set_mode(self, model: str, mode: str) -> None:
        """Remember the structured-output mode that worked for ``model``."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO modes VALUES (?,?)", (model, mode))

    def size(self) -> tuple[int, int]:
        """(entries, bytes on disk)."""
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM responses").fetchone()
        size = sum(
            p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.exists()
        )
        return int(n), size

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
