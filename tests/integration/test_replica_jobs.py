"""Jobs shared by three replicas (docs/replicas.md, "Jobs"): a real redis-server, three
``model-proxy serve`` processes behind a real nginx round-robin, a real Orthanc and the
example model behind a call counter (model_double.py, which can hold a call).

A job posted through nginx is read alike on every replica and its result served by
any; a replica killed during a job loses it to another once its lease runs out, and
the job still succeeds; a cancel asked of one replica stops the run on another; a
replica stopped gracefully hands its job over at once; with Redis stopped, job
requests are a clear 503 while plain requests are still served."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from harness import (
    ProxyProcess,
    TlsCert,
    new_uid,
    server_entry,
    start_orthanc,
    wait_until,
)
from jobs_client import finished, wait_for_job
from model_double import ModelDouble, serve_model_double
from nginx_server import NginxServer
from redis_server import RedisServer, start_redis
from replica_set import replicas_behind_nginx

from model_proxy.sample_data import SampleStudy, make_study

pytestmark = pytest.mark.integration

CASES = ["alike", "killed", "cancelled", "handed", "down"]
# Short, so the take-over test waits little; long enough that a replica on a loaded
# machine renews it in time (every second): no run is taken from a live replica.
LEASE = "10"
HELD = 60.0  # a model call held this long outlives the replica that made it


@dataclass
class JobsBed:
    replicas: list[ProxyProcess]
    nginx: NginxServer
    redis: RedisServer
    double: ModelDouble
    study: SampleStudy
    cert: TlsCert
    models: dict[str, str]

    def via_nginx(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.nginx.url,
            verify=self.cert.ssl_context(),
            timeout=httpx.Timeout(120.0),
            trust_env=False,
        )

    def submit(self, case: str) -> str:
        body = {
            "model": self.models[case],
            "study": self.study.study_uid,
            "series": self.study.series[0].series_uid,
        }
        with self.via_nginx() as client:
            answer = client.post("/jobs", json=body)
        assert answer.status_code == 202, answer.text
        job_id: str = answer.json()["id"]
        return job_id

    def job(self, replica: int, job_id: str) -> dict[str, Any]:
        with self.replicas[replica].client() as client:
            answer = client.get(f"/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        job: dict[str, Any] = answer.json()
        return job

    def calls(self, case: str) -> int:
        return self.double.case_calls(case)

    def runner_of(self, job_id: str, attempt: int = 1) -> int:
        """The replica whose log says it runs ``job_id`` (its attempt ``attempt``)."""
        line = f"job {job_id} running (attempt {attempt})"
        found: list[int] = []

        def logged() -> bool:
            found[:] = [i for i, r in enumerate(self.replicas) if line in r.log_text()]
            return bool(found)

        wait_until(line, logged)
        assert len(found) == 1, f"{line!r} in the logs of replicas {found}"
        return found[0]


def wait_for_status(bed: JobsBed, replica: int, job_id: str) -> dict[str, Any]:
    """``GET /jobs/{id}`` on ``replica`` until the job has finished."""
    with bed.replicas[replica].client() as client:
        return wait_for_job(client, job_id, finished)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory, tls_cert: TlsCert) -> Iterator[JobsBed]:
    orthanc = start_orthanc(tmp_path_factory.mktemp("orthanc-replica-jobs"))
    study = make_study(series_slices=(2,), seed=15)
    orthanc.upload_many(part10 for _, _, part10 in study.iter_instances())
    try:
        with (
            start_redis(tmp_path_factory.mktemp("redis-replica-jobs")) as redis,
            serve_model_double() as double,
        ):
            # /status probes statusUri: not the counted endpoint.
            models, models_json = double.case_models(
                CASES, ["/studies/series"], statusUri=f"{double.url}/status"
            )
            servers_json = {new_uid(): server_entry(orthanc)}
            replica_args = [
                "--redis", redis.url,
                "--redis-check-interval", "0.2",
                "--redis-lock-lease", LEASE,
                "--job-lease", LEASE,
            ]  # fmt: skip
            with replicas_behind_nginx(
                tmp_path_factory,
                "jobs",
                servers_json,
                models_json,
                extra_args=replica_args,
                cert=tls_cert,
            ) as (replicas, nginx):
                yield JobsBed(replicas, nginx, redis, double, study, tls_cert, models)
    finally:
        orthanc.stop()


def test_a_job_is_read_alike_on_every_replica_and_its_result_served_by_any(
    bed: JobsBed,
) -> None:
    job_id = bed.submit("alike")
    done = wait_for_status(bed, 0, job_id)
    assert done["status"] == "succeeded", done
    seen = [bed.job(index, job_id) for index in range(3)]
    assert all(job == done for job in seen)
    results = []
    for replica in bed.replicas:
        with replica.client() as client:
            results.append(client.get(f"/jobs/{job_id}/result"))
            listed = client.get("/jobs").json()["jobs"]
        assert job_id in [job["id"] for job in listed]
    assert [r.status_code for r in results] == [200, 200, 200]
    assert len({r.content for r in results}) == 1
    assert bed.calls("alike") == 1  # the result came from Redis on the others


def test_a_replica_killed_during_a_job_its_job_still_succeeds(bed: JobsBed) -> None:
    bed.double.delay = HELD  # the model call outlives its replica
    try:
        job_id = bed.submit("killed")
        runner = bed.runner_of(job_id)
        wait_until("the model call", lambda: bed.calls("killed") == 1)
        pid = bed.replicas[runner].process.pid
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)  # no clean-up: its lease has to run out
        bed.double.delay = 0.0
        heir = bed.runner_of(job_id, attempt=2)
        survivor = (runner + 1) % 3
        done = wait_for_status(bed, survivor, job_id)
    finally:
        bed.double.delay = 0.0
        bed.replicas[runner].restart()
    assert heir != runner
    assert (done["status"], done["attempts"]) == ("succeeded", 2), done
    assert bed.calls("killed") == 2  # the dead replica's call never answered
    with bed.replicas[survivor].client() as client:
        assert client.get(f"/jobs/{job_id}/result").status_code == 200


def test_a_cancel_asked_of_one_replica_stops_the_run_on_another(bed: JobsBed) -> None:
    bed.double.delay = HELD
    try:
        job_id = bed.submit("cancelled")
        runner = bed.runner_of(job_id)
        wait_until("the model call", lambda: bed.calls("cancelled") == 1)
        asker = (runner + 1) % 3
        with bed.replicas[asker].client() as client:
            answer = client.delete(f"/jobs/{job_id}")
    finally:
        bed.double.delay = 0.0
    assert answer.status_code == 200, answer.text
    done = wait_for_status(bed, asker, job_id)
    assert done["status"] == "cancelled", done
    assert "cancel asked on another replica" in bed.replicas[runner].log_text()
    assert bed.calls("cancelled") == 1


def test_a_replica_stopped_gracefully_hands_its_job_over(bed: JobsBed) -> None:
    bed.double.delay = HELD
    try:
        job_id = bed.submit("handed")
        runner = bed.runner_of(job_id)
        wait_until("the model call", lambda: bed.calls("handed") == 1)
        bed.double.delay = 0.0
        bed.replicas[runner].stop()  # SIGTERM: its run goes back to the queue
        assert f"job {job_id}: back in the queue" in bed.replicas[runner].log_text()
        heir = bed.runner_of(job_id, attempt=2)
        done = wait_for_status(bed, heir, job_id)
    finally:
        bed.double.delay = 0.0
        bed.replicas[runner].restart()
    assert heir != runner
    assert (done["status"], done["attempts"]) == ("succeeded", 2), done


def test_with_redis_stopped_jobs_are_a_clear_503_and_work_again_after(bed: JobsBed) -> None:
    path = (
        f"/segmentations/{bed.models['down']}/studies/{bed.study.study_uid}"
        f"/series/{bed.study.series[0].series_uid}"
    )
    bed.redis.stop()
    try:
        with bed.replicas[0].client() as client:
            refused = client.post(
                "/jobs",
                json={
                    "model": bed.models["down"],
                    "study": bed.study.study_uid,
                    "series": bed.study.series[0].series_uid,
                },
            )
            plain = client.get(path)
    finally:
        bed.redis.start()
    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "redis_unavailable"
    assert "the jobs are kept in Redis" in refused.json()["message"]
    assert "Traceback" not in refused.text
    assert plain.status_code == 200  # without the shared parts
    job_id = bed.submit("down")
    assert wait_for_status(bed, 1, job_id)["status"] == "succeeded"
