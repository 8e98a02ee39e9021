"""The result cache shared by the replicas of one deployment, on Redis (``--redis``).

A replica that misses its own disk cache (cache/result_cache.py) starts a local
flight (cache/flights.py) whose producer is :meth:`SharedResults.produce`:

1. the entry in Redis, if another replica stored it: streamed into the flight in
   chunks of ``_CHUNK_BYTES`` (the flight's readers get it as it comes);
2. else the per-key lock with a lease (redis-py's ``Lock``, renewed while the model
   call runs): its holder calls the model, appends the result to a partial key as it
   streams and renames it into place once complete (a half result is never visible
   under the entry's name), then tells the waiters on a pub/sub channel;
3. a replica that does not get the lock waits for that message (checking the lock
   while it waits: a dead holder's lease expires and the next replica takes over),
   then reads the entry; a result over ``max_entry_bytes`` cannot be shared, so the
   holder says "too large" and every waiter calls the model itself.

Redis keys (all under ``model-proxy:<--redis-namespace>:results:``)::

    entry:<key>       the identity result, then a trailer (length, CRC-32), TTL ``ttl``
    partial:<key>:<n> an entry being written by the lock holder
    lock:<key>        the lease of the replica calling the model
    large:<key>       "too large to share": replicas call the model themselves
    done:<key>        pub/sub channel: "stored", "too-large" or "failed"

Redis is never required: a failed or slow call (each has the client's short timeout)
is reported to the link's :class:`RedisHealth` (shared/redis_health.py: /status and
``model_proxy_redis_up``; while it says unreachable, Redis is not tried until the
app's ping finds it back) and the flight goes on locally; only a Redis that
fails in the middle of an entry already being streamed out ends that response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError

from model_proxy.cache.flights import Producer
from model_proxy.errors import ErrorCode, UpstreamError
from model_proxy.shared.redis_health import RedisHealth

logger = logging.getLogger(__name__)

PREFIX = "model-proxy:default:results:"
_TRAILER = struct.Struct("<QI")
_CHUNK_BYTES = 1 << 20
# The lock holder appends the result to Redis in pieces of this size.
_APPEND_BYTES = 1 << 20

T = TypeVar("T")
Append = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True)
class SharedResultsPolicy:
    # Larger results stay in the disk cache of the replica that made them.
    max_entry_bytes: int = 8 << 20
    # Seconds an entry lives in Redis after it was stored or last read.
    ttl: float = 24 * 3600.0
    # Seconds the lock holder's lease lasts; renewed every third of it.
    lock_lease: float = 30.0
    # A waiter calls the model itself past this (its holder seems stuck).
    wait_limit: float = 600.0
    # Seconds one Redis call may take in all (connecting included); the client's
    # socket timeouts bound each command, this bounds a socket that never errors.
    call_timeout: float = 4.0


class Source(StrEnum):
    """Where a flight's result came from."""

    REDIS = "redis"  # another replica's entry
    MODEL = "model"  # this replica called the model


class _Unavailable(Exception):
    """A Redis call failed; already reported to RedisHealth."""


class _Outcome(StrEnum):
    STORED = "stored"
    TOO_LARGE = "too-large"
    FAILED = "failed"


class SharedResults:
    def __init__(
        self,
        client: Redis,
        health: RedisHealth,
        policy: SharedResultsPolicy,
        *,
        prefix: str = PREFIX,
    ) -> None:
        self._client = client
        self._prefix = prefix  # model-proxy:<--redis-namespace>:results:
        self.health = health
        self.policy = policy
        self._ttl = max(1, round(policy.ttl))

    async def produce(self, key: str, append: Append, compute: Producer) -> Source:
        """Append the identity result of ``key`` to ``append``: from Redis, from the
        replica computing it, or by ``compute`` (the model call) shared when done."""
        deadline = time.monotonic() + self.policy.wait_limit
        while self.health.reachable is not False:
            try:
                if await self._copy_entry(key, append):
                    return Source.REDIS
                if await self._call("look up", self._client.exists(self.name("large", key))):
                    break
                lock = self._client.lock(
                    self.name("lock", key),
                    timeout=self.policy.lock_lease,
                    blocking=False,
                    thread_local=False,
                )
                if await self._call("take the lock", lock.acquire()):
                    await self._compute_and_share(key, append, compute, lock)
                    return Source.MODEL
                outcome = await self._wait(key, deadline)
            except _Unavailable:
                break
            if outcome is _Outcome.TOO_LARGE or time.monotonic() >= deadline:
                break
            # Stored: read it; failed, or the holder gone: try the lock again.
        await compute(append)
        return Source.MODEL

    async def copy(self, key: str, append: Append) -> bool:
        """Append the entry of ``key`` as Redis holds it, nothing else: a job's result
        another replica made (``GET /jobs/{id}/result``). False when Redis does not
        hold it or does not answer."""
        if self.health.reachable is False:
            return False
        try:
            return await self._copy_entry(key, append)
        except _Unavailable:
            return False

    def name(self, kind: str, key: str) -> str:
        """The Redis key of ``kind`` (entry, partial, lock, large, done) for ``key``."""
        return f"{self._prefix}{kind}:{key}"

    # --- reading -------------------------------------------------------------------

    async def _copy_entry(self, key: str, append: Append) -> bool:
        """Stream the entry into ``append``; False when Redis does not have it."""
        name = self.name("entry", key)
        size = await self._call("look up", self._client.strlen(name))
        if size < _TRAILER.size:
            return False
        trailer = await self._range(name, size - _TRAILER.size, size - 1)
        length, crc = _TRAILER.unpack(trailer)
        if length != size - _TRAILER.size:
            await self._call("drop", self._client.delete(name))
            return False
        # Read from now on: it lives another ttl (an LRU of sorts across replicas).
        await self._call("touch", self._client.expire(name, self._ttl))
        position, running = 0, 0
        while position < length:
            end = min(position + _CHUNK_BYTES, length) - 1
            try:
                data = await self._range(name, position, end)
            except _Unavailable:
                if position == 0:
                    raise
                raise _lost(self.health) from None
            if not data:
                break
            running = zlib.crc32(data, running)
            position += len(data)
            await append(data)
        if position != length or running != crc:
            # Expired or replaced while read: the flight fails rather than store it.
            raise UpstreamError(
                f"the result shared in Redis at {self.health.where} changed while it was read",
                code=ErrorCode.REDIS_ERROR,
            )
        return True

    async def _range(self, name: str, start: int, end: int) -> bytes:
        data = await self._call("read", self._client.getrange(name, start, end))
        # The client does not decode responses (shared/redis_link.py): always bytes.
        return data if isinstance(data, bytes) else data.encode()

    async def _wait(self, key: str, deadline: float) -> _Outcome:
        """Until the lock holder says how its call ended, or its lease is gone."""
        pubsub: PubSub = self._client.pubsub()
        try:
            await self._call("subscribe", pubsub.subscribe(self.name("done", key)))
            poll = max(0.05, min(1.0, self.policy.lock_lease / 3))
            while time.monotonic() < deadline:
                # Checked after subscribing: a message sent before then is not missed.
                if await self._call("look up", self._client.exists(self.name("entry", key))):
                    return _Outcome.STORED
                if not await self._call("look up", self._client.exists(self.name("lock", key))):
                    return _Outcome.FAILED
                message = await self._call(
                    "wait", pubsub.get_message(ignore_subscribe_messages=True, timeout=poll)
                )
                if message is not None and message.get("type") == "message":
                    data = message.get("data")
                    if data == _Outcome.TOO_LARGE.encode():
                        return _Outcome.TOO_LARGE
                    if data == _Outcome.FAILED.encode():
                        return _Outcome.FAILED
            return _Outcome.FAILED
        finally:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(pubsub.aclose(), self.policy.call_timeout)

    # --- computing and sharing ------------------------------------------------------

    async def _compute_and_share(
        self, key: str, append: Append, compute: Producer, lock: Lock
    ) -> None:
        writer = _EntryWriter(self, key)
        renewal = asyncio.create_task(self._renew(lock))

        async def tee(data: bytes) -> None:
            await append(data)
            await writer.add(data)

        outcome = _Outcome.FAILED
        try:
            await compute(tee)
            outcome = await writer.finish()
        finally:
            renewal.cancel()
            if outcome is _Outcome.FAILED:
                await writer.abandon()
            await self._finish_lock(key, lock, outcome)

    async def _renew(self, lock: Lock) -> None:
        """Keep the lease while the model call runs (a long call keeps the lock)."""
        while True:
            await asyncio.sleep(self.policy.lock_lease / 3)
            try:
                await self._call("renew the lock", lock.reacquire())
            except (_Unavailable, LockError):
                return  # the call goes on; another replica may call the model too

    async def _finish_lock(self, key: str, lock: Lock, outcome: _Outcome) -> None:
        try:
            await self._call(
                "notify", self._client.publish(self.name("done", key), outcome.encode())
            )
            await self._call("release the lock", lock.release())
        except (_Unavailable, LockError):
            pass  # the lease expires by itself

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        """``call``, with failures (and a hang past the client's timeouts) reported."""
        try:
            async with asyncio.timeout(self.policy.call_timeout):
                result = await call
        except (RedisError, OSError, TimeoutError) as exc:
            if isinstance(exc, LockError):
                raise
            self.health.failed(exc)
            raise _Unavailable from None
        self.health.succeeded()
        return result


class _EntryWriter:
    """The lock holder's copy of the result in Redis, written as the model streams it."""

    def __init__(self, shared: SharedResults, key: str) -> None:
        self._shared = shared
        self._key = key
        self._partial = shared.name("partial", f"{key}:{secrets.token_hex(4)}")
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.size = 0
        self._crc = 0
        self.too_large = False
        self.broken = False  # Redis failed: the flight goes on without sharing
        self._started = False

    async def add(self, data: bytes) -> None:
        self.size += len(data)
        self._crc = zlib.crc32(data, self._crc)
        if self.too_large or self.broken:
            return
        if self.size > self._shared.policy.max_entry_bytes:
            self.too_large = True
            self._pending.clear()
            await self.abandon()
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= _APPEND_BYTES:
            await self._flush()

    async def _flush(self, tail: bytes = b"") -> None:
        data = b"".join(self._pending) + tail
        self._pending.clear()
        self._pending_bytes = 0
        client, ttl = self._shared._client, self._shared._ttl
        try:
            async with client.pipeline(transaction=True) as pipe:
                pipe.append(self._partial, data)
                pipe.expire(self._partial, ttl)
                await self._shared._call("store", pipe.execute())
            self._started = True
        except _Unavailable:
            self.broken = True

    async def finish(self) -> _Outcome:
        """Rename the partial key into place, or mark the key too large to share."""
        shared, key = self._shared, self._key
        if self.too_large:
            logger.info(
                "shared results: %s is %d bytes, over --redis-max-entry; kept on this"
                " replica's disk only",
                key,
                self.size,
            )
            with contextlib.suppress(_Unavailable):
                await shared._call(
                    "store", shared._client.set(shared.name("large", key), b"1", ex=shared._ttl)
                )
            return _Outcome.TOO_LARGE
        if self.broken:
            return _Outcome.FAILED
        await self._flush(_TRAILER.pack(self.size, self._crc))
        if self.broken:
            return _Outcome.FAILED
        try:
            async with shared._client.pipeline(transaction=True) as pipe:
                pipe.rename(self._partial, shared.name("entry", key))
                pipe.expire(shared.name("entry", key), shared._ttl)
                await shared._call("store", pipe.execute())
        except _Unavailable:
            return _Outcome.FAILED
        return _Outcome.STORED

    async def abandon(self) -> None:
        if not self._started:
            return
        self._started = False
        with contextlib.suppress(_Unavailable):  # else its TTL removes it
            await self._shared._call("drop", self._shared._client.delete(self._partial))


def _lost(health: RedisHealth) -> UpstreamError:
    return UpstreamError(
        f"Redis at {health.where} stopped answering while a shared result was read;"
        " ask again (this replica answers from its own cache while Redis is down)",
        code=ErrorCode.REDIS_ERROR,
    )
