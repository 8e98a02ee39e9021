"""The command line as a new user meets it (issue 16, items 6, 10 and 11): misspelt
fields, warnings next to errors, passwords in check-config, where the certificate is
looked for, a taken port, the 404s that say what exists."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from harness import (
    LOOPBACK,
    ProxyFactory,
    TlsCert,
    child_env,
    model_proxy_argv,
    new_uid,
)
from processes import ManagedProcess, start_on_free_port

from model_proxy.config.enums import Task


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*model_proxy_argv(), *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_configs(folder: Path, servers: object, models: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "servers.json").write_text(json.dumps(servers))
    (folder / "models.json").write_text(json.dumps(models))
    return folder


def serve_args(config_dir: Path, port: int, *extra: str) -> list[str]:
    return [
        "serve", "--config-dir", str(config_dir), "--host", LOOPBACK, "--port", str(port),
        "--log-dir", str(config_dir / "log"), "--data-dir", str(config_dir / "data"), *extra,
    ]  # fmt: skip


# --- check-config ----------------------------------------------------------------------


def test_check_config_masks_passwords_in_urls(tmp_path: Path) -> None:
    write_configs(
        tmp_path,
        {new_uid(): {"uri": "https://proxy:Pacs-Pw-91c2@pacs.example/dicom-web"}},
        {
            new_uid(): {
                "uri": "https://svc:Model-Pw-5e7a@models.example/seg",
                "task": "segmentation",
                "supports": ["/studies/series"],
            }
        },
    )
    done = run_cli("check-config", "--config-dir", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "https://proxy:***@pacs.example/dicom-web" in done.stdout
    assert "https://svc:***@models.example/seg" in done.stdout
    assert "Pacs-Pw-91c2" not in done.stdout + done.stderr
    assert "Model-Pw-5e7a" not in done.stdout + done.stderr


def test_a_misspelt_field_fails_check_config_with_did_you_mean(tmp_path: Path) -> None:
    model_id = new_uid()
    write_configs(
        tmp_path,
        {new_uid(): {"uri": "http://127.0.0.1:9/dicom-web", "statusUrl": "http://x"}},
        {
            model_id: {
                "uri": "http://127.0.0.1:9/predict",
                "task": "prediction",
                "supports": ["/studies"],
                "dataFilters": [{"dataKey": "series-one", "title": "One"}],
                "notes": "ward 3",
            }
        },
    )
    done = run_cli("check-config", "--config-dir", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2, done.stdout
    assert "Traceback" not in done.stderr
    assert 'unknown field "statusUrl"; did you mean "statusUri"?' in done.stderr
    assert 'unknown field "dataFilters"; did you mean "dataFilter"?' in done.stderr
    # The warnings are printed with the errors.
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and "models.json" in warned[0] and '"notes" ignored' in warned[0]
    assert str(tmp_path.resolve()) in done.stderr  # the folder, absolute
    assert "configuration is valid" not in done.stdout


# --- serve: certificate, port ----------------------------------------------------------


def test_the_default_certificate_is_found_next_to_the_config_files(
    tmp_path: Path, tls_cert: TlsCert
) -> None:
    config_dir = write_configs(tmp_path / "config", {}, {})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Not there yet: the error names the absolute path it looked at.
    done = run_cli(*serve_args(Path("config"), 1), cwd=tmp_path)
    assert done.returncode == 2
    assert f"{config_dir.resolve()}/zhiva.crt not found" in done.stderr
    assert "gen-cert" in done.stderr and "Traceback" not in done.stderr
    shutil.copy(tls_cert.cert, config_dir / "zhiva.crt")
    shutil.copy(tls_cert.key, config_dir / "zhiva.key")

    # Started from another folder, without --cert/--key: the pair in the config dir.
    def make(port: int) -> ManagedProcess:
        argv = [*model_proxy_argv(), *serve_args(config_dir, port)]
        return ManagedProcess("model-proxy", argv, log_path=tmp_path / "proxy.log", cwd=elsewhere)

    def answers(port: int) -> bool:
        with httpx.Client(verify=tls_cert.ssl_context(), trust_env=False, timeout=5) as client:
            return client.get(f"https://{LOOPBACK}:{port}/health").status_code == 200

    process, _port = start_on_free_port(make, answers, 60)
    process.stop()


def test_a_taken_port_is_one_clear_line_and_exit_code_2(tmp_path: Path) -> None:
    config_dir = write_configs(tmp_path, {}, {})
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(*serve_args(config_dir, port, "--no-tls"), cwd=tmp_path)
    assert done.returncode == 2
    errors = done.stderr.strip().splitlines()
    assert errors == [
        f"model-proxy: cannot listen on {LOOPBACK}:{port}: Address already in use;"
        " another process uses it (stop it, or pick another port with --port)"
    ]
    assert "Application startup complete" not in done.stdout + done.stderr
    assert "errno" not in done.stdout + done.stderr.lower()


# --- 404s that say what exists ---------------------------------------------------------


def test_unknown_paths_list_the_route_families(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy({}, {})
    with proxy.client() as client:
        response = client.get("/segmentation/x/studies/1.2")
    assert response.status_code == 404
    body = response.json()
    assert body["code"] == "not_found" and body["message"].startswith("Not found")
    for family in Task:
        assert f"/{family.route_family}/" in body["message"]
    assert "/status" in body["message"] and "/health" in body["message"]


@pytest.mark.parametrize("accept", ["application/json", "text/html"])
def test_status_when_off_names_the_variable(start_proxy: ProxyFactory, accept: str) -> None:
    proxy = start_proxy({}, {})
    with proxy.client() as client:
        response = client.get("/status", headers={"Accept": accept})
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert "ZHIVA_SHOW_STATUS_PAGE=true" in response.json()["message"]
