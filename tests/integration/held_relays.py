"""Relays that hold a conversation still until the test lets it go: a stalled model
answer (``Stall`` / ``stalling_relay``, for cancel and restart tests of jobs) and
held POSTs (``HeldPosts`` / ``held_posts``, for a job's storing phase). The relays
that inject plain faults are in faults.py, the socket plumbing both use in
relay_sockets.py."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from harness import LOOPBACK
from relay_sockets import Exchange, listening, port_of, pump


class Stall:
    """A fault: the real server's answer passes for ``response_bytes``, then the relay
    holds the connection, sending nothing, until ``release()``; then the rest passes.
    ``client_closed`` is set when the client hangs up while held (it stopped reading).

        stall = Stall(2_000_000)
        relay.plan(stall)
        ...  # the client now waits in the middle of the answer
        stall.release()
    """

    def __init__(self, response_bytes: int) -> None:
        self.response_bytes = response_bytes
        self.holding = threading.Event()
        self.client_closed = threading.Event()
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def __call__(self, exchange: Exchange) -> None:
        client = exchange.client
        with socket.create_connection((LOOPBACK, exchange.target_port)) as upstream:
            upstream.sendall(exchange.head + exchange.rest)
            sent = 0
            while sent < self.response_bytes:
                chunk = upstream.recv(min(1 << 16, self.response_bytes - sent))
                if not chunk:
                    return
                client.sendall(chunk)
                sent += len(chunk)
            self.holding.set()
            client.settimeout(0.1)
            while not self._released.is_set():
                try:
                    if not client.recv(1 << 16):
                        self.client_closed.set()
                        return
                except TimeoutError:
                    continue
                except OSError:
                    self.client_closed.set()
                    return
            client.settimeout(30)
            pump(upstream, client)


class StallingRelay:
    """A relay in front of a real DICOMweb server that applies ``stall`` to the first
    WADO-RS retrieval (the request that accepts multipart) and relays everything else.

        with stalling_relay(orthanc.url, Stall(2_000_000)) as relay:
            ...  # a servers.json entry with uri f"{relay.url}/dicom-web"
    """

    def __init__(self, target_url: str, stall: Stall) -> None:
        self.target_port = port_of(target_url)
        self.url = ""
        self.stall = stall
        self._pending: Stall | None = stall
        self._lock = threading.Lock()

    def handle(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(30)
            try:
                exchange = Exchange.accept(connection, self.target_port)
                with self._lock:
                    retrieval = b"multipart/related" in exchange.head.lower()
                    stall = self._pending if retrieval else None
                    if stall is not None:
                        self._pending = None
                if stall is not None:
                    stall(exchange)
                else:
                    exchange.relay()
            except OSError:
                return


@contextmanager
def stalling_relay(target_url: str, stall: Stall) -> Iterator[StallingRelay]:
    relay_server = StallingRelay(target_url, stall)
    with listening(relay_server.handle) as url:
        relay_server.url = url
        try:
            yield relay_server
        finally:
            stall.release()


class HeldPosts:
    """A relay in front of a real server that holds each POST (a STOW-RS) after its
    request head, before passing it on, until ``release()``; other requests pass at
    once. ``holding`` is set when a POST is held.

        with held_posts(orthanc.url) as relay:
            ...  # a servers.json entry with uri f"{relay.url}/dicom-web"
    """

    def __init__(self, target_url: str) -> None:
        self.target_port = port_of(target_url)
        self.url = ""
        self.holding = threading.Event()
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def handle(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(30)
            try:
                exchange = Exchange.accept(connection, self.target_port)
                if exchange.head.startswith(b"POST "):
                    self.holding.set()
                    self._released.wait()
                exchange.relay()
            except OSError:
                return


@contextmanager
def held_posts(target_url: str) -> Iterator[HeldPosts]:
    relay_server = HeldPosts(target_url)
    with listening(relay_server.handle) as url:
        relay_server.url = url
        try:
            yield relay_server
        finally:
            relay_server.release()
