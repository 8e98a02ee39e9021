"""The nginx recipe of docs/deployment.md with the real nginx and the shipped config
(deploy/nginx/model-proxy.conf): a 150 MB result streams through byte-identical and
unbuffered, and the client address nginx forwards is believed from nginx only."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import (
    LOOPBACK,
    OrthancServer,
    ProxyProcess,
    TlsCert,
    http_client,
    new_uid,
    server_entry,
    start_proxy,
)
from large_result_model import LargeResultModel, large_result_model, sha256_of
from nginx_server import NGINX_SOURCE_ADDRESS, NginxServer, start_nginx

from model_proxy.models.result_stream import FIRST_WINDOW_BYTES
from model_proxy.sample_data import SampleStudy

MiB = 1 << 20
LARGE = 150 * MiB
SMALL = 2 * MiB
# A viewer elsewhere on the network, as nginx sees it.
VIEWER_ADDRESS = "127.0.0.3"
SPOOFED = "203.0.113.9"


@dataclass
class Setup:
    proxy: ProxyProcess
    nginx: NginxServer
    model: LargeResultModel
    models: dict[str, str]
    study: SampleStudy
    cert: TlsCert

    def path(self, model: str) -> str:
        series = self.study.series[1]
        return (
            f"/segmentations/{self.models[model]}/studies/{self.study.study_uid}"
            f"/series/{series.series_uid}"
        )

    def viewer(self) -> httpx.Client:
        """A client of nginx from the viewer's address, trusting the proxy's certificate."""
        transport = httpx.HTTPTransport(
            local_address=VIEWER_ADDRESS, verify=self.cert.ssl_context()
        )
        return http_client(
            base_url=self.nginx.url, transport=transport, timeout=httpx.Timeout(300.0)
        )

    def audit_records(self, model: str, count: int) -> list[dict[str, Any]]:
        """The audit records of requests for ``model``, once the writer has written ``count``."""
        audit = self.proxy.log_dir / "audit.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lines = audit.read_text().splitlines() if audit.exists() else []
            records = [json.loads(line) for line in lines]
            records = [record for record in records if record["model"] == self.models[model]]
            if len(records) >= count:
                return records
            time.sleep(0.05)
        raise AssertionError(f"{audit} has fewer than {count} records:\n{self.proxy.log_text()}")


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
    orthanc: OrthancServer,
    sample_study: SampleStudy,
    tls_cert: TlsCert,
) -> Iterator[Setup]:
    with large_result_model() as model:
        models = {"large": new_uid(), "small": new_uid()}
        models_json = {
            models[name]: {
                "uri": f"{model.url}/result?bytes={size}",
                "task": "segmentation",
                "supports": ["/studies/series"],
            }
            for name, size in (("large", LARGE), ("small", SMALL))
        }
        proxy = start_proxy(
            tmp_path_factory.mktemp("proxy"),
            {new_uid(): server_entry(orthanc)},
            models_json,
            cert=None,  # nginx terminates TLS
            extra_args=["--forwarded-allow-ips", NGINX_SOURCE_ADDRESS, "--cache-size", "0"],
        )
        try:
            upstream = proxy.url.removeprefix("http://")
            nginx = start_nginx(tmp_path_factory.mktemp("nginx"), upstream=upstream, cert=tls_cert)
            try:
                yield Setup(proxy, nginx, model, models, sample_study, tls_cert)
            finally:
                nginx.stop()
        finally:
            proxy.stop()


def test_a_150_mb_result_streams_through_nginx_unbuffered_and_byte_identical(
    setup: Setup,
) -> None:
    # The model stops after 4 MiB until the viewer has seen its first bytes: a proxy
    # or an nginx that held the answer back would never let them through.
    setup.model.release.clear()
    setup.model.held_after = 4 * MiB
    digest, received, seen_while_held = hashlib.sha256(), 0, 0
    with (
        setup.viewer() as client,
        client.stream(
            "GET", setup.path("large"), headers={"Accept-Encoding": "identity"}
        ) as response,
    ):
        assert response.status_code == 200, response.read()
        assert "content-encoding" not in response.headers
        for chunk in response.iter_raw():
            digest.update(chunk)
            received += len(chunk)
            if not setup.model.release.is_set() and received > FIRST_WINDOW_BYTES:
                seen_while_held = received
                setup.model.release.set()
    assert seen_while_held > FIRST_WINDOW_BYTES
    assert received == LARGE
    assert digest.hexdigest() == sha256_of(LARGE)
    # Unbuffered: nginx spooled nothing to its temp files.
    assert not [path for path in (setup.nginx.prefix / "proxy").rglob("*") if path.is_file()]


def test_the_forwarded_client_is_believed_from_nginx_only(setup: Setup) -> None:
    spoof = {"X-Forwarded-For": SPOOFED, "Accept-Encoding": "identity"}
    with setup.viewer() as client:
        through_nginx = client.get(setup.path("small"), headers=spoof)
    assert through_nginx.status_code == 200
    with http_client(base_url=setup.proxy.url, timeout=httpx.Timeout(120.0)) as client:
        direct = client.get(setup.path("small"), headers=spoof)
    assert direct.status_code == 200
    records = setup.audit_records("small", 2)
    # nginx replaced what the viewer claimed with the address it saw; the proxy
    # believed nginx. A direct client's header is ignored.
    assert [record["client"] for record in records] == [VIEWER_ADDRESS, LOOPBACK]
    assert NGINX_SOURCE_ADDRESS not in json.dumps(records)
    # The request's log line names the viewer too, and nobody logs the claimed address.
    log = setup.proxy.log_text()
    assert VIEWER_ADDRESS in log
    assert SPOOFED not in log
    # nginx's $request_id (32 hex digits) is the audit record's id.
    assert re.fullmatch("[0-9a-f]{32}", records[0]["requestId"])


def test_without_trusted_proxies_the_forwarded_headers_are_ignored(
    tmp_path: Path, orthanc: OrthancServer, setup: Setup
) -> None:
    proxy = start_proxy(
        tmp_path / "proxy",
        {new_uid(): server_entry(orthanc)},
        {setup.models["small"]: {"uri": f"{setup.model.url}/result?bytes={SMALL}",
                                 "task": "segmentation", "supports": ["/studies/series"]}},
        cert=None,
    )  # fmt: skip
    try:
        with http_client(base_url=proxy.url, timeout=httpx.Timeout(120.0)) as client:
            response = client.get(setup.path("small"), headers={"X-Forwarded-For": SPOOFED})
        assert response.status_code == 200
        audit = proxy.log_dir / "audit.jsonl"
        deadline = time.monotonic() + 60
        while not (audit.exists() and audit.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        record = json.loads(audit.read_text().splitlines()[0])
        # uvicorn alone would trust 127.0.0.1; the proxy trusts nobody unless told.
        assert record["client"] == LOOPBACK
    finally:
        proxy.stop()
