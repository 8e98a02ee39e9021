"""Runs jobs: a queue, at most ``--max-running-jobs`` at once, each an InferenceRunner.

A job's model call takes its slot and memory window from the same admission
control as the GET routes (runtime/admission.py); when there is none free the
job waits, still queued, and tries again after ``job_retry_interval``, where a
GET would be answered 503. The result goes into the result cache under the key
the GET route uses (``InferenceRunner.produce``), so ``GET /jobs/{id}/result``
and a viewer's later GET are both served from it.

Every state change is written to the store first. On shutdown running jobs are
left ``running`` in the store: the next start runs them again.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from model_proxy.errors import ErrorCode, NotFound, Overloaded, ProxyError
from model_proxy.inference import InferenceRequest, InferenceRunner
from model_proxy.inference.progress import Phase, Progress
from model_proxy.jobs.job import Job, JobStatus
from model_proxy.jobs.spec import JobSpec
from model_proxy.jobs.store import JobStore
from model_proxy.jobs.storing import store_outputs, store_results
from model_proxy.runtime.reload import LiveState
from model_proxy.runtime.state import ProxyState

logger = logging.getLogger(__name__)

# Turns a spec into the request the GET route would have made, on a given config
# state (routes/jobs.py): the same checks, the same 4xx.
RequestBuilder = Callable[[JobSpec, ProxyState], InferenceRequest]


@dataclass(frozen=True)
class JobPolicy:
    max_running: int = 4
    # Finished jobs older than this are deleted.
    retention: float = 7 * 24 * 3600.0
    # A job that found no admission slot tries again after this long.
    retry_interval: float = 1.0


def _ignore(*_: object) -> None:
    return None


@dataclass(frozen=True)
class JobHooks:
    """What the metrics learn of jobs (metrics/registry.py hands in plain callables)."""

    # (model, seconds queued) when a run starts
    started: Callable[[str, float], None] = _ignore
    # (model, final status, seconds running or None when it never ran)
    finished: Callable[[str, str, float | None], None] = _ignore
    # (server, objects stored, failed) after each store step
    stored: Callable[[str, int, bool], None] = _ignore


class JobManager:
    def __init__(
        self,
        store: JobStore,
        live: LiveState,
        build: RequestBuilder,
        policy: JobPolicy,
        hooks: JobHooks | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.hooks = hooks or JobHooks()
        self._live = live
        self._build = build
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._slots = asyncio.Semaphore(policy.max_running)
        self._active: dict[str, Job] = {}  # queued and running, by id
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._dispatcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Take up the jobs a previous run left queued or running, and purge old ones."""
        for job in await asyncio.to_thread(self.store.unfinished):
            if job.status is JobStatus.RUNNING:
                logger.info("job %s was running when the proxy stopped; running it again", job.id)
            job.status, job.stored_progress, job.progress = JobStatus.QUEUED, None, Progress()
            await self._save(job)
            self._enqueue(job)
        await self._purge()
        self._dispatcher = asyncio.create_task(self._dispatch())

    async def aclose(self) -> None:
        """Stop running jobs without marking them: the next start runs them again."""
        tasks = [t for t in (self._dispatcher, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(self.store.close)

    async def submit(self, spec: JobSpec) -> Job:
        job = Job(id=secrets.token_hex(16), spec=spec)
        await self._save(job)
        self._enqueue(job)
        logger.info("job %s queued: model=%s by %s", job.id, spec.model, spec.caller)
        return job

    async def get(self, job_id: str) -> Job:
        job = self._active.get(job_id) or await asyncio.to_thread(self.store.get, job_id)
        if job is None:
            raise NotFound(
                "no such job (finished jobs are kept for --job-retention)",
                code=ErrorCode.UNKNOWN_JOB,
            )
        return job

    async def recent(self, status: JobStatus | None, model: str | None, limit: int) -> list[Job]:
        jobs = await asyncio.to_thread(self.store.recent, status=status, model=model, limit=limit)
        # The live copies carry the current progress.
        return [self._active.get(job.id, job) for job in jobs]

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; a finished one is left as it is."""
        job = await self.get(job_id)
        if job.status.finished:
            return job
        task = self._tasks.get(job_id)
        if task is not None and job.progress.phase is Phase.STORING:
            # Too late: the model has answered and the PACS is being sent the objects.
            # Broken off, a STOW-RS may leave some stored and the job would not list
            # them; the store ends and the job with it (docs/jobs.md).
            logger.info("job %s: cancel asked while storing; the store finishes first", job.id)
            await asyncio.wait({task})
            return job
        job.cancel_requested = True
        if task is not None:
            task.cancel()
            # Until the retrieval and the model call have stopped.
            await asyncio.gather(task, return_exceptions=True)
        if not job.status.finished:  # queued: the dispatcher will skip it
            await self._finish(job, JobStatus.CANCELLED)
        return job

    async def counts(self) -> dict[str, int]:
        """The queue, for /status."""
        hour_ago = time.time() - 3600
        failed = await asyncio.to_thread(
            self.store.count, JobStatus.FAILED, finished_since=hour_ago
        )
        statuses = [job.status for job in self._active.values()]
        return {
            "queued": statuses.count(JobStatus.QUEUED),
            "running": statuses.count(JobStatus.RUNNING),
            "failedLastHour": failed,
            "maxRunning": self.policy.max_running,
        }

    def active_by_model(self) -> dict[tuple[str, str], int]:
        """Queued and running jobs by (model, status), for the metrics."""
        return dict(Counter((job.spec.model, job.status.value) for job in self._active.values()))

    def _enqueue(self, job: Job) -> None:
        self._active[job.id] = job
        self._queue.put_nowait(job)

    async def _dispatch(self) -> None:
        while True:
            job = await self._queue.get()
            if job.status is not JobStatus.QUEUED:
                continue  # cancelled while it waited
            await self._slots.acquire()
            if job.status is not JobStatus.QUEUED:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run(job))
            self._tasks[job.id] = task
            # Not a finally in _run: a task cancelled before its first step never runs it.
            task.add_done_callback(functools.partial(self._ended, job.id))

    def _ended(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(job_id, None)
        self._slots.release()

    async def _run(self, job: Job) -> None:
        try:
            job.status, job.started = JobStatus.RUNNING, time.time()
            job.attempts += 1
            job.stored = job.store_error = None  # a re-run stores again
            self.hooks.started(job.spec.model, job.started - job.created)
            await self._save(job)
            job.result_key = await self._produce(job)
            await self._store(job, job.result_key)
        except asyncio.CancelledError:
            if not job.cancel_requested:
                raise  # shutdown: the store keeps it running, the next start re-runs it
            logger.info("job %s cancelled", job.id)
            await self._finish(job, JobStatus.CANCELLED)
        except ProxyError as exc:
            logger.info("job %s failed: %s %s", job.id, exc.code, exc.message)
            job.error = exc.to_json()
            await self._finish(job, JobStatus.FAILED)
        except Exception as exc:
            logger.error("job %s: unexpected error", job.id, exc_info=exc)
            job.error = {
                "message": "internal error in model-proxy; see its log",
                "code": ErrorCode.INTERNAL_ERROR,
            }
            await self._finish(job, JobStatus.FAILED)
        else:
            logger.info("job %s succeeded", job.id)
            await self._finish(job, JobStatus.SUCCEEDED)

    async def _produce(self, job: Job) -> str:
        """Run the inference of ``job`` into the result cache; its key."""
        fallback = hashlib.sha256(f"job:{job.id}".encode()).hexdigest()[:40]
        while True:
            state = self._live.current
            async with self._live.hold(state):
                runner = InferenceRunner(
                    self._build(job.spec, state), state, self._live, progress=job.progress
                )
                try:
                    return await runner.produce(fallback)
                except Overloaded:
                    # The GET routes' admission is full: wait our turn instead of a 503.
                    job.progress = Progress()
                    job.notify()
            await asyncio.sleep(self.policy.retry_interval)

    async def _store(self, job: Job, result_key: str) -> None:
        """The store step, when the job or its model's "store" asks for one."""
        state = self._live.current
        async with self._live.hold(state):
            request = self._build(job.spec, state)
            outputs = store_outputs(request, state, store_asked=job.spec.store)
            if outputs is None or outputs.store_in is None:
                return
            job.progress.phase = Phase.STORING
            await self._save(job)
            server = outputs.store_in.id
            try:
                done = await store_results(request, state, self._live, result_key, outputs)
            except ProxyError:
                self.hooks.stored(server, 0, True)
                raise
        self.hooks.stored(server, len(done.stored), done.error is not None)
        job.stored, job.store_error = done.stored, done.error
        if done.error is None:
            logger.info("job %s stored %d DICOM objects", job.id, len(done.stored))

    async def _finish(self, job: Job, status: JobStatus) -> None:
        ran = None if job.started is None else time.time() - job.started
        if status is JobStatus.CANCELLED and job.status is JobStatus.QUEUED:
            ran = None  # cancelled before it ran (again)
        self.hooks.finished(job.spec.model, status.value, ran)
        job.status, job.finished = status, time.time()
        self._active.pop(job.id, None)
        await self._save(job)
        await self._purge()

    async def _save(self, job: Job) -> None:
        await asyncio.to_thread(self.store.save, job)
        job.notify()

    async def _purge(self) -> None:
        purged = await asyncio.to_thread(self.store.purge, time.time() - self.policy.retention)
        if purged:
            logger.info("purged %d finished jobs older than --job-retention", purged)
