"""What the jobs tests share: a proxy with the example model on one Orthanc, and
polling a job until it reaches a state (never a fixed sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from harness import ExampleModel, ProxyFactory, ProxyProcess, model_entry, new_uid

from model_proxy.sample_data import SampleStudy

SERIES_ONLY = ["/studies/series"]
# A bound on how long a job may take on a loaded machine, not an expected duration.
JOB_DEADLINE = 120.0


@dataclass
class JobsSetup:
    proxy: ProxyProcess
    model_id: str
    server_id: str
    study: SampleStudy

    def series_job(self, series_index: int = 0, **fields: Any) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "study": self.study.study_uid,
            "series": self.study.series[series_index].series_uid,
        } | fields

    def series_path(self, series_index: int = 0) -> str:
        series = self.study.series[series_index].series_uid
        return f"/segmentations/{self.model_id}/studies/{self.study.study_uid}/series/{series}"

    def submit(self, client: httpx.Client, series_index: int = 0) -> str:
        answer = client.post("/jobs", json=self.series_job(series_index))
        assert answer.status_code == 202, answer.text
        job_id: str = answer.json()["id"]
        return job_id


def start_jobs_proxy(
    start_proxy: ProxyFactory,
    example_model: ExampleModel,
    study: SampleStudy,
    pacs_uri: str,
    *,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> JobsSetup:
    model_id, server_id = new_uid(), new_uid()
    servers = {
        server_id: {
            "uri": pacs_uri,
            "isDefault": True,
            "statusUri": f"{pacs_uri}/studies",
            "authType": "",
        }
    }
    models = {model_id: model_entry(example_model, "/segmentation", "segmentation", SERIES_ONLY)}
    proxy = start_proxy(servers, models, extra_args=extra_args, env=env)
    return JobsSetup(proxy, model_id, server_id, study)


def wait_for_job(
    client: httpx.Client,
    job_id: str,
    done: Callable[[dict[str, Any]], bool],
    seen: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Poll ``GET /jobs/{id}`` until ``done(job)``; every answer goes into ``seen``."""
    deadline = time.monotonic() + JOB_DEADLINE
    while True:
        answer = client.get(f"/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        job: dict[str, Any] = answer.json()
        if seen is not None:
            seen.append(job)
        if done(job):
            return job
        assert time.monotonic() < deadline, f"job never reached the state; last: {job}"
        time.sleep(0.05)


def finished(job: dict[str, Any]) -> bool:
    return job["status"] in {"succeeded", "failed", "cancelled"}
