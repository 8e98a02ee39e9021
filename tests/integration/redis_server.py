"""A real Redis (the ``redis-server`` system package) on loopback, for the tests of the
state replicas share (docs/replicas.md):

    with start_redis(workdir, password="s3cret") as redis:
        proxy = start_proxy(..., extra_args=["--redis", redis.url])

Nothing is saved to disk; ``stop()`` and ``start()`` let a test take it away and bring
it back on the same port.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from processes import LOOPBACK, START_TIMEOUT, ManagedProcess, start_on_free_port, wait_ready


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        pytest.fail("redis-server is not installed (Debian/Ubuntu package: redis-server)")
    return found


@dataclass
class RedisServer:
    port: int
    password: str | None
    process: ManagedProcess

    @property
    def url(self) -> str:
        """The URL without the password (give it with --redis-password-file)."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, password=self.password, socket_timeout=10)

    def stop(self) -> None:
        self.process.stop()

    def start(self) -> None:
        """Start it again on the same port, empty (nothing is persisted)."""
        self.process.start()
        wait_ready(self.process, lambda: _answers(self.port, self.password), START_TIMEOUT)


@contextmanager
def start_redis(workdir: Path, *, password: str | None = None) -> Iterator[RedisServer]:
    workdir.mkdir(parents=True, exist_ok=True)
    binary = redis_binary()

    def make(port: int) -> ManagedProcess:
        argv = [
            binary,
            "--port",
            str(port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ]
        if password is not None:
            argv += ["--requirepass", password]
        return ManagedProcess("redis", argv, log_path=workdir / "redis.log", cwd=workdir)

    process, port = start_on_free_port(make, lambda port: _answers(port, password), START_TIMEOUT)
    try:
        yield RedisServer(port, password, process)
    finally:
        process.stop()


def _answers(port: int, password: str | None) -> bool:
    try:
        with redis.Redis(host=LOOPBACK, port=port, password=password, socket_timeout=2) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False
