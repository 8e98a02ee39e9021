"""From a model call to the viewer's response: cached, coalesced, streamed, compressed.

With the cache on (``--cache-size`` > 0) and the data fingerprinted by its
server, a request is answered, in this order:

1. ``304`` when ``If-None-Match`` names the result's ETag;
2. from a cache entry in the accepted coding (a small one read whole: the
   fast path), or the identity entry compressed on the fly (that coding is
   then stored too);
3. by joining the flight of an identical request under way, or starting one
   (cache/flights.py), and reading its result as it is written.

Otherwise (cache off, data without a fingerprint) the model's answer streams
straight through. Either way the model's first window is read before the
response starts, so an upstream failure up to then is a normal error answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, aclosing
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from model_proxy.cache import ResultCache, entry_key
from model_proxy.cache.flights import Flight
from model_proxy.errors import UpstreamError
from model_proxy.models.result_stream import ResultStream
from model_proxy.routes.streaming import ResultResponse
from model_proxy.web.compression import compress_stream, negotiate

logger = logging.getLogger(__name__)


@dataclass
class Inference:
    """One inference request, ready to run: ``open()`` streams the data into the
    model and gives its answer; ``describe()`` gives the log line's fields;
    ``request_key`` and ``fingerprint()`` identify it for the cache."""

    open: Callable[[], AbstractAsyncContextManager[ResultStream]]
    describe: Callable[[], str]
    request_key: str | None = None
    fingerprint: Callable[[], Awaitable[str | None]] | None = None


def result_headers(encoding: str | None, etag: str | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Vary": "Accept-Encoding"}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    if etag is not None:
        # The browser keeps the result but asks again each time: the proxy
        # validates it against the PACS (a 304 costs one QIDO query).
        headers["ETag"] = etag
        headers["Cache-Control"] = "private, no-cache"
    return headers


async def respond(request: Request, inference: Inference, cache: ResultCache) -> Response:
    encoding = negotiate(request.headers.get("accept-encoding"))
    started = time.perf_counter()
    key = await _cache_key(inference, cache)
    if key is None:
        return await _stream_direct(inference, encoding, started)
    etag = f'W/"{key}"'
    headers = result_headers(encoding, etag)
    if _matches(request.headers.get("if-none-match"), key):
        del headers["Content-Type"]
        headers.pop("Content-Encoding", None)
        return Response(status_code=304, headers=headers)
    coding = encoding or "identity"
    whole = await cache.read_whole(key, coding)
    if whole is not None:
        logger.info(
            "inference %s served from cache: %d bytes %s", inference.describe(), len(whole), coding
        )
        return Response(whole, headers=headers)
    stored = await cache.open_stream(key, coding)
    if stored is not None:
        return ResultResponse(stored, headers=headers, finalize=_log("cache", inference, started))
    if encoding is not None:
        identity = await cache.open_stream(key, "identity")
        if identity is not None:
            body = cache.tee(
                compress_stream(identity, encoding), key, encoding, commit_if=lambda: True
            )
            return ResultResponse(
                body, headers=headers, finalize=_log("cache, compressed", inference, started)
            )
    return await _stream_flight(inference, cache, key, encoding, headers, started)


async def _cache_key(inference: Inference, cache: ResultCache) -> str | None:
    if not cache.enabled or inference.request_key is None or inference.fingerprint is None:
        return None
    fingerprint = await inference.fingerprint()
    return None if fingerprint is None else entry_key(inference.request_key, fingerprint)


def _matches(if_none_match: str | None, key: str) -> bool:
    if not if_none_match:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip().removeprefix("W/")
        if tag == "*" or tag == f'"{key}"':
            return True
    return False


async def _stream_flight(
    inference: Inference,
    cache: ResultCache,
    key: str,
    encoding: str | None,
    headers: dict[str, str],
    started: float,
) -> Response:
    async def produce(append: Callable[[bytes], Awaitable[None]]) -> None:
        async with inference.open() as result:
            await append(await result.start())
            async with aclosing(result.chunks()) as chunks:
                async for chunk in chunks:
                    await append(chunk)

    try:
        flight = cache.flights.join(key, produce)
    except OSError as exc:
        # A full or unwritable disk must not stop inferences: no cache for this one.
        logger.warning("result cache: cannot spool a result (%s); streaming it directly", exc)
        return await _stream_direct(inference, encoding, started, headers)
    try:
        reader = flight.reader()
        first = await _first(reader, flight)
    except BaseException:
        cache.flights.leave(flight)
        raise
    body = _prepend(first, reader)
    if encoding is not None:
        body = cache.tee(
            compress_stream(body, encoding), key, encoding, commit_if=lambda: flight.committed
        )

    async def finalize(error: BaseException | None) -> None:
        cache.flights.leave(flight)
        await _log("model", inference, started, lambda: flight.written)(error)

    return ResultResponse(body, headers=headers, finalize=finalize)


async def _first(reader: AsyncGenerator[bytes, None], flight: Flight) -> bytes:
    try:
        return await anext(reader)
    except StopAsyncIteration:
        return b""
    except BaseException as exc:
        if flight.error is exc and not isinstance(exc, Exception):
            raise UpstreamError("the model call was cancelled") from exc
        raise


async def _stream_direct(
    inference: Inference,
    encoding: str | None,
    started: float,
    headers: dict[str, str] | None = None,
) -> Response:
    stack = AsyncExitStack()
    try:
        result = await stack.enter_async_context(inference.open())
        first = await result.start()
    except BaseException:
        await stack.aclose()
        raise
    body = _prepend(first, result.chunks())
    if encoding is not None:
        body = compress_stream(body, encoding)
    log = _log("model", inference, started, lambda: result.bytes_out)

    async def finalize(error: BaseException | None) -> None:
        # The model's context sees how the stream ended (its circuit breaker counts it).
        if error is None:
            await stack.aclose()
        else:
            await stack.__aexit__(type(error), error, error.__traceback__)
        await log(error)

    return ResultResponse(body, headers=headers or result_headers(encoding), finalize=finalize)


def _log(
    source: str, inference: Inference, started: float, size: Callable[[], int] | None = None
) -> Callable[[BaseException | None], Awaitable[None]]:
    async def log(error: BaseException | None) -> None:
        logger.info(
            "inference %s from=%s result_bytes=%s%s seconds=%.2f",
            inference.describe(),
            source,
            size() if size is not None else "-",
            "" if error is None else " aborted=yes",
            time.perf_counter() - started,
        )

    return log


async def _prepend(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    async with aclosing(rest):
        yield first
        async for chunk in rest:
            yield chunk
