"""A real Prometheus server (the system package) on loopback, scraping the proxy:

    with start_prometheus(workdir, target="127.0.0.1:9102", key_file=key) as prometheus:
        prometheus.wait_for('up{job="model-proxy"}', 1)

It scrapes every 200 ms, so a test waits for a condition, never for a fixed time.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from processes import LOOPBACK, START_TIMEOUT, ManagedProcess, http_client, start_on_free_port

# Generous: the machine may be loaded; the loop ends as soon as the value is there.
QUERY_DEADLINE = 60.0


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.fail("prometheus is not installed (Debian/Ubuntu package: prometheus)")
    return found


@dataclass
class Prometheus:
    url: str
    process: ManagedProcess

    def query(self, expr: str) -> float | None:
        """The value of an instant query with one result (summed if several), or None."""
        with http_client(timeout=10.0) as client:
            answer = client.get(f"{self.url}/api/v1/query", params={"query": expr}).json()
        assert answer["status"] == "success", answer
        results = answer["data"]["result"]
        if not results:
            return None
        return sum(float(result["value"][1]) for result in results)

    def wait_for(self, expr: str, expected: float) -> None:
        """Poll until ``expr`` is ``expected``; fail with what it was and the log."""
        deadline = time.monotonic() + QUERY_DEADLINE
        found: float | None = None
        while time.monotonic() < deadline:
            try:
                found = self.query(expr)
            except httpx.HTTPError:
                found = None
            if found == expected:
                return
            time.sleep(0.2)
        targets = self._targets()
        pytest.fail(
            f"Prometheus: {expr} was {found}, expected {expected}; targets: {targets}\n"
            f"{self.process.tail()}"
        )

    def _targets(self) -> object:
        with http_client(timeout=10.0) as client:
            return client.get(f"{self.url}/api/v1/targets").json()["data"]["activeTargets"]


@contextmanager
def start_prometheus(workdir: Path, *, target: str, key_file: Path) -> Iterator[Prometheus]:
    """Prometheus scraping ``target``'s /metrics over plain HTTP with the scrape key in
    ``key_file`` (sent as ``Authorization: ApiKey <key>``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 200ms\n"
        "  scrape_timeout: 200ms\n"
        "scrape_configs:\n"
        "  - job_name: model-proxy\n"
        "    authorization:\n"
        "      type: ApiKey\n"
        f"      credentials_file: {key_file}\n"
        "    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    binary = prometheus_binary()

    def make(port: int) -> ManagedProcess:
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={LOOPBACK}:{port}",
        ]
        return ManagedProcess("prometheus", argv, log_path=workdir / "prometheus.log", cwd=workdir)

    def ready(port: int) -> bool:
        with http_client(timeout=2.0) as client:
            return client.get(f"http://{LOOPBACK}:{port}/-/ready").status_code == 200

    process, port = start_on_free_port(make, ready, START_TIMEOUT)
    try:
        yield Prometheus(f"http://{LOOPBACK}:{port}", process)
    finally:
        process.stop()
