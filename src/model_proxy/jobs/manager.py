"""Runs jobs: a queue, at most ``--max-running-jobs`` at once, each an InferenceRunner.

A job's model call takes its slot and memory window from the same admission
control as the GET routes (runtime/admission.py); when there is none free the
job waits, still queued, and tries again after ``job_retry_interval``, where a
GET would be answered 503. The result goes into the result cache under the key
the GET route uses (``InferenceRunner.produce``), so ``GET /jobs/{id}/result``
and a viewer's later GET are both served from it.

The jobs wait in a JobQueue (queue.py): this process's SQLite file, or Redis
shared by the replicas (redis_queue.py), where a running job's lease is renewed
every ``renew_interval`` and a replica that stops renewing loses it to another.
Every state change is written to the queue's records first. On shutdown running
jobs go back to the queue: they run again.
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
from typing import Any

from model_proxy.errors import (
    ErrorCode,
    NotFound,
    Overloaded,
    ProxyError,
    SharedStateUnavailable,
)
from model_proxy.inference import InferenceRequest, InferenceRunner
from model_proxy.inference.progress import Phase, Progress
from model_proxy.jobs.job import Job, JobStatus
from model_proxy.jobs.queue import JobQueue, RunCheck, RunLost
from model_proxy.jobs.spec import JobSpec
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
    # A job that found no admission slot tries again after this long.
    retry_interval: float = 1.0
    # A cancel of a job another replica runs: how long DELETE waits for it to stop,
    # looking every cancel_poll seconds.
    cancel_wait: float = 10.0
    cancel_poll: float = 0.2


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
        queue: JobQueue,
        live: LiveState,
        build: RequestBuilder,
        policy: JobPolicy,
        hooks: JobHooks | None = None,
    ) -> None:
        self.queue = queue
        self.policy = policy
        self.hooks = hooks or JobHooks()
        self._live = live
        self._build = build
        self._slots = asyncio.Semaphore(policy.max_running)
        self._running: dict[str, Job] = {}  # the jobs this process runs, by id
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._dispatcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Take up the jobs a previous run left queued or running, and purge old ones."""
        await self.queue.open()
        self._dispatcher = asyncio.create_task(self._dispatch())

    async def aclose(self) -> None:
        """Stop running jobs without marking them finished: they run again, here at the
        next start or (shared queue) on another replica right away."""
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        stopped = list(self._running.values())
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.queue.release(stopped)
        await self.queue.close()

    async def submit(self, spec: JobSpec) -> Job:
        job = Job(id=secrets.token_hex(16), spec=spec)
        await self.queue.add(job)
        logger.info("job %s queued: model=%s by %s", job.id, spec.model, spec.caller)
        return job

    async def get(self, job_id: str) -> Job:
        job = self._running.get(job_id) or await self.queue.get(job_id)
        if job is None:
            raise NotFound(
                "no such job (finished jobs are kept for --job-retention)",
                code=ErrorCode.UNKNOWN_JOB,
            )
        return job

    async def follow(self, job: Job, within: float) -> Job:
        """``job`` once it changed, or after ``within`` seconds: the events stream. A
        job another replica runs is read again from the queue."""
        if job.id in self._running or self.queue.renew_interval is None:
            await job.changed(within)
            return job
        await asyncio.sleep(within)
        return self._running.get(job.id) or await self.queue.get(job.id) or job

    async def recent(self, status: JobStatus | None, model: str | None, limit: int) -> list[Job]:
        jobs = await self.queue.recent(status, model, limit)
        # The live copies carry the current progress.
        return [self._running.get(job.id, job) for job in jobs]

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; a finished one is left as it is."""
        job = await self.get(job_id)
        if job.status.finished:
            return job
        task = self._tasks.get(job_id)
        if task is not None:
            await self._cancel_run(job, task)
            return job
        cancelled = await self.queue.cancel_queued(job_id)
        if cancelled is not None:
            self.hooks.finished(cancelled.spec.model, JobStatus.CANCELLED.value, None)
            return cancelled
        # Running on another replica: its next renewal sees the cancel.
        return await self._until_finished(job)

    async def counts(self) -> dict[str, Any]:
        """The queue, for /status."""
        report: dict[str, Any] = {
            "runningHere": len(self._running),
            "maxRunning": self.policy.max_running,
        }
        try:
            queued, running, failed = await self.queue.counts()
        except SharedStateUnavailable as exc:  # the shared queue's Redis is down
            return {
                "queued": None,
                "running": None,
                "failedLastHour": None,
                **report,
                "error": exc.message,
            }
        return {"queued": queued, "running": running, "failedLastHour": failed, **report}

    def active_by_model(self) -> dict[tuple[str, str], int]:
        """Queued and running jobs by (model, status), for the metrics: the running
        ones of this process, the queued ones it knows of."""
        counts = Counter((job.spec.model, job.status.value) for job in self._running.values())
        for model, waiting in self.queue.waiting_by_model().items():
            counts[(model, JobStatus.QUEUED.value)] += waiting
        return dict(counts)

    async def _cancel_run(self, job: Job, task: asyncio.Task[None]) -> None:
        if job.progress.phase is Phase.STORING:
            # Too late: the model has answered and the PACS is being sent the objects.
            # Broken off, a STOW-RS may leave some stored and the job would not list
            # them; the store ends and the job with it (docs/jobs.md).
            logger.info("job %s: cancel asked while storing; the store finishes first", job.id)
            await asyncio.wait({task})
            return
        job.cancel_requested = True
        task.cancel()
        # Until the retrieval and the model call have stopped.
        await asyncio.gather(task, return_exceptions=True)
        if not job.status.finished:  # cancelled before its first step
            await self._finish(job, JobStatus.CANCELLED)

    async def _until_finished(self, job: Job) -> Job:
        """A job cancelled on another replica, once it has stopped, or as it is after
        ``cancel_wait`` seconds (a replica that died leaves it to the next runner)."""
        deadline = time.monotonic() + self.policy.cancel_wait
        while time.monotonic() < deadline:
            await asyncio.sleep(self.policy.cancel_poll)
            current = await self.queue.get(job.id)
            if current is None or current.status.finished:
                return current or job
            job = current
        return job

    async def _dispatch(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                job = await self.queue.take()
            except BaseException:
                self._slots.release()
                raise
            self._running[job.id] = job
            task = asyncio.create_task(self._run(job))
            self._tasks[job.id] = task
            # Not a finally in _run: a task cancelled before its first step never runs it.
            task.add_done_callback(functools.partial(self._ended, job.id))

    def _ended(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(job_id, None)
        self._running.pop(job_id, None)
        self._slots.release()

    async def _run(self, job: Job) -> None:
        keeper = None
        if self.queue.renew_interval is not None:
            keeper = asyncio.create_task(self._keep(job, asyncio.current_task()))
        try:
            await self._run_steps(job)
        except RunLost:
            logger.warning(
                "job %s: another replica took it over (this one did not renew it within"
                " --job-lease); stopped here",
                job.id,
            )
        finally:
            if keeper is not None:
                keeper.cancel()

    async def _keep(self, job: Job, run: asyncio.Task[None] | None) -> None:
        """Renew the run of ``job`` while it lasts; stop it when it is lost or cancelled."""
        assert self.queue.renew_interval is not None and run is not None
        while True:
            await asyncio.sleep(self.queue.renew_interval)
            check = await self.queue.renew(job)
            if check is RunCheck.OWNED:
                continue
            if check is RunCheck.CANCEL:
                logger.info("job %s: cancel asked on another replica", job.id)
                if job.progress.phase is not Phase.STORING:
                    job.cancel_requested = True
                    run.cancel()
                continue
            job.run_lost = True
            run.cancel()
            return

    async def _run_steps(self, job: Job) -> None:
        if job.cancel_requested:  # asked while its earlier runner stopped
            await self._finish(job, JobStatus.CANCELLED)
            return
        logger.info("job %s running (attempt %d)", job.id, job.attempts)
        try:
            job.started = time.time()
            job.stored = job.store_error = None  # a re-run stores again
            self.hooks.started(job.spec.model, job.started - job.created)
            await self._save(job)
            job.result_key = await self._produce(job)
            await self._store(job, job.result_key)
        except asyncio.CancelledError:
            if job.run_lost:
                raise RunLost from None
            if not job.cancel_requested:
                raise  # shutdown: the job runs again (JobQueue.release)
            logger.info("job %s cancelled", job.id)
            await self._finish(job, JobStatus.CANCELLED)
        except ProxyError as exc:
            logger.info("job %s failed: %s %s", job.id, exc.code, exc.message)
            job.error = exc.to_json()
            await self._finish(job, JobStatus.FAILED)
        except RunLost:
            raise
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
        self.hooks.finished(job.spec.model, status.value, ran)
        job.status, job.finished = status, time.time()
        await self.queue.finish(job)
        job.notify()

    async def _save(self, job: Job) -> None:
        await self.queue.save(job)
        job.notify()
