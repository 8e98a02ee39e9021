"""Child processes for the integration tests: started in their own process group,
output in a log file, stopped with SIGTERM then SIGKILL, never left behind.

    process = ManagedProcess("sleeper", ["sleep", "60"], log_path=tmp / "log", cwd=tmp)
    process.start()
    wait_ready(process, lambda: True, timeout=10)
    process.stop()
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

T = TypeVar("T")

# Variables that would leak the developer's shell into a server under test: an HTTP
# proxy would route loopback calls elsewhere, MODEL_PROXY_* would override the flags.
_SCRUBBED_PREFIXES = ("MODEL_PROXY_", "ZHIVA_")
_SCRUBBED_NAMES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


class HarnessError(RuntimeError):
    """A server under test could not be started; the message carries its output."""


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_SCRUBBED_PREFIXES) and key.lower() not in _SCRUBBED_NAMES
    }
    env.update(extra or {})
    return env


def http_client(**kwargs: Any) -> httpx.Client:
    """An httpx client that ignores proxy variables from the environment."""
    kwargs.setdefault("timeout", httpx.Timeout(30.0))
    return httpx.Client(trust_env=False, **kwargs)


_LIVE: set[ManagedProcess] = set()


class ManagedProcess:
    """A child process in its own process group, with its output in ``log_path``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        cwd: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.env = child_env(env)
        self._popen: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name!r} pid={self.pid} log={self.log_path}>"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _LIVE.add(self)

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def returncode(self) -> int | None:
        """None while running (or never started), else the exit code."""
        return self._popen.poll() if self._popen else None

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the group, wait, then SIGKILL whatever is left of it."""
        popen, self._popen = self._popen, None
        _LIVE.discard(self)
        if popen is None:
            return
        if popen.poll() is None:
            _signal_group(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(popen.pid, signal.SIGKILL)
                popen.wait(timeout)
        # Grandchildren may outlive a leader that exited on its own.
        _signal_group(popen.pid, signal.SIGKILL)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def live_processes() -> list[ManagedProcess]:
    return sorted(_LIVE, key=lambda process: process.name)


@atexit.register
def _stop_all() -> None:
    # Last resort for an interrupted session; fixtures normally stop everything first.
    for process in list(_LIVE):
        process.stop(timeout=2.0)


def wait_ready(process: ManagedProcess, probe: Callable[[], bool], timeout: float) -> None:
    """Poll ``probe`` until it is true; stop the process and raise if it never gets there."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        code = process.returncode()
        if code is not None:
            output = process.log_text()
            process.stop()
            raise HarnessError(f"{process.name} exited with code {code} at start:\n{output}")
        try:
            if probe():
                return
        except (httpx.HTTPError, OSError) as exc:
            last_error = exc
        time.sleep(0.1)
    output = process.log_text()
    process.stop()
    raise HarnessError(
        f"{process.name} was not ready after {timeout:.0f} s"
        f" (last probe error: {last_error!r}):\n{output}"
    )


def wait_until(
    what: str, found: Callable[[], T], *, timeout: float = 120.0, every: float = 0.2
) -> T:
    """Poll ``found`` until it returns something true, and return that; fail naming
    ``what`` after ``timeout`` seconds (a bound for a loaded machine, never an expected
    duration).

        (job,) = wait_until("a finished job", lambda: finished_jobs(client))
    """
    deadline = time.monotonic() + timeout
    while True:
        value = found()
        if value:
            return value
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s"
        time.sleep(every)


def start_on_free_port(
    make: Callable[[int], ManagedProcess], probe: Callable[[int], bool], timeout: float
) -> tuple[ManagedProcess, int]:
    """Start a server on a free port; pick another if someone took it in between."""
    for attempt in range(3):
        port = free_port()
        process = make(port)
        process.start()
        try:
            wait_ready(process, functools.partial(probe, port), timeout)
        except HarnessError as exc:
            if attempt < 2 and "already in use" in str(exc).lower():
                continue
            raise
        return process, port
    raise AssertionError("unreachable")
