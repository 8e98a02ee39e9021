"""With ``--redis`` one replica watches the PACS for new studies: the one holding the
Redis lease (prefetch/lease.py), against a real ``redis-server``. Several replicas
asking at once get one watcher; it keeps the lease by asking again; another takes over
when it releases the lease or stops renewing it; with Redis gone the holder watches
only until its lease would have run out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer, start_redis

from model_proxy.prefetch.lease import RedisWatcherLease
from model_proxy.shared import RedisLink, RedisSettings

pytestmark = pytest.mark.integration

DEADLINE = 30.0


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with start_redis(tmp_path / "redis") as server:
        yield server


def _links(redis: RedisServer, count: int) -> list[RedisLink]:
    # One link per replica, as each process has its own client.
    return [RedisLink.connect(RedisSettings(url=redis.url, timeout=1.0)) for _ in range(count)]


async def _close(links: list[RedisLink]) -> None:
    for link in links:
        await link.aclose()


def test_replicas_asking_at_once_get_one_watcher_who_keeps_it_until_released(
    redis: RedisServer,
) -> None:
    async def run() -> None:
        links = _links(redis, 3)
        leases = [RedisWatcherLease(link, lease_seconds=60) for link in links]
        try:
            answers = await asyncio.gather(*(lease.is_watcher() for lease in leases))
            assert answers.count(True) == 1, answers
            holder = answers.index(True)
            # Each poll asks again: the holder keeps it, the others stay out.
            for _ in range(3):
                again = await asyncio.gather(*(lease.is_watcher() for lease in leases))
                assert again == answers
            assert "this replica holds it" in leases[holder].description
            await leases[holder].release()  # a replica shutting down
            others = [lease for index, lease in enumerate(leases) if index != holder]
            taken = await asyncio.gather(*(lease.is_watcher() for lease in others))
            assert taken.count(True) == 1, taken
        finally:
            await _close(links)

    asyncio.run(run())


def test_a_holder_that_stops_renewing_is_replaced_after_its_lease(redis: RedisServer) -> None:
    async def run() -> None:
        links = _links(redis, 2)
        stalled = RedisWatcherLease(links[0], lease_seconds=0.3)
        other = RedisWatcherLease(links[1], lease_seconds=0.3)
        try:
            assert await stalled.is_watcher()
            deadline = time.monotonic() + DEADLINE
            while not await other.is_watcher():
                assert time.monotonic() < deadline, "the stalled holder's lease never ran out"
                await asyncio.sleep(0.05)
            # The stalled replica comes back: the lease has moved on, it does not watch.
            assert not await stalled.is_watcher()
            assert await other.is_watcher()
        finally:
            await _close(links)

    asyncio.run(run())


def test_with_redis_gone_the_holder_watches_only_until_its_lease_would_end(
    redis: RedisServer,
) -> None:
    async def run() -> None:
        [link] = _links(redis, 1)
        lease = RedisWatcherLease(link, lease_seconds=60)
        short = RedisWatcherLease(link, lease_seconds=60)
        try:
            assert await lease.is_watcher()
            assert not await short.is_watcher()
            redis.stop()
            # Within its lease nobody else can hold it: it goes on watching.
            assert await lease.is_watcher()
            assert not await short.is_watcher()
            assert link.health.reachable is False
        finally:
            await link.aclose()

    asyncio.run(run())


def test_with_redis_gone_an_expired_holder_stops_watching(redis: RedisServer) -> None:
    async def run() -> None:
        [link] = _links(redis, 1)
        lease = RedisWatcherLease(link, lease_seconds=0.2)
        try:
            assert await lease.is_watcher()
            redis.stop()
            deadline = time.monotonic() + DEADLINE
            while await lease.is_watcher():
                assert time.monotonic() < deadline, "it went on watching past its lease"
                await asyncio.sleep(0.05)
        finally:
            await link.aclose()

    asyncio.run(run())
