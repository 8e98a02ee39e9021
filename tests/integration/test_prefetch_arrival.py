"""When the prefetch watcher counts a study as arrived, against a real Orthanc (QIDO-RS):
only once its instance count has not changed for one poll; once per rule and data, also
after a restart; again when the study changes; never outside the lookback window.

The polls are the test's own (``PrefetchWatcher.poll``) so that "the count changed
between two polls" is a fact of the test, not a race with a timer; everything under
them is real: the Orthanc, the config files, the job store and the ledger in SQLite.
Submitted jobs stay queued here (the manager is not started): what runs them is
test_prefetch.py's business.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import date
from pathlib import Path

import pytest
from harness import OrthancServer, new_uid, server_entry, start_orthanc

from model_proxy.config import load_config
from model_proxy.jobs import Job, JobManager, JobPolicy, JobStore
from model_proxy.jobs.queue import LocalJobQueue
from model_proxy.jobs.store import JOB_STORE_FILE
from model_proxy.prefetch import PrefetchWatcher, SoleReplica, WatchPolicy
from model_proxy.prefetch.ledger import SqliteLedger
from model_proxy.routes.jobs import request_of
from model_proxy.runtime.reload import LiveState
from model_proxy.runtime.state import ProxyState
from model_proxy.sample_data import SampleStudy, make_study
from model_proxy.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

TODAY = date.today().strftime("%Y%m%d")
MODEL = new_uid()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """An Orthanc of this module's own: the studies it holds are the ones uploaded here."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc-arrival"))
    yield server
    server.stop()


def study_of(seed: int, *, study_date: str = TODAY) -> SampleStudy:
    return make_study(series_slices=(24, 12), rows=32, columns=32, seed=seed, study_date=study_date)


def files_of(study: SampleStudy) -> list[bytes]:
    return [part10 for _, _, part10 in study.iter_instances()]


def write_config(folder: Path, pacs: OrthancServer, rules: list[dict[str, object]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    server = new_uid()
    models = {
        MODEL: {
            "uri": "http://127.0.0.1:9/segmentation",  # never called: no job runs here
            "task": "segmentation",
            "supports": ["/studies", "/studies/series"],
        }
    }
    (folder / "servers.json").write_text(json.dumps({server: server_entry(pacs)}))
    (folder / "models.json").write_text(json.dumps(models))
    (folder / "rules.json").write_text(json.dumps({"rules": rules}))


def accession_rule(study: SampleStudy, level: str = "study") -> dict[str, object]:
    # The accession number tells this test's studies from the module's others.
    return {
        "name": f"phantom {study.seed}",
        "model": MODEL,
        "level": level,
        "match": {"Modality": "CT", "AccessionNumber": f"PH{study.seed:06d}"},
    }


@asynccontextmanager
async def watching(folder: Path) -> AsyncIterator[tuple[PrefetchWatcher, JobStore]]:
    """A watcher on the config in ``folder``, its jobs and ledger in folder/data."""
    settings = Settings(config_dir=folder, data_dir=folder / "data")
    live = LiveState()
    await live.replace(ProxyState.build(settings, load_config(folder)))
    store = JobStore(settings.data_dir / JOB_STORE_FILE)
    jobs = JobManager(LocalJobQueue(store), live, request_of, JobPolicy())
    ledger = await SqliteLedger.open(settings.data_dir / JOB_STORE_FILE)
    policy = WatchPolicy(interval=3600.0, lookback_days=1, max_studies=1000)
    watcher = PrefetchWatcher(live, jobs, ledger, policy, SoleReplica())
    try:
        yield watcher, store
    finally:
        await watcher.aclose()
        store.close()
        await live.aclose()


def jobs_for(store: JobStore, study: SampleStudy) -> list[Job]:
    return [job for job in store.recent(limit=1000) if job.spec.study == study.study_uid]


async def test_a_growing_study_is_run_once_its_count_is_stable(
    pacs: OrthancServer, tmp_path: Path
) -> None:
    study = study_of(11)
    files = files_of(study)
    write_config(tmp_path, pacs, [accession_rule(study)])
    async with watching(tmp_path) as (watcher, store):
        pacs.upload_many(files[:10])
        await watcher.poll()  # seen with 10
        pacs.upload_many(files[10:20])
        await watcher.poll()  # 20: still growing
        pacs.upload_many(files[20:])
        await watcher.poll()  # 36: still growing
        assert jobs_for(store, study) == []
        await watcher.poll()  # 36 again: arrived
        (job,) = jobs_for(store, study)
        assert job.spec.model == MODEL and job.spec.series is None
        assert job.spec.server is not None and job.spec.caller == "prefetch rule phantom 11"
        status = watcher.status()
        assert status["jobsStarted"] == {"phantom 11": 1}
        (server,) = status["servers"].values()
        assert server["ok"] is True and server["polls"] == 4 and server["studiesSeen"] >= 1


async def test_a_study_runs_once_per_rule_across_restarts_and_again_when_it_changes(
    pacs: OrthancServer, tmp_path: Path
) -> None:
    study = study_of(12)
    files = files_of(study)
    # Each matching series of the 24- and 12-slice series: minInstances leaves the first.
    rule = accession_rule(study, level="series") | {
        "match": {"AccessionNumber": f"PH{study.seed:06d}", "minInstances": 20}
    }
    write_config(tmp_path, pacs, [rule])
    pacs.upload_many(files[:-1])  # the last instance of the 12-slice series comes later
    async with watching(tmp_path) as (watcher, store):
        for _ in range(4):
            await watcher.poll()
        (job,) = jobs_for(store, study)
        assert job.spec.series == study.series[0].series_uid
    async with watching(tmp_path) as (watcher, store):  # a restart: the ledger remembers
        for _ in range(3):
            await watcher.poll()
        assert len(jobs_for(store, study)) == 1
        pacs.upload(files[-1])  # the study changed, but not the series the rule ran on
        for _ in range(3):
            await watcher.poll()
        assert len(jobs_for(store, study)) == 1


async def test_a_changed_series_runs_again_and_old_studies_are_left_alone(
    pacs: OrthancServer, tmp_path: Path
) -> None:
    study, old = study_of(13), study_of(14, study_date="20200101")
    files = files_of(study)
    write_config(tmp_path, pacs, [accession_rule(study), accession_rule(old)])
    pacs.upload_many(files[:-1])
    pacs.upload_many(files_of(old))  # matches its rule, but is outside the lookback window
    async with watching(tmp_path) as (watcher, store):
        for _ in range(2):
            await watcher.poll()
        assert len(jobs_for(store, study)) == 1
        pacs.upload(files[-1])
        for _ in range(2):
            await watcher.poll()
        assert len(jobs_for(store, study)) == 2
        assert jobs_for(store, old) == []
        assert watcher.status()["jobsStarted"] == {
            "phantom 13": 2,
            "phantom 14": 0,
        }
