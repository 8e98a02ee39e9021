"""The jobs API against a real Orthanc and the real example model: lifecycle and
progress, the result the GET route would give, Server-Sent Events, ``Prefer:
respond-async``, bad jobs refused at once, and cancel mid-upload (the model sees a
broken upload and the PACS retrieval stops)."""

from __future__ import annotations

import time
from typing import Any

import orjson
from deployment import expect_error
from harness import ExampleModel, OrthancServer, ProxyFactory, new_uid
from held_relays import Stall, stalling_relay
from jobs_client import finished, start_jobs_proxy, wait_for_job

from model_proxy.sample_data import SampleStudy

IDENTITY = {"Accept-Encoding": "identity"}
# A bound for what a loaded machine may take, never a wait for a constant.
JOB_WAIT = 60.0


def _assert_monotonic(progress: list[dict[str, Any]]) -> None:
    sent = [p["instancesSent"] for p in progress]
    sent_bytes = [p["bytesSent"] for p in progress]
    assert sent == sorted(sent), sent
    assert sent_bytes == sorted(sent_bytes), sent_bytes


def test_a_job_runs_to_the_get_routes_result_with_monotonic_progress(
    start_proxy: ProxyFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
) -> None:
    setup = start_jobs_proxy(start_proxy, example_model, sample_study, orthanc.dicomweb_url)
    slices = len(sample_study.series[0].sop_uids)
    with setup.proxy.client() as client:
        answer = client.post("/jobs", json=setup.series_job())
        assert answer.status_code == 202, answer.text
        body = answer.json()
        job_id = body["id"]
        assert answer.headers["location"] == f"/jobs/{job_id}"
        assert body["status"] in {"queued", "running"}
        assert body["links"] == {
            "self": f"/jobs/{job_id}",
            "result": f"/jobs/{job_id}/result",
            "events": f"/jobs/{job_id}/events",
        }
        seen: list[dict[str, Any]] = []
        job = wait_for_job(client, job_id, finished, seen)
        assert job["status"] == "succeeded", job
        assert job["error"] is None and job["attempts"] == 1
        assert job["created"] <= job["started"] <= job["finished"]
        _assert_monotonic([entry["progress"] for entry in seen])
        final = job["progress"]
        assert final["instancesSent"] == final["instancesTotal"] == slices
        assert final["bytesSent"] > 0 and final["phase"] == "done"

        result = client.get(f"/jobs/{job_id}/result", headers=IDENTITY)
        assert result.status_code == 200
        model_calls = setup.proxy.log_text().count("model_called=True")
        direct = client.get(setup.series_path(), headers=IDENTITY)
        assert direct.status_code == 200
        # The very bytes and validator of the GET route, which is now a cache hit.
        assert result.content == direct.content
        assert result.headers["etag"] == direct.headers["etag"]
        assert setup.proxy.log_text().count("model_called=True") == model_calls
        document = orjson.loads(result.content)
        assert sample_study.study_uid in document
        # Compressed as the caller accepts, like the GET route, and validated like it.
        zipped = client.get(f"/jobs/{job_id}/result", headers={"Accept-Encoding": "gzip"})
        assert zipped.headers["content-encoding"] == "gzip"
        assert zipped.content == direct.content  # httpx decodes it
        again = client.get(
            f"/jobs/{job_id}/result", headers={"If-None-Match": result.headers["etag"]}
        )
        assert again.status_code == 304

        listed = client.get("/jobs", params={"status": "succeeded", "model": setup.model_id})
        assert [entry["id"] for entry in listed.json()["jobs"]] == [job_id]
        assert client.get("/jobs", params={"status": "failed"}).json()["jobs"] == []


def test_events_stream_progress_then_the_final_status(
    start_proxy: ProxyFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
) -> None:
    setup = start_jobs_proxy(start_proxy, example_model, sample_study, orthanc.dicomweb_url)
    with setup.proxy.client() as client:
        job_id = setup.submit(client, series_index=1)
        events: list[tuple[str, dict[str, Any]]] = []
        with client.stream("GET", f"/jobs/{job_id}/events") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            name = ""
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((name, orjson.loads(line.removeprefix("data: "))))
        # The stream ends by itself after the final status.
        assert events[-1][0] == "status"
        final = events[-1][1]
        assert final["status"] == "succeeded" and final["id"] == job_id
        progress = [data["progress"] for name, data in events if name == "progress"]
        assert progress, events
        _assert_monotonic([*progress, final["progress"]])
        total = len(sample_study.series[1].sop_uids)
        assert final["progress"]["instancesSent"] == final["progress"]["instancesTotal"] == total
        # A finished job's stream is its final status at once.
        with client.stream("GET", f"/jobs/{job_id}/events") as stream:
            lines = [line for line in stream.iter_lines() if line]
        assert lines[0] == "event: status"


def test_prefer_respond_async_answers_202_with_a_job(
    start_proxy: ProxyFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
) -> None:
    setup = start_jobs_proxy(start_proxy, example_model, sample_study, orthanc.dicomweb_url)
    with setup.proxy.client() as client:
        answer = client.get(
            setup.series_path(1), headers={"Prefer": "wait=5, respond-async"} | IDENTITY
        )
        assert answer.status_code == 202, answer.text
        assert answer.headers["preference-applied"] == "respond-async"
        location = answer.headers["location"]
        job_id = answer.json()["id"]
        assert location == f"/jobs/{job_id}"
        job = wait_for_job(client, job_id, finished)
        assert job["status"] == "succeeded", job
        assert job["series"] == sample_study.series[1].series_uid
        result = client.get(f"{location}/result", headers=IDENTITY)
        direct = client.get(setup.series_path(1), headers=IDENTITY)
        assert result.content == direct.content
        assert result.headers["etag"] == direct.headers["etag"]
        # The checks of the GET route come first: a bad request is not turned into a job.
        bad = client.get(
            setup.series_path(1).replace("/series/", "/series/01."),
            headers={"Prefer": "respond-async"},
        )
        expect_error(bad, 400, "invalid_uid")
        assert client.get("/jobs").json()["jobs"] == [client.get(location).json()]


def test_bad_jobs_are_refused_at_once_with_the_get_routes_answers(
    start_proxy: ProxyFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
) -> None:
    setup = start_jobs_proxy(start_proxy, example_model, sample_study, orthanc.dicomweb_url)
    study = sample_study.study_uid
    with setup.proxy.client() as client:
        cases: list[tuple[Any, int, str]] = [
            ({"model": new_uid(), "study": study}, 404, "unknown_model"),
            ({"model": setup.model_id, "study": study}, 400, "unsupported_level"),
            (setup.series_job(series="1.02"), 400, "invalid_uid"),
            (setup.series_job(server=new_uid()), 404, "unknown_server"),
            (setup.series_job(dataFilters=[]), 400, "data_filters_not_accepted"),
            (setup.series_job(colour="blue"), 400, "invalid_job"),
            (setup.series_job(study=12), 400, "invalid_job"),
            ({"study": study}, 400, "invalid_job"),
            ([1, 2], 400, "invalid_job"),
        ]
        for body, status, code in cases:
            expect_error(client.post("/jobs", json=body), status, code)
        expect_error(client.post("/jobs", content=b"{not json"), 400, "invalid_job")
        expect_error(client.get(f"/jobs/{'0' * 32}"), 404, "unknown_job")
        expect_error(client.delete(f"/jobs/{'0' * 32}"), 404, "unknown_job")
        expect_error(client.get("/jobs", params={"status": "done"}), 400, "bad_request")
        expect_error(client.get("/jobs", params={"limit": "0"}), 400, "bad_request")
        expect_error(client.put("/jobs"), 405, "method_not_allowed")
        assert client.get("/jobs").json()["jobs"] == []


def test_jobs_are_off_without_the_result_cache(
    start_proxy: ProxyFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
) -> None:
    setup = start_jobs_proxy(
        start_proxy,
        example_model,
        sample_study,
        orthanc.dicomweb_url,
        extra_args=["--cache-size", "0"],
    )
    with setup.proxy.client() as client:
        message = expect_error(
            client.post("/jobs", json=setup.series_job()), 404, "jobs_unavailable"
        )
        assert "--cache-size 0" in message
        async_get = client.get(setup.series_path(), headers={"Prefer": "respond-async"})
        expect_error(async_get, 404, "jobs_unavailable")


def test_cancel_mid_upload_breaks_the_model_upload_and_stops_the_retrieval(
    start_proxy: ProxyFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
) -> None:
    series_bytes = sum(
        len(part10)
        for series, _, part10 in sample_study.iter_instances()
        if series is sample_study.series[0]
    )
    stall = Stall(series_bytes // 3)
    with stalling_relay(orthanc.url, stall) as relay:
        setup = start_jobs_proxy(start_proxy, example_model, sample_study, f"{relay.url}/dicom-web")
        broken_before = example_model.log_text().count("request body broken off")
        with setup.proxy.client() as client:
            job_id = setup.submit(client)
            running = wait_for_job(
                client,
                job_id,
                lambda job: job["progress"]["instancesSent"] >= 1 and stall.holding.is_set(),
            )
            assert running["status"] == "running"
            assert running["progress"]["phase"] == "sending"
            cancelled = client.delete(f"/jobs/{job_id}")
            assert cancelled.status_code == 200
            assert cancelled.json()["status"] == "cancelled"
            assert client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"
            expect_error(client.get(f"/jobs/{job_id}/result"), 409, "job_failed")
            # The PACS retrieval stopped: the proxy hung up on the held answer.
            assert stall.client_closed.wait(JOB_WAIT)
            # The model saw its upload broken off, not a complete body.
            deadline = time.monotonic() + JOB_WAIT
            while example_model.log_text().count("request body broken off") == broken_before:
                assert time.monotonic() < deadline, example_model.log_text()[-2000:]
                time.sleep(0.05)
            # Cancelling a finished job changes nothing.
            assert client.delete(f"/jobs/{job_id}").json()["status"] == "cancelled"


def test_the_store_field_takes_a_boolean_and_defaults_to_false(
    start_proxy: ProxyFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
) -> None:
    # Storing itself is in test_job_dicom_store.py, on a study of its own: a SEG stored into
    # the shared sample study would reach other tests' study-level requests.
    setup = start_jobs_proxy(start_proxy, example_model, sample_study, orthanc.dicomweb_url)
    with setup.proxy.client() as client:
        answer = client.post("/jobs", json=setup.series_job(1))
        assert answer.status_code == 202
        job = client.get(f"/jobs/{answer.json()['id']}").json()
        assert job["store"] is False and job["stored"] is None and job["storeError"] is None
        expect_error(client.post("/jobs", json=setup.series_job(store="yes")), 400, "invalid_job")
