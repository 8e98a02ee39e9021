"""A Model API whose answer is as large as its URL asks: ``POST /result?bytes=N``.

It reads the request body, then writes a valid JSON result of exactly N bytes in
1 MiB chunks (:func:`result_chunks`, so a test can hash what it should receive).
With ``hold`` set it stops after the first ``held_after`` bytes until the test
releases it: a test can then see bytes arrive before the model has finished.
Served by uvicorn in a thread of the test process::

    with large_result_model() as model:
        entry = {"uri": f"{model.url}/result?bytes=157286400", ...}
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import uvicorn
from harness import LOOPBACK
from starlette.types import Receive, Scope, Send

CHUNK = 1 << 20
_HEAD = b'{"1.2.3": {"1.2.3.4": {"mask": ['
_TAIL = b"0]}}}"
# How long a held answer waits to be released before it gives up (a failing test).
RELEASE_TIMEOUT = 120.0


def result_chunks(size: int) -> Iterator[bytes]:
    """``size`` bytes of JSON: a flat array of 0/1 digits, in chunks of CHUNK bytes."""
    if size < len(_HEAD) + len(_TAIL):
        raise ValueError(f"a result needs at least {len(_HEAD) + len(_TAIL)} bytes")
    filler = size - len(_HEAD) - len(_TAIL)
    # "0," and "1," pairs, then one space if the size is odd.
    pattern = b"0,1," * (CHUNK // 4)
    yield _HEAD
    while filler >= CHUNK:
        yield pattern
        filler -= CHUNK
    yield pattern[: filler - filler % 2] + b" " * (filler % 2)
    yield _TAIL


def sha256_of(size: int) -> str:
    digest = hashlib.sha256()
    for chunk in result_chunks(size):
        digest.update(chunk)
    return digest.hexdigest()


@dataclass
class LargeResultModel:
    url: str
    calls: int = 0
    held_after: int = 0
    release: threading.Event = field(default_factory=threading.Event)


class _App:
    def __init__(self, model: LargeResultModel) -> None:
        self.model = model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        self.model.calls += 1
        size = int(parse_qs(scope["query_string"].decode())["bytes"][0])
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % size)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        sent = 0
        for chunk in result_chunks(size):
            if self.model.held_after and sent >= self.model.held_after:
                released = await asyncio.to_thread(self.model.release.wait, RELEASE_TIMEOUT)
                if not released:
                    return  # uvicorn closes a response that never finished
                self.model.held_after = 0
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent += len(chunk)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@contextmanager
def large_result_model() -> Iterator[LargeResultModel]:
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    model = LargeResultModel(f"http://{LOOPBACK}:{sock.getsockname()[1]}")
    server = uvicorn.Server(uvicorn.Config(_App(model), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield model
    finally:
        model.release.set()
        server.should_exit = True
        thread.join(10)
        sock.close()
