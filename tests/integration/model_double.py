"""A Model API for the result tests, served by uvicorn in a thread of the test process:
the real example model behind a counter (to see whether the proxy called it), plus
answers a real model cannot be made to give on purpose (cut mid-stream, unterminated).

    with serve_model_double() as double:
        entry = double.entry("/example/segmentation", "segmentation", ["/studies/series"])
        ...
        assert double.calls["/example/segmentation"] == 1
        # one model per test case, each with its own counter:
        models, models_json = double.case_models(["hit", "etag"], ["/studies/series"])
        assert double.case_calls("hit") == 0

Routes (all POST, the request body is read first):
    /example/<path>     the example model's /<path> after ``double.delay`` seconds
                        (calls are counted by path and query: ``?case=a`` makes a
                        distinct models.json entry for the same endpoint)
    /cut                2.5 MiB of a valid JSON result, then the connection is closed
    /legacy-cut         the same, double-encoded
    /unterminated       a complete HTTP answer whose JSON never closes
    /not-json           2.5 MiB of HTML
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from harness import LOOPBACK, new_uid
from starlette.types import Receive, Scope, Send

from model_proxy.example_model import create_app

BIG_RESULT = orjson.dumps({"1.2.3": {"1.2.3.4": {"points": [[0, 1] * 512] * 1300}}})


@dataclass
class ModelDouble:
    url: str
    calls: Counter[str] = field(default_factory=Counter)
    delay: float = 0.0

    def entry(self, path: str, task: str, supports: Sequence[str], **fields: Any) -> dict[str, Any]:
        return {"uri": f"{self.url}{path}", "task": task, "supports": list(supports), **fields}

    def case_models(
        self, cases: Iterable[str], supports: Sequence[str], **fields: Any
    ) -> tuple[dict[str, str], dict[str, Any]]:
        """One models.json entry per test case, each the example segmentation under a
        query string of its own (``?case=hit``, which the example model ignores): each
        case is its own model for the cache, with its own counter (``case_calls``).
        Returns (case -> model UUID, the models.json content).

            models, models_json = double.case_models(["hit", "etag"], ["/studies/series"])
        """
        ids = {case: new_uid() for case in cases}
        models_json = {
            ids[case]: self.entry(self.case_path(case), "segmentation", supports, **fields)
            for case in ids
        }
        return ids, models_json

    def case_calls(self, case: str) -> int:
        """How many times the proxy called the model of ``case``."""
        return self.calls[self.case_path(case)]

    @staticmethod
    def case_path(case: str) -> str:
        return f"/example/segmentation?case={case}"


class _DoubleApp:
    def __init__(self, double: ModelDouble) -> None:
        self.double = double
        self.example = create_app()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        query = scope["query_string"].decode()
        self.double.calls[f"{path}?{query}" if query else path] += 1
        if path.startswith("/example/"):
            await asyncio.sleep(self.double.delay)
            inner = dict(scope, path=path.removeprefix("/example"), raw_path=None)
            await self.example(inner, receive, send)
            return
        while (await receive()).get("more_body"):
            pass
        body = {
            "/cut": BIG_RESULT,
            "/legacy-cut": orjson.dumps(BIG_RESULT.decode()),
            "/unterminated": BIG_RESULT[:-3],
            "/not-json": b"<html>" * 450_000,
        }.get(path)
        if body is None:
            await _answer(send, 404, b'{"message": "no such route"}')
            return
        cut = path.endswith("cut")
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": body[: len(body) // 2] if cut else body}
            | ({"more_body": True} if cut else {})
        )
        # Returning without the rest makes uvicorn close the connection mid-body.


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextmanager
def serve_model_double() -> Iterator[ModelDouble]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    double = ModelDouble(f"http://{LOOPBACK}:{sock.getsockname()[1]}")
    config = uvicorn.Config(_DoubleApp(double), loop="asyncio", lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the model double did not start")
        time.sleep(0.02)
    try:
        yield double
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
