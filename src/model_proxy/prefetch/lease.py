"""The watcher role of several replicas: whoever holds a Redis lease watches.

With ``--redis`` every replica runs a watcher, and before each poll it asks for the
lease ``model-proxy:<ns>:prefetch:watcher``: a key holding the holder's identity that
expires after ``lease_seconds`` unless renewed. ``SET NX PX`` takes a free lease; the
holder renews it at each poll (a compare-and-renew script, so a replica whose lease
already passed to another cannot take it back). A replica that dies stops renewing and
another takes over within one lease. At shutdown the holder deletes it, so another
takes over at its next poll.

Redis down: the holder goes on watching until its lease would have run out (no other
replica can have taken it before then), then stops; the others do not start. Prefetch
pauses rather than run a study twice.
"""

from __future__ import annotations

import logging
import time
import uuid

from redis.exceptions import RedisError

from model_proxy.shared import RedisLink

logger = logging.getLogger("model_proxy")

# KEYS[1] the lease, ARGV[1] our identity, ARGV[2] the lease in ms: renew it if ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] the lease, ARGV[1] our identity: delete it if ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisWatcherLease:
    """A :class:`~model_proxy.prefetch.role.WatcherRole` shared by the replicas."""

    def __init__(self, link: RedisLink, lease_seconds: float) -> None:
        self._link = link
        self._key = link.key("prefetch", "watcher")
        self._identity = uuid.uuid4().hex
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._holding = False
        self._held_until = 0.0  # monotonic: when our last renewal runs out

    @property
    def description(self) -> str:
        holder = "this replica holds it" if self._holding else "another replica holds it"
        return f"Redis lease {self._key} ({holder})"

    async def is_watcher(self) -> bool:
        asked_at = time.monotonic()
        client = self._link.client
        try:
            held = await client.set(self._key, self._identity, nx=True, px=self._lease_ms)
            if not held:
                held = bool(await client.eval(_RENEW, 1, self._key, self._identity, self._lease_ms))
        except (RedisError, OSError) as exc:
            self._link.health.failed(exc)
            # Nobody else can hold the lease before ours runs out; after that, stop.
            self._holding = self._holding and time.monotonic() < self._held_until
            return self._holding
        self._link.health.succeeded()
        if held:
            self._held_until = asked_at + self._lease_ms / 1000
        if held != self._holding:
            logger.info(
                "prefetch watcher: this replica %s the Redis lease",
                "took" if held else "does not hold",
            )
        self._holding = bool(held)
        return self._holding

    async def release(self) -> None:
        if not self._holding:
            return
        self._holding = False
        try:
            await self._link.client.eval(_RELEASE, 1, self._key, self._identity)
        except (RedisError, OSError) as exc:
            self._link.health.failed(exc)  # the lease runs out by itself
