"""Several replicas of the proxy sharing one real Redis, behind a real nginx that takes
them in turn (docs/replicas.md), for the tests of what replicas share:

    replicas = ReplicaSet.start(start_proxy, tmp_path, redis, servers, models, count=3)
    with replicas.balanced() as client:   # through nginx, round-robin
        client.get(path)

Every replica has its own config and data folders (copies of the same servers.json and
models.json), and the same --redis, password file, key file and namespace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import LOOPBACK, ProxyFactory, ProxyProcess, TlsCert, http_client, start_proxy
from nginx_server import NGINX_SOURCE_ADDRESS, NginxServer, start_nginx
from redis_server import RedisServer

REDIS_PASSWORD = "redis-pw-for-the-replica-tests"
NAMESPACE = "replica-test"
STATUS_ON = {"ZHIVA_SHOW_STATUS_PAGE": "true"}


def write_secrets(folder: Path) -> tuple[Path, Path]:
    """(Redis password file, token key file), both private."""
    folder.mkdir(parents=True, exist_ok=True)
    password, key = folder / "redis-password", folder / "token-key"
    password.write_text(REDIS_PASSWORD + "\n")
    key.write_text("a-long-random-secret-for-the-token-encryption-0123456789\n")
    for path in (password, key):
        path.chmod(0o600)
    return password, key


@dataclass
class ReplicaSet:
    replicas: list[ProxyProcess]
    nginx: NginxServer
    cert: TlsCert
    args: list[str]

    @classmethod
    def start(
        cls,
        start_proxy: ProxyFactory,
        workdir: Path,
        redis: RedisServer,
        servers: Mapping[str, Any],
        models: Mapping[str, Any],
        *,
        cert: TlsCert,
        count: int = 3,
    ) -> ReplicaSet:
        """``count`` replicas started at the same moment, then nginx in front of them."""
        password, key = write_secrets(workdir / "secrets")
        args = [
            "--redis", redis.url,
            "--redis-password-file", str(password),
            "--redis-key-file", str(key),
            "--redis-namespace", NAMESPACE,
            # A refused renewal is not answered from memory: the tests follow each step.
            "--pacs-auth-failure-memory", "0",
        ]  # fmt: skip

        def start_one(index: int) -> ProxyProcess:
            return start_proxy(
                servers,
                models,
                env=STATUS_ON,
                tls=False,  # nginx terminates TLS
                config_dir=workdir / f"replica-{index}",
                extra_args=args,
            )

        with ThreadPoolExecutor(count) as pool:
            replicas = list(pool.map(start_one, range(count)))
        upstreams = [replica.url.removeprefix("http://") for replica in replicas]
        nginx = start_nginx(workdir / "nginx", upstream=upstreams, cert=cert)
        return cls(replicas, nginx, cert, args)

    def start_another(
        self, start_proxy: ProxyFactory, workdir: Path, servers: Mapping[str, Any] | None = None
    ) -> ProxyProcess:
        """One more replica with the same settings, not behind nginx (reached directly)."""
        config_dir = self.replicas[0].config_dir
        return start_proxy(
            servers,
            None,
            env=STATUS_ON,
            tls=False,
            config_dir=_copy_configs(config_dir, workdir),
            extra_args=self.args,
        )

    def balanced(self) -> httpx.Client:
        """A client of nginx, which hands each request to the next replica."""
        return http_client(
            base_url=self.nginx.url, verify=self.cert.ssl_context(), timeout=httpx.Timeout(120.0)
        )

    def get_concurrently(self, path: str, count: int) -> list[httpx.Response]:
        """``count`` GETs of ``path`` through nginx, all at once."""

        async def run() -> list[httpx.Response]:
            async with httpx.AsyncClient(
                base_url=self.nginx.url,
                verify=self.cert.ssl_context(),
                trust_env=False,
                limits=httpx.Limits(max_connections=count),
                timeout=httpx.Timeout(120.0),
            ) as client:
                return await asyncio.gather(*(client.get(path) for _ in range(count)))

        return asyncio.run(run())

    def served_by_each(self, path: str) -> list[int]:
        """How many requests for ``path`` each replica's log has a line for."""
        return [replica.process.log_text().count(f"path={path}") for replica in self.replicas]

    def stop(self) -> None:
        self.nginx.stop()


@contextmanager
def replicas_behind_nginx(
    workdirs: pytest.TempPathFactory,
    name: str,
    servers: Mapping[str, Any],
    models: Mapping[str, Any],
    *,
    extra_args: Sequence[str],
    cert: TlsCert,
    env: Mapping[str, str] | None = None,
    count: int = 3,
) -> Iterator[tuple[list[ProxyProcess], NginxServer]]:
    """``count`` replicas for a module's tests (plain HTTP, trusting nginx's forwarded
    headers, with ``extra_args``), one after the other, behind an nginx round-robin
    that terminates TLS with ``cert``; all stopped at the end."""
    args = ["--forwarded-allow-ips", NGINX_SOURCE_ADDRESS, *extra_args]
    replicas: list[ProxyProcess] = []
    try:
        for index in range(count):
            workdir = workdirs.mktemp(f"{name}-replica-{index}")
            replicas.append(
                start_proxy(workdir, servers, models, cert=None, env=env, extra_args=args)
            )
        nginx = start_nginx(
            workdirs.mktemp(f"{name}-nginx"),
            upstream=[proxy.url.removeprefix("http://") for proxy in replicas],
            cert=cert,
        )
        try:
            yield replicas, nginx
        finally:
            nginx.stop()
    finally:
        for proxy in replicas:
            proxy.stop()


def _copy_configs(source: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in ("servers.json", "models.json"):
        (target / name).write_text((source / name).read_text())
    return target


def assert_statuses(responses: Sequence[httpx.Response], status: int) -> None:
    wrong = [r for r in responses if r.status_code != status]
    assert not wrong, f"{len(wrong)} of {len(responses)}: {wrong[0].status_code} {wrong[0].text}"


__all__ = ["LOOPBACK", "ReplicaSet", "assert_statuses", "replicas_behind_nginx", "write_secrets"]
