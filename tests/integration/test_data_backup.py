"""The backup recipe of docs/deployment.md, run as written: the data folder of a stopped
proxy is packed with the documented ``tar`` line (result cache left out), unpacked into
an empty folder, and a new proxy started on it still has its PACS tokens (no second
exchange of the single-use auth token) and its jobs."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import httpx
from auth_setup import AuthSetup, AuthSetupFactory
from harness import ProxyFactory
from token_gateway import Gateway
from token_server import TokenServer

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "deployment.md"
# The systemd paths of the recipe, replaced by the test's own folders.
SHIPPED_DATA_DIR = "/var/lib/model-proxy"
SHIPPED_BACKUP_DIR = "/root/backup"
JOB_DEADLINE = 120.0


def recipe_commands() -> tuple[str, str]:
    """The backup and the restore ``tar`` commands of the guide's backup section."""
    section = GUIDE.read_text().split("## Backups of the data folder", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [line for line in joined.splitlines() if line.startswith("tar ")]
    [backup] = [command for command in commands if " -czf " in command]
    [restore] = [command for command in commands if " -xzf " in command]
    return backup, restore


def run_recipe(command: str, data_dir: Path, backup_dir: Path) -> None:
    command = command.replace(SHIPPED_DATA_DIR, str(data_dir))
    command = command.replace(SHIPPED_BACKUP_DIR, str(backup_dir))
    done = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"{command}\n{done.stderr}"


def finished_job(proxy_client: httpx.Client, job_id: str) -> dict[str, object]:
    deadline = time.monotonic() + JOB_DEADLINE
    while True:
        job: dict[str, object] = proxy_client.get(f"/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def test_a_restored_backup_keeps_the_pacs_tokens_and_the_jobs(
    auth_setup: AuthSetupFactory,
    start_proxy: ProxyFactory,
    token_pacs: Gateway,
    token_server: TokenServer,
    tmp_path: Path,
) -> None:
    setup = auth_setup(token_pacs.server_entry("token"))
    with setup.proxy.client() as client:
        assert client.get(setup.instance_path).status_code == 200
        submitted = client.post(
            "/jobs",
            json={
                "model": setup.model_id,
                "study": setup.study.study_uid,
                "series": setup.study.series[0].series_uid,
            },
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        assert finished_job(client, job_id)["status"] == "succeeded"
    assert token_server.successes["exchange"] == 1
    setup.proxy.stop()

    backup_command, restore_command = recipe_commands()
    backups = tmp_path / "backup"
    backups.mkdir()
    run_recipe(backup_command, setup.proxy.data_dir, backups)
    restored = tmp_path / "restored-data"
    restored.mkdir(mode=0o700)
    [archive] = backups.iterdir()
    run_recipe(
        restore_command.replace("model-proxy-2026-12-05.tar.gz", archive.name), restored, backups
    )
    assert (restored / "tokens" / f"{setup.server_id}.json").is_file()
    assert not (restored / "result-cache").exists()  # left out: it is only a cache

    # A new proxy, the same config, the restored data folder.
    again = AuthSetup(
        start_proxy(None, None, config_dir=setup.proxy.config_dir, data_dir=restored),
        setup.server_id,
        setup.model_id,
        setup.study,
    )
    assert again.infer().status_code == 200
    assert token_server.calls["exchange"] == 1  # the stored tokens served: no new exchange
    with again.proxy.client() as client:
        job = client.get(f"/jobs/{job_id}")
        result = client.get(f"/jobs/{job_id}/result")
    assert job.status_code == 200 and job.json()["status"] == "succeeded"
    assert result.status_code == 410 and result.json()["code"] == "result_gone"


def test_without_the_backup_the_single_use_auth_token_is_gone(
    auth_setup: AuthSetupFactory,
    start_proxy: ProxyFactory,
    token_pacs: Gateway,
    token_server: TokenServer,
    tmp_path: Path,
) -> None:
    # Why the backup matters: the same config on an empty data folder cannot get in.
    setup = auth_setup(token_pacs.server_entry("token"))
    assert setup.infer().status_code == 200
    setup.proxy.stop()
    empty = tmp_path / "lost-data"
    fresh = start_proxy(None, None, config_dir=setup.proxy.config_dir, data_dir=empty)
    with fresh.client() as client:
        refused = client.get(setup.instance_path)
    assert refused.status_code == 502, refused.text
    assert refused.json()["code"] == "pacs_auth_failed"
    assert token_server.successes["exchange"] == 1
