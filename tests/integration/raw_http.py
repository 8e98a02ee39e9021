"""HTTP/1.1 over a raw socket, for requests httpx would normalise or refuse to send
(dot segments, encoded slashes, NUL bytes, absolute-form targets, oversized heads).

    answer = raw_request(proxy, b"GET /../etc/passwd HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    assert answer.status == 404
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from harness import ProxyProcess


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def raw_request(proxy: ProxyProcess, request: bytes, timeout: float = 30.0) -> RawAnswer:
    """Send ``request`` as it is on a new connection; read the answer until the
    server closes or the announced length has arrived."""
    url = urlsplit(proxy.url)
    assert url.hostname and url.port
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as plain:
        sock: socket.socket = plain
        if url.scheme == "https":
            assert proxy.cert is not None
            sock = proxy.cert.ssl_context().wrap_socket(plain, server_hostname=url.hostname)
        try:
            # The server may answer and close before it has read everything.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(request)
            return _read_answer(sock)
        finally:
            sock.close()


def _read_answer(sock: socket.socket) -> RawAnswer:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = _recv(sock)
        if not chunk:
            raise AssertionError(f"connection closed before a complete answer head: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "-1"))
    while length < 0 or len(body) < length:
        chunk = _recv(sock)
        if not chunk:
            break
        body += chunk
    return RawAnswer(int(status_line.split(" ", 2)[1]), headers, body)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except (ConnectionResetError, ssl.SSLEOFError):
        return b""
