"""Start-up security checks: CORS origins and secret files others can read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from model_proxy.access.posture import exposure_warnings, files_with_secrets, parse_cors_origins

S1 = "b5208f48-f748-4339-9402-d1148dab571e"
S2 = "63140137-a63d-4ad1-b489-3479bc43387c"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("viewer.local", "must look like"),
        ("https://viewer.local/app", "no path"),
        ("ftp://viewer.local", "must look like"),
        (" , ", "no CORS origin given"),
        ("*,https://a.local", '"*" allows every origin'),
    ],
)
def test_bad_cors_origins(value: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_cors_origins(value)
    assert problem in str(caught.value)


def test_cors_origins_are_deduplicated() -> None:
    assert parse_cors_origins("https://a.local,https://a.local/, http://b:3000") == (
        "https://a.local",
        "http://b:3000",
    )


def test_only_files_that_hold_secrets_are_checked(tmp_path: Path) -> None:
    servers = tmp_path / "servers.json"
    servers.write_text(json.dumps({S1: {"uri": "https://pacs/dicom", "password": ""}}))
    assert files_with_secrets(tmp_path) == []
    # Secrets given by reference: the referenced file is checked, an env variable is not.
    references = {
        S1: {"password": {"env": "PACS_PASSWORD"}, "authToken": {"file": "secrets/token"}},
        S2: {"clientSecret": {"file": "/run/secrets/client"}},
    }
    servers.write_text(json.dumps(references))
    assert files_with_secrets(tmp_path) == [
        (tmp_path / "secrets/token", "a PACS secret"),
        (Path("/run/secrets/client"), "a PACS secret"),
    ]
    servers.write_text(json.dumps({S1: {"login": "u", "password": "pw"}}))
    found = files_with_secrets(
        tmp_path, access_file=tmp_path / "access.json", tls_key=tmp_path / "k"
    )
    assert [(path.name, holds) for path, holds in found] == [
        ("servers.json", "PACS passwords or tokens"),
        ("access.json", "client access rules and API key digests"),
        ("k", "the TLS private key"),
    ]


def test_group_or_world_access_is_warned(tmp_path: Path) -> None:
    servers = tmp_path / "servers.json"
    servers.write_text("{}")
    files = [(servers, "PACS passwords or tokens"), (tmp_path / "missing.json", "x")]
    for mode in (0o644, 0o604, 0o660, 0o650):
        servers.chmod(mode)
        (warning,) = exposure_warnings(files)
        assert f"mode {mode:04o}" in warning and f"chmod 600 {servers}" in warning
    servers.chmod(0o600)
    assert exposure_warnings(files) == []


def test_read_access_for_the_proxys_own_group_is_not_warned(tmp_path: Path) -> None:
    # The systemd recipe (root:model-proxy 0640) and Kubernetes secret mounts
    # (fsGroup, 0440): the file's group is one the proxy runs with.
    servers = tmp_path / "servers.json"
    servers.write_text("{}")
    files = [(servers, "PACS passwords or tokens")]
    assert servers.stat().st_gid in {os.getgid(), *os.getgroups()}
    for mode in (0o640, 0o440):
        servers.chmod(mode)
        assert exposure_warnings(files) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root gives a file another group")
def test_read_access_for_another_group_is_warned(tmp_path: Path) -> None:
    servers = tmp_path / "servers.json"
    servers.write_text("{}")
    foreign = max({os.getgid(), *os.getgroups()}) + 4242
    os.chown(servers, -1, foreign)
    servers.chmod(0o640)
    (warning,) = exposure_warnings([(servers, "PACS passwords or tokens")])
    assert "mode 0640" in warning
