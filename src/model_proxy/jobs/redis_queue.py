"""The jobs of all replicas in Redis (``--redis``; docs/replicas.md, "Jobs").

The queue is a **Redis stream read by a consumer group**: each replica is a
consumer, ``XREADGROUP`` gives a new job to exactly one of them, and the entry
stays in the group's pending list until the run that took it acknowledges it.
A running job is **leased**: its runner renews the entry every ``renew_interval``
(``XCLAIM ... JUSTID`` resets its idle time) and writes the job's progress with
it; an entry left idle for ``--job-lease`` seconds belongs to a replica that
stopped, and the next replica looking for work takes it over (``XAUTOCLAIM``).
Each run has a token, the **fence**: every write of a runner checks it in the
same script (redis_scripts.py), so a replica that was only slow, and lost its
job to another meanwhile, finds out at its next write and stops without touching
the record. Why no queue library: docs/replicas.md.

Keys (under ``model-proxy:<ns>:jobs:``): ``queue`` (the stream), ``job:<id>``
(a hash: the record and its run), ``index`` (ids by creation time), ``failed``
(ids by end time, for /status).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError, ResponseError

from model_proxy.errors import SharedStateUnavailable
from model_proxy.inference.progress import Progress
from model_proxy.jobs import redis_scripts
from model_proxy.jobs.job import Job, JobStatus
from model_proxy.jobs.queue import DEFAULT_RETENTION, RunCheck, RunLost
from model_proxy.jobs.record import dump_job, load_job
from model_proxy.jobs.store import JobStore
from model_proxy.shared import RedisLink

logger = logging.getLogger(__name__)

GROUP = "runners"
# Pages of the index read at a time by the list, and how many ids it reads in all.
_PAGE = 200
_MAX_SCANNED = 5000


@dataclass(frozen=True)
class SharedJobsPolicy:
    # A running job whose entry nobody renewed for this long is taken over.
    lease: float = 30.0
    # Finished jobs are kept this long (--job-retention).
    retention: float = DEFAULT_RETENTION
    # How long one wait for a new job blocks a Redis connection (below its timeout).
    block: float = 1.0
    # After a failed Redis call, the next try for a job waits this long.
    retry_pause: float = 1.0


@dataclass
class _Run:
    token: str
    entry: str


class RedisJobQueue:
    """A :class:`~model_proxy.jobs.queue.JobQueue` shared by the replicas."""

    def __init__(
        self, link: RedisLink, policy: SharedJobsPolicy, local: JobStore | None = None
    ) -> None:
        self._link = link
        self._policy = policy
        # Renewed three times a lease at least, and every second for the progress.
        self.renew_interval: float | None = min(1.0, policy.lease / 3)
        self._local = local  # jobs.sqlite of an earlier single-process run: imported
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        client = link.client
        self._stream = link.key("jobs", "queue")
        self._index = link.key("jobs", "index")
        self._failed = link.key("jobs", "failed")
        self._add = client.register_script(redis_scripts.ADD)
        self._claim = client.register_script(redis_scripts.CLAIM)
        self._save = client.register_script(redis_scripts.SAVE)
        self._cancel = client.register_script(redis_scripts.CANCEL)
        self._release = client.register_script(redis_scripts.RELEASE)
        self._runs: dict[str, _Run] = {}  # the runs this process owns, by job id
        self._group_made = False

    @property
    def description(self) -> str:
        return f"Redis stream {self._stream} (consumer {self._consumer})"

    def _job_key(self, job_id: str) -> str:
        return self._link.key("jobs", "job", job_id)

    async def open(self) -> None:
        try:
            await self._ensure_group()
            if self._local is not None:
                await self._import(self._local)
        except (RedisError, OSError) as exc:
            # The queue is made when Redis answers (take); the file is imported next start.
            self._link.health.failed(exc)
            logger.warning("jobs: Redis does not answer at start; jobs wait for it")

    async def add(self, job: Job) -> None:
        async with self._needed("queue the job"):
            await self._add(
                keys=[self._job_key(job.id), self._stream, self._index],
                args=[job.id, dump_job(job), job.created],
            )

    async def take(self) -> Job:
        while True:
            try:
                await self._ensure_group()
                found = await self._next_entry()
                job = None if found is None else await self._take_entry(*found)
            except (RedisError, OSError) as exc:
                if _lost_group(exc):  # a Redis restarted without its data
                    self._group_made = False
                    continue
                self._link.health.failed(exc)
                await asyncio.sleep(self._policy.retry_pause)
                continue
            self._link.health.succeeded()
            if job is not None:
                return job

    async def save(self, job: Job) -> None:
        await self._write(job, "save")

    async def finish(self, job: Job) -> None:
        if job.id not in self._runs:
            return  # cancelled while queued: written by cancel_queued
        try:
            await self._write(job, "finish")
        except RunLost:
            logger.warning("job %s: another replica took it over; its end here is dropped", job.id)
        finally:
            self._runs.pop(job.id, None)

    async def renew(self, job: Job) -> RunCheck:
        try:
            said = await self._write(job, "renew")
        except RunLost:
            return RunCheck.LOST
        return RunCheck.CANCEL if said == "cancel" else RunCheck.OWNED

    async def cancel_queued(self, job_id: str) -> Job | None:
        async with self._needed("cancel the job"):
            raw = await self._link.client.hget(self._job_key(job_id), "record")
            if raw is None:
                return None
            job = load_job(raw)
            job.status, job.finished = JobStatus.CANCELLED, time.time()
            said = await self._cancel(
                keys=[self._job_key(job_id), self._stream],
                args=[dump_job(job), self._retention_ms],
            )
        return job if _text(said) == "cancelled" else None

    async def release(self, jobs: list[Job]) -> None:
        for job in jobs:
            run = self._runs.pop(job.id, None)
            if run is None:
                continue
            job.status, job.started = JobStatus.QUEUED, None
            job.stored_progress, job.progress = None, Progress()
            try:
                await self._release(
                    keys=[self._job_key(job.id), self._stream],
                    args=[run.token, dump_job(job), GROUP, run.entry, job.id],
                )
            except (RedisError, OSError) as exc:
                self._link.health.failed(exc)  # its lease runs out: another replica takes it
                continue
            logger.info("job %s: back in the queue for another replica", job.id)

    async def get(self, job_id: str) -> Job | None:
        async with self._needed("read the job"):
            raw = await self._link.client.hget(self._job_key(job_id), "record")
        return None if raw is None else load_job(raw)

    async def recent(self, status: JobStatus | None, model: str | None, limit: int) -> list[Job]:
        found: list[Job] = []
        client = self._link.client
        async with self._needed("list the jobs"):
            for start in range(0, _MAX_SCANNED, _PAGE):
                ids: Any = await client.zrevrange(self._index, start, start + _PAGE - 1)
                if not ids:
                    break
                pipe = client.pipeline(transaction=False)
                for job_id in ids:
                    pipe.hget(self._job_key(_text(job_id)), "record")
                records = await pipe.execute()
                gone = [job_id for job_id, raw in zip(ids, records, strict=True) if raw is None]
                if gone:  # expired after --job-retention
                    await client.zrem(self._index, *gone)
                for raw in records:
                    job = None if raw is None else load_job(raw)
                    if job is None or (status is not None and job.status is not status):
                        continue
                    if model is None or job.spec.model == model:
                        found.append(job)
                        if len(found) >= limit:
                            return found
        return found

    async def counts(self) -> tuple[int, int, int]:
        client = self._link.client
        async with self._needed("count the jobs"):
            await self._ensure_group()
            waiting = await client.xlen(self._stream)
            pending = await client.xpending(self._stream, GROUP)
            hour_ago = time.time() - 3600
            failed = await client.zcount(self._failed, hour_ago, "+inf")
        running = int(pending["pending"])
        return max(0, int(waiting) - running), running, int(failed)

    def waiting_by_model(self) -> Counter[str]:
        return Counter()  # queued jobs are in Redis, no replica's own

    async def close(self) -> None:
        """Leave the consumer group, unless a job is still pending on us (a failed
        release): its entry must stay for another replica to take over."""
        try:
            mine = await self._link.client.xpending_range(
                self._stream, GROUP, min="-", max="+", count=1, consumername=self._consumer
            )
            if not mine:
                await self._link.client.xgroup_delconsumer(self._stream, GROUP, self._consumer)
        except (RedisError, OSError) as exc:
            self._link.health.failed(exc)

    @property
    def _retention_ms(self) -> int:
        return max(1, round(self._policy.retention * 1000))

    async def _ensure_group(self) -> None:
        if self._group_made:
            return
        try:
            await self._link.client.xgroup_create(self._stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_made = True

    async def _next_entry(self) -> tuple[str, str] | None:
        """An entry whose runner stopped renewing it, else a new one (waiting a little)."""
        client = self._link.client
        lease_ms = max(1, round(self._policy.lease * 1000))
        claimed = await client.xautoclaim(
            self._stream, GROUP, self._consumer, lease_ms, start_id="0-0", count=1
        )
        entries = claimed[1]
        if not entries:
            read: Any = await client.xreadgroup(
                GROUP,
                self._consumer,
                {self._stream: ">"},
                count=1,
                block=max(1, round(self._policy.block * 1000)),
            )
            entries = read[0][1] if read else []
        if not entries:
            return None
        entry_id, fields = entries[0]
        return _text(entry_id), _text(fields[b"job"])

    async def _take_entry(self, entry: str, job_id: str) -> Job | None:
        """The job of ``entry`` as ours to run, or None (it ended meanwhile)."""
        client = self._link.client
        raw = await client.hget(self._job_key(job_id), "record")
        job = None if raw is None else load_job(raw)
        if job is not None and not job.status.finished:
            earlier = job.status is JobStatus.RUNNING
            job.status, job.attempts = JobStatus.RUNNING, job.attempts + 1
            job.started, job.stored_progress, job.progress = None, None, Progress()
            token = secrets.token_hex(16)
            said = _text(
                await self._claim(keys=[self._job_key(job_id)], args=[token, dump_job(job)])
            )
            if said in ("ok", "cancel"):
                self._runs[job_id] = _Run(token, entry)
                job.cancel_requested = said == "cancel"
                if earlier:
                    logger.info("job %s: its replica stopped renewing it; running it here", job_id)
                return job
        await client.xack(self._stream, GROUP, entry)
        await client.xdel(self._stream, entry)
        return None

    async def _write(self, job: Job, mode: str) -> str:
        run = self._runs.get(job.id)
        if run is None:
            raise RunLost
        try:
            said = _text(
                await self._save(
                    keys=[self._job_key(job.id), self._stream, self._failed],
                    args=[
                        run.token,
                        dump_job(job),
                        job.status.value,
                        GROUP,
                        self._consumer,
                        run.entry,
                        mode,
                        self._retention_ms,
                        time.time(),
                        job.id,
                    ],
                )
            )
        except (RedisError, OSError) as exc:
            # The run goes on; its record catches up at the next write that gets through.
            self._link.health.failed(exc)
            if mode == "finish":
                logger.warning(
                    "job %s ended %s but Redis did not take its record; another replica"
                    " runs it again (a cache hit) once Redis is back",
                    job.id,
                    job.status.value,
                )
            return "ok"
        self._link.health.succeeded()
        if said == "lost":
            raise RunLost
        return said

    async def _import(self, store: JobStore) -> None:
        """Move the jobs of this replica's jobs.sqlite (a single-process past) in."""
        jobs = await asyncio.to_thread(store.recent, limit=1_000_000)
        if not jobs:
            return
        client = self._link.client
        now = time.time()
        for job in jobs:
            key = self._job_key(job.id)
            if not job.status.finished:
                job.status, job.started, job.stored_progress = JobStatus.QUEUED, None, None
                await self._add(
                    keys=[key, self._stream, self._index], args=[job.id, dump_job(job), job.created]
                )
                continue
            left = (job.finished or now) + self._policy.retention - now
            if left > 0 and await client.hsetnx(key, "record", dump_job(job)):
                await client.hset(key, "status", job.status.value)
                await client.pexpire(key, max(1, round(left * 1000)))
                await client.zadd(self._index, {job.id: job.created})
        await asyncio.to_thread(store.delete, [job.id for job in jobs])
        logger.info("jobs: moved %d jobs from jobs.sqlite into Redis", len(jobs))

    @asynccontextmanager
    async def _needed(self, what: str) -> AsyncIterator[None]:
        """Redis calls a request cannot do without: a failure is a clear 503."""
        try:
            yield
        except (RedisError, OSError) as exc:
            if _lost_group(exc):
                self._group_made = False
            self._link.health.failed(exc)
            raise SharedStateUnavailable(
                f"cannot {what}: the jobs are kept in Redis ({self._link.where}),"
                " which does not answer; try again shortly"
            ) from None
        self._link.health.succeeded()


def _lost_group(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


def _text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return value or ""
