"""Real servers on loopback for the integration tests: Orthanc, the example model, the proxy.

Every server is a ``processes.ManagedProcess``: its own process group, its output in a
log file that failing tests show. Ports come from binding port 0, so parallel runs do
not collide.

    orthanc = start_orthanc(tmp / "orthanc", users={"user": "pass"})
    proxy = start_proxy(tmp / "proxy", servers, models, cert=gen_cert(tmp / "tls"))
    with proxy.client() as client:
        client.get("/health")
    proxy.stop()
    orthanc.stop()
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
from processes import (
    LOOPBACK,
    START_TIMEOUT,
    HarnessError,
    ManagedProcess,
    child_env,
    free_port,
    http_client,
    live_processes,
    start_on_free_port,
    wait_ready,
    wait_until,
)

# The process helpers are part of this module's interface too.
__all__ = [
    "DICOMWEB_PLUGIN",
    "LOOPBACK",
    "ORTHANC_CANDIDATES",
    "START_TIMEOUT",
    "ExampleModel",
    "HarnessError",
    "ManagedProcess",
    "OrthancServer",
    "ProxyFactory",
    "ProxyProcess",
    "TlsCert",
    "child_env",
    "find_orthanc",
    "free_port",
    "gen_cert",
    "http_client",
    "jobs_of_study",
    "live_processes",
    "model_entry",
    "model_proxy_argv",
    "new_uid",
    "orthanc_config",
    "server_entry",
    "start_example_model",
    "start_on_free_port",
    "start_orthanc",
    "start_proxy",
    "wait_ready",
    "wait_until",
]

ORTHANC_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def new_uid() -> str:
    """A key for servers.json / models.json (both are keyed by UUID v4)."""
    return str(uuid.uuid4())


def model_proxy_argv() -> list[str]:
    """How to run the ``model-proxy`` command of the package under test."""
    script = Path(sys.executable).parent / "model-proxy"
    if script.exists():
        return [str(script)]
    found = shutil.which("model-proxy")
    if found:
        return [found]
    code = "import sys; from model_proxy.cli.commands import main; sys.exit(main())"
    return [sys.executable, "-c", code]


def find_orthanc() -> str:
    """The Orthanc binary, or a HarnessError telling how to install it."""
    binary = shutil.which("Orthanc") or next(
        (path for path in ORTHANC_CANDIDATES if os.access(path, os.X_OK)), None
    )
    if binary is None or not DICOMWEB_PLUGIN.exists():
        raise HarnessError(
            "Orthanc with its DICOMweb plugin is needed for the integration tests "
            f"(looked for Orthanc in PATH and {', '.join(ORTHANC_CANDIDATES)}, "
            f"and for {DICOMWEB_PLUGIN}). Run scripts/test.sh, which installs them, "
            "or `apt-get install orthanc orthanc-dicomweb`."
        )
    return binary


# --- Orthanc ---------------------------------------------------------------------------


@dataclass
class OrthancServer:
    """A running Orthanc with the DICOMweb plugin at ``{url}/dicom-web``."""

    url: str
    auth: tuple[str, str] | None
    process: ManagedProcess
    workdir: Path

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def client(self, **kwargs: Any) -> httpx.Client:
        # The harness's own calls (uploads) need not verify a test certificate.
        kwargs.setdefault("verify", not self.url.startswith("https://"))
        return http_client(base_url=self.url, auth=self.auth, **kwargs)

    def upload(self, part10: bytes) -> str:
        """Store one DICOM Part-10 file; returns Orthanc's instance ID."""
        return self.upload_many([part10])[0]

    def upload_many(self, files: Iterable[bytes]) -> list[str]:
        ids: list[str] = []
        with self.client() as client:
            for part10 in files:
                response = client.post(
                    "/instances", content=part10, headers={"Content-Type": "application/dicom"}
                )
                response.raise_for_status()
                ids.append(response.json()["ID"])
        return ids

    def delete_all(self) -> None:
        """Remove every study. Not for the session-wide Orthancs other tests share."""
        with self.client() as client:
            for study_id in client.get("/studies").raise_for_status().json():
                client.delete(f"/studies/{study_id}").raise_for_status()

    def log_text(self) -> str:
        return self.process.log_text()

    def stop(self) -> None:
        self.process.stop()


def orthanc_config(
    port: int, workdir: Path, users: Mapping[str, str] | None, ssl_pem: Path | None = None
) -> dict[str, Any]:
    # Orthanc 1.10 has no bind-address option: it listens on all interfaces, and
    # RemoteAccessAllowed=false makes it refuse every client that is not loopback.
    tls = {"SslEnabled": True, "SslCertificate": str(ssl_pem)} if ssl_pem else {}
    return tls | {
        "Name": workdir.name,
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": dict(users or {}),
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "SaveJobs": False,
        "HttpDescribeErrors": True,
    }


def start_orthanc(
    workdir: Path, *, users: Mapping[str, str] | None = None, ssl_pem: Path | None = None
) -> OrthancServer:
    """Start Orthanc with empty storage in ``workdir``; wait until ``/system`` answers.

    With ``ssl_pem`` (private key and certificate in one PEM file) it serves HTTPS.
    """
    scheme = "https" if ssl_pem else "http"
    binary = find_orthanc()
    workdir.mkdir(parents=True, exist_ok=True)
    auth = next(iter(users.items())) if users else None

    def make(port: int) -> ManagedProcess:
        config = workdir / "orthanc.json"
        config.write_text(json.dumps(orthanc_config(port, workdir, users, ssl_pem), indent=2))
        return ManagedProcess(
            f"orthanc {workdir.name}",
            [binary, str(config)],
            log_path=workdir / "orthanc.log",
            cwd=workdir,
        )

    def probe(port: int) -> bool:
        with http_client(auth=auth, timeout=2.0, verify=False) as client:
            return client.get(f"{scheme}://{LOOPBACK}:{port}/system").status_code == 200

    process, port = start_on_free_port(make, probe, START_TIMEOUT)
    return OrthancServer(f"{scheme}://{LOOPBACK}:{port}", auth, process, workdir)


# --- the example model -----------------------------------------------------------------


@dataclass
class ExampleModel:
    """``model-proxy example-model`` on loopback; ``url`` has no trailing slash."""

    url: str
    process: ManagedProcess

    def log_text(self) -> str:
        return self.process.log_text()

    def stop(self) -> None:
        self.process.stop()


def start_example_model(workdir: Path) -> ExampleModel:
    workdir.mkdir(parents=True, exist_ok=True)

    def make(port: int) -> ManagedProcess:
        argv = [*model_proxy_argv(), "example-model", "--host", LOOPBACK, "--port", str(port)]
        return ManagedProcess(
            "example model", argv, log_path=workdir / "example-model.log", cwd=workdir
        )

    def probe(port: int) -> bool:
        with http_client(timeout=2.0) as client:
            return client.get(f"http://{LOOPBACK}:{port}/health").status_code == 200

    process, port = start_on_free_port(make, probe, START_TIMEOUT)
    return ExampleModel(f"http://{LOOPBACK}:{port}", process)


# --- TLS and the proxy -----------------------------------------------------------------


@dataclass(frozen=True)
class TlsCert:
    cert: Path
    key: Path

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts exactly this self-signed certificate (httpx 0.28 wants a context)."""
        return ssl.create_default_context(cafile=str(self.cert))


def gen_cert(out_dir: Path) -> TlsCert:
    """``model-proxy gen-cert --out-dir DIR``; returns the zhiva.crt / zhiva.key paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = [*model_proxy_argv(), "gen-cert", "--out-dir", str(out_dir)]
    done = subprocess.run(
        argv, cwd=out_dir, env=child_env(), capture_output=True, text=True, timeout=60
    )
    cert = TlsCert(out_dir / "zhiva.crt", out_dir / "zhiva.key")
    if done.returncode != 0 or not (cert.cert.exists() and cert.key.exists()):
        raise HarnessError(
            f"`{' '.join(argv)}` exited with {done.returncode} and wrote no zhiva.crt/key:\n"
            f"{done.stdout}{done.stderr}"
        )
    return cert


@dataclass
class ProxyProcess:
    """A running ``model-proxy serve``; ``url`` is ``https://127.0.0.1:PORT`` (http without TLS)."""

    url: str
    config_dir: Path
    data_dir: Path
    log_dir: Path
    cert: TlsCert | None
    process: ManagedProcess
    argv: list[str] = field(repr=False)

    def _verify(self) -> ssl.SSLContext | bool:
        return self.cert.ssl_context() if self.cert else True

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", httpx.Timeout(120.0))
        return http_client(base_url=self.url, verify=self._verify(), **kwargs)

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("timeout", httpx.Timeout(120.0))
        return httpx.AsyncClient(
            base_url=self.url, verify=self._verify(), trust_env=False, **kwargs
        )

    def log_text(self) -> str:
        """The process output, then every file the proxy wrote into its log dir."""
        parts = [self.process.log_text()]
        for path in sorted(self.log_dir.rglob("*")):
            if path.is_file():
                parts.append(f"==== {path} ====\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    def stop(self) -> None:
        self.process.stop()

    def restart(self) -> None:
        """Stop and start again with the same port, config and data dir."""
        self.stop()
        self.process.start()
        wait_ready(self.process, lambda: _answers(self.url, self._verify()), START_TIMEOUT)


def _answers(url: str, verify: ssl.SSLContext | bool) -> bool:
    # Any HTTP answer means the listener is up and the TLS handshake worked.
    with http_client(verify=verify, timeout=2.0) as client:
        client.get(f"{url}/health")
    return True


def jobs_of_study(
    client: httpx.Client, study_uid: str, *, finished: bool = False
) -> list[dict[str, Any]]:
    """The jobs of ``study_uid`` that ``GET /jobs`` lists (up to 1,000 jobs); with
    ``finished``, only those that have ended (succeeded, failed or cancelled)."""
    answer = client.get("/jobs", params={"limit": 1000}, headers={"Accept": "application/json"})
    assert answer.status_code == 200, answer.text
    return [
        job
        for job in answer.json()["jobs"]
        if job["study"] == study_uid and not (finished and job["status"] in ("queued", "running"))
    ]


class ProxyFactory(Protocol):
    """The ``start_proxy`` fixture: writes the configs, starts the proxy, stops it later."""

    def __call__(
        self,
        servers: Mapping[str, Any] | None,
        models: Mapping[str, Any] | None,
        *,
        env: Mapping[str, str] | None = None,
        tls: bool = True,
        config_dir: Path | None = None,
        data_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        open_files: int | None = None,
    ) -> ProxyProcess: ...


def start_proxy(
    config_dir: Path,
    servers: Mapping[str, Any] | None,
    models: Mapping[str, Any] | None,
    *,
    cert: TlsCert | None,
    env: Mapping[str, str] | None = None,
    data_dir: Path | None = None,
    log_dir: Path | None = None,
    extra_args: Sequence[str] = (),
    open_files: int | None = None,
) -> ProxyProcess:
    """Write servers.json / models.json into ``config_dir`` (None: leave the file as it
    is) and run ``model-proxy serve`` there; raise HarnessError with its output if it
    does not come up. ``open_files`` sets both RLIMIT_NOFILE limits of the proxy (with
    util-linux's ``prlimit``, so the proxy cannot raise it)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir or config_dir / "data"
    log_dir = log_dir or config_dir / "log"
    for name, content in (("servers.json", servers), ("models.json", models)):
        if content is not None:
            (config_dir / name).write_text(json.dumps(content, indent=2))
    tls_args = ["--cert", str(cert.cert), "--key", str(cert.key)] if cert else ["--no-tls"]
    scheme = "https" if cert else "http"
    verify: ssl.SSLContext | bool = cert.ssl_context() if cert else True
    argvs: dict[int, list[str]] = {}
    limit = [] if open_files is None else ["prlimit", f"--nofile={open_files}:{open_files}", "--"]

    def make(port: int) -> ManagedProcess:
        argvs[port] = [
            *limit,
            *model_proxy_argv(),
            "serve",
            "--config-dir", str(config_dir),
            "--host", LOOPBACK,
            "--port", str(port),
            *tls_args,
            "--data-dir", str(data_dir),
            "--log-dir", str(log_dir),
            *extra_args,
        ]  # fmt: skip
        return ManagedProcess(
            "model-proxy", argvs[port], log_path=config_dir / "proxy.log", cwd=config_dir, env=env
        )

    process, port = start_on_free_port(
        make, lambda port: _answers(f"{scheme}://{LOOPBACK}:{port}", verify), START_TIMEOUT
    )
    return ProxyProcess(
        url=f"{scheme}://{LOOPBACK}:{port}",
        config_dir=config_dir,
        data_dir=data_dir,
        log_dir=log_dir,
        cert=cert,
        process=process,
        argv=argvs[port],
    )


# --- config entries --------------------------------------------------------------------


def server_entry(orthanc: OrthancServer, **fields: Any) -> dict[str, Any]:
    """A servers.json entry for ``orthanc``, with basicAuth when it has users."""
    entry: dict[str, Any] = {
        "uri": orthanc.dicomweb_url,
        "isDefault": True,
        "statusUri": f"{orthanc.dicomweb_url}/studies",
        "authType": "",
    }
    if orthanc.auth:
        entry.update(authType="basicAuth", login=orthanc.auth[0], password=orthanc.auth[1])
    entry.update(fields)
    return entry


def model_entry(
    model: ExampleModel, path: str, task: str, supports: Sequence[str], **fields: Any
) -> dict[str, Any]:
    """A models.json entry for an endpoint of the example model, e.g. ``/segmentation``."""
    entry: dict[str, Any] = {
        "uri": f"{model.url}{path}",
        "task": task,
        "supports": list(supports),
        "statusUri": model.url,
    }
    entry.update(fields)
    return entry
