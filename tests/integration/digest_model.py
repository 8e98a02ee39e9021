"""A Model API that answers with the SHA-256 of every instance it received.

It decodes the body exactly as the reference Model APIs do
(``bytes(json.loads(instance))``, docs/compatibility.md §5.1), or takes the parts of
a dicom-multipart body as they are, so a test can check that the bytes reaching
a model are the bytes the PACS holds. It runs with uvicorn in a thread of the
test process, on a real loopback socket::

    with digest_model() as url:
        ...  # POST {url}/digest -> {"entries": [[series key, instance key, sha256], ...]}
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from harness import LOOPBACK
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from model_proxy.pacs.multipart import MultipartDecoder, boundary_from_content_type

Entry = tuple[str | None, str | None, str]


def reference_decode(instance: str) -> bytes:
    return bytes(json.loads(instance))


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_entries(document: Any) -> list[Entry]:
    if isinstance(document, str):
        return [(None, None, digest(reference_decode(document)))]
    if isinstance(document, list):
        return [(None, None, digest(reference_decode(item))) for item in document]
    entries: list[Entry] = []
    for key, value in document.items():
        data = value["data"]
        if isinstance(data, str):
            entries.append((None, key, digest(reference_decode(data))))
        elif isinstance(data, list):
            entries.extend((key, None, digest(reference_decode(item))) for item in data)
        else:
            for inner, nested in data.items():
                entries.append((key, inner, digest(reference_decode(nested["data"]))))
    return entries


def multipart_entries(body: bytes, content_type: str) -> list[Entry]:
    boundary = boundary_from_content_type(content_type)
    assert boundary is not None
    decoder = MultipartDecoder(boundary)
    parts = decoder.feed(body)
    decoder.close()
    return [
        (headers.get("series-data-key"), headers.get("instance-data-key"), digest(data))
        for headers, data in zip(decoder.part_headers, parts, strict=True)
    ]


async def receive(request: Request) -> Response:
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    whitespace: int | None = None
    if content_type.startswith("multipart/related"):
        entries = multipart_entries(body, content_type)
    else:
        entries = json_entries(json.loads(body))
        whitespace = sum(body.count(space) for space in (b" ", b"\t", b"\r", b"\n"))
    return JSONResponse(
        {"entries": entries, "content_type": content_type, "whitespace": whitespace}
    )


@contextmanager
def digest_model() -> Iterator[str]:
    """The digest model on a free loopback port; yields its base URL."""
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    port = sock.getsockname()[1]
    app = Starlette(routes=[Route("/digest", receive, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
