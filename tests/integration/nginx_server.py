"""The real nginx (system package) in front of a proxy, with the repository's config.

``deploy/nginx/model-proxy.conf`` is used as shipped, with four lines rewritten for a
test: the listen port, the certificate pair and the proxy's address. nginx runs in
the foreground (``daemon off``) with its own prefix, pid file and temp paths, so
several runs never meet::

    nginx = start_nginx(tmp / "nginx", upstream="127.0.0.1:8123", cert=tls_cert)
    nginx.url  # https://127.0.0.1:PORT

Several upstreams (``upstream=["127.0.0.1:8123", "127.0.0.1:8124"]``) are the
replicas of one deployment, taken in turn (nginx's default round-robin).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import (
    LOOPBACK,
    START_TIMEOUT,
    HarnessError,
    ManagedProcess,
    TlsCert,
    http_client,
    start_on_free_port,
)

REPO_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "model-proxy.conf"
NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/bin/nginx")

# nginx reaches the proxy from this address, as a reverse proxy on another host would:
# the proxy can then tell nginx's connections from a direct client's on 127.0.0.1.
NGINX_SOURCE_ADDRESS = "127.0.0.2"


@dataclass
class NginxServer:
    url: str
    process: ManagedProcess
    prefix: Path

    def access_log(self) -> str:
        return (self.prefix / "access.log").read_text(errors="replace")

    def stop(self) -> None:
        self.process.stop()


def find_nginx() -> str:
    binary = shutil.which("nginx") or next(
        (path for path in NGINX_CANDIDATES if os.access(path, os.X_OK)), None
    )
    if binary is None:
        raise HarnessError(
            "nginx is needed for the reverse-proxy tests (looked in PATH and"
            f" {', '.join(NGINX_CANDIDATES)}): `apt-get install nginx`"
        )
    return binary


def site_config(port: int, upstream: str | Sequence[str], cert: TlsCert) -> str:
    """The repository's config, rewritten for this run; each line must be found once."""
    text = REPO_CONFIG.read_text()
    upstreams = [upstream] if isinstance(upstream, str) else list(upstream)
    servers = "\n    ".join(f"server {address};" for address in upstreams)
    for shipped, local in (
        ("listen 443 ssl;", f"listen {LOOPBACK}:{port} ssl;"),
        ("server 127.0.0.1:8002;", servers),
        ("/etc/nginx/tls/model-proxy.crt;", f"{cert.cert};"),
        ("/etc/nginx/tls/model-proxy.key;", f"{cert.key};"),
    ):
        if text.count(shipped) != 1:
            raise AssertionError(f"{REPO_CONFIG} no longer has exactly one {shipped!r}")
        text = text.replace(shipped, local)
    return text


def main_config(prefix: Path) -> str:
    # As root, nginx's workers would switch to "nobody", who cannot read the test's
    # private temp folders.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}daemon off;
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log stderr info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix / "access.log"};
{temp}
    proxy_bind {NGINX_SOURCE_ADDRESS};
    include {prefix / "model-proxy.conf"};
}}
"""


def start_nginx(prefix: Path, *, upstream: str | Sequence[str], cert: TlsCert) -> NginxServer:
    binary = find_nginx()
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "nginx.conf").write_text(main_config(prefix))

    def make(port: int) -> ManagedProcess:
        (prefix / "model-proxy.conf").write_text(site_config(port, upstream, cert))
        argv = [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", "stderr"]
        return ManagedProcess("nginx", argv, log_path=prefix / "nginx.log", cwd=prefix)

    def probe(port: int) -> bool:
        with http_client(verify=cert.ssl_context(), timeout=2.0) as client:
            return client.get(f"https://{LOOPBACK}:{port}/health").status_code == 200

    process, port = start_on_free_port(make, probe, START_TIMEOUT)
    return NginxServer(f"https://{LOOPBACK}:{port}", process, prefix)
