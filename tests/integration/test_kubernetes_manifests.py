"""deploy/kubernetes (docs/deployment.md, "Kubernetes"): the example overlay renders with
``kubectl kustomize``, validates with kubernetes-validate against the Kubernetes
versions the guide states, and says what the image and ``model-proxy serve`` expect:
flags serve accepts, ports, probes on the app's own routes, the files it reads, the
folders it writes, the user it runs as and the upstreams it must reach."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from harness import gen_cert
from starlette.routing import Route

from model_proxy.access.loader import ACCESS_FILE
from model_proxy.app import create_app
from model_proxy.cli.commands import build_parser
from model_proxy.cli.options import (
    load_checked_access,
    load_checked_config,
    parse_memory_budget,
    parse_size,
)
from model_proxy.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
EXAMPLE = KUBERNETES / "overlays" / "example"
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
# The oldest Kubernetes the guide supports, and the newest kubernetes-validate knows here.
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
# What the overlay's README-style header asks the user to create; secrets, never committed.
SITE_SECRETS = ("zhiva.crt", "zhiva.key", "redis-password", "redis-token-key")
GiB = 1024**3
MiB = 1024**2


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is not installed (1.27 or later: kustomize v5 is built in)")
    return found


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """``kubectl kustomize overlays/example`` on a copy with the site's secret files made
    as the overlay says (gen-cert, a random Redis password)."""
    copy = tmp_path_factory.mktemp("k8s") / "kubernetes"
    shutil.copytree(KUBERNETES, copy)
    overlay = copy / "overlays" / "example"
    assert not [name for name in SITE_SECRETS if (EXAMPLE / name).exists()], "secrets committed"
    gen_cert(overlay)
    (overlay / "redis-password").write_text("correct-horse-battery-staple\n")
    (overlay / "redis-token-key").write_text("0123456789abcdef" * 4 + "\n")
    done = subprocess.run(
        [kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def only(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [doc for doc in manifests if doc["kind"] == kind]
    return found


def pod_spec(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = only(manifests, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    [found] = pod_spec(manifests)["containers"]
    assert isinstance(found, dict)
    return found


def serve_args(manifests: list[dict[str, Any]]) -> Any:
    """The entrypoint's ``model-proxy serve ...`` with the container's args after it."""
    line = next(line for line in ENTRYPOINT.read_text().splitlines() if "model-proxy serve" in line)
    words = shlex.split(line.removeprefix("set -- ").replace('"$@"', ""))
    assert words[:2] == ["model-proxy", "serve"]
    return build_parser().parse_args([*words[1:], *container(manifests)["args"]])


def mounts(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mount path -> the pod volume mounted there."""
    volumes = {volume["name"]: volume for volume in pod_spec(manifests)["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in container(manifests)["volumeMounts"]}


def projected_paths(volume: dict[str, Any]) -> set[str]:
    if "secret" in volume:
        return {item["path"] for item in volume["secret"]["items"]}
    sources = volume["projected"]["sources"]
    return {
        item["path"]
        for source in sources
        for item in (source.get("configMap") or source.get("secret"))["items"]
    }


def named_ports(manifests: list[dict[str, Any]]) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container(manifests)["ports"]}


def quantity(value: str) -> int:
    """Bytes of a Kubernetes quantity like 1Gi, 512Mi."""
    found = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", value)
    assert found is not None, value
    unit = found.group(2)
    power = "KMGT".index(unit[0]) + 1 if unit else 0
    size: int = int(found.group(1)) * 1024**power
    return size


def image_uid() -> int:
    found = re.search(r"useradd .*--uid (\d+)", DOCKERFILE.read_text())
    assert found is not None
    return int(found.group(1))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_example_overlay_validates_against_kubernetes(
    manifests: list[dict[str, Any]], version: str
) -> None:
    kinds = sorted(doc["kind"] for doc in manifests)
    assert kinds == [
        "ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget",
        "Secret", "Secret", "Secret", "Service", "ServiceAccount",
    ]  # fmt: skip
    for doc in manifests:
        # strict: an unknown or misspelt field is an error, not silently dropped.
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_container_runs_serve_with_flags_it_accepts(manifests: list[dict[str, Any]]) -> None:
    args = serve_args(manifests)
    by_path = mounts(manifests)
    # The config folder holds every file serve reads there (cert and key next to them).
    assert args.cert is None and args.key is None and args.access_config is None
    config = by_path[args.config_dir]
    assert projected_paths(config) == {
        "servers.json", "models.json", ACCESS_FILE, "zhiva.crt", "zhiva.key",
    }  # fmt: skip
    # What it writes are volumes of the pod's own (the root file system is read-only).
    for folder in (args.data_dir, args.log_dir, "/tmp"):
        assert "emptyDir" in by_path[folder], folder
    # Every MODEL_PROXY_* variable is a serve flag; the Redis password and the token key
    # are files of one mounted Secret.
    flags = {"MODEL_PROXY_" + dest.upper() for dest in vars(build_parser().parse_args(["serve"]))}
    env = {entry["name"]: entry["value"] for entry in container(manifests)["env"]}
    assert set(env) <= flags, set(env) - flags
    password = Path(env["MODEL_PROXY_REDIS_PASSWORD_FILE"])
    token_key = Path(env["MODEL_PROXY_REDIS_KEY_FILE"])
    assert password.parent == token_key.parent
    assert projected_paths(by_path[str(password.parent)]) == {password.name, token_key.name}
    assert urlsplit(env["MODEL_PROXY_REDIS"]).scheme in ("redis", "rediss")


def test_ports_match_the_flags_the_image_and_the_service(
    manifests: list[dict[str, Any]],
) -> None:
    args = serve_args(manifests)
    ports = named_ports(manifests)
    assert ports == {"https": int(args.port), "metrics": int(args.metrics_port)}
    assert not args.no_tls  # the probes and the Service speak HTTPS to it
    exposed = re.findall(r"^EXPOSE (\d+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert int(args.port) in [int(port) for port in exposed]
    service = only(manifests, "Service")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "https": "https",
        "metrics": "metrics",
    }
    annotations = only(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert annotations["prometheus.io/scheme"] == "http"  # --metrics-port is plain HTTP
    policy = only(manifests, "NetworkPolicy")["spec"]
    ingress_ports = {port["port"] for rule in policy["ingress"] for port in rule["ports"]}
    assert ingress_ports == set(ports)


def test_the_probes_ask_the_apps_own_health_routes(
    manifests: list[dict[str, Any]], tmp_path: Path
) -> None:
    settings = Settings(config_dir=EXAMPLE, data_dir=tmp_path, log_dir=tmp_path, audit_log=None)
    app = create_app(settings, load_checked_config(EXAMPLE))
    served = {route.path for route in app.routes if isinstance(route, Route)}
    probes = {
        kind: container(manifests)[kind]["httpGet"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["livenessProbe"]["path"] == "/livez"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for probe in probes.values():
        assert probe["path"] in served
        assert probe["port"] == "https" and probe["scheme"] == "HTTPS"
    args = serve_args(manifests)
    # Kubernetes waits longer than --shutdown-grace before it kills a draining pod.
    grace = only(manifests, "Deployment")["spec"]["template"]["spec"]
    assert grace["terminationGracePeriodSeconds"] > float(args.shutdown_grace)


def test_resources_are_sized_from_the_memory_budget_and_the_cache(
    manifests: list[dict[str, Any]],
) -> None:
    args = serve_args(manifests)
    resources = container(manifests)["resources"]
    budget = parse_memory_budget(args.memory_budget)
    # docs/deployment.md, "Sizing": the budget + 512 MiB for the process.
    assert quantity(resources["limits"]["memory"]) >= budget + 512 * MiB
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    data = mounts(manifests)[args.data_dir]["emptyDir"]
    cache = parse_size(args.cache_size, "cache-size")
    spool = parse_size(args.result_spool_size, "result-spool-size")
    assert quantity(data["sizeLimit"]) >= cache + spool + GiB
    emptydirs = sum(
        quantity(volume["emptyDir"]["sizeLimit"])
        for volume in pod_spec(manifests)["volumes"]
        if "emptyDir" in volume
    )
    assert quantity(resources["limits"]["ephemeral-storage"]) >= emptydirs


def test_the_pod_runs_unprivileged_as_the_images_user(manifests: list[dict[str, Any]]) -> None:
    pod = pod_spec(manifests)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid()
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    hardened = container(manifests)["securityContext"]
    assert hardened == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def test_replicas_the_disruption_budget_and_the_selectors_agree(
    manifests: list[dict[str, Any]],
) -> None:
    deployment = only(manifests, "Deployment")["spec"]
    labels = deployment["template"]["metadata"]["labels"]
    assert deployment["replicas"] >= 2
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    budget = only(manifests, "PodDisruptionBudget")["spec"]
    assert 1 <= budget["minAvailable"] < deployment["replicas"]
    selectors = [
        deployment["selector"]["matchLabels"],
        budget["selector"]["matchLabels"],
        only(manifests, "Service")["spec"]["selector"],
        only(manifests, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector and selector.items() <= labels.items(), selector


def egress_ports(manifests: list[dict[str, Any]]) -> Iterator[tuple[int, str]]:
    for rule in only(manifests, "NetworkPolicy")["spec"]["egress"]:
        for port in rule["ports"]:
            yield port["port"], port["protocol"]


def test_the_network_policy_lets_the_proxy_reach_its_upstreams(
    manifests: list[dict[str, Any]],
) -> None:
    allowed = set(egress_ports(manifests))
    assert {(53, "UDP"), (53, "TCP")} <= allowed  # DNS
    env = {entry["name"]: entry["value"] for entry in container(manifests)["env"]}
    assert (urlsplit(env["MODEL_PROXY_REDIS"]).port or 6379, "TCP") in allowed
    # Every PACS and model of the example's config files, by port.
    for name in ("servers.json", "models.json"):
        for entry in json.loads((EXAMPLE / name).read_text()).values():
            url = urlsplit(entry["uri"])
            port = url.port or {"https": 443, "http": 80}[url.scheme]
            assert (port, "TCP") in allowed, entry["uri"]


def test_the_example_config_files_are_valid() -> None:
    # check-config's own loading: the overlay's files start a proxy as they are.
    config = load_checked_config(EXAMPLE)
    assert load_checked_access(EXAMPLE, None, config) is not None
