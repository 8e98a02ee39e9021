"""Operating the proxy: a real Prometheus scraping ``--metrics-port`` with a scrape key,
promtool's verdict on the exposition, the request id that follows a request to the
PACS, the token server and the model, on the request's one JSON log line, and traces
sent to an OTLP/HTTP receiver."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from auth_setup import AuthSetupFactory
from harness import (
    ExampleModel,
    OrthancServer,
    ProxyFactory,
    model_entry,
    new_uid,
    server_entry,
)
from otlp_receiver import ReceivedSpan, start_otlp_receiver
from processes import LOOPBACK, free_port, http_client
from prometheus_server import start_prometheus
from token_gateway import Gateway
from token_server import TokenServer

from model_proxy.access import digest_of, new_api_key
from model_proxy.sample_data import SampleStudy

pytestmark = pytest.mark.integration

ALL_LEVELS = ["/studies", "/studies/series", "/studies/series/instances"]


def test_prometheus_scrapes_the_request_and_cache_figures(
    start_proxy: ProxyFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
    tmp_path: Path,
) -> None:
    viewer_key, scrape_key = new_api_key(), new_api_key()
    config_dir = tmp_path / "proxy"
    config_dir.mkdir()
    access = config_dir / "access.json"
    access.write_text(
        json.dumps(
            {
                "apiKeys": {
                    "viewer": {"sha256": digest_of(viewer_key).hex()},
                    "prometheus": {"sha256": digest_of(scrape_key).hex()},
                },
                "monitoring": {"keys": ["prometheus"]},
            }
        )
    )
    access.chmod(0o600)
    key_file = tmp_path / "scrape.key"
    key_file.write_text(scrape_key)
    server_id, model_id = new_uid(), new_uid()
    metrics_port = free_port()
    proxy = start_proxy(
        {server_id: server_entry(orthanc)},
        {model_id: model_entry(example_model, "/segmentation", "segmentation", ALL_LEVELS)},
        config_dir=config_dir,
        extra_args=["--metrics-port", str(metrics_port)],
    )
    series = sample_study.series[0]
    path = f"/segmentations/{model_id}/studies/{sample_study.study_uid}/series/{series.series_uid}"
    metrics_url = f"http://{LOOPBACK}:{metrics_port}/metrics"

    with start_prometheus(
        tmp_path / "prometheus", target=f"{LOOPBACK}:{metrics_port}", key_file=key_file
    ) as prometheus:
        prometheus.wait_for('up{job="model-proxy"}', 1)  # the scrape key works
        with proxy.client(headers={"X-API-Key": viewer_key}) as client:
            first = client.get(path)
            second = client.get(path)
        assert first.status_code == second.status_code == 200, first.text
        assert second.content == first.content
        labels = f'route="segmentations",model="{model_id}",status="200"'
        prometheus.wait_for(f"model_proxy_requests_total{{{labels}}}", 2)
        prometheus.wait_for('model_proxy_cache_lookups_total{result="miss"}', 1)
        prometheus.wait_for('model_proxy_cache_lookups_total{result="hit"}', 1)
        prometheus.wait_for(
            f'model_proxy_upstream_call_duration_seconds_count{{kind="model",upstream="{model_id}"}}',
            1,
        )
        prometheus.wait_for(
            f'model_proxy_breaker_state{{kind="pacs",upstream="{server_id}",state="closed"}}', 1
        )

    with http_client(timeout=30.0) as client:
        refused = client.get(metrics_url)
        exposition = client.get(metrics_url, headers={"Authorization": f"ApiKey {scrape_key}"})
    assert refused.status_code == 401
    assert exposition.status_code == 200
    # The metrics port serves /metrics only, and plain HTTP.
    with http_client(timeout=30.0) as client:
        assert client.get(f"http://{LOOPBACK}:{metrics_port}/health").status_code == 404
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is not installed (package prometheus)"
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition.text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert sample_study.study_uid not in exposition.text


def test_request_id_reaches_the_pacs_the_token_server_and_the_model(
    auth_setup: AuthSetupFactory,
    token_pacs: Gateway,
    token_server: TokenServer,
    example_model: ExampleModel,
) -> None:
    setup = auth_setup(token_pacs.server_entry("token"), extra_args=["--log-format", "json"])
    token_pacs.reset_counters()
    with setup.proxy.client() as client:
        given = client.get(setup.instance_path, headers={"X-Request-ID": "viewer-4711"})
        made = client.get(setup.series_path)  # another result: the model is called again
        scraped = client.get("/metrics")
    assert given.status_code == made.status_code == 200, given.text
    assert given.headers["x-request-id"] == "viewer-4711"
    made_id = made.headers["x-request-id"]
    # Every PACS call of a request carries its id; the first one also renewed the token.
    assert "viewer-4711" in token_pacs.request_ids
    assert made_id in token_pacs.request_ids
    assert None not in token_pacs.request_ids
    assert "X-Request-ID viewer-4711" in example_model.log_text()
    assert f"X-Request-ID {made_id}" in example_model.log_text()
    assert f'model_proxy_pacs_token_refreshes_total{{server="{setup.server_id}"}} 1.0' in (
        scraped.text
    )

    # One JSON line per request, uvicorn's access line off.
    log_file = setup.proxy.log_dir / "model-proxy.log"
    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    lines = [entry for entry in entries if entry.get("request_id") == "viewer-4711"]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["logger"] == "model_proxy.requests"
    assert (line["status"], line["model"], line["server"]) == (
        200,
        setup.model_id,
        setup.server_id,
    )
    assert line["instances"] == 1 and line["dicom_bytes"] > 0
    assert not [entry for entry in entries if entry["logger"].startswith("uvicorn.access")]
    assert setup.study.study_uid in line["path"]  # the log has the path; metrics do not


def test_traces_reach_an_otlp_receiver_and_the_pacs_gets_the_traceparent(
    auth_setup: AuthSetupFactory, token_pacs: Gateway
) -> None:
    with start_otlp_receiver() as receiver:
        setup = auth_setup(
            token_pacs.server_entry("token"), extra_args=["--otlp-endpoint", receiver.url]
        )
        token_pacs.reset_counters()
        with setup.proxy.client() as client:
            response = client.get(setup.series_path)
        assert response.status_code == 200, response.text
        request_id = response.headers["x-request-id"]

        def complete(spans: list[ReceivedSpan]) -> bool:
            names = {span.name for span in spans}
            return {"pacs.retrieve", "model.call", "GET /segmentations/{model}/..."} <= names

        spans = receiver.wait_for(complete)
    [request] = [s for s in spans if s.attributes.get("request_id") == request_id]
    assert request.service == "model-proxy"
    trace = [s for s in spans if s.trace_id == request.trace_id]
    retrievals = [s for s in trace if s.name == "pacs.retrieve"]
    assert retrievals and all(s.parent_span_id == request.span_id for s in retrievals)
    # Every WADO-RS call of the retrieval carries its span as the parent.
    sent = {tp for tp in token_pacs.traceparents if tp is not None}
    retrieval_parents = {f"00-{s.trace_id}-{s.span_id}" for s in retrievals}
    assert any(tp.rsplit("-", 1)[0] in retrieval_parents for tp in sent), sent
