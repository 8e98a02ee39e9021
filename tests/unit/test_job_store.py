"""The job store (SQLite) and what goes into it: specs from request bodies, progress
figures, the --job-retention duration."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from model_proxy.cli.options import CommandError, parse_duration
from model_proxy.errors import BadRequest
from model_proxy.inference.progress import Phase, Progress, instances_hint
from model_proxy.jobs import Job, JobSpec, JobStatus, JobStore

SPEC = JobSpec(model="m-1", study="1.2.3", series="1.2.3.4", data_filters=[{"a": 1}])


def test_a_job_survives_closing_and_reopening_the_store(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    job = Job(id="a" * 32, spec=SPEC, status=JobStatus.RUNNING, attempts=1, result_key="k")
    job.error = {"message": "m", "code": "c"}
    store.save(job)
    store.close()
    reopened = JobStore(tmp_path / "jobs.sqlite")
    found = reopened.get(job.id)
    assert found is not None
    assert (found.spec, found.status, found.attempts, found.result_key, found.error) == (
        SPEC,
        JobStatus.RUNNING,
        1,
        "k",
        {"message": "m", "code": "c"},
    )
    assert found.to_json()["progress"] == job.progress_json()
    assert reopened.get("b" * 32) is None
    reopened.close()


def test_the_store_steps_outcome_survives_reopening(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    stored = Job(id="s" * 32, spec=SPEC, status=JobStatus.SUCCEEDED, stored=["2.25.1", "2.25.2"])
    refused = Job(id="r" * 32, spec=SPEC, status=JobStatus.SUCCEEDED, stored=[])
    refused.store_error = {"message": "PACS 1234: did not store", "code": "pacs_store_failed"}
    for job in (stored, refused, Job(id="n" * 32, spec=SPEC)):
        store.save(job)
    store.close()
    reopened = JobStore(tmp_path / "jobs.sqlite")
    found = {job.id: job.to_json() for job in reopened.recent()}
    reopened.close()
    assert (found["s" * 32]["stored"], found["s" * 32]["storeError"]) == (
        ["2.25.1", "2.25.2"],
        None,
    )
    assert (found["r" * 32]["stored"], found["r" * 32]["storeError"]) == ([], refused.store_error)
    assert (found["n" * 32]["stored"], found["n" * 32]["storeError"]) == (None, None)


def test_a_job_store_from_before_the_store_step_gets_its_column(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, spec TEXT NOT NULL, model TEXT NOT NULL,"
        " status TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL,"
        " attempts INTEGER NOT NULL DEFAULT 0, progress TEXT, error TEXT, result_key TEXT);"
    )
    old.execute(
        "INSERT INTO jobs (id, spec, model, status, created) VALUES (?, ?, ?, ?, ?)",
        ("q" * 32, SPEC.dumps(), SPEC.model, "queued", 1.0),
    )
    old.commit()
    old.close()
    store = JobStore(path)
    (queued,) = store.unfinished()
    assert (queued.id, queued.stored, queued.store_error) == ("q" * 32, None, None)
    queued.stored = ["2.25.3"]
    store.save(queued)
    found = store.get(queued.id)
    store.close()
    assert found is not None and found.stored == ["2.25.3"]


def test_recent_filters_and_unfinished_order(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    statuses = [JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.RUNNING, JobStatus.FAILED]
    for number, status in enumerate(statuses):
        spec = JobSpec(model=f"m-{number % 2}", study="1.2")
        store.save(Job(id=str(number), spec=spec, status=status, created=100.0 + number))
    assert [job.id for job in store.recent()] == ["3", "2", "1", "0"]
    assert [job.id for job in store.recent(model="m-1")] == ["3", "1"]
    assert [job.id for job in store.recent(status=JobStatus.QUEUED)] == ["0"]
    assert [job.id for job in store.recent(limit=1)] == ["3"]
    assert [job.id for job in store.unfinished()] == ["0", "2"]
    store.close()


def test_purge_deletes_only_finished_jobs_past_retention(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    store.save(Job(id="old", spec=SPEC, status=JobStatus.FAILED, finished=10.0))
    store.save(Job(id="new", spec=SPEC, status=JobStatus.SUCCEEDED, finished=30.0))
    store.save(Job(id="queued", spec=SPEC, created=1.0))
    assert store.count(JobStatus.FAILED, finished_since=5.0) == 1
    assert store.purge(older_than=20.0) == 1
    assert {job.id for job in store.recent()} == {"new", "queued"}
    assert store.count(JobStatus.FAILED) == 0
    store.close()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"study": "1.2"}', "needs 'model'"),
        (b'{"model": "m", "study": "1.2", "x": 1}', "'x' is not a field"),
        (b'{"model": "m", "study": 1}', "'study'"),
        (b'{"model": "m", "study": "1.2", "instance": "1.2.3"}', "an instance needs its series"),
        (b'{"model": "m", "study": "1.2", "store": "yes"}', "'store'"),
        (b" " * 70_000, "over 65536 bytes"),
    ],
)
def test_bad_job_bodies_say_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        JobSpec.from_body(body, None)


def test_a_spec_round_trips_and_gives_its_filters_as_a_query() -> None:
    spec = JobSpec.from_body(
        b'{"model": "m", "study": "1.2", "dataFilters": [{"dataKey": "k", "uuid": "1.3"}],'
        b' "store": true}',
        "api-key:viewer",
    )
    assert JobSpec.loads(spec.dumps()) == spec
    assert spec.store and spec.caller == "api-key:viewer"
    assert spec.data_filter_items() == [("data-filters", '[{"dataKey":"k","uuid":"1.3"}]')]
    assert JobSpec(model="m", study="1.2").data_filter_items() == []


def test_progress_counts_from_the_fingerprint_and_the_pipeline() -> None:
    assert instances_hint("count:24") == 24
    assert instances_hint("count:24\ncount:12") == 36
    assert instances_hint("count:24\nuids:ab") is None
    assert instances_hint(None) is None

    class Counters:
        instances_sent = 3
        bytes_in = 300

    progress = Progress(phase=Phase.SENDING, instances_total=2)
    progress.follow(Counters())
    # More sent than counted (instances arrived after the count): the total follows.
    assert progress.snapshot() == {
        "phase": "sending",
        "instancesTotal": 3,
        "instancesSent": 3,
        "bytesSent": 300,
    }
    progress.unfollow()
    assert (progress.instances_sent, progress.bytes_sent) == (3, 300)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("7d", 604800.0)]
)
def test_job_retention_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "job-retention") == seconds


@pytest.mark.parametrize("text", ["0", "-1", "7w", "", "d"])
def test_bad_job_retention_is_refused(text: str) -> None:
    with pytest.raises(CommandError, match="--job-retention must be a positive duration"):
        parse_duration(text, "job-retention")
