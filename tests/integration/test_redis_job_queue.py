"""The shared job queue (jobs/redis_queue.py) on a real redis-server: two queues on one
Redis stand for two replicas (docs/replicas.md, "Jobs").

What each replica must see: a job queued on one is run by exactly one; any reads its
record and progress; a run whose replica stopped renewing it is taken over after the
lease, and the old runner's writes are then refused (the fence); a cancel reaches a
queued job at once and a running one through its runner; a replica that stops hands
its runs back; the jobs of a jobs.sqlite are moved in; Redis down is a clear 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from redis_server import RedisServer, start_redis

from model_proxy.errors import SharedStateUnavailable
from model_proxy.jobs import Job, JobSpec, JobStatus, JobStore
from model_proxy.jobs.queue import RunCheck, RunLost
from model_proxy.jobs.redis_queue import RedisJobQueue, SharedJobsPolicy
from model_proxy.shared.redis_link import RedisLink, RedisSettings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

# Short, so the take-over test waits little; nothing renews in these tests unless asked.
LEASE = 0.5
# Patient enough for a loaded machine.
TAKE_WITHIN = 30.0


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with start_redis(tmp_path_factory.mktemp("redis-jobs")) as server:
        yield server


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """Each test its own namespace: its own stream and records."""
    name: str = request.node.name
    return name.removeprefix("test_")[:40]


@asynccontextmanager
async def replica(
    redis: RedisServer, namespace: str, local: JobStore | None = None, lease: float = LEASE
) -> AsyncIterator[RedisJobQueue]:
    link = RedisLink.connect(RedisSettings(url=redis.url, namespace=namespace))
    queue = RedisJobQueue(link, SharedJobsPolicy(lease=lease, block=0.2), local=local)
    await queue.open()
    try:
        yield queue
    finally:
        await queue.close()
        await link.aclose()


def new_job(study: str = "1.2.3") -> Job:
    return Job(id=f"job-{study}", spec=JobSpec(model="m", study=study, series="1.2.3.4"))


async def take(queue: RedisJobQueue) -> Job:
    return await asyncio.wait_for(queue.take(), TAKE_WITHIN)


async def nothing_to_take(queue: RedisJobQueue) -> bool:
    try:
        await asyncio.wait_for(queue.take(), 1.0)
    except TimeoutError:
        return True
    return False


async def test_a_job_queued_on_one_replica_is_run_by_one_and_read_by_all(
    redis: RedisServer, namespace: str
) -> None:
    # A lease longer than the test: the run stays the second's without renewals.
    async with (
        replica(redis, namespace, lease=600) as first,
        replica(redis, namespace, lease=600) as second,
    ):
        await run_one_job_across(first, second)


async def run_one_job_across(first: RedisJobQueue, second: RedisJobQueue) -> None:
    """Queued on ``first``, run by ``second``, followed and listed by ``first``."""
    await first.add(new_job())
    taken = await take(second)
    assert (taken.id, taken.status, taken.attempts) == ("job-1.2.3", JobStatus.RUNNING, 1)
    assert await nothing_to_take(first)  # one job, one runner
    taken.progress.instances_total = 3
    assert await second.renew(taken) is RunCheck.OWNED
    seen = await first.get(taken.id)
    assert seen is not None and seen.status is JobStatus.RUNNING
    assert seen.progress_json()["instancesTotal"] == 3  # the runner's progress
    taken.status, taken.result_key = JobStatus.SUCCEEDED, "key"
    await second.finish(taken)
    done = await first.get(taken.id)
    assert done is not None and (done.status, done.result_key) == (JobStatus.SUCCEEDED, "key")
    assert [job.id for job in await first.recent(None, None, 10)] == [taken.id]
    assert await first.recent(JobStatus.FAILED, None, 10) == []
    assert await first.counts() == (0, 0, 0)


async def test_a_run_not_renewed_within_the_lease_is_taken_over_and_the_old_runner_fenced(
    redis: RedisServer, namespace: str
) -> None:
    async with replica(redis, namespace) as stalled, replica(redis, namespace) as heir:
        await stalled.add(new_job())
        first_run = await take(stalled)
        # No renewal: after the lease the entry is idle long enough for the heir.
        second_run = await take(heir)
        assert (second_run.id, second_run.attempts) == (first_run.id, 2)
        assert await stalled.renew(first_run) is RunCheck.LOST
        with pytest.raises(RunLost):
            await stalled.save(first_run)
        assert await heir.renew(second_run) is RunCheck.OWNED
        second_run.status = JobStatus.SUCCEEDED
        await heir.finish(second_run)
        record = await stalled.get(first_run.id)
        assert record is not None and record.status is JobStatus.SUCCEEDED


async def test_a_renewed_run_is_not_taken_over(redis: RedisServer, namespace: str) -> None:
    async with replica(redis, namespace) as runner, replica(redis, namespace) as other:
        await runner.add(new_job())
        running = await take(runner)

        async def keep_renewing() -> None:
            while True:
                assert await runner.renew(running) is RunCheck.OWNED
                await asyncio.sleep(LEASE / 5)

        renewing = asyncio.create_task(keep_renewing())
        try:
            assert await nothing_to_take(other)  # twice the lease at least
        finally:
            renewing.cancel()
        assert await runner.counts() == (0, 1, 0)


async def test_a_queued_job_cancelled_elsewhere_is_never_run(
    redis: RedisServer, namespace: str
) -> None:
    async with replica(redis, namespace) as first, replica(redis, namespace) as second:
        await first.add(new_job())
        assert await first.counts() == (1, 0, 0)
        cancelled = await second.cancel_queued("job-1.2.3")
        assert cancelled is not None and cancelled.status is JobStatus.CANCELLED
        assert await nothing_to_take(first)
        record = await first.get("job-1.2.3")
        assert record is not None and record.status is JobStatus.CANCELLED
        assert await first.counts() == (0, 0, 0)


async def test_a_cancel_of_a_running_job_is_asked_of_its_runner(
    redis: RedisServer, namespace: str
) -> None:
    async with replica(redis, namespace) as runner, replica(redis, namespace) as other:
        await runner.add(new_job())
        running = await take(runner)
        assert await other.cancel_queued(running.id) is None  # it runs: asked, not done
        assert await runner.renew(running) is RunCheck.CANCEL
        running.status = JobStatus.CANCELLED
        await runner.finish(running)
        record = await other.get(running.id)
        assert record is not None and record.status is JobStatus.CANCELLED


async def test_a_replica_that_stops_hands_its_runs_to_another_at_once(
    redis: RedisServer, namespace: str
) -> None:
    # A lease far longer than the test: only the release can make the job free.
    async with replica(redis, namespace, lease=600) as heir:
        async with replica(redis, namespace, lease=600) as leaving:
            await leaving.add(new_job())
            running = await take(leaving)
            await leaving.release([running])
        again = await take(heir)
        assert (again.id, again.status, again.attempts) == (running.id, JobStatus.RUNNING, 2)


async def test_a_failed_job_counts_for_an_hour(redis: RedisServer, namespace: str) -> None:
    async with replica(redis, namespace) as queue:
        await queue.add(new_job())
        running = await take(queue)
        running.status, running.error = JobStatus.FAILED, {"message": "no", "code": "x"}
        await queue.finish(running)
        assert await queue.counts() == (0, 0, 1)
        failed = await queue.recent(JobStatus.FAILED, "m", 10)
        assert [job.error for job in failed] == [{"message": "no", "code": "x"}]


async def test_the_jobs_of_a_jobs_sqlite_are_moved_in(
    redis: RedisServer, namespace: str, tmp_path: Path
) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    waiting, done = new_job("1.1"), new_job("1.2")
    done.status, done.finished, done.result_key = JobStatus.SUCCEEDED, done.created, "k"
    store.save(waiting)
    store.save(done)
    async with replica(redis, namespace, local=store) as first:
        taken = await take(first)
        assert taken.id == waiting.id
        moved = await first.get(done.id)
        assert moved is not None and (moved.status, moved.result_key) == (JobStatus.SUCCEEDED, "k")
    assert store.recent() == []  # moved, not copied: a later start imports nothing twice
    store.close()


async def test_with_redis_down_a_job_request_is_a_clear_503(tmp_path: Path) -> None:
    with start_redis(tmp_path / "redis") as server:
        async with replica(server, "down") as queue:
            server.stop()
            with pytest.raises(SharedStateUnavailable) as raised:
                await queue.add(new_job())
            assert "the jobs are kept in Redis" in raised.value.message
            assert raised.value.status_code == 503
            with pytest.raises(SharedStateUnavailable):
                await queue.get("job-1.2.3")
            server.start()
            await queue.add(new_job())
            assert (await take(queue)).id == "job-1.2.3"
