"""With ``--redis`` the prefetch ledger is shared (prefetch/shared_ledger.py): the
replica that takes the watcher lease over knows what the one before it ran. Against a
real ``redis-server`` and a real Orthanc (QIDO-RS), two replicas each with its own data
dir, job store and Redis client, as two processes would have them.

The polls are the test's own (``PrefetchWatcher.poll``), as in
test_prefetch_arrival.py; submitted jobs stay queued (no manager runs them here).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import pytest
from harness import (
    OrthancServer,
    ProxyFactory,
    jobs_of_study,
    new_uid,
    server_entry,
    start_orthanc,
)
from processes import wait_until
from redis_server import RedisServer, start_redis

from model_proxy.config import load_config
from model_proxy.jobs import Job, JobManager, JobPolicy, JobStore
from model_proxy.jobs.queue import LocalJobQueue
from model_proxy.jobs.store import JOB_STORE_FILE
from model_proxy.prefetch import PrefetchWatcher, WatchPolicy, open_ledger
from model_proxy.prefetch.lease import RedisWatcherLease
from model_proxy.prefetch.ledger import MIGRATED_TABLE, LedgerTable, RunKey
from model_proxy.prefetch.shared_ledger import RedisLedger, ledger_ttl
from model_proxy.routes.jobs import request_of
from model_proxy.runtime.reload import LiveState
from model_proxy.runtime.state import ProxyState
from model_proxy.sample_data import SampleStudy, make_study
from model_proxy.settings import Settings
from model_proxy.shared import RedisLink, RedisSettings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

TODAY = date.today().strftime("%Y%m%d")
MODEL = new_uid()
LOOKBACK_DAYS = 1
JSON = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """An Orthanc of this module's own: the studies it holds are the ones uploaded here."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc-ledger"))
    yield server
    server.stop()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with start_redis(tmp_path / "redis") as server:
        yield server


def files_of(study: SampleStudy) -> list[bytes]:
    return [part10 for _, _, part10 in study.iter_instances()]


def rule_name(study: SampleStudy) -> str:
    return f"phantom {study.seed}"


def write_config(folder: Path, pacs: OrthancServer, *studies: SampleStudy) -> str:
    """servers.json, models.json and for each of ``studies`` a study-level rule matching
    it alone; the server's UUID."""
    folder.mkdir(parents=True, exist_ok=True)
    models = {
        MODEL: {
            "uri": "http://127.0.0.1:9/segmentation",  # never called: no job runs here
            "task": "segmentation",
            "supports": ["/studies", "/studies/series"],
        }
    }
    rules = [
        {
            "name": rule_name(study),
            "model": MODEL,
            "level": "study",
            "match": {"Modality": "CT", "AccessionNumber": f"PH{study.seed:06d}"},
        }
        for study in studies
    ]
    server_id = new_uid()
    (folder / "servers.json").write_text(json.dumps({server_id: server_entry(pacs)}))
    (folder / "models.json").write_text(json.dumps(models))
    (folder / "rules.json").write_text(json.dumps({"rules": rules}))
    return server_id


@dataclass
class Replica:
    watcher: PrefetchWatcher
    store: JobStore
    link: RedisLink

    def jobs_for(self, study: SampleStudy) -> list[Job]:
        return [job for job in self.store.recent(limit=1000) if job.spec.study == study.study_uid]


@asynccontextmanager
async def replica(
    config: Path, data: Path, redis: RedisServer, lease_seconds: float = 60.0
) -> AsyncIterator[Replica]:
    """One replica's watcher with ``--redis``: its own data dir and Redis client, the
    Redis lease and the shared ledger, as app.py wires them."""
    settings = Settings(config_dir=config, data_dir=data, watch_lookback_days=LOOKBACK_DAYS)
    live = LiveState()
    await live.replace(ProxyState.build(settings, load_config(config)))
    store = JobStore(data / JOB_STORE_FILE)
    jobs = JobManager(LocalJobQueue(store), live, request_of, JobPolicy())
    link = RedisLink.connect(RedisSettings(url=redis.url, timeout=1.0))
    ledger = await open_ledger(data / JOB_STORE_FILE, LOOKBACK_DAYS, link)
    policy = WatchPolicy(interval=3600.0, lookback_days=LOOKBACK_DAYS, max_studies=1000)
    lease = RedisWatcherLease(link, lease_seconds=lease_seconds)
    watcher = PrefetchWatcher(live, jobs, ledger, policy, lease)
    try:
        yield Replica(watcher, store, link)
    finally:
        await watcher.aclose()
        store.close()
        await live.aclose()
        await link.aclose()


def ledger_keys(redis: RedisServer) -> list[bytes]:
    with redis.client() as client:
        return sorted(client.scan_iter(match="model-proxy:default:prefetch:ledger:*"))


async def test_the_replica_taking_the_lease_over_does_not_run_again_what_the_first_ran(
    pacs: OrthancServer, redis: RedisServer, tmp_path: Path
) -> None:
    study = make_study(series_slices=(6, 4), rows=16, columns=16, seed=7101, study_date=TODAY)
    files = files_of(study)
    write_config(tmp_path / "config", pacs, study)
    pacs.upload_many(files[:-1])  # the last instance comes later: a changed study
    async with (
        replica(tmp_path / "config", tmp_path / "a", redis) as first,
        replica(tmp_path / "config", tmp_path / "b", redis) as second,
    ):
        await first.watcher.poll()  # takes the lease; sees the study
        await second.watcher.poll()  # not the watcher: looks at nothing
        await first.watcher.poll()  # the count is stable: arrived, run
        await second.watcher.poll()
        (job,) = first.jobs_for(study)
        assert second.watcher.status()["watching"] is False
        assert second.jobs_for(study) == []
        (key,) = ledger_keys(redis)
        with redis.client() as client:
            entry = json.loads(client.get(key) or b"{}")
            expires_in = client.ttl(key)
        assert entry["jobId"] == job.id
        assert entry["fingerprint"] == f"{MODEL}:study:{len(files) - 1}"
        # Longer than the lookback window (today and the days before), and bounded.
        assert (LOOKBACK_DAYS + 1) * 86400 < expires_in <= ledger_ttl(LOOKBACK_DAYS)

        await first.watcher.aclose()  # the first replica shuts down: it releases the lease
        for _ in range(3):  # seen, arrived, and once more
            await second.watcher.poll()
        assert second.watcher.status()["watching"] is True
        assert second.jobs_for(study) == []  # the shared ledger says it ran

        pacs.upload(files[-1])  # the study changed: it runs again, on the new count
        for _ in range(2):
            await second.watcher.poll()
        (again,) = second.jobs_for(study)
        assert again.spec.study == study.study_uid and again.spec.series is None
        assert len(first.jobs_for(study)) == 1


async def test_with_redis_gone_the_study_waits_and_runs_once_when_it_is_back(
    pacs: OrthancServer, redis: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    study = make_study(series_slices=(5,), rows=16, columns=16, seed=7102, study_date=TODAY)
    write_config(tmp_path / "config", pacs, study)
    pacs.upload_many(files_of(study))
    async with replica(tmp_path / "config", tmp_path / "a", redis) as only:
        await only.watcher.poll()  # takes the lease, sees the study
        redis.stop()
        caplog.set_level(logging.INFO, logger="model_proxy")
        for _ in range(3):
            # Within its lease it goes on watching: the study has arrived, but the
            # ledger cannot be read, so nothing is submitted and the poll ends well.
            await only.watcher.poll()
        assert only.watcher.status()["watching"] is True
        assert only.jobs_for(study) == []
        assert only.link.health.reachable is False
        said = [r.getMessage() for r in caplog.records if "the ledger in Redis at" in r.message]
        assert len(said) == 1, said  # once per outage, not once per poll
        assert "new studies wait until it answers" in said[0]

        redis.start()  # empty, as after a restart without persistence
        await only.watcher.poll()
        (job,) = only.jobs_for(study)
        await only.watcher.poll()
        assert [one.id for one in only.jobs_for(study)] == [job.id]
        assert only.link.health.reachable is True
        assert "prefetch: the ledger answers again" in caplog.text


async def test_a_ledger_that_cannot_be_written_submits_nothing(
    pacs: OrthancServer, redis: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis refusing writes (out of memory, ``noeviction``) while reads work: the entry
    is written before the job is submitted, so no job runs without its entry (it would
    run again at the next poll)."""
    study = make_study(series_slices=(5,), rows=16, columns=16, seed=7103, study_date=TODAY)
    write_config(tmp_path / "config", pacs, study)
    pacs.upload_many(files_of(study))
    async with replica(tmp_path / "config", tmp_path / "a", redis) as only:
        await only.watcher.poll()  # takes the lease, sees the study
        with redis.client() as client:
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", "1")
        try:
            for _ in range(2):
                await only.watcher.poll()
            assert only.jobs_for(study) == []
            assert ledger_keys(redis) == []
            # It read the ledger (nothing ran yet) and could not write the entry.
            assert "the ledger in Redis at" in caplog.text and "cannot be written" in caplog.text
        finally:
            with redis.client() as client:
                client.config_set("maxmemory", "0")
        await only.watcher.poll()
        await only.watcher.poll()
        assert len(only.jobs_for(study)) == 1
        assert len(ledger_keys(redis)) == 1


def table_rows(path: Path, table: str) -> int:
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


async def test_the_sqlite_ledger_is_migrated_once_never_over_another_replicas_entry(
    redis: RedisServer, tmp_path: Path
) -> None:
    path = tmp_path / "data" / JOB_STORE_FILE
    ran = RunKey("chest CT", "server-1", "1.2.3", None)
    theirs = RunKey("chest CT", "server-1", "1.2.4", "1.2.4.1")
    long_ago = RunKey("chest CT", "server-1", "1.2.5", None)
    table = LedgerTable(path)  # what a single proxy of before left in its jobs.sqlite
    table.record(ran, "model:study:10", "job-ran")
    table.record(theirs, "model:series:4", "job-mine")
    table.record(long_ago, "model:study:3", "job-old")
    table.close()
    with closing(sqlite3.connect(path)) as db, db:
        # Run before the lookback window: its study is no longer listed.
        past = time.time() - ledger_ttl(LOOKBACK_DAYS) - 60
        db.execute("UPDATE prefetch_runs SET at = ? WHERE study = '1.2.5'", (past,))

    other_link, link = (RedisLink.connect(RedisSettings(url=redis.url)) for _ in range(2))
    other = RedisLedger(other_link, ledger_ttl(LOOKBACK_DAYS))  # another replica's
    try:
        await other.record(theirs, "model:series:5", "job-theirs")
        ledger = await open_ledger(path, LOOKBACK_DAYS, link)
        assert await ledger.fingerprint(ran) == "model:study:10"
        assert await ledger.fingerprint(theirs) == "model:series:5"  # not overwritten
        assert await ledger.fingerprint(long_ago) is None
        await ledger.close()
        assert len(ledger_keys(redis)) == 2
        # The rows left the table the proxy reads, into a backup it never reads.
        assert table_rows(path, "prefetch_runs") == 0
        assert table_rows(path, MIGRATED_TABLE) == 3

        # Once: a restart copies nothing back (an entry deleted in Redis stays deleted).
        await other.forget(ran)
        ledger = await open_ledger(path, LOOKBACK_DAYS, link)
        assert await ledger.fingerprint(ran) is None
        await ledger.close()
    finally:
        await other.close()
        await other_link.aclose()
        await link.aclose()


async def test_a_migration_redis_refused_at_start_is_done_at_the_first_use(
    redis: RedisServer, tmp_path: Path
) -> None:
    path = tmp_path / "data" / JOB_STORE_FILE
    ran = RunKey("chest CT", "server-1", "1.2.3", None)
    table = LedgerTable(path)
    table.record(ran, "model:study:10", "job-ran")
    table.close()
    link = RedisLink.connect(RedisSettings(url=redis.url, timeout=1.0))
    try:
        redis.stop()
        ledger = await open_ledger(path, LOOKBACK_DAYS, link)  # a warning, not a failure
        assert table_rows(path, "prefetch_runs") == 1
        redis.start()
        assert await ledger.fingerprint(ran) == "model:study:10"
        assert table_rows(path, "prefetch_runs") == 0
        await ledger.close()
    finally:
        await link.aclose()


def polls(client: httpx.Client, server_id: str) -> int:
    servers = client.get("/status", headers=JSON).json()["watcher"]["servers"]
    return int(servers.get(server_id, {}).get("polls", 0))


def test_serve_with_redis_migrates_its_ledger_and_its_watcher_reads_the_shared_one(
    start_proxy: ProxyFactory, pacs: OrthancServer, redis: RedisServer, tmp_path: Path
) -> None:
    ran, new = (
        make_study(series_slices=(4,), rows=16, columns=16, seed=seed, study_date=TODAY)
        for seed in (7104, 7105)
    )
    config, data = tmp_path / "config", tmp_path / "data"
    server_id = write_config(config, pacs, ran, new)
    # What this data dir's proxy ran before it was started with --redis.
    table = LedgerTable(data / JOB_STORE_FILE)
    key = RunKey(rule_name(ran), server_id, ran.study_uid, None)
    table.record(key, f"{MODEL}:study:{len(files_of(ran))}", "job-before-redis")
    table.close()
    pacs.upload_many(files_of(ran) + files_of(new))
    proxy = start_proxy(
        None,
        None,
        config_dir=config,
        data_dir=data,
        env={"ZHIVA_SHOW_STATUS_PAGE": "true"},
        extra_args=["--redis", redis.url, "--watch-interval", "0.5"],
    )
    with proxy.client() as client:
        wait_until("prefetch job", lambda: jobs_of_study(client, new.study_uid))
        target = polls(client, server_id) + 2  # the other study was looked at by then
        wait_until("two more polls", lambda: polls(client, server_id) >= target)
        assert jobs_of_study(client, ran.study_uid) == []  # the migrated entry, read from Redis
    assert "migrated the ledger of jobs.sqlite into Redis: 1 entries copied" in proxy.log_text()
    assert len(ledger_keys(redis)) == 2
    assert table_rows(data / JOB_STORE_FILE, "prefetch_runs") == 0
