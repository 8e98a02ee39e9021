"""The request-head limits (web/http_limits.py) that the proxy's uvicorn protocol
enforces before the app sees a request: the app of this process served by uvicorn on a
loopback port, as ``model-proxy serve`` serves it, and raw bytes sent to it."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import uvicorn
from app_proxy import Deployment, Proxy

from model_proxy.web.connection_guard import ConnectionGuard
from model_proxy.web.http_limits import BoundedHttpToolsProtocol, guarded_protocol

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def served(
    proxy: Proxy, protocol: type[BoundedHttpToolsProtocol] = BoundedHttpToolsProtocol
) -> AsyncIterator[int]:
    """uvicorn on this event loop with the proxy's protocol; the lifespan is already
    running (app_proxy.py), so uvicorn leaves it alone. Yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(proxy.app, lifespan="off", log_config=None, http=protocol)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), task
            await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


async def exchange(port: int, request: bytes) -> tuple[int, dict[str, str]]:
    """Send ``request``, read the answer to the end: its status and JSON body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length")
        )
        body = json.loads(await reader.readexactly(length))
        return int(lines[0].split()[1]), body
    finally:
        writer.close()


def get(target: str, *headers: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: proxy", *headers, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_oversized_heads_and_non_http_bytes(deployment: Deployment, tmp_path: Path) -> None:
    async with deployment.proxy(tmp_path) as proxy, served(proxy) as port:
        answers = await asyncio.gather(
            exchange(port, get("/health")),
            exchange(port, get("/health?_=" + "x" * 9000)),
            exchange(port, get("/health", "X-Big: " + "y" * 9000)),
            exchange(port, get("/health", *(f"X-{n}: v" for n in range(150)))),
            exchange(port, b"\x16\x03\x01 not http at all\r\n\r\n"),
        )
    (ok, health), *refused = answers
    assert ok == 200 and health["status"] == "ok"
    assert [(status, body["code"]) for status, body in refused] == [
        (414, "uri_too_long"),
        (431, "headers_too_large"),
        (431, "headers_too_large"),
        (400, "invalid_http"),
    ]
    assert all(set(body) == {"message", "code"} for _, body in refused)


async def test_a_head_not_complete_in_time_is_answered_408_and_closed(
    deployment: Deployment, tmp_path: Path
) -> None:
    protocol = guarded_protocol(ConnectionGuard(head_timeout=0.5))
    async with deployment.proxy(tmp_path) as proxy, served(proxy, protocol) as port:
        # Part of a head, then nothing: the 408 names what happened, then the close.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: pro")
        answer = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        head, _, raw_body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ")
        assert json.loads(raw_body)["code"] == "request_head_timeout"
        # Not a byte: closed without an answer.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 30) == b""
        writer.close()
        # A whole head in time is served.
        status, body = await exchange(port, get("/health"))
        assert (status, body["status"]) == (200, "ok")
