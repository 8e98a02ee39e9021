"""What the prefetch watcher has run, with the fingerprint of the data it ran on.

One entry per rule, server, study and series (``None`` for a study-level rule) with the
fingerprint of the data (the model, the level and the instance count) and the job it
became. A rule runs again on a study only when that fingerprint changes, and the
ledger outlives the process, so a restart (or, with ``--redis``, a watcher lease that
passes to another replica) does not run every recent study again.

Two places keep it, behind one async interface, :class:`PrefetchLedger`:
``SqliteLedger`` (a table in ``<data-dir>/jobs.sqlite``, one proxy) and
``RedisLedger`` (prefetch/shared_ledger.py, ``--redis``: shared by the replicas).
A read or write that fails raises :class:`LedgerUnavailable`: the watcher then leaves
the study for the next poll rather than risk running it twice.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class RunKey:
    """What one ledger entry is about."""

    rule: str  # the rule's name: a renamed rule is a new rule
    server: str
    study: str
    series: str | None  # None: a study-level rule


@dataclass(frozen=True)
class LedgerRow:
    """One entry as the SQLite table holds it (for the migration into Redis)."""

    key: RunKey
    fingerprint: str
    job_id: str
    at: float  # time.time() of the run


class LedgerUnavailable(Exception):
    """A ledger read or write failed (Redis down, SQLite unwritable); says why."""


class PrefetchLedger(Protocol):
    async def fingerprint(self, key: RunKey) -> str | None:
        """The fingerprint the rule last ran on for this study (or series), or None."""
        ...

    async def record(self, key: RunKey, fingerprint: str, job_id: str) -> None:
        """Note that the rule runs (``job_id`` ``""``: being submitted) on that data."""
        ...

    async def forget(self, key: RunKey) -> None:
        """Take back an entry whose job could not be submitted: it runs next poll."""
        ...

    async def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS prefetch_runs (
    rule        TEXT NOT NULL,
    server      TEXT NOT NULL,
    study       TEXT NOT NULL,
    series      TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    at          REAL NOT NULL,
    PRIMARY KEY (rule, server, study, series)
);
"""
_FINGERPRINT = (
    "SELECT fingerprint FROM prefetch_runs"
    " WHERE rule = ? AND server = ? AND study = ? AND series = ?"
)
_RECORD = (
    "INSERT OR REPLACE INTO prefetch_runs (rule, server, study, series, fingerprint, job_id, at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_FORGET = "DELETE FROM prefetch_runs WHERE rule = ? AND server = ? AND study = ? AND series = ?"
_ROWS = "SELECT rule, server, study, series, fingerprint, job_id, at FROM prefetch_runs"
# Rows copied into Redis move here: a backup the proxy never reads (docs/replicas.md).
MIGRATED_TABLE = "prefetch_runs_migrated_to_redis"
_MIGRATED_SCHEMA = _SCHEMA.replace("prefetch_runs", MIGRATED_TABLE)
_MOVE = (
    "INSERT OR REPLACE INTO prefetch_runs_migrated_to_redis"
    " SELECT rule, server, study, series, fingerprint, job_id, at FROM prefetch_runs"
    " WHERE rule = ? AND server = ? AND study = ? AND series = ? AND at = ?"
)
_MOVED = (
    "DELETE FROM prefetch_runs"
    " WHERE rule = ? AND server = ? AND study = ? AND series = ? AND at = ?"
)


def _params(key: RunKey) -> tuple[str, str, str, str]:
    return (key.rule, key.server, key.study, key.series or "")


class LedgerTable:
    """The ``prefetch_runs`` table of jobs.sqlite; short synchronous calls."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Its own connection to the job store's file: WAL lets both write in turn.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error:
            self._db.close()
            raise

    def fingerprint(self, key: RunKey) -> str | None:
        with self._lock:
            row = self._db.execute(_FINGERPRINT, _params(key)).fetchone()
        return None if row is None else str(row[0])

    def record(self, key: RunKey, fingerprint: str, job_id: str) -> None:
        with self._lock:
            self._db.execute(_RECORD, (*_params(key), fingerprint, job_id, time.time()))

    def forget(self, key: RunKey) -> None:
        with self._lock:
            self._db.execute(_FORGET, _params(key))

    def rows(self) -> list[LedgerRow]:
        with self._lock:
            found = self._db.execute(_ROWS).fetchall()
        return [
            LedgerRow(RunKey(rule, server, study, series or None), fingerprint, job_id, at)
            for rule, server, study, series, fingerprint, job_id, at in found
        ]

    def move_to_backup(self, rows: list[LedgerRow]) -> None:
        """Move ``rows`` (as read) out of the table, into the migrated-rows backup."""
        with self._lock:
            self._db.executescript(_MIGRATED_SCHEMA)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    params = (*_params(row.key), row.at)
                    self._db.execute(_MOVE, params)
                    self._db.execute(_MOVED, params)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()


class SqliteLedger:
    """One proxy's ledger: :class:`LedgerTable` with its calls in a thread."""

    def __init__(self, table: LedgerTable) -> None:
        self._table = table

    @classmethod
    async def open(cls, path: Path) -> SqliteLedger:
        return cls(await asyncio.to_thread(LedgerTable, path))

    async def fingerprint(self, key: RunKey) -> str | None:
        try:
            return await asyncio.to_thread(self._table.fingerprint, key)
        except sqlite3.Error as exc:
            raise LedgerUnavailable(f"the ledger in jobs.sqlite cannot be read: {exc}") from None

    async def record(self, key: RunKey, fingerprint: str, job_id: str) -> None:
        try:
            await asyncio.to_thread(self._table.record, key, fingerprint, job_id)
        except sqlite3.Error as exc:
            raise LedgerUnavailable(f"the ledger in jobs.sqlite cannot be written: {exc}") from None

    async def forget(self, key: RunKey) -> None:
        try:
            await asyncio.to_thread(self._table.forget, key)
        except sqlite3.Error as exc:
            raise LedgerUnavailable(f"the ledger in jobs.sqlite cannot be written: {exc}") from None

    async def close(self) -> None:
        await asyncio.to_thread(self._table.close)
