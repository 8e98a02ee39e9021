"""Coalescing: identical requests in flight at the same time share one model call.

The first request for a key starts a :class:`Flight`: a task that runs the
model call and appends its result to a cache spool file. Every request for
that key, the first included, reads the file as it grows, at its own pace;
nothing of the result is held in memory. When the result is complete the
spool becomes the cache entry. When the last reader leaves before the end,
the model call is cancelled: nobody is waiting for it.

A failure before the first byte reaches every reader as the error itself
(the same 404/502/504 for all); after it, every reader's stream raises it.

A *private* flight (``Flights.private``) is the same without the sharing: one
reader, and a spool that never becomes a cache entry and goes when that reader
leaves. It serves the results that are not cached (``--cache-size 0``, data
without a fingerprint): the model call, and the inference slot it holds, end when
the model has answered, however slowly the viewer reads (issue 16, item 3).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

from model_proxy.cache.store import ResultStore, Spool
from model_proxy.upstream import tracing

logger = logging.getLogger(__name__)

_READ_BYTES = 1 << 20
# Appends this big write to the file in a thread.
_THREAD_BYTES = 256 * 1024

# Runs the model call, handing each piece of the result to ``append``.
Producer = Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]]


class Flight:
    """One model call, its result spooled to a file that readers follow."""

    def __init__(self, key: str, spool: Spool, *, shared: bool = True) -> None:
        self.key = key
        self.shared = shared
        self._spool = spool
        self.path: Path = spool.path
        self.written = 0
        self.done = False
        self.committed = False
        self.error: BaseException | None = None
        self.readers = 0
        self.task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def append(self, data: bytes) -> None:
        if len(data) >= _THREAD_BYTES:
            await asyncio.to_thread(self._spool.write, data)
        else:
            self._spool.write(data)
        self.written += len(data)
        self._notify()

    async def wait_for(self, position: int) -> None:
        """Until more than ``position`` bytes are written, or the flight ended."""
        while self.written <= position and not self.done:
            await self._changed.wait()

    async def finished(self) -> None:
        """Until the flight ended (see ``error`` and ``committed``)."""
        while not self.done:
            await self._changed.wait()

    def reader(self) -> AsyncGenerator[bytes, None]:
        """The result from its first byte, as it is written; raises the flight's error.

        The file is opened here, at once: the spool may be renamed into the
        cache as soon as the caller awaits anything."""
        return self._read(open(self.path, "rb", buffering=0))

    async def _read(self, file: BinaryIO) -> AsyncGenerator[bytes, None]:
        with file:
            position = 0
            while True:
                await self.wait_for(position)
                if self.error is not None:
                    raise self.error
                available = self.written - position
                if available <= 0 and self.done:
                    return
                while available > 0:
                    size = min(available, _READ_BYTES)
                    data = (
                        await asyncio.to_thread(file.read, size)
                        if size >= _THREAD_BYTES
                        else file.read(size)
                    )
                    if not data:
                        raise OSError(f"result spool {self.path.name} ended early")
                    position += len(data)
                    available -= len(data)
                    yield data


class Flights:
    """The flights under way, by cache key."""

    def __init__(self, store: ResultStore) -> None:
        self._store = store
        self._flights: dict[str, Flight] = {}
        self._private: set[Flight] = set()

    def join(self, key: str, producer: Producer) -> Flight:
        """The flight for ``key``: the one under way, or a new one running ``producer``.
        The caller is a reader until it calls ``leave``."""
        flight = self._flights.get(key)
        if flight is None:
            flight = Flight(key, self._store.spool(key, "identity"))
            self._flights[key] = flight
            flight.task = asyncio.create_task(self._fly(flight, producer))
        flight.readers += 1
        return flight

    def private(self, producer: Producer) -> Flight:
        """A flight for one reader (the caller, until it calls ``leave``), spooled
        but never cached; raises OSError when the spool cannot be created."""
        flight = Flight("", self._store.private_spool(), shared=False)
        self._private.add(flight)
        flight.readers = 1
        flight.task = asyncio.create_task(self._fly(flight, producer))
        return flight

    def under_way(self, key: str) -> bool:
        """Whether ``join`` would join a flight rather than start one."""
        return key in self._flights

    @property
    def active(self) -> int:
        return len(self._flights)

    @property
    def private_bytes(self) -> int:
        """Bytes in the private spools of readers that have not left."""
        return sum(flight.written for flight in self._private)

    def leave(self, flight: Flight) -> None:
        flight.readers -= 1
        if flight.readers > 0:
            return
        if not flight.done and flight.task is not None:
            logger.info("result cache: every reader left; cancelling the model call")
            flight.task.cancel()
        elif not flight.shared:
            flight._spool.discard()
        self._private.discard(flight)

    async def _fly(self, flight: Flight, producer: Producer) -> None:
        try:
            await producer(flight.append)
        except BaseException as exc:
            flight.error = exc
            flight._spool.discard()
            if not isinstance(exc, Exception):
                raise
        else:
            if flight.shared:
                with tracing.span("cache.store"):
                    flight.committed = self._store.commit(flight._spool)
            else:
                flight._spool.close()  # the reader still reads it; gone when it leaves
        finally:
            flight.done = True
            if flight.shared:
                del self._flights[flight.key]
            flight._notify()
