"""The harness itself: the servers the other integration tests stand on."""

from __future__ import annotations

import io
import json
import socket
import sys
import time
from pathlib import Path

import harness
import httpx
import pydicom
import pytest
from harness import (
    LOOPBACK,
    ExampleModel,
    HarnessError,
    ManagedProcess,
    OrthancServer,
    ProxyFactory,
    TlsCert,
    free_port,
    http_client,
    model_entry,
    new_uid,
    server_entry,
    start_orthanc,
    start_proxy,
    wait_ready,
)

from model_proxy.sample_data import SampleStudy

STUDY_INSTANCE_UID = "0020000D"
DICOM_MULTIPART = 'multipart/related; type="application/dicom"'


def study_uids(orthanc: OrthancServer) -> set[str]:
    with orthanc.client() as client:
        response = client.get("/dicom-web/studies", headers={"Accept": "application/dicom+json"})
    assert response.status_code == 200, response.text
    return {study[STUDY_INSTANCE_UID]["Value"][0] for study in response.json()}


def split_multipart(content_type: str, body: bytes) -> list[bytes]:
    """The bodies of a multipart/related answer (small and whole in memory: tests only)."""
    params = dict(part.strip().split("=", 1) for part in content_type.split(";")[1:] if "=" in part)
    boundary = params["boundary"].strip('"').encode()
    parts = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        _headers, _, payload = chunk.partition(b"\r\n\r\n")
        parts.append(payload.removesuffix(b"\r\n"))
    return parts


def port_is_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((LOOPBACK, port)) != 0


# --- Orthanc ---------------------------------------------------------------------------


def test_qido_lists_the_sample_study(
    orthanc: OrthancServer,
    orthanc_basic_auth: OrthancServer,
    sample_study: SampleStudy,
    second_study: SampleStudy,
) -> None:
    assert {sample_study.study_uid, second_study.study_uid} <= study_uids(orthanc)
    assert sample_study.study_uid in study_uids(orthanc_basic_auth)
    assert second_study.study_uid not in study_uids(orthanc_basic_auth)


def test_basic_auth_orthanc_wants_credentials(
    orthanc_basic_auth: OrthancServer, sample_study: SampleStudy
) -> None:
    url = f"{orthanc_basic_auth.dicomweb_url}/studies"
    with http_client() as client:
        assert client.get(url).status_code == 401
        assert client.get(url, auth=("user", "wrong")).status_code == 401
        assert client.get(url, auth=orthanc_basic_auth.auth).status_code == 200
    assert orthanc_basic_auth.auth == ("user", "pass")


@pytest.mark.parametrize("server", ["orthanc", "orthanc_basic_auth"])
def test_wado_rs_series_has_one_part_per_instance(
    server: str, request: pytest.FixtureRequest, sample_study: SampleStudy
) -> None:
    orthanc: OrthancServer = request.getfixturevalue(server)
    series = sample_study.series[0]
    path = f"/dicom-web/studies/{sample_study.study_uid}/series/{series.series_uid}"
    with orthanc.client() as client:
        response = client.get(path, headers={"Accept": DICOM_MULTIPART})
    assert response.status_code == 200
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related")
    parts = split_multipart(content_type, response.content)
    assert len(parts) == len(series.sop_uids)
    sop_uids = {pydicom.dcmread(io.BytesIO(part)).SOPInstanceUID for part in parts}
    assert sop_uids == set(series.sop_uids)


def test_orthanc_upload_and_delete_all(tmp_path: Path, sample_study: SampleStudy) -> None:
    own = start_orthanc(tmp_path / "own-orthanc")
    try:
        _, _, part10 = next(sample_study.iter_instances())
        instance_id = own.upload(part10)
        assert instance_id
        assert study_uids(own) == {sample_study.study_uid}
        own.delete_all()
        assert study_uids(own) == set()
    finally:
        own.stop()
    assert not own.process.running()


def test_missing_orthanc_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(harness, "ORTHANC_CANDIDATES", ("/nonexistent/Orthanc",))
    with pytest.raises(HarnessError, match=r"Run scripts/test\.sh"):
        harness.find_orthanc()


# --- processes -------------------------------------------------------------------------


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    # The child forks a grandchild that listens on a port; stopping must end both.
    port = free_port()
    script = (
        "import socket, subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', "
        f'\'import socket,time; s=socket.socket(); s.bind(("{LOOPBACK}", {port})); '
        f"s.listen(); time.sleep(120)'])\n"
        "time.sleep(120)\n"
    )
    process = ManagedProcess(
        "sleeper", [sys.executable, "-c", script], log_path=tmp_path / "log", cwd=tmp_path
    )
    process.start()
    wait_ready(process, lambda: not port_is_closed(port), timeout=10)
    process.stop(timeout=5)
    deadline = time.monotonic() + 5
    while not port_is_closed(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert port_is_closed(port)
    assert not process.running()


def test_start_failure_carries_the_output(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('no such config'); sys.exit(3)"]
    process = ManagedProcess("broken", argv, log_path=tmp_path / "log", cwd=tmp_path)
    process.start()
    with pytest.raises(HarnessError, match=r"(?s)broken exited with code 3.*no such config"):
        wait_ready(process, lambda: False, timeout=10)


def test_children_do_not_inherit_proxy_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_PROXY_PORT", "1")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    process = ManagedProcess(
        "env", [sys.executable, "-c", code], log_path=tmp_path / "log", cwd=tmp_path,
        env={"ZHIVA_SHOW_STATUS_PAGE": "true"},
    )  # fmt: skip
    process.start()
    deadline = time.monotonic() + 10
    while process.returncode() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    env = json.loads(process.log_text().splitlines()[-1])
    process.stop()
    assert "MODEL_PROXY_PORT" not in env
    assert "HTTPS_PROXY" not in env
    assert env["ZHIVA_SHOW_STATUS_PAGE"] == "true"


# --- the example model and the proxy ---------------------------------------------------


def test_example_model_answers_health(example_model: ExampleModel) -> None:
    with http_client() as client:
        assert client.get(f"{example_model.url}/health").status_code == 200


def test_tls_cert_is_for_localhost(tls_cert: TlsCert) -> None:
    assert tls_cert.cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" in tls_cert.key.read_text()
    tls_cert.ssl_context()  # loads: the file is a usable CA for the test clients


def test_proxy_starts_over_tls_and_stops(
    start_proxy: ProxyFactory, orthanc: OrthancServer, example_model: ExampleModel
) -> None:
    servers = {new_uid(): server_entry(orthanc)}
    models = {
        new_uid(): model_entry(example_model, "/segmentation", "segmentation", ["/studies/series"])
    }
    proxy = start_proxy(servers, models)
    assert proxy.url.startswith(f"https://{LOOPBACK}:")
    with proxy.client() as client:
        assert client.get("/health").status_code == 200
    # The certificate is self-signed: a client that does not trust it is refused.
    with http_client() as client, pytest.raises(httpx.ConnectError):
        client.get(f"{proxy.url}/health")
    assert json.loads((proxy.config_dir / "servers.json").read_text()) == servers
    port = int(proxy.url.rsplit(":", 1)[1])
    proxy.stop()
    assert port_is_closed(port)


def test_proxy_without_tls(
    start_proxy: ProxyFactory, orthanc: OrthancServer, example_model: ExampleModel
) -> None:
    models = {new_uid(): model_entry(example_model, "/annotation", "annotation", ["/studies"])}
    proxy = start_proxy({new_uid(): server_entry(orthanc)}, models, tls=False)
    assert proxy.url.startswith("http://")
    with proxy.client() as client:
        assert client.get("/health").status_code == 200


def test_proxy_start_failure_shows_its_output(tmp_path: Path, tls_cert: TlsCert) -> None:
    (tmp_path / "models.json").write_text("{ this is not json")
    with pytest.raises(HarnessError, match="exited with code") as failure:
        start_proxy(tmp_path, {}, None, cert=tls_cert)
    assert "models.json" in str(failure.value)
