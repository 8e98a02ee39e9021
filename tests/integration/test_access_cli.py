"""The operator's side of client access: gen-api-key, check-config with access.json
and with secret files others can read, and serve refusing a broken access.json."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

from harness import child_env, model_proxy_argv

SERVER = "b5208f48-f748-4339-9402-d1148dab571e"
MODEL = "d4e548ad-f365-4c34-918b-4e61a8b896f0"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*model_proxy_argv(), *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_configs(folder: Path, *, password: str | None = "Pacs-Secret") -> None:
    server: dict[str, object] = {"uri": "https://pacs.local/dicom-web"}
    if password:
        server.update(authType="basicAuth", login="proxy", password=password)
    (folder / "servers.json").write_text(json.dumps({SERVER: server}))
    model = {"uri": "http://m/seg", "task": "segmentation", "supports": ["/studies/series"]}
    (folder / "models.json").write_text(json.dumps({MODEL: model}))


def test_gen_api_key_prints_a_key_and_the_entry_that_accepts_it(tmp_path: Path) -> None:
    result = run_cli("gen-api-key", "--name", "radiology-viewer", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    key = re.search(r"(mpk_\S+)", result.stdout)
    assert key is not None
    entry = json.loads(result.stdout[result.stdout.index("{") :])
    digest = hashlib.sha256(key.group(1).encode()).hexdigest()
    assert entry == {"radiology-viewer": {"sha256": digest}}
    assert list(tmp_path.iterdir()) == []  # the key is stored nowhere


def test_check_config_reports_access_and_warns_about_readable_secrets(tmp_path: Path) -> None:
    write_configs(tmp_path)
    access = {"apiKeys": {"v": {"sha256": "0" * 64}}, "models": {MODEL: {"keys": ["v"]}}}
    (tmp_path / "access.json").write_text(json.dumps(access))
    for name in ("servers.json", "access.json"):
        (tmp_path / name).chmod(0o644)
    result = run_cli("check-config", "--config-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{tmp_path / 'access.json'}: 1 API keys; 1 model rules" in result.stdout
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, result.stdout
    assert "servers.json holds PACS passwords or tokens" in warnings[0]
    assert "mode 0644" in warnings[0] and "chmod 600" in warnings[0]
    assert "access.json holds client access rules" in warnings[1]
    assert "Pacs-Secret" not in result.stdout + result.stderr

    for name in ("servers.json", "access.json"):
        (tmp_path / name).chmod(0o600)
    quiet = run_cli("check-config", "--config-dir", str(tmp_path), cwd=tmp_path)
    assert "warning:" not in quiet.stdout, quiet.stdout


def test_check_config_without_secrets_or_access_file(tmp_path: Path) -> None:
    write_configs(tmp_path, password=None)
    (tmp_path / "servers.json").chmod(0o644)
    result = run_cli("check-config", "--config-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no access.json: client authentication is off" in result.stdout
    assert "warning:" not in result.stdout


def test_a_broken_access_file_stops_check_config_and_serve(tmp_path: Path) -> None:
    write_configs(tmp_path)
    access = {"apiKeys": {"v": {"sha256": "short"}}, "jwt": {"issuer": "i"}}
    explicit = tmp_path / "rules" / "access.json"
    explicit.parent.mkdir()
    explicit.write_text(json.dumps(access))
    for command in (["check-config"], ["serve", "--no-tls", "--port", "1"]):
        result = run_cli(
            *command, "--config-dir", str(tmp_path), "--access-config", str(explicit), cwd=tmp_path
        )
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.splitlines()
        assert lines[0] == f"model-proxy: invalid access rules in {explicit}:"
        assert any('field "apiKeys.v.sha256"' in line for line in lines)
        assert any('field "jwt.audience": missing' in line for line in lines)
        assert any('give exactly one of "jwksUri" and "publicKeyFile"' in line for line in lines)
        assert "Traceback" not in result.stderr


def test_a_missing_explicit_access_file_is_an_error(tmp_path: Path) -> None:
    write_configs(tmp_path)
    result = run_cli("check-config", "--access-config", str(tmp_path / "nope.json"), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{tmp_path / 'nope.json'}: file not found" in result.stderr
