"""Hardening (issue 16, items 5-7): private file modes, no Host-built redirects, one
Host, security headers, results not kept by browsers, TLS 1.2 without CBC, and no
credential echoed. Real Orthanc, example model and proxy over TLS on loopback."""

from __future__ import annotations

import socket
import ssl
import stat
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from guarded_deployment import Guarded
from harness import ExampleModel, OrthancServer, ProxyFactory, model_entry, new_uid, server_entry
from raw_http import raw_request

from model_proxy.sample_data import SampleStudy

SERIES_LEVEL = ["/studies/series"]


def series_path(model_id: str, study: SampleStudy) -> str:
    return (
        f"/segmentations/{model_id}/studies/{study.study_uid}/series/{study.series[0].series_uid}"
    )


def cached_results(data_dir: Path) -> list[Path]:
    folder = data_dir / "result-cache"
    return [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []


# --- item 5: what the proxy writes is for its own user only ----------------------------


def test_files_the_proxy_writes_are_owner_only(guarded: Guarded) -> None:
    response = guarded.get(
        series_path(guarded.models["seg"], guarded.study), headers=guarded.with_key("viewer")
    )
    assert response.status_code == 200, response.text
    proxy = guarded.proxy
    # The result is stored once the response is over, the audit line by a writer
    # thread: wait for the files, not for a time.
    deadline = time.monotonic() + 30
    while not (cached_results(proxy.data_dir) and (proxy.log_dir / "audit.jsonl").is_file()):
        assert time.monotonic() < deadline, "no cached result or no audit file"
        time.sleep(0.05)
    assert (proxy.log_dir / "model-proxy.log").is_file()
    written = [proxy.log_dir, proxy.data_dir, *proxy.log_dir.rglob("*"), *proxy.data_dir.rglob("*")]
    modes = {path: stat.S_IMODE(path.stat().st_mode) for path in written}
    loose = {
        str(path): oct(mode)
        for path, mode in modes.items()
        if mode != (0o700 if path.is_dir() else 0o600)
    }
    assert not loose, loose
    assert any(path.parent.name == "result-cache" for path in modes)


# --- item 6: no redirect built from Host, one Host only, no credential echoed -----------


def test_a_trailing_slash_redirect_never_names_the_callers_host(guarded: Guarded) -> None:
    with guarded.proxy.client(follow_redirects=False) as client:
        response = client.get("/status/?x=1", headers={"Host": "evil.example"})
    assert response.status_code == 307
    assert response.headers["location"] == "/status?x=1"
    # //evil.example/ would make a protocol-relative Location: never redirected.
    answer = raw_request(guarded.proxy, b"GET //evil.example/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.status == 404


def test_two_host_headers_are_refused(guarded: Guarded) -> None:
    answer = raw_request(
        guarded.proxy,
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n",
    )
    assert answer.status == 400
    assert answer.json()["code"] == "invalid_http"
    assert "Host" in answer.json()["message"]
    one = raw_request(guarded.proxy, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert one.status == 200


def test_a_malformed_authorization_value_is_not_echoed(guarded: Guarded) -> None:
    key = guarded.keys["viewer"]
    path = series_path(guarded.models["seg"], guarded.study)
    for value in (key, f"{key[:16]} {key[16:]}", f"Tok3n{key}"):
        response = guarded.get(path, headers={"Authorization": value})
        assert response.status_code == 401
        assert response.json()["code"] == "unsupported_credentials"
        assert "Bearer" in response.json()["message"]
        for fragment in (key[:8], key[8:16], key[-8:]):
            assert fragment not in response.text
    known = guarded.get(path, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert "'basic'" in known.json()["message"]  # a known scheme is named
    log = guarded.proxy.log_text()
    assert key[:8] not in log and key[8:16] not in log


# --- item 7: headers, caching of results, TLS suites -----------------------------------


def test_security_headers_over_tls(guarded: Guarded) -> None:
    health = guarded.get("/health")
    assert health.headers["x-content-type-options"] == "nosniff"
    assert health.headers["strict-transport-security"].startswith("max-age=")
    assert "content-security-policy" not in health.headers  # JSON, not a page
    missing = guarded.get("/no-such-thing")
    assert missing.headers["x-content-type-options"] == "nosniff"
    page = guarded.get("/status", headers={**guarded.with_key("viewer"), "Accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"


def test_no_hsts_without_tls(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy({}, {}, tls=False)
    with proxy.client() as client:
        response = client.get("/health")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "strict-transport-security" not in response.headers


@pytest.fixture
def configs(
    orthanc: OrthancServer, example_model: ExampleModel, sample_study: SampleStudy
) -> tuple[dict[str, Any], dict[str, Any], str]:
    model_id = new_uid()
    models = {model_id: model_entry(example_model, "/segmentation", "segmentation", SERIES_LEVEL)}
    return {new_uid(): server_entry(orthanc)}, models, model_id


def test_results_are_no_store_unless_revalidation_is_asked_for(
    start_proxy: ProxyFactory,
    configs: tuple[dict[str, Any], dict[str, Any], str],
    sample_study: SampleStudy,
) -> None:
    servers, models, model_id = configs
    path = series_path(model_id, sample_study)
    default = start_proxy(servers, models)
    with default.client() as client:
        first = client.get(path)
    assert first.status_code == 200, first.text
    assert first.headers["cache-control"] == "no-store"
    revalidating = start_proxy(servers, models, extra_args=["--browser-revalidation"])
    with revalidating.client() as client:
        result = client.get(path)
        etag = result.headers["etag"]
        assert result.headers["cache-control"] == "private, no-cache"
        assert client.get(path, headers={"If-None-Match": etag}).status_code == 304


def _handshake(url: str, cafile: Path, ciphers: str) -> str:
    """The suite a TLS 1.2 client offering only ``ciphers`` agrees with the proxy."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    context = ssl.create_default_context(cafile=str(cafile))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    with (
        socket.create_connection((parts.hostname, parts.port), timeout=30) as plain,
        context.wrap_socket(plain, server_hostname=parts.hostname) as tls,
    ):
        suite = tls.cipher()
        assert suite is not None
        return suite[0]


def test_tls12_offers_no_cbc_suites(guarded: Guarded) -> None:
    proxy = guarded.proxy
    assert proxy.cert is not None
    cbc = "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:ECDHE-RSA-AES128-SHA256:AES128-SHA"
    with pytest.raises(ssl.SSLError):
        _handshake(proxy.url, proxy.cert.cert, cbc)
    assert "GCM" in _handshake(proxy.url, proxy.cert.cert, "ECDHE-RSA-AES128-GCM-SHA256")
    # A client that offers both gets an AEAD suite.
    assert "GCM" in _handshake(proxy.url, proxy.cert.cert, f"{cbc}:ECDHE+AESGCM")
    with httpx.Client(verify=proxy.cert.ssl_context(), trust_env=False) as client:
        assert client.get(f"{proxy.url}/health").status_code == 200


def test_plain_http_on_the_tls_port_is_told_to_use_https(guarded: Guarded) -> None:
    https = urlsplit(guarded.proxy.url)
    plain_url = f"http://{https.hostname}:{https.port}/health"
    for _ in range(2):  # the second is answered too, and not logged again
        with httpx.Client(trust_env=False, timeout=30) as client:
            response = client.get(plain_url)
        assert response.status_code == 400
        assert response.json()["code"] == "https_required"
        assert f"https://<host>:{https.port}/" in response.json()["message"]
    # TLS still works on the same port afterwards.
    assert guarded.get("/health").status_code == 200
    log = guarded.proxy.log_text()
    assert log.count(f"plain HTTP request on the TLS port {https.port}") >= 1
