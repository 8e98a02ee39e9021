"""An ASGI app served by uvicorn in a background thread of the test process, so that a
test can read the app's state (counters, issued tokens) directly.

    server = ThreadedServer(app, "token server", tls=None)  # a TlsCert: https
    server.start()            # binds a free loopback port, returns once it accepts
    httpx.get(f"{server.url}/health")
    server.stop()             # may be started again later, on the same port
"""

from __future__ import annotations

import socket
import threading

import uvicorn
from harness import LOOPBACK, START_TIMEOUT, HarnessError, TlsCert
from starlette.types import ASGIApp

STOP_TIMEOUT = 10.0


class ThreadedServer:
    """One uvicorn server on ``http://127.0.0.1:PORT`` (``https`` with ``tls``);
    ``start``/``stop`` repeatable."""

    def __init__(self, app: ASGIApp, name: str, *, tls: TlsCert | None = None) -> None:
        self.app = app
        self.name = name
        self.tls = tls
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if not self.port:
            raise HarnessError(f"{self.name} has not been started")
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Listen (on the previous port again after a ``stop``) and wait until served."""
        if self.running:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((LOOPBACK, self.port))
        except OSError as exc:
            listener.close()
            raise HarnessError(f"{self.name}: cannot listen on port {self.port}: {exc}") from exc
        self.port = listener.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            loop="asyncio",
            ws="none",
            lifespan="on",
            log_config=None,  # leave the test process's logging alone
            log_level="warning",
            access_log=False,
            backlog=256,
            timeout_graceful_shutdown=2,
            ssl_certfile=str(self.tls.cert) if self.tls else None,
            ssl_keyfile=str(self.tls.key) if self.tls else None,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=self._serve, args=(server, listener), name=self.name, daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()
        for _ in range(int(START_TIMEOUT / 0.01)):
            if server.started or not thread.is_alive():
                break
            thread.join(timeout=0.01)
        if not server.started:
            self.stop()
            raise HarnessError(f"{self.name} did not start on port {self.port}")

    @staticmethod
    def _serve(server: uvicorn.Server, listener: socket.socket) -> None:
        # uvicorn installs no signal handlers outside the main thread.
        with listener:
            server.run(sockets=[listener])

    def stop(self) -> None:
        """Stop accepting, close the connections, wait for the thread. Idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout=STOP_TIMEOUT)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=STOP_TIMEOUT)
        if thread.is_alive():
            raise HarnessError(f"{self.name} did not stop within {2 * STOP_TIMEOUT:.0f} s")
