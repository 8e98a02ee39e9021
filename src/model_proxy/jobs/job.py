"""One job: its spec, where it is, and what it became."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from model_proxy.inference.progress import Phase, Progress
from model_proxy.jobs.spec import JobSpec


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


@dataclass
class Job:
    id: str
    spec: JobSpec
    status: JobStatus = JobStatus.QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    # Runs so far: a job running when the proxy stopped is run again (docs/jobs.md).
    attempts: int = 0
    error: dict[str, str] | None = None
    # The result cache key of the result (its ETag, W/"<key>").
    result_key: str | None = None
    progress: Progress = field(default_factory=Progress)
    # The store step (docs/jobs.md): the SOP Instance UIDs stored, and why a store that
    # was not required failed ({message, code}); both None when nothing was stored.
    stored: list[str] | None = None
    store_error: dict[str, str] | None = None
    # Figures kept from the store for a job this process did not run.
    stored_progress: dict[str, Any] | None = None
    cancel_requested: bool = False
    # Another replica took the run over (its lease ran out here): stop, write nothing.
    run_lost: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def notify(self) -> None:
        """Wake whoever waits in ``changed`` (the events stream)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self, within: float) -> None:
        """Until the job changes state, or ``within`` seconds (progress moves quietly)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), within)

    def progress_json(self) -> dict[str, Any]:
        if self.stored_progress is not None:
            return self.stored_progress
        snapshot = self.progress.snapshot()
        if self.status is JobStatus.QUEUED:
            snapshot["phase"] = Phase.QUEUED.value
        elif self.status.finished:
            snapshot["phase"] = Phase.DONE.value
        return snapshot

    def to_json(self) -> dict[str, Any]:
        """``GET /jobs/{id}``: UIDs and figures, nothing else about the patient."""
        spec = self.spec
        return {
            "id": self.id,
            "status": self.status.value,
            "model": spec.model,
            "server": spec.server,
            "study": spec.study,
            "series": spec.series,
            "instance": spec.instance,
            "store": spec.store,
            "created": _iso(self.created),
            "started": _iso(self.started),
            "finished": _iso(self.finished),
            "attempts": self.attempts,
            "progress": self.progress_json(),
            "error": self.error,
            "stored": self.stored,
            "storeError": self.store_error,
            "links": links(self.id),
        }


def links(job_id: str) -> dict[str, str]:
    base = f"/jobs/{job_id}"
    return {"self": base, "result": f"{base}/result", "events": f"{base}/events"}


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")
