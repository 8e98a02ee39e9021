"""From a model call to the viewer's response: streamed, compressed when accepted.

``respond`` opens the model's answer and reads its first window before the
response starts, so an upstream failure up to that point is a normal error
answer (502/504); the rest streams through ``ResultResponse``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, aclosing
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from model_proxy.compression import compress_stream, negotiate
from model_proxy.models.result_stream import ResultStream
from model_proxy.routes.streaming import ResultResponse

logger = logging.getLogger(__name__)


@dataclass
class Inference:
    """One inference request, ready to run: ``open()`` streams the data into the
    model and gives its answer; ``describe()`` gives the log line's fields."""

    open: Callable[[], AbstractAsyncContextManager[ResultStream]]
    describe: Callable[[], str]


def result_headers(encoding: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Vary": "Accept-Encoding"}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    return headers


async def respond(request: Request, inference: Inference) -> Response:
    encoding = negotiate(request.headers.get("accept-encoding"))
    started = time.perf_counter()
    stack = AsyncExitStack()
    try:
        result = await stack.enter_async_context(inference.open())
        first = await result.start()
    except BaseException:
        await stack.aclose()
        raise
    body = _prepend(first, result)
    if encoding is not None:
        body = compress_stream(body, encoding)

    async def finalize(error: BaseException | None) -> None:
        # The model's context sees how the stream ended (its circuit breaker counts it).
        if error is None:
            await stack.aclose()
        else:
            await stack.__aexit__(type(error), error, error.__traceback__)
        logger.info(
            "inference %s result_bytes=%d encoding=%s%s seconds=%.2f",
            inference.describe(),
            result.bytes_out,
            encoding or "identity",
            "" if error is None else " aborted=yes",
            time.perf_counter() - started,
        )

    return ResultResponse(body, headers=result_headers(encoding), finalize=finalize)


async def _prepend(first: bytes, rest: ResultStream) -> AsyncGenerator[bytes, None]:
    yield first
    async with aclosing(rest.chunks()) as chunks:
        async for chunk in chunks:
            yield chunk
