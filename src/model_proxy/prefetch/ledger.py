"""What the prefetch watcher has run: a table in ``<data-dir>/jobs.sqlite``.

One row per rule, server, study and series (``""`` for a study-level rule) with the
fingerprint of the data it was run on (the model and the instance count) and the job
it became. A rule runs again on a study only when that fingerprint changes, and the
table survives a restart, so a restart does not run every recent study again.
Calls are short and synchronous; the watcher runs them in a thread.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

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


class PrefetchLedger:
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

    def fingerprint(self, rule: str, server: str, study: str, series: str | None) -> str | None:
        """The fingerprint the rule last ran on for this study (or series), or None."""
        with self._lock:
            row = self._db.execute(_FINGERPRINT, (rule, server, study, series or "")).fetchone()
        return None if row is None else str(row[0])

    def record(
        self, rule: str, server: str, study: str, series: str | None, fingerprint: str, job_id: str
    ) -> None:
        with self._lock:
            self._db.execute(
                _RECORD, (rule, server, study, series or "", fingerprint, job_id, time.time())
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
