"""Runs and their stored sessions, read-only.

A run is a folder under ``--runs`` holding a store (``sessions.sqlite``, as ``therasim run``
writes it), at most two levels down. Stores are opened through SQLite's ``mode=ro`` URI, never
through :class:`~therasim.simulations.store.Store` (which creates tables and switches the
journal mode): the studio never writes to a store it browses, and a study writing at the same
time is safe, since the store is in WAL mode, where readers see the last committed sessions
and never block the writer. Rows are validated by the store's own row models
(``SessionRow``, ``TurnRecord``, ``VerdictRow``), selected by their field names.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from therasim.errors import ConfigError
from therasim.simulations.records import SessionRow, TurnRecord, VerdictRow

STORE_NAME = "sessions.sqlite"
ROOT_NAME = "_root"  # the runs folder itself, when it holds a store
REPORT_NAME = "report.html"
_JSON = ("spec", "variant", "questionnaires", "adherence", "prompt_hashes", "initial_state")
_SESSION_FIELDS = tuple(SessionRow.model_fields)
_VERDICT_FIELDS = tuple(VerdictRow.model_fields)
#: Filters a session list offers, by column.
FILTERS = ("subject", "persona", "severity", "termination_reason")


@dataclass
class Run:
    """A run folder with a store."""

    name: str  # path below the runs folder, with '/'
    folder: Path

    @property
    def store(self) -> Path:
        """The run's session store."""
        return self.folder / STORE_NAME

    @property
    def report(self) -> Path | None:
        """The run's HTML report, if it has been written."""
        path = self.folder / REPORT_NAME
        return path if path.is_file() else None


def find_runs(root: Path) -> dict[str, Run]:
    """The runs under ``root`` (the folder itself, its children and grandchildren), by name."""
    runs: dict[str, Run] = {}
    if not root.is_dir():
        return runs
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    candidates += [g for c in candidates[1:] for g in sorted(c.iterdir()) if g.is_dir()]
    base = root.resolve()
    for folder in candidates:
        if folder.name.startswith(".") or not (folder / STORE_NAME).is_file():
            continue
        try:
            folder.resolve().relative_to(base)
        except ValueError:
            continue  # a symlink out of the runs folder
        name = folder.relative_to(root).as_posix()
        name = ROOT_NAME if name == "." else name
        runs[name] = Run(name, folder)
    return runs


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to a store; ``ConfigError`` if it cannot be read as one."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, timeout=10.0)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot be opened read-only: {exc}", file=str(path)) from None
    try:
        yield db
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot be read as a therasim store: {exc}", file=str(path)) from None
    finally:
        db.close()


def _session(values: tuple[Any, ...], path: Path) -> SessionRow:
    row = dict(zip(_SESSION_FIELDS, values, strict=True))
    for key in _JSON:
        if row.get(key) is not None:
            row[key] = json.loads(row[key])
    row["adherence"] = row["adherence"] or None
    try:
        return SessionRow.model_validate(row)
    except ValidationError as exc:
        raise ConfigError(
            f"holds a session this therasim cannot read: {exc.errors()[0]['msg']}",
            file=str(path),
            object_id=row.get("session_id"),
        ) from None


def run_summary(run: Run) -> dict[str, Any]:
    """Counts and the study id of a run, for the runs list (errors as text, not raised)."""
    out: dict[str, Any] = {"name": run.name, "report": run.report is not None}
    try:
        with read_only(run.store) as db:
            counts = dict(db.execute("SELECT status, COUNT(*) FROM sessions GROUP BY status"))
            out["completed"] = counts.get("completed", 0)
            out["failed"] = counts.get("failed", 0)
            out["verdicts"] = db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
            meta = db.execute("SELECT value FROM meta WHERE key='study'").fetchone()
            study = json.loads(meta[0]) if meta else None
            out["study"] = study.get("id", "") if isinstance(study, dict) else ""
    except ConfigError as exc:
        out["error"] = str(exc)
    return out


def sessions(run: Run, filters: dict[str, str] | None = None) -> list[SessionRow]:
    """The run's sessions matching every non-empty filter (column -> value), newest first."""
    wanted = {k: v for k, v in (filters or {}).items() if v and k in FILTERS}
    where = " AND ".join(f"{k}=?" for k in wanted)
    query = f"SELECT {', '.join(_SESSION_FIELDS)} FROM sessions"
    query += f" WHERE {where}" if where else ""
    with read_only(run.store) as db:
        rows = db.execute(query + " ORDER BY finished DESC", tuple(wanted.values())).fetchall()
    return [_session(r, run.store) for r in rows]


def filter_values(run: Run) -> dict[str, list[str]]:
    """The distinct values of each filter column in the run."""
    with read_only(run.store) as db:
        return {
            k: [r[0] for r in db.execute(f"SELECT DISTINCT {k} FROM sessions ORDER BY {k}")]
            for k in FILTERS
        }


@dataclass
class StoredSession:
    """One stored session with its utterances and verdicts."""

    row: SessionRow
    turns: list[TurnRecord]
    verdicts: list[VerdictRow]

    def turn_verdicts(self) -> dict[int, list[VerdictRow]]:
        """Turn-level verdicts by therapist turn number."""
        out: dict[int, list[VerdictRow]] = {}
        for v in self.verdicts:
            if v.turn >= 0:
                out.setdefault(v.turn, []).append(v)
        return out

    def session_verdicts(self) -> list[VerdictRow]:
        """Session-level verdicts (those not tied to a turn)."""
        return [v for v in self.verdicts if v.turn < 0]


def load_session(run: Run, session_id: str) -> StoredSession:
    """A stored session; ``ConfigError`` when the run has none with that id."""
    with read_only(run.store) as db:
        found = db.execute(
            f"SELECT {', '.join(_SESSION_FIELDS)} FROM sessions WHERE session_id=?",
            (session_id,),
        ).fetchone()
        if found is None:
            raise ConfigError(f"no session {session_id!r} in run {run.name!r}")
        records = db.execute(
            "SELECT record FROM turns WHERE session_id=? ORDER BY idx", (session_id,)
        ).fetchall()
        # a store written before a column was added (read-only here, so not migrated) lacks
        # it: read the columns it has, and let the row's defaults fill the rest
        have = {r[1] for r in db.execute("PRAGMA table_info(verdicts)")}
        fields = [f for f in _VERDICT_FIELDS if f in have]
        verdicts = db.execute(
            f"SELECT {', '.join(fields)} FROM verdicts WHERE session_id=?"
            " ORDER BY turn, item_id, judge",
            (session_id,),
        ).fetchall()
    try:
        turns = [TurnRecord.model_validate_json(r[0]) for r in records]
        rows = []
        for v in verdicts:
            values = dict(zip(fields, v, strict=True))
            met = values["met"]
            rows.append(
                VerdictRow.model_validate({**values, "met": None if met is None else bool(met)})
            )
    except ValidationError as exc:
        raise ConfigError(
            f"holds a session this therasim cannot read: {exc.errors()[0]['msg']}",
            file=str(run.store),
            object_id=session_id,
        ) from None
    return StoredSession(_session(found, run.store), turns, rows)
