"""``/metrics`` (what the traffic did, access.json's scrape key, promtool's verdict on
the exposition), ``/livez`` and ``/readyz``, and the request id and one log line of
each request, in process."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from app_proxy import Deployment, Proxy, new_uid
from prometheus_client.parser import text_string_to_metric_families

from model_proxy.access import digest_of, new_api_key

pytestmark = pytest.mark.anyio


def samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition by name and labels."""
    found = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, got), v in found.items() if n == name and wanted <= got)


async def scrape(proxy: Proxy, **headers: str) -> str:
    response = await proxy.client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return response.text


async def test_metrics_count_requests_cache_bytes_and_upstream_calls(
    deployment: Deployment, tmp_path: Path
) -> None:
    seg = deployment.models["seg"]
    folder, pacs = deployment.servers["folder"], deployment.servers["pacs"]
    path = deployment.path("seg", "series")
    async with deployment.proxy(tmp_path) as proxy:
        # The folder (the default server) is fingerprinted: a miss, then a hit. This
        # PACS double answers no QIDO count, so its result is not cached.
        first = await proxy.client.get(path)
        second = await proxy.client.get(path)
        from_pacs = await proxy.client.get(f"{path}?server={pacs}")
        unknown = await proxy.client.get(deployment.path("no-such-model"))
        statuses = [r.status_code for r in (first, second, from_pacs, unknown)]
        assert statuses == [200, 200, 200, 404]
        text = await scrape(proxy)
    found = samples(text)
    requests = "model_proxy_requests_total"
    assert value(found, requests, route="segmentations", model=seg, status="200") == 3
    # An unknown model's id is not a label value: callers choose it.
    assert value(found, requests, route="predictions", model="", status="404") == 1
    assert value(found, "model_proxy_request_duration_seconds_count", route="segmentations") == 3
    assert value(found, "model_proxy_cache_lookups_total", model=seg, result="miss") == 1
    assert value(found, "model_proxy_cache_lookups_total", model=seg, result="hit") == 1
    wanted = deployment.study.series[0]
    series_bytes = sum(
        len(data) for series, _, data in deployment.study.iter_instances() if series == wanted
    )
    for server in (folder, pacs):
        received = value(found, "model_proxy_dicom_received_bytes_total", model=seg, server=server)
        assert received == series_bytes
    # The wire format spells each byte as a number: more bytes go out than came in.
    assert value(found, "model_proxy_model_request_bytes_total", model=seg) > 2 * series_bytes
    sent = sum(r.num_bytes_downloaded for r in (first, second, from_pacs))  # as compressed
    assert value(found, "model_proxy_result_sent_bytes_total", model=seg) == sent
    calls = "model_proxy_upstream_call_duration_seconds_count"
    assert value(found, calls, kind="pacs", upstream=pacs) == 1
    assert value(found, calls, kind="model", upstream=seg) == 2  # the hit called nothing
    assert value(found, "model_proxy_upstream_call_failures_total", upstream=seg) == 0
    breaker = "model_proxy_breaker_state"
    assert value(found, breaker, kind="model", upstream=seg, state="closed") == 1
    assert value(found, breaker, kind="pacs", upstream=pacs, state="closed") == 1
    assert value(found, breaker, kind="pacs", upstream=pacs, state="open") == 0
    assert value(found, "model_proxy_memory_budget_bytes") == proxy.settings.memory_budget
    assert value(found, "model_proxy_inferences_running") == 0
    assert value(found, "model_proxy_cache_size_bytes") > 0  # the miss stored its result
    assert value(found, "model_proxy_cache_max_bytes") == proxy.settings.cache_max_bytes
    assert value(found, "model_proxy_data_disk_free_bytes") > 0
    rejections = "model_proxy_admission_rejections_total"
    assert value(found, rejections, reason="too_many_inferences") == 0
    # Labels carry config UUIDs, never the study's or series' UIDs.
    assert deployment.study.study_uid not in text
    assert deployment.study.series[0].series_uid not in text


async def finished_job(proxy: Proxy, body: dict[str, Any]) -> dict[str, Any]:
    """Submit a job and poll it until it has ended (a bound, not an expected time)."""
    answer = await proxy.client.post("/jobs", json=body)
    assert answer.status_code == 202, answer.text
    deadline = time.monotonic() + 60
    while True:
        job: dict[str, Any] = (await proxy.client.get(f"/jobs/{answer.json()['id']}")).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        await anyio.sleep(0.05)


async def test_jobs_api_requests_count_as_jobs_and_job_events_never_by_job_id(
    deployment: Deployment, tmp_path: Path
) -> None:
    study = deployment.study
    series = {"study": study.study_uid, "series": study.series[0].series_uid}
    async with deployment.proxy(tmp_path) as proxy:
        job = await finished_job(proxy, {"model": deployment.models["seg"], **series})
        assert job["status"] == "succeeded", job
        result = await proxy.client.get(f"/jobs/{job['id']}/result")
        events = await proxy.client.get(f"/jobs/{job['id']}/events")
        listed = await proxy.client.get("/jobs")
        unknown = await proxy.client.get(f"/jobs/{new_uid()}")
        assert [r.status_code for r in (result, events, listed, unknown)] == [200, 200, 200, 404]
        text = await scrape(proxy)
    found = samples(text)
    requests = "model_proxy_requests_total"
    assert value(found, requests, route="jobs", status="202") == 1  # the POST
    # The polls of finished_job, the result and the list.
    assert value(found, requests, route="jobs", status="200") >= 3
    assert value(found, requests, route="jobs", status="404") == 1
    # The event stream apart: its duration is the job's, not a latency.
    assert value(found, requests, route="job-events", status="200") == 1
    assert value(found, "model_proxy_request_duration_seconds_count", route="job-events") == 1
    assert value(found, requests, route="other") == 0
    assert job["id"] not in text


async def test_promtool_accepts_the_exposition(deployment: Deployment, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (Debian/Ubuntu package: prometheus)")
    # Jobs that store into a folder of their own and into a PACS that refuses STOW-RS
    # (this double answers 405), so that every job metric has samples.
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    outbox_id, storing = new_uid(), new_uid()
    servers = deployment.servers_json() | {outbox_id: {"uri": outbox.as_uri()}}
    models = deployment.models_json() | {
        storing: deployment.model(
            "/segmentation", "segmentation", ["/studies/series"], store={"server": outbox_id}
        )
    }
    study = deployment.study
    series = {"study": study.study_uid, "series": study.series[0].series_uid}
    async with deployment.proxy(tmp_path, servers=servers, models=models) as proxy:
        await proxy.client.get(deployment.path("seg", "series"))
        stored = await finished_job(proxy, {"model": storing, **series})
        refused = await finished_job(
            proxy,
            {"model": deployment.models["seg"], "server": deployment.servers["pacs"], "store": True}
            | series,
        )
        text = await scrape(proxy)
    assert stored["status"] == "succeeded" and len(stored["stored"]) == 1, stored
    assert list(outbox.glob(f"*/{stored['stored'][0]}.dcm"))
    assert refused["status"] == "failed" and refused["error"]["code"] == "pacs_store_failed"
    found = samples(text)
    assert value(found, "model_proxy_dicom_results_stored_total", server=outbox_id) == 1
    failures = "model_proxy_dicom_store_failures_total"
    assert value(found, failures, server=deployment.servers["pacs"]) == 1
    assert value(found, "model_proxy_jobs_finished_total", model=storing, status="succeeded") == 1
    assert value(found, "model_proxy_jobs", model=storing, state="queued") == 0
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""  # no lint warning either


def scrape_access(deployment: Deployment, keys: dict[str, str]) -> dict[str, Any]:
    return {
        "apiKeys": {
            "viewer": {"sha256": digest_of(keys["viewer"]).hex()},
            "prometheus": {"sha256": digest_of(keys["prometheus"]).hex()},
        },
        "monitoring": {"keys": ["prometheus"]},
    }


async def test_metrics_need_the_scrape_key(deployment: Deployment, tmp_path: Path) -> None:
    keys = {"viewer": new_api_key(), "prometheus": new_api_key()}
    async with deployment.proxy(tmp_path, access=scrape_access(deployment, keys)) as proxy:
        anonymous = await proxy.client.get("/metrics")
        viewer = await proxy.client.get("/metrics", headers={"X-API-Key": keys["viewer"]})
        scraper = await proxy.client.get(
            "/metrics", headers={"Authorization": f"ApiKey {keys['prometheus']}"}
        )
        # Health needs no credentials: orchestrators probe without any.
        live = await proxy.client.get("/livez")
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "unauthenticated"
    assert viewer.status_code == 403
    assert viewer.json() == {
        "message": 'You have no access to /metrics (access.json grants it under "monitoring")',
        "code": "no_monitoring_access",
    }
    assert scraper.status_code == 200
    assert "model_proxy_requests_total" in scraper.text
    assert live.status_code == 200


async def test_livez_and_readyz(deployment: Deployment, tmp_path: Path) -> None:
    async with deployment.proxy(tmp_path, max_concurrent_inferences=1) as proxy:
        live = await proxy.client.get("/livez")
        ready = await proxy.client.get("/readyz")
        # A running inference takes the only slot: the next one would get 503.
        async with proxy.app.state.proxy.capacity.admission.admit():
            saturated = await proxy.client.get("/readyz")
        proxy.app.state.is_draining = lambda: True
        draining = await proxy.client.get("/readyz")
        still_live = await proxy.client.get("/livez")
        health = await proxy.client.get("/health")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"
    assert saturated.status_code == 503
    assert "admission is saturated" in saturated.json()["problems"][0]
    assert draining.status_code == 503
    assert "draining" in " ".join(draining.json()["problems"])
    assert still_live.status_code == 200
    assert health.status_code == 200 and health.json()["status"] == "ok"


async def test_readyz_can_require_the_upstreams(deployment: Deployment, tmp_path: Path) -> None:
    down = deployment.models["pred"]
    models = deployment.models_json()
    models[down] = deployment.model("/prediction", "prediction", ["/studies"]) | {
        "uri": "http://127.0.0.1:9/prediction",
        "statusUri": "http://127.0.0.1:9/",
    }
    async with deployment.proxy(tmp_path, models=models) as proxy:
        relaxed = await proxy.client.get("/readyz")
    async with deployment.proxy(tmp_path, models=models, ready_requires_upstreams=True) as proxy:
        strict = await proxy.client.get("/readyz")
    assert relaxed.status_code == 200
    assert strict.status_code == 503
    assert strict.json()["checks"]["upstreamsDown"] == [down]
    assert "127.0.0.1:9" not in strict.text  # uuids only, no addresses


async def test_request_id_taken_or_set_and_one_log_line_per_request(
    deployment: Deployment, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with deployment.proxy(tmp_path) as proxy:
        with caplog.at_level(logging.INFO):
            given = await proxy.client.get(
                deployment.path("seg"), headers={"X-Request-ID": "viewer-42.a"}
            )
            made = await proxy.client.get("/health")
            bad = await proxy.client.get("/health", headers={"X-Request-ID": "no spaces!"})
            missing = await proxy.client.get(deployment.path("no-such-model"))
    assert given.status_code == 200
    assert given.headers["x-request-id"] == "viewer-42.a"
    made_id = made.headers["x-request-id"]
    assert len(made_id) == 32
    assert bad.headers["x-request-id"] not in ("no spaces!", made_id)
    lines = [r for r in caplog.records if r.name == "model_proxy.requests"]
    assert len(lines) == 4
    by_id = {line.getMessage().split()[0]: line.getMessage() for line in lines}
    assert "request_id=viewer-42.a" in by_id
    assert "status=200" in by_id["request_id=viewer-42.a"]
    assert f"request_id={made_id}" in by_id
    error_line = by_id[f"request_id={missing.headers['x-request-id']}"]
    # The error's message is on the request's line; no other line for it.
    assert "status=404 code=unknown_model" in error_line
    assert "is not in models.json" in error_line
    others = [r.getMessage() for r in caplog.records if "is not in models.json" in r.getMessage()]
    assert len(others) == 1
