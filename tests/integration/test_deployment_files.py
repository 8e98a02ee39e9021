"""The systemd unit and the Docker compose file of docs/deployment.md, checked with the
tools that read them where this machine has them (systemd-analyze, docker compose),
and against what the Dockerfile, the entrypoint and ``model-proxy serve`` expect."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import model_proxy_argv

from model_proxy.access.loader import ACCESS_FILE
from model_proxy.cli.commands import build_parser

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "model-proxy.service"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
SHIPPED_BINARY = "/opt/model-proxy/bin/model-proxy"


def unit_settings() -> dict[str, list[str]]:
    """``Key=value`` lines of the unit, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", UNIT.read_text())
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def serve_args(argv: list[str]) -> Any:
    assert argv[1] == "serve"
    return build_parser().parse_args(argv[1:])


def test_the_systemd_unit_runs_serve_with_its_directories() -> None:
    settings = unit_settings()
    argv = shlex.split(settings["ExecStart"][0])
    assert argv[0] == SHIPPED_BINARY
    args = serve_args(argv)
    # The directories systemd creates and hands to the service user are the ones used.
    assert args.data_dir == f"/var/lib/{settings['StateDirectory'][0]}"
    assert args.log_dir == f"/var/log/{settings['LogsDirectory'][0]}"
    assert settings["User"] == ["model-proxy"] and settings["ProtectSystem"] == ["strict"]
    assert int(settings["LimitNOFILE"][0]) >= 65536
    # Longer than serve's --shutdown-grace, so that systemd does not kill running requests.
    assert int(settings["TimeoutStopSec"][0]) > int(args.shutdown_grace)


@pytest.fixture
def installed_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's model-proxy (verify wants it)."""
    binary = model_proxy_argv()[0]
    if not Path(binary).is_file():
        pytest.skip("model-proxy is not installed as a script in this environment")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(SHIPPED_BINARY, binary))
    return unit


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_systemd_analyze_verifies_the_unit_without_a_warning(installed_unit: Path) -> None:
    done = systemd_analyze("verify", str(installed_unit))
    assert done.returncode == 0, done.stderr
    # An unknown or misspelt key is only a warning, and would drop a hardening line.
    assert done.stderr.strip() == "", done.stderr


def test_the_unit_is_hardened(installed_unit: Path) -> None:
    # systemd's own rating: 1.4 on a 0 (locked down) to 10 (unprotected) scale
    # with systemd 252; above 2.0 a protection was lost.
    done = systemd_analyze("security", "--offline=yes", "--threshold=20", str(installed_unit))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr


# --- Docker compose --------------------------------------------------------------------


def compose_service() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    service: dict[str, Any] = document["services"]["model-proxy"]
    service["_volumes"] = document.get("volumes") or {}
    return service


def mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every volume entry in long form, by target."""
    found: dict[str, dict[str, Any]] = {}
    for entry in service["volumes"]:
        if isinstance(entry, str):
            source, target, *mode = entry.split(":")
            kind = "bind" if source.startswith((".", "/")) else "volume"
            entry = {"type": kind, "source": source, "target": target,
                     "read_only": mode == ["ro"]}  # fmt: skip
        found[entry["target"]] = entry
    return found


def entrypoint_serve_args() -> Any:
    line = next(line for line in ENTRYPOINT.read_text().splitlines() if "model-proxy serve" in line)
    words = shlex.split(line.removeprefix("set -- ").replace('"$@"', ""))
    return serve_args(words)


def test_compose_mounts_every_file_the_proxy_reads_in_the_container() -> None:
    service = compose_service()
    by_target = mounts(service)
    args = entrypoint_serve_args()
    app = Path(args.config_dir)
    workdirs = re.findall(r"^WORKDIR (\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    workdir = Path(workdirs[-1])  # where serve runs: relative --cert/--key start there
    expected_files = [
        app / "servers.json",
        app / "models.json",
        app / ACCESS_FILE,  # found there when --access-config is not given
        # --cert/--key relative to where serve runs; without them, next to the configs.
        workdir / args.cert if args.cert else app / "zhiva.crt",
        workdir / args.key if args.key else app / "zhiva.key",
    ]
    for path in expected_files:
        mount = by_target.get(str(path))
        assert mount is not None, f"{COMPOSE.name} does not mount {path}"
        assert mount["type"] == "bind" and mount["read_only"], mount
    # A missing access.json must stop compose, not become an empty folder that the
    # proxy would refuse, nor be left out so that client authentication stays off.
    assert by_target[str(app / ACCESS_FILE)]["bind"]["create_host_path"] is False
    data, log = by_target[args.data_dir], by_target[args.log_dir]
    assert data["type"] == "volume" and not data["read_only"]
    assert data["source"] in service["_volumes"]
    assert log["type"] == "bind" and not log["read_only"]
    # The Dockerfile declares both as volumes, and the entrypoint checks what it mounts.
    declared = re.search(r"^VOLUME \[(.*)\]$", DOCKERFILE.read_text(), re.MULTILINE)
    assert declared is not None
    assert {args.data_dir, args.log_dir} <= set(re.findall(r'"([^"]+)"', declared.group(1)))
    for path in expected_files:
        assert str(path) in ENTRYPOINT.read_text(), f"the entrypoint does not check {path}"


def test_compose_ports_and_environment_match_the_image_and_the_cli() -> None:
    service = compose_service()
    exposed = re.findall(r"^EXPOSE (\d+)$", DOCKERFILE.read_text(), re.MULTILINE)
    container_ports = [int(str(mapping).rsplit(":", 1)[1]) for mapping in service["ports"]]
    args = entrypoint_serve_args()
    assert container_ports == [int(port) for port in exposed] == [int(args.port)]
    flags = {"MODEL_PROXY_" + dest.upper() for dest in vars(build_parser().parse_args(["serve"]))}
    for variable in (entry.split("=", 1)[0] for entry in service.get("environment", [])):
        assert variable in flags | {"ZHIVA_SHOW_STATUS_PAGE"}, variable
    assert service["stop_grace_period"].endswith("s")
    assert int(service["stop_grace_period"][:-1]) > int(args.shutdown_grace)


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    probe = subprocess.run(
        [docker or "docker", "compose", "version"], capture_output=True, text=True, check=False
    ) if docker else None  # fmt: skip
    if probe is None or probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    folder = tmp_path / "deployment"
    folder.mkdir()
    shutil.copy(COMPOSE, folder / COMPOSE.name)
    for name in ("servers.json", "models.json", "access.json", "zhiva.crt", "zhiva.key"):
        (folder / name).write_text("{}")
    done = subprocess.run(
        [docker or "docker", "compose", "config", "--quiet"],
        cwd=folder, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
