"""The SQLite store: sessions, turns (with patient state), calls and verdicts.

A session is written whole, in one transaction, only when it has ended (completed or failed
with its error). A crash therefore never leaves half a session counted: after ``kill -9`` the
store holds every session that finished and nothing of the ones in flight, which a rerun
simulates again under the same ids. Judging and reporting read the store only.

Reading returns typed rows (``records.py``): ``sessions()`` validated, and ``turns()``,
``calls()``, ``verdicts()`` / ``verdict_batches()`` streamed in batches through a second,
read-only connection, built from what the store itself wrote without validating every row again
(see ``records.trusted``).

Judges' calls are rows of ``calls`` too (role ``judge:<name>``, after the session's own), written
with the judge's verdicts in one transaction (:meth:`Store.save_verdicts`): re-judging a session
replaces that judge's call rows, dropping a judge (:meth:`Store.delete_verdicts`) drops them.
They are what the stored verdicts cost; the budget's record of what judging spent, replaced
passes included, is the meta key ``judging_spent`` (``budget.py``).

Schema changes are additive: a column added since a store was made is added when the store is
opened (``_ADDED_COLUMNS``, with its default), so an older store still opens and reads.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any

from therasim.agents.llm.usage import Totals
from therasim.errors import ConfigError, redact_secrets
from therasim.simulations.records import (
    JUDGE_ROLE_PREFIX,
    CallBatch,
    CallRecord,
    CallRow,
    CallTotals,
    SessionResult,
    SessionRow,
    TurnRecord,
    TurnRow,
    VerdictBatch,
    VerdictRow,
    is_judge_role,
    judge_role,
    trusted,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    subject TEXT NOT NULL,
    persona TEXT NOT NULL,
    persona_ref TEXT NOT NULL,
    modality TEXT NOT NULL,
    severity TEXT NOT NULL,
    variant TEXT NOT NULL,
    repeat INTEGER NOT NULL,
    status TEXT NOT NULL,
    termination_reason TEXT NOT NULL,
    error TEXT,
    n_turns INTEGER NOT NULL,
    questionnaires TEXT NOT NULL,
    adherence TEXT NOT NULL,
    prompt_hashes TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd REAL,
    started REAL NOT NULL,
    finished REAL NOT NULL,
    initial_state TEXT,
    habituation_margin REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS turns (
    session_id TEXT NOT NULL REFERENCES sessions(session_id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (session_id, idx)
);
CREATE TABLE IF NOT EXISTS calls (
    session_id TEXT NOT NULL REFERENCES sessions(session_id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    role TEXT NOT NULL,
    model TEXT NOT NULL,
    cached INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd REAL,
    attempts INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, idx)
);
CREATE TABLE IF NOT EXISTS verdicts (
    session_id TEXT NOT NULL REFERENCES sessions(session_id) ON DELETE CASCADE,
    judge TEXT NOT NULL,
    item_id TEXT NOT NULL,
    turn INTEGER NOT NULL,
    met INTEGER,
    score REAL,
    reason TEXT NOT NULL,
    prompt_hash TEXT NOT NULL,
    rubric_version TEXT NOT NULL,
    model TEXT NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    weight REAL NOT NULL DEFAULT 1,
    PRIMARY KEY (session_id, judge, item_id, turn)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Columns added after the first release of their table: (table, column, declaration). Added to an
# older store when it is opened; new ones go at the end of their table in SCHEMA too.
_ADDED_COLUMNS = (
    ("calls", "cached_input_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("verdicts", "weight", "REAL NOT NULL DEFAULT 1"),
)

_SQLITE_HEADER = b"SQLite format 3\x00"
_BATCH = 5_000  # rows fetched at a time when a whole table is streamed
REPLACED_SPENT = "replaced_spent"  # meta: spending of session attempts replaced by a re-run
_SESSION_NAMES = tuple(SessionRow.model_fields)
_SESSION_FIELDS = ", ".join(_SESSION_NAMES)
_SESSION_JSON = ("spec", "variant", "questionnaires", "adherence", "prompt_hashes", "initial_state")
_CALL_NAMES = tuple(CallRow.model_fields)
_CALL_FIELDS = ", ".join(_CALL_NAMES)
_CALL_SET = set(_CALL_NAMES)
_CALL_GETTERS = [(name, itemgetter(i)) for i, name in enumerate(_CALL_NAMES)]
_CALL_INSERT = (
    f"INSERT INTO calls ({_CALL_FIELDS}) VALUES ({', '.join(':' + n for n in _CALL_NAMES)})"
)
_TOTAL_NAMES = tuple(CallTotals.model_fields)
_TOTAL_SET = set(_TOTAL_NAMES)
_VERDICT_NAMES = tuple(VerdictRow.model_fields)
_VERDICT_FIELDS = ", ".join(_VERDICT_NAMES)
_VERDICT_BATCH_SET = set(_VERDICT_NAMES)
_VERDICT_GETTERS = [(name, itemgetter(i)) for i, name in enumerate(_VERDICT_NAMES)]


def _session_row(values: tuple[Any, ...]) -> SessionRow:
    """A ``sessions`` row, JSON columns decoded and everything validated (a few per study).

    An empty adherence object is how a session without a report (a failed one) is stored."""
    row = dict(zip(_SESSION_NAMES, values, strict=True))
    for key in _SESSION_JSON:
        if row[key] is not None:
            row[key] = json.loads(row[key])
    row["adherence"] = row["adherence"] or None
    return SessionRow.model_validate(row)


def _check_store_file(path: Path) -> None:
    """Refuse an existing file that cannot be a store: empty (a truncated store would otherwise
    read as "nothing done" and be re-simulated over) or not an SQLite database."""
    if not path.exists():
        return
    if path.is_dir():
        raise ConfigError("is a folder, not a store file", file=str(path))
    with path.open("rb") as fh:
        head = fh.read(len(_SQLITE_HEADER))
    wal = path.with_name(path.name + "-wal")
    if not head:
        if wal.exists() and wal.stat().st_size > 0:
            return  # a new store whose first pages are still in the write-ahead log
        raise ConfigError(
            "is an empty file, not a therasim store (was it truncated?); move it away to start "
            "a new run",
            file=str(path),
        )
    if head != _SQLITE_HEADER:
        raise ConfigError("is not a therasim store (not an SQLite database)", file=str(path))


class Store:
    """A study's SQLite file. Safe to share between the tasks of one process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _check_store_file(self.path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=60.0
        )  # several worker processes may write at once
        try:
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise ConfigError(f"is not a therasim store ({exc})", file=str(self.path)) from None
        if tables and "sessions" not in tables:
            self._db.close()
            raise ConfigError(
                "is an SQLite database but not a therasim store; refusing to write into it",
                file=str(self.path),
            )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        self._add_columns()

    def _add_columns(self) -> None:
        """Add the columns an older store lacks (``_ADDED_COLUMNS``)."""
        for table, column, declaration in _ADDED_COLUMNS:
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if column in have:
                continue
            try:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
            except sqlite3.OperationalError as exc:  # another process added it first
                if "duplicate column" not in str(exc):
                    raise

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing

    def save_session(self, result: SessionResult) -> None:
        """Write (or replace) one finished session, atomically."""
        spec = result.spec
        totals = Totals.sum(result.calls)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._keep_replaced_spending(result.session_id)
                self._db.execute("DELETE FROM sessions WHERE session_id=?", (result.session_id,))
                self._db.execute(
                    "INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        result.session_id,
                        spec.model_dump_json(),
                        spec.label,
                        spec.persona,
                        result.persona_ref,
                        result.modality,
                        spec.severity.value,
                        json.dumps(spec.variant, sort_keys=True),
                        spec.repeat,
                        result.status,
                        result.termination_reason.value,
                        None if result.error is None else redact_secrets(result.error),
                        result.therapist_turns,
                        json.dumps([q.model_dump() for q in result.questionnaires]),
                        result.adherence.model_dump_json() if result.adherence else "{}",
                        json.dumps(result.prompt_hashes, sort_keys=True),
                        totals.input_tokens,
                        totals.output_tokens,
                        totals.known_cost,
                        result.started,
                        result.finished,
                        result.initial_state.model_dump_json() if result.initial_state else None,
                        result.habituation_margin,
                    ),
                )
                self._db.executemany(
                    "INSERT INTO turns VALUES (?,?,?)",
                    [(result.session_id, t.index, t.model_dump_json()) for t in result.turns],
                )
                self._insert_calls(result.session_id, 0, result.calls)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _insert_calls(self, session_id: str, start: int, calls: Iterable[CallRecord]) -> None:
        """Insert ``calls`` as ``session_id``'s calls from position ``start`` (in a transaction)."""
        self._db.executemany(
            _CALL_INSERT,
            [
                {**c.model_dump(), "session_id": session_id, "idx": i, "cached": int(c.cached)}
                for i, c in enumerate(calls, start)
            ],
        )

    def save_verdicts(
        self,
        rows: Iterable[VerdictRow | Mapping[str, Any]],
        calls: Mapping[str, Sequence[CallRecord]] | None = None,
    ) -> int:
        """Insert or replace verdicts (rows, or mappings with the ``verdicts`` columns, which are
        validated as :class:`VerdictRow`); one transaction.

        ``calls`` (session id -> the judges' calls that made these verdicts) are stored with
        them: every earlier call row of each (session, judge) pair the rows or the calls name is
        replaced, so a session's judge calls are the ones behind its current verdicts. Without
        ``calls`` the call rows are left as they are.

        A reason is stored with secret-looking strings redacted (an error echoed by a backend
        may carry its key)."""
        records: list[dict[str, Any]] = [
            {**row.model_dump(), "reason": redact_secrets(row.reason)}
            for row in (
                r if isinstance(r, VerdictRow) else VerdictRow.model_validate(r) for r in rows
            )
        ]
        judged: set[tuple[str, str]] = set()
        if calls is not None:
            judged = {(r["session_id"], judge_role(r["judge"])) for r in records}
            judged |= {
                (sid, c.role) for sid, rs in calls.items() for c in rs if is_judge_role(c.role)
            }
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "DELETE FROM calls WHERE session_id=? AND role=?", sorted(judged)
                )
                for sid, session_calls in sorted((calls or {}).items()):
                    if session_calls:
                        (last,) = self._db.execute(
                            "SELECT MAX(idx) FROM calls WHERE session_id=?", (sid,)
                        ).fetchone()
                        self._insert_calls(sid, 0 if last is None else last + 1, session_calls)
                self._db.executemany(
                    "INSERT OR REPLACE INTO verdicts (session_id, judge, item_id, turn, met, score, reason,"
                    " prompt_hash, rubric_version, model, input_tokens, output_tokens, weight)"
                    " VALUES (:session_id, :judge, :item_id, :turn, :met, :score, :reason, :prompt_hash,"
                    " :rubric_version, :model, :input_tokens, :output_tokens, :weight)",
                    records,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(records)

    def _keep_replaced_spending(self, session_id: str) -> None:
        """Add what an earlier attempt of this session spent (uncached, not judging) to the
        ``replaced_spent`` ledger before its rows go: a failed session re-run must not take its
        first attempt's spending out of the budget's count. Inside ``save_session``'s
        transaction."""
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),"
            " COALESCE(SUM(cost_usd), 0), COALESCE(SUM(cached_input_tokens), 0)"
            " FROM calls WHERE session_id=? AND cached=0 AND role NOT LIKE ?",
            (session_id, JUDGE_ROLE_PREFIX + "%"),
        ).fetchone()
        if not row[0]:
            return
        before = self._replaced()
        doc = {
            "input_tokens": before.input_tokens + row[1],
            "output_tokens": before.output_tokens + row[2],
            "cost_usd": before.cost_usd + row[3],
            "cached_input_tokens": before.cached_input_tokens + row[4],
        }
        self._db.execute(
            "INSERT OR REPLACE INTO meta VALUES (?,?)", (REPLACED_SPENT, json.dumps(doc))
        )

    def replaced_spending(self) -> Totals:
        """What earlier attempts of re-run sessions spent (their call rows are gone)."""
        with self._lock:
            return self._replaced()

    def _replaced(self) -> Totals:
        found = self._db.execute("SELECT value FROM meta WHERE key=?", (REPLACED_SPENT,))
        row = found.fetchone()
        doc: dict[str, Any] = json.loads(row[0]) if row else {}
        return Totals(
            int(doc.get("input_tokens", 0)),
            int(doc.get("output_tokens", 0)),
            float(doc.get("cost_usd", 0.0)),
            cached_input_tokens=int(doc.get("cached_input_tokens", 0)),
        )

    def verdict_judges(self) -> set[str]:
        """Names of the judges the store holds verdicts from."""
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT DISTINCT judge FROM verdicts")}

    def verdict_models(self) -> dict[str, set[str]]:
        """Judge name -> the models its stored verdicts came from."""
        out: dict[str, set[str]] = {}
        with self._lock:
            for judge, model in self._db.execute("SELECT DISTINCT judge, model FROM verdicts"):
                out.setdefault(judge, set()).add(model)
        return out

    def delete_verdicts(self, judges: Iterable[str]) -> int:
        """Drop every verdict of the named judges, and their call rows (a panel being
        replaced), in one transaction; returns the verdicts dropped."""
        names = list(judges)
        if not names:
            return 0
        marks = ",".join("?" * len(names))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(f"DELETE FROM verdicts WHERE judge IN ({marks})", names)
                dropped = cur.rowcount
                self._db.execute(
                    f"DELETE FROM calls WHERE role IN ({marks})", [judge_role(n) for n in names]
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return dropped

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value under ``key`` (run settings, calibration, spending)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        """The JSON value stored under ``key``, or ``default``."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    # ---- reading: typed rows, one path per table

    def session_ids(self, status: str | None = None) -> set[str]:
        """Ids of stored sessions, optionally only those with ``status``."""
        query = "SELECT session_id FROM sessions" + (" WHERE status=?" if status else "")
        with self._lock:
            return {r[0] for r in self._db.execute(query, (status,) if status else ())}

    def count(self, status: str | None = None) -> int:
        """How many sessions are stored (with ``status``, if given)."""
        return len(self.session_ids(status))

    def sessions(self, session_id: str | None = None) -> list[SessionRow]:
        """Every stored session (or the one with ``session_id``), in id order, validated."""
        query = f"SELECT {_SESSION_FIELDS} FROM sessions"
        if session_id is not None:
            query += " WHERE session_id=?"
        with self._lock:
            rows = self._db.execute(
                query + " ORDER BY session_id", () if session_id is None else (session_id,)
            ).fetchall()
        return [_session_row(r) for r in rows]

    def session_stream(self) -> Iterator[SessionRow]:
        """Every stored session in id order, as :meth:`sessions`, streamed in batches: a row
        holds its spec and questionnaires, about 25 KB, and a report needs one at a time."""
        for batch in self._batches(f"SELECT {_SESSION_FIELDS} FROM sessions ORDER BY session_id"):
            yield from map(_session_row, batch)

    def turns(self, session_id: str | None = None) -> Iterator[TurnRow]:
        """Utterances in transcript order, session by session (streamed in batches)."""
        for sid, record in self._rows("SELECT session_id, record FROM turns", session_id, "idx"):
            turn = TurnRecord.model_validate_json(record)
            yield trusted(TurnRow, {"session_id": sid, "record": turn})

    def calls(self, session_id: str | None = None) -> Iterator[CallRow]:
        """Gateway calls in the order made, session by session (streamed in batches)."""
        query = f"SELECT {_CALL_FIELDS} FROM calls"
        for values in self._rows(query, session_id, "idx"):
            row = dict(zip(_CALL_NAMES, values, strict=True))
            row["cached"] = bool(row["cached"])
            yield trusted(CallRow, row, _CALL_SET)

    def call_batches(self) -> Iterator[CallBatch]:
        """Every call, in :meth:`calls` order, ``_BATCH`` rows a batch (as columns)."""
        query = f"SELECT {_CALL_FIELDS} FROM calls ORDER BY session_id, idx"
        for rows in self._batches(query):
            columns = {name: list(map(get, rows)) for name, get in _CALL_GETTERS}
            columns["cached"] = [bool(c) for c in columns["cached"]]
            yield trusted(CallBatch, columns, _CALL_SET)

    def call_totals(self) -> list[CallTotals]:
        """Each session's calls summed per role and model, summed in SQL: the report's cost
        tables read these, not every call (a study judged item by item stores about ten calls
        a therapist turn). ``cost_usd`` sums the known prices; ``unpriced`` counts the rest."""
        query = (
            "SELECT session_id, role, model, COUNT(*), SUM(cached), SUM(input_tokens), "
            "SUM(cached_input_tokens), SUM(output_tokens), TOTAL(cost_usd), "
            "SUM(cost_usd IS NULL) FROM calls GROUP BY session_id, role, model "
            "ORDER BY session_id, role, model"
        )
        return [
            trusted(CallTotals, dict(zip(_TOTAL_NAMES, row, strict=True)), _TOTAL_SET)
            for rows in self._batches(query)
            for row in rows
        ]

    def verdicts(self) -> Iterator[VerdictRow]:
        """Every verdict, by session, judge, item and unit (streamed in batches)."""
        for batch in self.verdict_batches():
            yield from batch.rows()

    def verdict_batches(self) -> Iterator[VerdictBatch]:
        """Every verdict, in :meth:`verdicts` order, ``_BATCH`` rows a batch (as columns)."""
        query = f"SELECT {_VERDICT_FIELDS} FROM verdicts ORDER BY session_id, judge, item_id, turn"
        for rows in self._batches(query):
            columns = {name: list(map(get, rows)) for name, get in _VERDICT_GETTERS}
            columns["met"] = [None if m is None else bool(m) for m in columns["met"]]
            yield trusted(VerdictBatch, columns, _VERDICT_BATCH_SET)

    def _rows(self, query: str, session_id: str | None, order: str) -> Iterator[tuple[Any, ...]]:
        """Rows of ``query`` ordered by session then ``order``: one session's through the
        store's connection, a whole table through a second, read-only one, ``_BATCH`` rows at
        a time, so a reader never holds the table (nor the store's lock) at once."""
        if session_id is not None:
            with self._lock:
                rows = self._db.execute(
                    f"{query} WHERE session_id=? ORDER BY {order}", (session_id,)
                ).fetchall()
            yield from rows
            return
        for batch in self._batches(f"{query} ORDER BY session_id, {order}"):
            yield from batch

    def _batches(self, query: str) -> Iterator[list[tuple[Any, ...]]]:
        """``query``'s rows, ``_BATCH`` at a time, through a second, read-only connection."""
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            cursor = db.execute(query)
            while batch := cursor.fetchmany(_BATCH):
                yield batch

    def load_session(self, session_id: str) -> SessionResult | None:
        """A stored session, rebuilt as a :class:`SessionResult` (None if absent)."""
        rows = self.sessions(session_id)
        if not rows:
            return None
        return rows[0].result(
            [t.record for t in self.turns(session_id)],
            [c.record for c in self.calls(session_id) if not is_judge_role(c.role)],
        )

    def find_session(self, prefix: str) -> str | None:
        """The full id of the one session whose id starts with ``prefix``."""
        matches = sorted(i for i in self.session_ids() if i.startswith(prefix))
        return matches[0] if len(matches) == 1 else None

    def verdict_error_counts(self) -> dict[str, tuple[int, int, str]]:
        """Judge -> (error verdicts, all verdicts, the first error's reason)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT judge, SUM(reason LIKE 'error:%'), COUNT(*),"
                " MIN(CASE WHEN reason LIKE 'error:%' THEN reason END)"
                " FROM verdicts GROUP BY judge"
            ).fetchall()
        return {
            judge: (int(errors), int(total), first or "") for judge, errors, total, first in rows
        }

    def uncached_totals(self) -> Totals:
        """Tokens and cost of the sessions' own stored calls that reached a backend (the budget's
        measure of simulating; judging's is kept apart, see ``budget.py``)."""
        return Totals.sum(c for c in self.calls() if not c.cached and not is_judge_role(c.role))
