"""A job's store step (docs/jobs.md, "Storing DICOM results") against a real Orthanc
and the real example model: the SEG stored with STOW-RS, found with QIDO-RS and read
back with WADO-RS, its UID on the job; a store that the PACS refuses failing the job
(required) or recorded on it (not required); cancel while storing; ``Prefer:
respond-async`` with ``?store=true``; and the job metrics those jobs leave."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from deployment import expect_error
from faults import canned_http_server
from harness import (
    ExampleModel,
    OrthancServer,
    ProxyProcess,
    TlsCert,
    model_entry,
    new_uid,
    server_entry,
    start_proxy,
)
from held_relays import HeldPosts, held_posts
from jobs_client import finished, wait_for_job
from prometheus_client.parser import text_string_to_metric_families

from model_proxy.pacs.multipart import MultipartDecoder, boundary_from_content_type
from model_proxy.sample_data import SampleStudy, make_study

IDENTITY = {"Accept-Encoding": "identity"}
SERIES_ONLY = ["/studies/series"]
# A bound for what a loaded machine may take, never a wait for a constant.
DEADLINE = 60.0


@dataclass
class Setup:
    proxy: ProxyProcess
    study: SampleStudy
    pacs: OrthancServer
    held: HeldPosts
    servers: dict[str, str]
    models: dict[str, str]

    def job(self, model: str = "seg", index: int = 0, **fields: Any) -> dict[str, Any]:
        return {
            "model": self.models[model],
            "study": self.study.study_uid,
            "series": self.study.series[index].series_uid,
        } | fields

    def path(self, model: str = "seg", index: int = 0) -> str:
        series = self.study.series[index].series_uid
        return f"/segmentations/{self.models[model]}/studies/{self.study.study_uid}/series/{series}"

    def run(self, client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
        answer = client.post("/jobs", json=body)
        assert answer.status_code == 202, answer.text
        return wait_for_job(client, answer.json()["id"], finished)


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    tls_cert: TlsCert,
) -> Iterator[Setup]:
    # A study of its own: the SEGs stored here must not reach other tests' studies.
    study = make_study(series_slices=(4, 3, 3, 3), rows=64, columns=64, seed=61)
    orthanc.upload_many(data for _, _, data in study.iter_instances())
    refusal = b'{"message": "read-only"}'
    with (
        held_posts(orthanc.url) as held,
        canned_http_server("409 Conflict", refusal, "application/json") as refusing,
    ):
        servers = {"pacs": new_uid(), "held": new_uid(), "refusing": new_uid()}
        models = {name: new_uid() for name in ("seg", "required", "optional", "held")}
        seg = ("/segmentation", "segmentation", SERIES_ONLY)
        proxy = start_proxy(
            tmp_path_factory.mktemp("job-store-proxy"),
            {
                servers["pacs"]: server_entry(orthanc),
                servers["held"]: server_entry(
                    orthanc, uri=f"{held.url}/dicom-web", isDefault=False
                ),
                servers["refusing"]: {"uri": f"{refusing}/dicom-web", "isDefault": False},
            },
            {
                models["seg"]: model_entry(example_model, *seg),
                models["required"]: model_entry(
                    example_model, *seg, store={"server": servers["refusing"]}
                ),
                models["optional"]: model_entry(
                    example_model, *seg, store={"server": servers["refusing"], "required": False}
                ),
                models["held"]: model_entry(example_model, *seg, store={"server": servers["held"]}),
            },
            cert=tls_cert,
            env={"ZHIVA_SHOW_STATUS_PAGE": "true"},
        )
        try:
            yield Setup(proxy, study, orthanc, held, servers, models)
        finally:
            proxy.stop()


def _series_holding(pacs: OrthancServer, study: str, sop_uid: str) -> str | None:
    """QIDO-RS: the SEG series of ``study`` that holds instance ``sop_uid``."""
    with pacs.client() as client:
        found = client.get(f"/dicom-web/studies/{study}/series", params={"Modality": "SEG"})
        for entry in found.json():
            series = entry["0020000E"]["Value"][0]
            instances = client.get(f"/dicom-web/studies/{study}/series/{series}/instances")
            if sop_uid in [item["00080018"]["Value"][0] for item in instances.json()]:
                return str(series)
    return None


def _events(client: httpx.Client, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    with client.stream("GET", f"/jobs/{job_id}/events") as stream:
        name = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, orjson.loads(line.removeprefix("data: "))))
    return events


def test_a_store_job_stows_the_seg_into_the_study_and_lists_its_uid(setup: Setup) -> None:
    study, series = setup.study, setup.study.series[0]
    with setup.proxy.client() as client:
        job = setup.run(client, setup.job(store=True))
        assert job["status"] == "succeeded", job
        assert job["store"] is True and job["storeError"] is None
        (sop_uid,) = job["stored"]
        # The final event of the stream carries them too.
        assert _events(client, job["id"])[-1][1]["stored"] == [sop_uid]
        # The job's result is the JSON the GET route answers (now a cache hit), not DICOM.
        result = client.get(f"/jobs/{job['id']}/result", headers=IDENTITY)
        direct = client.get(setup.path(), headers=IDENTITY)
    assert result.status_code == direct.status_code == 200
    assert result.content == direct.content
    assert result.headers["etag"] == direct.headers["etag"]
    assert result.headers["content-type"] == "application/json"

    seg_series = _series_holding(setup.pacs, study.study_uid, sop_uid)
    assert seg_series is not None and seg_series != series.series_uid
    with setup.pacs.client() as pacs:
        wado = pacs.get(
            f"/dicom-web/studies/{study.study_uid}/series/{seg_series}/instances/{sop_uid}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        metadata = pacs.get(
            f"/dicom-web/studies/{study.study_uid}/series/{seg_series}/instances/{sop_uid}/metadata"
        )
    assert wado.status_code == 200
    boundary = boundary_from_content_type(wado.headers["content-type"])
    assert boundary is not None
    decoder = MultipartDecoder(boundary)
    (part10,) = decoder.feed(wado.content)
    assert sop_uid.encode() in part10
    (header,) = metadata.json()
    assert header["00080060"]["Value"] == ["SEG"]
    referenced = header["00081115"]["Value"][0]["0020000E"]["Value"][0]
    assert referenced == series.series_uid


def test_storing_is_a_phase_and_a_cancel_then_lets_the_store_finish(setup: Setup) -> None:
    with setup.proxy.client() as client:
        answer = client.post("/jobs", json=setup.job("held", index=1))
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        # The phase starts with the conversion; the PACS then holds the STOW-RS.
        storing = wait_for_job(
            client,
            job_id,
            lambda job: job["progress"]["phase"] == "storing" and setup.held.holding.is_set(),
        )
        assert storing["status"] == "running"
        # While the PACS holds the STOW-RS, the events stream shows the phase.
        with client.stream("GET", f"/jobs/{job_id}/events") as stream:
            lines = stream.iter_lines()
            assert next(lines) == "event: progress"
            assert '"phase":"storing"' in next(lines)

        cancelled: list[httpx.Response] = []

        def cancel() -> None:
            with setup.proxy.client() as other:
                cancelled.append(other.delete(f"/jobs/{job_id}"))

        canceller = threading.Thread(target=cancel)
        log_mark = "cancel asked while storing"
        canceller.start()
        deadline = time.monotonic() + DEADLINE
        while log_mark not in setup.proxy.log_text():
            assert time.monotonic() < deadline, setup.proxy.log_text()[-2000:]
            time.sleep(0.05)
        setup.held.release()
        canceller.join(DEADLINE)
        (answer,) = cancelled
        assert answer.status_code == 200, answer.text
        # Too late to cancel: the store finished and the job with it.
        job = answer.json()
        assert job["status"] == "succeeded", job
        (sop_uid,) = job["stored"]
        assert client.get(f"/jobs/{job_id}").json()["stored"] == [sop_uid]
    assert _series_holding(setup.pacs, setup.study.study_uid, sop_uid) is not None


def test_a_required_store_the_pacs_refuses_fails_the_job_naming_it(setup: Setup) -> None:
    with setup.proxy.client() as client:
        job = setup.run(client, setup.job("required", index=2))
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "pacs_store_failed"
        assert "PACS" in job["error"]["message"] and "409" in job["error"]["message"]
        assert job["stored"] is None
        expect_error(client.get(f"/jobs/{job['id']}/result"), 409, "job_failed")
        # The GET route answers the same error for the same request.
        direct = client.get(setup.path("required", index=2))
    assert expect_error(direct, 502, "pacs_store_failed") == job["error"]["message"]
    assert "read-only" not in job["error"]["message"]  # the PACS's body is not quoted


def test_a_store_that_is_not_required_fails_into_the_job_record_and_status(
    setup: Setup,
) -> None:
    with setup.proxy.client() as client:
        job = setup.run(client, setup.job("optional", index=2))
        assert job["status"] == "succeeded", job
        assert job["stored"] == []
        assert job["storeError"]["code"] == "pacs_store_failed"
        result = client.get(f"/jobs/{job['id']}/result", headers=IDENTITY)
        plain = client.get(setup.path("optional", index=2), headers=IDENTITY)
        assert result.status_code == 200 and result.content == plain.content
        status = client.get("/status", headers={"Accept": "application/json"}).json()
    failure = status["servers"][setup.servers["refusing"]]["lastStoreFailure"]
    assert failure["message"] == job["storeError"]["message"]


def test_prefer_respond_async_carries_store_true_into_the_job(setup: Setup) -> None:
    with setup.proxy.client() as client:
        bad = client.get(
            setup.path(index=3), params={"store": "yes"}, headers={"Prefer": "respond-async"}
        )
        assert "?store=" in expect_error(bad, 400, "bad_request")
        answer = client.get(
            setup.path(index=3), params={"store": "true"}, headers={"Prefer": "respond-async"}
        )
        assert answer.status_code == 202, answer.text
        job = wait_for_job(client, answer.json()["id"], finished)
    assert job["status"] == "succeeded" and job["store"] is True, job
    (sop_uid,) = job["stored"]
    assert _series_holding(setup.pacs, setup.study.study_uid, sop_uid) is not None


def _samples(client: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def test_job_metrics_count_states_outcomes_durations_and_stores(setup: Setup) -> None:
    models, servers = setup.models, setup.servers
    with setup.proxy.client() as client:
        before = _samples(client)
        assert setup.run(client, setup.job(index=2, store=True))["status"] == "succeeded"
        assert setup.run(client, setup.job("required", index=2))["status"] == "failed"
        assert setup.run(client, setup.job("optional", index=2))["status"] == "succeeded"
        after = _samples(client)

    def delta(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    finished_total = "model_proxy_jobs_finished_total"
    assert delta(finished_total, model=models["seg"], status="succeeded") == 1
    assert delta(finished_total, model=models["required"], status="failed") == 1
    assert delta(finished_total, model=models["optional"], status="succeeded") == 1
    assert delta("model_proxy_dicom_results_stored_total", server=servers["pacs"]) == 1
    assert delta("model_proxy_dicom_store_failures_total", server=servers["refusing"]) == 2
    for model in ("seg", "required", "optional"):
        assert delta("model_proxy_job_run_duration_seconds_count", model=models[model]) == 1
        assert delta("model_proxy_job_queue_wait_seconds_count", model=models[model]) == 1
    # Nothing is queued or running now; every configured model has its series.
    for model in models.values():
        for state in ("queued", "running"):
            labels = frozenset({"model": model, "state": state}.items())
            assert after[("model_proxy_jobs", labels)] == 0
    # Labels are config UUIDs: no study, series or instance UID in any of them.
    uids = {setup.study.study_uid, *(series.series_uid for series in setup.study.series)}
    assert not {value for _, labels in after for _, value in labels} & uids
