"""The job store: one SQLite file, ``<data-dir>/jobs.sqlite`` (no server to run).

Every change of a job's state is written through, so queued and running jobs
survive a restart (``JobStore.recover``). Calls are short and synchronous; the
manager runs them in a thread. One connection, guarded by a lock: SQLite
serialises writers anyway, and a job store sees a few writes per job.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson

from model_proxy.jobs.job import Job, JobStatus
from model_proxy.jobs.spec import JobSpec

# Under --data-dir.
JOB_STORE_FILE = "jobs.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    spec        TEXT NOT NULL,
    model       TEXT NOT NULL,
    status      TEXT NOT NULL,
    created     REAL NOT NULL,
    started     REAL,
    finished    REAL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    progress    TEXT,
    error       TEXT,
    result_key  TEXT,
    outputs     TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created);
CREATE INDEX IF NOT EXISTS jobs_by_finished ON jobs (finished);
"""

# Constant SQL only: every value is bound as a parameter.
_SELECT = (
    "SELECT id, spec, status, created, started, finished, attempts, progress, error, result_key,"
    " outputs FROM jobs"
)
_SAVE = (
    "INSERT OR REPLACE INTO jobs (id, spec, status, created, started, finished, attempts,"
    " progress, error, result_key, model, outputs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_RECENT = (
    _SELECT + " WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR model = ?2)"
    " ORDER BY created DESC LIMIT ?3"
)
_UNFINISHED = _SELECT + " WHERE status IN (?, ?) ORDER BY created"
_BY_ID = _SELECT + " WHERE id = ?"


class JobStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            # WAL: readers (the list, /status) never wait for a writer.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            _add_missing_columns(self._db)
        except sqlite3.Error:
            self._db.close()  # not a job store: leave no handle behind
            raise

    def save(self, job: Job) -> None:
        """Insert or update ``job`` whole."""
        progress = job.progress_json()
        with self._lock:
            self._db.execute(
                _SAVE,
                (
                    job.id,
                    job.spec.dumps(),
                    job.status.value,
                    job.created,
                    job.started,
                    job.finished,
                    job.attempts,
                    orjson.dumps(progress).decode(),
                    orjson.dumps(job.error).decode() if job.error else None,
                    job.result_key,
                    job.spec.model,
                    _outputs_json(job),
                ),
            )

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute(_BY_ID, (job_id,)).fetchone()
        return None if row is None else _job(row)

    def recent(
        self, *, status: JobStatus | None = None, model: str | None = None, limit: int = 100
    ) -> list[Job]:
        """Newest first."""
        with self._lock:
            rows = self._db.execute(
                _RECENT, (status.value if status else None, model, limit)
            ).fetchall()
        return [_job(row) for row in rows]

    def unfinished(self) -> list[Job]:
        """Queued and running jobs, oldest first: what a restart takes up again."""
        with self._lock:
            rows = self._db.execute(
                _UNFINISHED,
                (JobStatus.QUEUED.value, JobStatus.RUNNING.value),
            ).fetchall()
        return [_job(row) for row in rows]

    def count(self, status: JobStatus, *, finished_since: float | None = None) -> int:
        sql, params = "SELECT COUNT(*) FROM jobs WHERE status = ?", [status.value]
        params_any: list[object] = list(params)
        if finished_since is not None:
            sql += " AND finished >= ?"
            params_any.append(finished_since)
        with self._lock:
            found: int = self._db.execute(sql, params_any).fetchone()[0]
        return found

    def purge(self, older_than: float) -> int:
        """Delete finished jobs that ended before ``older_than`` (a time.time())."""
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM jobs WHERE finished IS NOT NULL AND finished < ?", (older_than,)
            )
        return cursor.rowcount

    def delete(self, job_ids: list[str]) -> None:
        """Remove these jobs (moved into Redis: jobs/redis_queue.py)."""
        with self._lock:
            self._db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in job_ids])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """A jobs.sqlite written before the store step has no ``outputs`` column."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    if "outputs" not in columns:
        db.execute("ALTER TABLE jobs ADD COLUMN outputs TEXT")


def _outputs_json(job: Job) -> str | None:
    if job.stored is None and job.store_error is None:
        return None
    return orjson.dumps({"stored": job.stored, "storeError": job.store_error}).decode()


def _job(row: tuple[Any, ...]) -> Job:
    job_id, spec, status, created, started, finished, attempts, progress, error, key, outputs = row
    stored = orjson.loads(outputs) if outputs else {}
    return Job(
        id=job_id,
        spec=JobSpec.loads(spec),
        status=JobStatus(status),
        created=created,
        started=started,
        finished=finished,
        attempts=attempts,
        error=orjson.loads(error) if error else None,
        result_key=key,
        stored_progress=orjson.loads(progress) if progress else None,
        stored=stored.get("stored"),
        store_error=stored.get("storeError"),
    )
