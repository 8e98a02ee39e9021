"""Streams a planned body to the model with retrieval, encoding and upload overlapping.

::

    PACS --(up to pacs_concurrency retrievals, "lanes")--> one queue per lane
         --feeder: in plan order, encode slices in worker threads--> ordered queue
         --chunks(): await each slice in order, yield it to the POST, release memory

The lanes of a body are retrieved concurrently but written in plan order, so a
study's series may be fetched in parallel while the body stays what the plan
says. Every retrieved instance takes a grant from the request's memory window
(``admission.RequestMemory``) before it is queued and gives it back once its
last chunk has been handed to the POST: the read-ahead, the encoded slices and
the queue are all bounded by the window, whatever the size of the study.

Encoding runs in a thread pool (each thread settles its slice's future itself,
``_encoded``): the encoder (``models/encoder.py``) releases the GIL, so two
instances encode on two cores while the event loop reads from the PACS and
writes to the model. Slices are encoded into recycled buffers
(``models/slice_buffers.py``), given back once the POST has written them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from types import TracebackType
from typing import cast

from model_proxy.errors import ErrorCode, NotFound, PacsError
from model_proxy.models.body import Retrieval, Token
from model_proxy.models.encoder import encode_range_into, max_slice_text_size, slice_ranges
from model_proxy.models.formats import BodyFormat
from model_proxy.models.slice_buffers import SliceBuffers
from model_proxy.pacs.result_instances import is_result_instance
from model_proxy.pacs.source import DicomSource
from model_proxy.runtime.admission import Grant, RequestMemory
from model_proxy.upstream import tracing

__all__ = ["BodyPipeline"]


class _End:
    """A lane has delivered all its instances."""


_END = _End()
_Arrival = tuple[bytes, Grant] | _End | Exception


@dataclass
class _Lane:
    index: int
    retrieval: Retrieval
    # Unbounded: the memory window bounds what a lane may hold.
    queue: asyncio.Queue[_Arrival] = field(default_factory=asyncio.Queue)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    error: Exception | None = None


@dataclass(frozen=True)
class _Chunk:
    """One piece of the body in order: bytes, or the future of an encoded slice."""

    data: bytes | asyncio.Future[memoryview]
    # Set on an instance's last chunk: sending it frees the instance.
    grant: Grant | None = None
    instance_bytes: int = 0
    # The buffer an encoded slice is written in, recycled once it has been sent.
    buffer: bytearray | None = None


@dataclass(frozen=True)
class _Done:
    error: Exception | None = None


class BodyPipeline:
    """One request body; use as ``async with`` around the POST, send ``chunks()``.

    Entering starts the retrievals and waits until the first ones have opened,
    so that a study the PACS does not have is reported before the model is
    called. Leaving cancels whatever is still running.
    """

    def __init__(
        self,
        tokens: Sequence[Token],
        source: DicomSource,
        *,
        body_format: BodyFormat,
        memory: RequestMemory,
        executor: Executor,
        buffers: SliceBuffers,
        pacs_concurrency: int,
        queue_depth: int,
    ) -> None:
        self._tokens = list(tokens)
        self._source = source
        self._format = body_format
        self._memory = memory
        self._executor = executor
        self._buffers = buffers
        self._slots = asyncio.Semaphore(pacs_concurrency)
        self._pacs_concurrency = pacs_concurrency
        self._lanes = [
            _Lane(index, token)
            for index, token in enumerate(t for t in self._tokens if isinstance(t, Retrieval))
        ]
        self._out: asyncio.Queue[_Chunk | _Done] = asyncio.Queue(maxsize=queue_depth)
        self._tasks: list[asyncio.Task[None]] = []
        self.content_type = body_format.content_type
        self.instances_sent = 0
        self.bytes_in = 0
        self.bytes_out = 0  # the wire-format body sent to the model

    async def __aenter__(self) -> BodyPipeline:
        self._tasks.append(asyncio.create_task(self._launch()))
        try:
            for lane in self._lanes[: self._pacs_concurrency]:
                await lane.opened.wait()
                if lane.error is not None:
                    raise lane.error
        except BaseException:
            await self._stop()
            raise
        self._tasks.append(asyncio.create_task(self._feed()))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._stop()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, in order; each instance's memory is released once it is sent.

        Encoded slices are yielded as views of the buffers the encoder wrote
        (httpx and h11 take any bytes-like chunk, and a copy to ``bytes`` would
        cost up to 4 MiB of memcpy per slice on the event loop). A chunk is
        valid until the next one is asked for: its buffer is then reused, so a
        consumer that keeps chunks must copy them. The model client's socket
        layer hands each chunk to the kernel before it asks for the next one
        (``network.AsyncioStream.write_pieces``; over TLS, h11 copies it).
        """
        while True:
            item = await self._out.get()
            if isinstance(item, _Done):
                if item.error is not None:
                    raise item.error
                return
            data = item.data
            chunk = cast(bytes, await data if isinstance(data, asyncio.Future) else data)
            self.bytes_out += len(chunk)
            yield chunk
            if item.buffer is not None:
                self._buffers.give(item.buffer)
            if item.grant is not None:
                self._memory.release(item.grant)
                self.instances_sent += 1
                self.bytes_in += item.instance_bytes

    async def _stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _launch(self) -> None:
        # Lanes take a retrieval slot in plan order, so the lane being written
        # always holds one: read-ahead lanes never starve it.
        for lane in self._lanes:
            await self._slots.acquire()
            self._tasks.append(asyncio.create_task(self._retrieve(lane)))

    async def _retrieve(self, lane: _Lane) -> None:
        try:
            async with (
                _traced("pacs.retrieve", self._source.label),
                self._source.retrieve(lane.retrieval.target) as instances,
            ):
                lane.opened.set()
                async for part10 in instances:
                    if lane.retrieval.leave_out_results and is_result_instance(part10):
                        continue
                    size = self._format.accounted_bytes(len(part10))
                    grant = await self._memory.acquire(size, lane.index)
                    lane.queue.put_nowait((part10, grant))
            lane.queue.put_nowait(_END)
        except Exception as exc:
            lane.error = exc
            lane.queue.put_nowait(exc)
        finally:
            lane.opened.set()
            self._slots.release()

    async def _feed(self) -> None:
        try:
            lanes = iter(self._lanes)
            for token in self._tokens:
                if isinstance(token, Retrieval):
                    await self._feed_lane(next(lanes))
                elif literal := self._format.literal(token):
                    await self._out.put(_Chunk(literal))
            await self._out.put(_Chunk(self._format.end()))
        except Exception as exc:
            await self._out.put(_Done(exc))
        else:
            await self._out.put(_Done())

    async def _feed_lane(self, lane: _Lane) -> None:
        with tracing.span("model.encode", upstream=self._source.label):
            await self._feed_lane_traced(lane)

    async def _feed_lane_traced(self, lane: _Lane) -> None:
        self._memory.set_head(lane.index)
        retrieval = lane.retrieval
        count = 0
        while not isinstance(arrival := await lane.queue.get(), _End):
            if isinstance(arrival, Exception):
                raise arrival
            part10, grant = arrival
            if count and not retrieval.as_array:
                raise PacsError(
                    f"{self._source.label}: returned several instances for"
                    f" {retrieval.target.describe()}"
                )
            await self._out.put(_Chunk(self._format.before_instance(retrieval, count, len(part10))))
            await self._feed_instance(part10, grant)
            count += 1
        if not count and not retrieval.as_array:
            raise NotFound(
                f"{retrieval.target.describe()} was not found on {self._source.label}",
                code=ErrorCode.NOT_ON_PACS,
            )
        if closing := self._format.after_retrieval(retrieval, count):
            await self._out.put(_Chunk(closing))

    async def _feed_instance(self, part10: bytes, grant: Grant) -> None:
        if not self._format.encodes:
            await self._out.put(_Chunk(part10, grant, len(part10)))
            return
        loop = asyncio.get_running_loop()
        ranges = slice_ranges(len(part10))
        for number, (start, stop) in enumerate(ranges):
            buffer = self._buffers.take(max_slice_text_size(len(part10), start, stop))
            encoded = _encoded(loop, self._executor, part10, start, stop, buffer)
            last = number == len(ranges) - 1
            await self._out.put(
                _Chunk(encoded, grant if last else None, len(part10) if last else 0, buffer)
            )


def _encoded(
    loop: asyncio.AbstractEventLoop,
    executor: Executor,
    part10: bytes,
    start: int,
    stop: int,
    buffer: bytearray,
) -> asyncio.Future[memoryview]:
    """The text of ``part10[start:stop]`` in ``buffer``, encoded by an encoder thread.

    ``loop.run_in_executor`` would do the same through a concurrent future chained
    to an asyncio one (four callbacks and a lock per slice, about a tenth of the
    event loop's time on the benchmark); here the thread settles the asyncio
    future itself. As with ``run_in_executor``, a slice whose future nobody awaits
    any more (the request ended) is still encoded, into its own buffer.
    """
    future: asyncio.Future[memoryview] = loop.create_future()

    def encode() -> None:
        try:
            text = memoryview(buffer)[: encode_range_into(part10, start, stop, buffer)]
        except BaseException as exc:  # handed to the awaiting task, raised there
            _settle_soon(loop, future, exc)
        else:
            _settle_soon(loop, future, text)

    def cancelled_in_pool(work: concurrent.futures.Future[None]) -> None:
        # The pool was shut down before the slice's turn: whoever awaits it must
        # not wait forever (run_in_executor cancels its future the same way).
        if work.cancelled():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(future.cancel)

    executor.submit(encode).add_done_callback(cancelled_in_pool)
    return future


def _settle_soon(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[memoryview],
    outcome: memoryview | BaseException,
) -> None:
    """From an encoder thread: the outcome, set in the loop's thread."""
    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
        loop.call_soon_threadsafe(_settle, future, outcome)


def _settle(future: asyncio.Future[memoryview], outcome: memoryview | BaseException) -> None:
    if future.done():  # cancelled
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


@contextlib.asynccontextmanager
async def _traced(name: str, upstream: str) -> AsyncIterator[None]:
    with tracing.span(name, upstream=upstream):
        yield
