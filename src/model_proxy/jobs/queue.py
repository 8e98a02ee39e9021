"""Where jobs wait and where their records live: this process's SQLite file, or Redis.

The manager (manager.py) runs jobs the same way on either. A :class:`JobQueue` hands
it the next job to run, keeps every job's record and tells it when a run is no
longer its own. ``LocalJobQueue`` is one process's: an asyncio queue in front of
``jobs.sqlite`` (store.py). ``RedisJobQueue`` (redis_queue.py) is shared by the
replicas of a deployment (docs/replicas.md, "Jobs").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from enum import Enum
from typing import Protocol

from model_proxy.inference.progress import Progress
from model_proxy.jobs.job import Job, JobStatus
from model_proxy.jobs.store import JobStore

logger = logging.getLogger(__name__)

# Finished jobs are kept this long (--job-retention).
DEFAULT_RETENTION = 7 * 24 * 3600.0


class RunCheck(Enum):
    """What the queue says of a run it was asked to renew (``JobQueue.renew``)."""

    OWNED = "owned"  # go on
    CANCEL = "cancel"  # someone asked to cancel it (on another replica)
    LOST = "lost"  # another replica runs it now: stop, write nothing


class RunLost(Exception):
    """The job's run passed to another replica (its lease ran out); this one must stop
    without writing anything more about the job."""


class JobQueue(Protocol):
    # Seconds between renewals of a running job (``renew``); None: runs need none.
    renew_interval: float | None

    async def open(self) -> None:
        """Take up what a previous run left (unfinished jobs) and purge old ones."""

    async def add(self, job: Job) -> None:
        """Record a new, queued job and queue it."""

    async def take(self) -> Job:
        """Wait for the next job this process is to run; it comes marked running."""

    async def save(self, job: Job) -> None:
        """Write the state of a job this process runs; RunLost when it no longer does."""

    async def finish(self, job: Job) -> None:
        """Write the final state of a job (finished, or cancelled while queued)."""

    async def renew(self, job: Job) -> RunCheck:
        """Keep a running job this process's, and publish its progress."""

    async def cancel_queued(self, job_id: str) -> Job | None:
        """Cancel ``job_id`` if it is still queued: the cancelled job. None when it is
        running elsewhere (the cancel is then asked of its runner) or finished."""

    async def release(self, jobs: list[Job]) -> None:
        """At shutdown: the jobs this process was running go back to the queue."""

    async def get(self, job_id: str) -> Job | None: ...

    async def recent(self, status: JobStatus | None, model: str | None, limit: int) -> list[Job]:
        """Newest first."""

    async def counts(self) -> tuple[int, int, int]:
        """Queued, running and failed in the last hour, for /status."""

    def waiting_by_model(self) -> Counter[str]:
        """Queued jobs by model this process knows of (for the metrics)."""

    async def close(self) -> None: ...


class LocalJobQueue:
    """One process's jobs: an asyncio queue, the records in ``jobs.sqlite``.

    Every change of state is written through, so queued and running jobs survive a
    restart: ``open`` queues them again (a running one runs again)."""

    renew_interval: float | None = None

    def __init__(self, store: JobStore, retention: float = DEFAULT_RETENTION) -> None:
        self.store = store
        self._retention = retention
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._waiting: dict[str, Job] = {}  # queued, by id

    async def open(self) -> None:
        for job in await asyncio.to_thread(self.store.unfinished):
            if job.status is JobStatus.RUNNING:
                logger.info("job %s was running when the proxy stopped; running it again", job.id)
            job.status, job.stored_progress, job.progress = JobStatus.QUEUED, None, Progress()
            await self.add(job)
        await self._purge()

    async def add(self, job: Job) -> None:
        await self.save(job)
        self._waiting[job.id] = job
        self._queue.put_nowait(job)

    async def take(self) -> Job:
        while True:
            job = await self._queue.get()
            if self._waiting.pop(job.id, None) is not None and job.status is JobStatus.QUEUED:
                job.status = JobStatus.RUNNING
                job.attempts += 1
                return job
            # Cancelled while it waited.

    async def save(self, job: Job) -> None:
        await asyncio.to_thread(self.store.save, job)

    async def finish(self, job: Job) -> None:
        await self.save(job)
        await self._purge()

    async def renew(self, job: Job) -> RunCheck:
        return RunCheck.OWNED

    async def cancel_queued(self, job_id: str) -> Job | None:
        job = self._waiting.pop(job_id, None)
        if job is None:
            return None
        job.status, job.finished = JobStatus.CANCELLED, time.time()
        await self.finish(job)
        return job

    async def release(self, jobs: list[Job]) -> None:
        """Nothing to do: the store keeps them running, ``open`` queues them again."""

    async def get(self, job_id: str) -> Job | None:
        return self._waiting.get(job_id) or await asyncio.to_thread(self.store.get, job_id)

    async def recent(self, status: JobStatus | None, model: str | None, limit: int) -> list[Job]:
        jobs = await asyncio.to_thread(self.store.recent, status=status, model=model, limit=limit)
        return [self._waiting.get(job.id, job) for job in jobs]

    async def counts(self) -> tuple[int, int, int]:
        failed = await asyncio.to_thread(
            self.store.count, JobStatus.FAILED, finished_since=time.time() - 3600
        )
        running = await asyncio.to_thread(self.store.count, JobStatus.RUNNING)
        return len(self._waiting), running, failed

    def waiting_by_model(self) -> Counter[str]:
        return Counter(job.spec.model for job in self._waiting.values())

    async def close(self) -> None:
        await asyncio.to_thread(self.store.close)

    async def _purge(self) -> None:
        purged = await asyncio.to_thread(self.store.purge, time.time() - self._retention)
        if purged:
            logger.info("purged %d finished jobs older than --job-retention", purged)
