"""Runs one inference and says what to serve: 304, a cached result, or the model's.

With the cache on (``--cache-size`` > 0) and the data fingerprinted by its
server, a request is answered, in this order:

1. ``304`` when ``If-None-Match`` names the result's ETag;
2. from a cache entry in the accepted coding (a small one read whole: the
   fast path), or the identity entry compressed on the fly (that coding is
   then stored too);
3. by joining the flight of an identical request under way, or starting one
   (cache/flights.py), and reading its result as it is written.

Otherwise (cache off, data without a fingerprint) the model's answer is spooled
to a private file the viewer reads as it grows (a private flight), so a viewer
that reads slowly does not hold the inference slot; past ``--result-spool-size``
it streams straight through. Either way the model's first window is read before
the outcome is handed over, so an upstream failure up to then is a normal error
answer. The model call itself (``_model_result``) takes a memory window from
admission control, streams the body plan through the pipeline into the model
client, and holds its own lease on the config state it runs on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum

from model_proxy.cache import data_fingerprint, entry_key, request_key
from model_proxy.cache.flights import Flight, Producer
from model_proxy.cache.shared_results import Source
from model_proxy.errors import ErrorCode, Gone, ProxyError, UpstreamError
from model_proxy.inference.progress import Phase, Progress, instances_hint
from model_proxy.inference.request import InferenceRequest
from model_proxy.models.result_stream import ResultStream
from model_proxy.runtime.reload import LiveState
from model_proxy.runtime.state import ProxyState
from model_proxy.web.compression import compress_stream

logger = logging.getLogger(__name__)

# Called once a streamed response is over with None when every byte was sent,
# else what stopped it.
Finalizer = Callable[[BaseException | None], Awaitable[None]]


@dataclass(frozen=True)
class Outcome:
    """What the route serves: ``body`` whole (bytes) or streamed; a streamed body's
    ``finalize`` must run once the response is over, however it ended."""

    status: int
    headers: Mapping[str, str]
    body: bytes | AsyncIterator[bytes] = b""
    finalize: Finalizer | None = None


class CacheOutcome(StrEnum):
    HIT = "hit"  # a stored result (also one compressed now from the stored identity)
    MISS = "miss"  # this request started the model call
    COALESCED = "coalesced"  # joined an identical request's model call under way
    NOT_MODIFIED = "not_modified"  # 304: If-None-Match named the result
    SHARED = "shared"  # --redis: another replica's result, read from Redis


@dataclass
class Figures:
    """What the runner did, for the audit record (read when the response is over)."""

    model_called: bool = False
    instances_in: int = 0
    dicom_bytes_in: int = 0
    wire_bytes_out: int = 0
    # How the result cache answered: a CacheOutcome value; None when it was not asked.
    cache: str | None = None


def result_headers(
    encoding: str | None, etag: str | None = None, *, browser_revalidation: bool = False
) -> dict[str, str]:
    # A result is derived from patient images: no browser or shared cache keeps it
    # unless the site asks for revalidation (--browser-revalidation); the proxy's
    # own cache already makes a repeat cheap.
    headers = {
        "Content-Type": "application/json",
        "Vary": "Accept-Encoding",
        "Cache-Control": "no-store",
    }
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    if etag is not None:
        headers["ETag"] = etag
        if browser_revalidation:
            # The browser keeps the result but asks again each time: the proxy
            # validates it against the PACS (a 304 costs one QIDO query).
            headers["Cache-Control"] = "private, no-cache"
    return headers


class InferenceRunner:
    """One ``InferenceRequest`` on the config state the request leased."""

    def __init__(
        self,
        request: InferenceRequest,
        state: ProxyState,
        live: LiveState,
        *,
        progress: Progress | None = None,
    ) -> None:
        self.request = request
        self.figures = Figures()
        # A job watches it (jobs/); a viewer's GET has nobody to tell.
        self.progress = progress or Progress()
        self._state = state
        self._live = live
        self._source = state.source_for(request.server.id)[1]
        self._client = state.models[request.model.id]
        self._cache = state.result_cache

    async def run(self) -> Outcome:
        key = await self._cache_key()
        if key is None:
            return await self._direct(result_headers(self.request.encoding))
        outcome = await self.from_cache(key)
        if outcome is not None:
            return outcome
        revalidate = self._state.settings.browser_revalidation
        headers = result_headers(
            self.request.encoding, f'W/"{key}"', browser_revalidation=revalidate
        )
        return await self._flight(key, headers)

    async def from_cache(self, key: str, *, from_redis: bool = False) -> Outcome | None:
        """What the GET route serves for the result stored under ``key``: 304, the
        entry in the accepted coding, or the identity entry compressed now; None
        when the cache does not hold it (``GET /jobs/{id}/result`` serves this).
        ``from_redis``: with --redis, a result only Redis holds (another replica ran
        the job) is copied into this replica's cache first."""
        encoding = self.request.encoding
        etag = f'W/"{key}"'
        revalidate = self._state.settings.browser_revalidation
        headers = result_headers(encoding, etag, browser_revalidation=revalidate)
        if _matches(self.request.if_none_match, key):
            del headers["Content-Type"]
            headers.pop("Content-Encoding", None)
            self.figures.cache = CacheOutcome.NOT_MODIFIED
            return Outcome(304, headers)
        outcome = await self._stored(key, headers)
        if outcome is None and from_redis and await self._fetch_shared(key):
            outcome = await self._stored(key, headers)
        if outcome is not None:
            self.figures.cache = CacheOutcome.HIT
        return outcome

    async def _fetch_shared(self, key: str) -> bool:
        """With --redis: copy the entry of ``key`` from Redis into this replica's cache
        (a job another replica ran). False when Redis does not hold it."""
        shared = self._cache.shared_results
        if shared is None:
            return False

        async def copy(append: Callable[[bytes], Awaitable[None]]) -> None:
            if not await shared.copy(key, append):
                # Not committed: an empty entry must not stand for the result.
                raise Gone("the result is not in Redis either")

        try:
            flight = self._cache.flights.join(key, copy)
        except OSError:
            return False  # a full or unwritable disk: as if not found
        try:
            await flight.finished()
        finally:
            self._cache.flights.leave(flight)
        return flight.error is None and flight.committed

    async def _stored(self, key: str, headers: dict[str, str]) -> Outcome | None:
        cache, encoding = self._cache, self.request.encoding
        coding = encoding or "identity"
        whole = await cache.read_whole(key, coding)
        if whole is not None:
            return Outcome(200, headers, whole)
        stored = await cache.open_stream(key, coding)
        if stored is not None:
            return Outcome(200, headers, stored)
        if encoding is not None:
            identity = await cache.open_stream(key, "identity")
            if identity is not None:
                body = cache.tee(
                    compress_stream(identity, encoding), key, encoding, commit_if=lambda: True
                )
                return Outcome(200, headers, body)
        return None

    async def produce(self, fallback_key: str) -> str:
        """For a job: make sure the identity result is in the cache and say its key.

        The key is the GET route's (so a viewer's later GET is a cache hit), or
        ``fallback_key`` when the data has no fingerprint. Joins an identical model
        call under way; cancelling this cancels the call unless others read it."""
        cache = self._cache
        key = await self._cache_key() or fallback_key
        if cache.store.lookup(key, "identity") is not None:
            self.progress.phase = Phase.DONE
            return key
        flight = cache.flights.join(key, self._producer(key))
        try:
            await flight.finished()
        except asyncio.CancelledError:
            cache.flights.leave(flight)
            if flight.readers == 0 and flight.task is not None:
                # Cancelled (DELETE /jobs/{id}): return once the PACS retrieval and the
                # model upload have stopped, unless a viewer still reads the result.
                await asyncio.gather(flight.task, return_exceptions=True)
            raise
        cache.flights.leave(flight)
        if flight.error is not None:
            if not isinstance(flight.error, Exception):
                raise UpstreamError("the model call was cancelled") from flight.error
            raise flight.error
        if not flight.committed:
            raise ProxyError(
                f"the result ({flight.written} bytes) does not fit in the result cache"
                " (--cache-size); run the GET route instead",
                code=ErrorCode.RESULT_NOT_KEPT,
            )
        return key

    async def _cache_key(self) -> str | None:
        if not self._cache.enabled:
            return None
        fingerprint = await data_fingerprint(self._source, self.request.plan)
        self.progress.instances_total = instances_hint(fingerprint)
        if fingerprint is None:
            return None
        request = self.request
        return entry_key(request_key(request.model, request.server, request.plan), fingerprint)

    @asynccontextmanager
    async def _model_result(self) -> AsyncIterator[ResultStream]:
        """The model's answer to the body plan, streamed from the PACS into it."""
        state, request, figures, progress = self._state, self.request, self.figures, self.progress
        figures.model_called = True
        # Admitted only when the model is really called: a slot and a memory window.
        # The call holds its own lease on the state whose clients it uses: coalesced,
        # it may outlive this request while other viewers read its result.
        async with self._live.hold(state), state.capacity.admission.admit() as memory:
            pipeline = state.capacity.body_pipeline(
                request.plan, self._source, request.model.input, memory
            )
            progress.phase = Phase.RETRIEVING
            progress.follow(pipeline)
            try:
                async with pipeline:
                    progress.phase = Phase.SENDING
                    async with self._client.open_result(
                        _then(pipeline.chunks(), progress, Phase.WAITING_FOR_MODEL),
                        pipeline.content_type,
                    ) as result:
                        progress.phase = Phase.RECEIVING
                        yield result
            finally:
                progress.unfollow()
                figures.instances_in = pipeline.instances_sent
                figures.dicom_bytes_in = pipeline.bytes_in
                figures.wire_bytes_out = pipeline.bytes_out

    async def _produce(self, append: Callable[[bytes], Awaitable[None]]) -> None:
        """A flight's work: the model's result, appended to the cache spool."""
        async with self._model_result() as result:
            await append(await result.start())
            async with aclosing(result.chunks()) as chunks:
                async for chunk in chunks:
                    await append(chunk)

    def _producer(self, key: str) -> Producer:
        """The flight's work: with --redis, the result another replica stored or is
        computing (cache/shared_results.py), else the model call."""
        shared = self._cache.shared_results
        if shared is None:
            return self._produce

        async def produce(append: Callable[[bytes], Awaitable[None]]) -> None:
            if await shared.produce(key, append, self._produce) is Source.REDIS:
                self.figures.cache = CacheOutcome.SHARED

        return produce

    async def _flight(self, key: str, headers: dict[str, str]) -> Outcome:
        self.figures.cache = (
            CacheOutcome.COALESCED if self._cache.flights.under_way(key) else CacheOutcome.MISS
        )
        try:
            flight = self._cache.flights.join(key, self._producer(key))
        except OSError as exc:
            # A full or unwritable disk must not stop inferences: no cache for this one.
            logger.warning("result cache: cannot spool a result (%s); streaming it directly", exc)
            return await self._stream_through(headers)
        return await self._follow(flight, headers, cache_key=key)

    async def _direct(self, headers: dict[str, str]) -> Outcome:
        """A result that is not cached, spooled to a private file the viewer reads at
        its own pace: the inference slot is free once the model has answered. Past
        ``--result-spool-size`` of such files, or without a writable disk, it streams
        straight through (the slot then waits for the viewer)."""
        flights = self._cache.flights
        limit = self._state.settings.result_spool_bytes
        if flights.private_bytes >= limit:
            if limit:
                logger.warning(
                    "result spool full (--result-spool-size, %d bytes held by slow"
                    " viewers); streaming this result directly",
                    limit,
                )
            return await self._stream_through(headers)
        try:
            flight = flights.private(self._produce)
        except OSError as exc:
            logger.warning("result spool: cannot spool a result (%s); streaming it directly", exc)
            return await self._stream_through(headers)
        return await self._follow(flight, headers, cache_key=None)

    async def _follow(
        self, flight: Flight, headers: dict[str, str], cache_key: str | None
    ) -> Outcome:
        """The result of ``flight`` as it is written; with ``cache_key``, a compressed
        copy is cached too."""
        flights = self._cache.flights
        try:
            reader = flight.reader()
            first = await _first(reader, flight)
        except BaseException:
            flights.leave(flight)
            raise
        body = _prepend(first, reader)
        encoding = self.request.encoding
        if encoding is not None:
            body = compress_stream(body, encoding)
            if cache_key is not None:
                body = self._cache.tee(
                    body, cache_key, encoding, commit_if=lambda: flight.committed
                )

        async def finalize(error: BaseException | None) -> None:
            flights.leave(flight)

        return Outcome(200, headers, body, finalize)

    async def _stream_through(self, headers: dict[str, str]) -> Outcome:
        stack = AsyncExitStack()
        try:
            result = await stack.enter_async_context(self._model_result())
            first = await result.start()
        except BaseException:
            await stack.aclose()
            raise
        body = _prepend(first, result.chunks())
        if self.request.encoding is not None:
            body = compress_stream(body, self.request.encoding)

        async def finalize(error: BaseException | None) -> None:
            # The model's context sees how the stream ended (its circuit breaker counts it).
            if error is None:
                await stack.aclose()
            else:
                await stack.__aexit__(type(error), error, error.__traceback__)

        return Outcome(200, headers, body, finalize)


def _matches(if_none_match: str | None, key: str) -> bool:
    if not if_none_match:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip().removeprefix("W/")
        if tag == "*" or tag == f'"{key}"':
            return True
    return False


async def _first(reader: AsyncGenerator[bytes, None], flight: Flight) -> bytes:
    try:
        return await anext(reader)
    except StopAsyncIteration:
        return b""
    except BaseException as exc:
        if flight.error is exc and not isinstance(exc, Exception):
            raise UpstreamError("the model call was cancelled") from exc
        raise


async def _then(
    chunks: AsyncIterator[bytes], progress: Progress, phase: Phase
) -> AsyncIterator[bytes]:
    """``chunks``, then ``progress`` moved to ``phase`` once they are all sent."""
    async for chunk in chunks:
        yield chunk
    progress.phase = phase
    if progress.instances_total is None:  # no count from the PACS: now it is known
        progress.instances_total = progress.instances_sent


async def _prepend(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    async with aclosing(rest):
        yield first
        async for chunk in rest:
            yield chunk
