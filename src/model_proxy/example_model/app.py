"""The bundled example Model API: what the demo and the tests run against.

It is also the template for writing your own (see ``docs/model-api.md``): every
endpoint takes the proxy's wire format in all its body shapes, or the same
instances as dicom-multipart parts, and answers in the viewer's result format,
nested by the UIDs of the received files.

    POST /segmentation                          body and lung masks
    POST /annotation                            body outline polygons
    POST /prediction                            volumes, areas and counts
    POST /multiple-series-endpoint/predict      compares data filter keys
                                                "series-one" and "series-two"
    POST /legacy/...                            the same, double-encoded like the
                                                reference zhiva Model APIs
    GET  /  -> 307 /docs,  GET /docs,  GET /health
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable
from functools import partial

import anyio.to_thread
import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from . import results
from .algorithms import analyse
from .results import Received, Result, SeriesGroup
from .wire import Entry, Payload, WireFormatError, decode_instance, parse_body

__all__ = ["create_app", "run"]

logger = logging.getLogger(__name__)

SERIES_KEYS = ("series-one", "series-two")

Decoded = list[tuple[Entry, Received]]
Task = Callable[[Payload, Decoded], Result]


def segmentation(payload: Payload, decoded: Decoded) -> Result:
    groups = results.group_series(item for _, item in decoded)
    return results.segmentation(groups, summary=not payload.single)


def annotation(payload: Payload, decoded: Decoded) -> Result:
    return results.annotation(results.group_series(item for _, item in decoded))


def prediction(payload: Payload, decoded: Decoded) -> Result:
    groups = results.group_series(item for _, item in decoded)
    return results.prediction(groups, summary=not payload.single)


def compare(payload: Payload, decoded: Decoded) -> Result:
    # The data filter keys, not the UIDs, say which series is which.
    by_key: dict[str, list[Received]] = {}
    for entry, item in decoded:
        if entry.series_key is not None:
            by_key.setdefault(entry.series_key, []).append(item)
    missing = [key for key in SERIES_KEYS if key not in by_key]
    if missing:
        raise WireFormatError(
            f"this model needs the data filter keys {list(SERIES_KEYS)}, each an object "
            f'{{"data": [instance strings]}}; missing {missing}'
        )
    first, second = (_one_series(by_key[key]) for key in SERIES_KEYS)
    return results.compare_series(first, second)


TASKS: dict[str, Task] = {
    "segmentation": segmentation,
    "annotation": annotation,
    "prediction": prediction,
    "multiple-series-endpoint/predict": compare,
}


def answer(body: bytes, task: Task, legacy: bool, content_type: str = "application/json") -> bytes:
    """The whole CPU-bound request: parse, decode, analyse, serialise.

    Runs in a worker thread; raises :class:`WireFormatError` for a bad body.
    """
    payload = parse_body(body, content_type)
    decoded: Decoded = []
    for index, entry in enumerate(payload.entries):
        where = _name(entry, index)
        item = analyse(decode_instance(entry.instance, where), where)
        # A bare string or a {"data": "<instance>"} entry: a single chosen instance.
        single = payload.single or entry.instance_key is not None
        decoded.append((entry, Received(item, single)))
    document = orjson.dumps(task(payload, decoded), option=orjson.OPT_SERIALIZE_NUMPY)
    if legacy:
        # The reference Model APIs return orjson.dumps(result) from an endpoint
        # declared with ORJSONResponse: the body is a JSON string holding JSON.
        return orjson.dumps(document.decode())
    return document


def create_app() -> Starlette:
    routes: list[BaseRoute] = [
        Route("/", _root, methods=["GET"]),
        Route("/docs", _docs, methods=["GET"]),
        Route("/health", _health, methods=["GET"]),
    ]
    for name, task in TASKS.items():
        for legacy in (False, True):
            path = f"/legacy/{name}" if legacy else f"/{name}"
            routes.append(Route(path, _endpoint(task, legacy), methods=["POST"]))
    return Starlette(
        routes=routes,
        exception_handlers={WireFormatError: _unprocessable, Exception: _internal},
    )


def run(host: str = "127.0.0.1", port: int = 8011) -> None:
    """Serve the example model with uvicorn until interrupted."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    # uvicorn's own log format, plus this module's lines (a broken upload).
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"][__name__] = {"handlers": ["default"], "level": "INFO"}
    uvicorn.run(create_app(), host=host, port=port, log_config=log_config)


def _endpoint(task: Task, legacy: bool) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        chunks: list[bytes] = []
        try:
            async for chunk in request.stream():
                chunks.append(chunk)
        except ClientDisconnect:
            # A caller that gave up mid-upload (a cancelled job): nothing to analyse.
            # Tests read this line to tell a broken upload from a complete one.
            received = sum(map(len, chunks))
            logger.warning("request body broken off after %d bytes; not analysed", received)
            return Response(status_code=400)
        body = b"".join(chunks)
        content_type = request.headers.get("content-type", "application/json")
        # The proxy's request id: one id finds the request in the proxy's log and here.
        logger.info(
            "POST %s: %d bytes, X-Request-ID %s",
            request.url.path,
            len(body),
            request.headers.get("x-request-id", "-"),
        )
        # Parsing 0.6 GB of JSON and decoding DICOM would block the event loop.
        content = await anyio.to_thread.run_sync(partial(answer, body, task, legacy, content_type))
        return Response(content, media_type="application/json")

    return endpoint


def _one_series(items: list[Received]) -> SeriesGroup:
    head = items[0].slice
    group = SeriesGroup(head.study_uid, head.series_uid, list(items))
    group.items.sort(key=lambda item: (item.slice.instance_number, item.slice.sop_uid))
    return group


def _name(entry: Entry, index: int) -> str:
    keys = [k for k in (entry.series_key, entry.instance_key) if k is not None]
    return f"instance {index} ({'/'.join(keys)})" if keys else f"instance {index}"


async def _root(request: Request) -> Response:
    # FastAPI models redirect / to /docs; the proxy's statusUri check must follow it.
    return RedirectResponse("/docs", status_code=307)


async def _docs(request: Request) -> Response:
    return HTMLResponse(_DOCS)


async def _health(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def _unprocessable(request: Request, exc: Exception) -> Response:
    message = exc.message if isinstance(exc, WireFormatError) else str(exc)
    return Response(orjson.dumps({"message": message}), 422, media_type="application/json")


async def _internal(request: Request, exc: Exception) -> Response:
    message = f"the example model failed: {type(exc).__name__}: {exc}"
    return Response(orjson.dumps({"message": message}), 500, media_type="application/json")


_DOCS = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Example Model API</title>
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem}
code{background:#f3f3f3;padding:0 .2em}</style></head><body>
<h1>Example Model API</h1>
<p>The model bundled with model-proxy: Hounsfield-unit thresholds that find the body
and the lungs of a chest CT. Every POST endpoint takes the proxy's wire format (a DICOM
instance is a JSON string holding the array of its file's bytes): one instance, a list
of instances, or an object of data filter keys.</p>
<ul>
<li><code>POST /segmentation</code>: body and lung masks per instance, volumes per series</li>
<li><code>POST /annotation</code>: a body outline polygon per instance</li>
<li><code>POST /prediction</code>: lung area per instance, volumes per series, counts per
study</li>
<li><code>POST /multiple-series-endpoint/predict</code>: compares the data filter keys
<code>series-one</code> and <code>series-two</code></li>
<li><code>POST /legacy/&hellip;</code>: the same answers, double-encoded like the reference
zhiva Model APIs</li>
<li><code>GET /health</code>: <code>{"status": "ok"}</code></li>
</ul></body></html>
"""
