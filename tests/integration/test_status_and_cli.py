"""/status, upstream TLS verification, and the command line as an operator uses it."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from faults import closed_port_url, hanging_server, tls_terminator
from harness import (
    ExampleModel,
    OrthancServer,
    ProxyFactory,
    TlsCert,
    child_env,
    model_entry,
    model_proxy_argv,
    new_uid,
    server_entry,
)

from model_proxy.sample_data import SampleStudy

ALL_LEVELS = ["/studies", "/studies/series", "/studies/series/instances"]


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*model_proxy_argv(), *args],
        cwd=cwd,
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- /status ---------------------------------------------------------------------------


@pytest.fixture
def status_configs(
    orthanc: OrthancServer, orthanc_basic_auth: OrthancServer, example_model: ExampleModel
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    ids = {name: new_uid() for name in ("orthanc", "basic", "down", "model", "model-down", "bare")}
    servers = {
        ids["orthanc"]: server_entry(orthanc),
        ids["basic"]: server_entry(orthanc_basic_auth, isDefault=False),
        ids["down"]: {"uri": f"{closed_port_url()}/dicom-web"},
    }
    models = {
        # statusUri is the model's root, which redirects to /docs: followed.
        ids["model"]: model_entry(example_model, "/segmentation", "segmentation", ALL_LEVELS),
        ids["model-down"]: {
            "uri": f"{closed_port_url()}/predict",
            "task": "prediction",
            "supports": ["/studies"],
            "statusUri": f"{closed_port_url()}/",
        },
        # No statusUri: a GET of the POST-only inference URL answers 405, so it is up.
        ids["bare"]: {
            "uri": f"{example_model.url}/annotation",
            "task": "annotation",
            "supports": ["/studies/series"],
        },
    }
    return servers, models, ids


def test_status_is_404_unless_enabled(
    start_proxy: ProxyFactory, status_configs: tuple[dict[str, Any], dict[str, Any], dict[str, str]]
) -> None:
    servers, models, _ = status_configs
    proxy = start_proxy(servers, models, env={"ZHIVA_SHOW_STATUS_PAGE": "false"})
    with proxy.client() as client:
        response = client.get("/status", headers={"Accept": "application/json"})
    assert response.status_code == 404
    message = response.json()["message"]
    assert message.startswith("Not found") and "ZHIVA_SHOW_STATUS_PAGE=true" in message


def test_status_json_and_html(
    start_proxy: ProxyFactory, status_configs: tuple[dict[str, Any], dict[str, Any], dict[str, str]]
) -> None:
    servers, models, ids = status_configs
    proxy = start_proxy(servers, models, env={"ZHIVA_SHOW_STATUS_PAGE": "true"})
    with proxy.client() as client:
        report = client.get("/status", headers={"Accept": "application/json"}).json()
        page = client.get("/status", headers={"Accept": "text/html"})
    # jobs: the queue's counts, and the prefetch watcher (docs/jobs.md), present with
    # the result cache on; without a rules.json the watcher says it is off.
    assert set(report) == {"servers", "models", "process", "capacity", "cache", "jobs", "watcher"}
    assert report["watcher"]["on"] is False
    assert report["jobs"]["queued"] == report["jobs"]["running"] == 0
    assert report["process"]["asyncioTasks"] > 0
    assert set(report["servers"]) == set(servers)
    assert set(report["models"]) == set(models)
    assert report["servers"][ids["orthanc"]]["ok"] is True
    assert report["servers"][ids["basic"]]["ok"] is True  # probed with its basic auth
    down = report["servers"][ids["down"]]
    assert down["ok"] is False and "unreachable" in down["error"]
    assert report["models"][ids["model"]]["ok"] is True
    assert report["models"][ids["model"]]["httpStatus"] == 200  # after the redirect
    assert report["models"][ids["model-down"]]["ok"] is False
    assert report["models"][ids["bare"]]["ok"] is True
    for entry in [*report["servers"].values(), *report["models"].values()]:
        assert isinstance(entry["ok"], bool)
        assert entry["latencyMs"] >= 0
        # A failing probe is no inference failure: the breakers stay closed.
        assert entry["breaker"] == {"state": "closed", "failures": 0}
    assert "pass" not in json.dumps(report)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert ids["down"] in page.text and "down" in page.text and "up" in page.text


def test_status_shows_a_wrong_password_as_failing(
    start_proxy: ProxyFactory, orthanc_basic_auth: OrthancServer
) -> None:
    server_id = new_uid()
    servers = {server_id: server_entry(orthanc_basic_auth, password="not-the-password")}
    proxy = start_proxy(servers, {}, env={"ZHIVA_SHOW_STATUS_PAGE": "true"})
    with proxy.client() as client:
        report = client.get("/status", headers={"Accept": "application/json"}).json()
    entry = report["servers"][server_id]
    assert entry["ok"] is False and entry["httpStatus"] == 401
    assert "not-the-password" not in json.dumps(report)
    assert "not-the-password" not in proxy.log_text()


# --- upstream TLS: a PACS over HTTPS with a self-signed certificate ----------------------


@pytest.fixture(scope="module")
def pacs_over_tls(orthanc: OrthancServer, tls_cert: TlsCert) -> Iterator[str]:
    """The DICOMweb root of the shared Orthanc, reached over HTTPS with a self-signed
    certificate (the situation of the original's example PACS)."""
    with tls_terminator(orthanc.url, tls_cert.cert, tls_cert.key) as url:
        yield f"{url}/dicom-web"


@pytest.mark.parametrize(("tls_verify", "expected"), [("cert", 200), (False, 200), (None, 502)])
def test_pacs_tls_verification_is_configurable(
    start_proxy: ProxyFactory,
    pacs_over_tls: str,
    example_model: ExampleModel,
    sample_study: SampleStudy,
    tls_cert: TlsCert,
    tls_verify: str | bool | None,
    expected: int,
) -> None:
    entry: dict[str, Any] = {"uri": pacs_over_tls}
    if tls_verify == "cert":
        entry["tlsVerify"] = str(tls_cert.cert)
    elif tls_verify is not None:
        entry["tlsVerify"] = tls_verify
    model_id = new_uid()
    proxy = start_proxy(
        {new_uid(): entry},
        {model_id: model_entry(example_model, "/prediction", "prediction", ALL_LEVELS)},
    )
    series = sample_study.series[1]
    path = f"/predictions/{model_id}/studies/{sample_study.study_uid}/series/{series.series_uid}"
    with proxy.client() as client:
        response = client.get(path)
    assert response.status_code == expected, response.text
    if expected == 502:
        assert "TLS certificate verification failed" in response.json()["message"]


# --- the command line ------------------------------------------------------------------


def test_check_config_reports_what_it_found(tmp_path: Path, orthanc: OrthancServer) -> None:
    server_id, model_id = new_uid(), new_uid()
    (tmp_path / "servers.json").write_text(
        json.dumps({server_id: server_entry(orthanc, name="Main PACS")})
    )
    (tmp_path / "models.json").write_text(
        json.dumps(
            {model_id: {"uri": "http://127.0.0.1:9/seg", "task": "segmentation",
                        "supports": ["/studies/series"], "extra": 1, "name": "Lungs"}}
        )
    )  # fmt: skip
    done = run_cli("check-config", "--config-dir", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f'{server_id} "Main PACS" (default): ' in done.stdout
    assert f'{model_id} "Lungs": segmentation' in done.stdout
    assert "extra" in done.stdout  # the unknown field is warned about
    assert "configuration is valid" in done.stdout


def test_invalid_config_is_refused_by_check_config_and_serve(
    tmp_path: Path, tls_cert: TlsCert
) -> None:
    server_a, server_b = new_uid(), new_uid()
    (tmp_path / "servers.json").write_text(
        json.dumps(
            {
                server_a: {"uri": "http://127.0.0.1:9/dicom-web", "isDefault": True},
                server_b: {"uri": "http://127.0.0.1:9/other", "isDefault": True},
                "not-a-uuid": {"uri": "http://127.0.0.1:9/x"},
            }
        )
    )
    (tmp_path / "models.json").write_text(
        json.dumps({new_uid(): {"uri": "http://127.0.0.1:9/m", "task": "classify", "supports": []}})
    )
    for args in (
        ["check-config", "--config-dir", str(tmp_path)],
        ["serve", "--config-dir", str(tmp_path), "--port", "1", "--host", "127.0.0.1",
         "--cert", str(tls_cert.cert), "--key", str(tls_cert.key),
         "--log-dir", str(tmp_path / "log"), "--data-dir", str(tmp_path / "data")],
    ):  # fmt: skip
        done = run_cli(*args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        for fragment in ("servers.json", "not-a-uuid", "isDefault", "models.json", "classify"):
            assert fragment in done.stderr, (fragment, done.stderr)


def test_serve_without_a_certificate_names_gen_cert(tmp_path: Path) -> None:
    (tmp_path / "servers.json").write_text("{}")
    (tmp_path / "models.json").write_text("{}")
    done = run_cli("serve", "--port", "1", cwd=tmp_path)
    assert done.returncode == 2
    assert "zhiva.crt" in done.stderr and "model-proxy gen-cert" in done.stderr


def test_flags_come_from_the_environment(tmp_path: Path) -> None:
    done = run_cli("gen-cert", cwd=tmp_path, env={"MODEL_PROXY_OUT_DIR": str(tmp_path / "certs")})
    assert done.returncode == 0, done.stderr
    cert, key = tmp_path / "certs" / "zhiva.crt", tmp_path / "certs" / "zhiva.key"
    assert cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert os.stat(key).st_mode & 0o077 == 0  # the private key is readable by its owner only


def test_gen_cert_is_valid_for_localhost_and_loopback(tmp_path: Path, tls_cert: TlsCert) -> None:
    from cryptography import x509

    certificate = x509.load_pem_x509_certificate(tls_cert.cert.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert certificate.subject.rfc4514_string() == "CN=localhost"


def test_plain_http_with_no_tls(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy({}, {}, tls=False)
    assert proxy.url.startswith("http://")
    with httpx.Client(trust_env=False) as client:
        assert client.get(f"{proxy.url}/health").status_code == 200


def test_status_does_not_wait_for_hanging_upstreams(start_proxy: ProxyFactory) -> None:
    with hanging_server() as hanging:
        server_id, model_id = new_uid(), new_uid()
        proxy = start_proxy(
            {server_id: {"uri": f"{hanging}/dicom-web"}},
            {model_id: {"uri": f"{hanging}/seg", "task": "segmentation",
                        "supports": ["/studies"], "statusUri": f"{hanging}/"}},
            env={"ZHIVA_SHOW_STATUS_PAGE": "true"},
            extra_args=["--probe-timeout", "1"],
        )  # fmt: skip
        with proxy.client(timeout=httpx.Timeout(8.0)) as client:
            report = client.get("/status", headers={"Accept": "application/json"}).json()
    for entry in (report["servers"][server_id], report["models"][model_id]):
        assert entry["ok"] is False
        assert "timed out" in entry["error"]
