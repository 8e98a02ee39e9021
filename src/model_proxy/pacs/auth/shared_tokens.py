"""The PACS tokens of ``token`` and ``zhivaAuth`` servers, shared by replicas in Redis.

With ``--redis`` the record a token file would hold (:class:`StoredTokens`) lives in
Redis instead, encrypted (token_cipher.py), under the deployment's keys::

    model-proxy:<namespace>:tokens:<server id>          the encrypted record
    model-proxy:<namespace>:tokens:<server id>:lock     redis-py Lock: one renewal at a time
    model-proxy:<namespace>:tokens:<server id>:fence    INCR by every lock holder

A replica renews (refresh, sign-in, exchange) only while it holds the lock, and its
record is written only if, at that instant, the lock is still its own and no other
holder came after it (the fence): one Lua script checks both and writes. A replica
whose lease ran out mid-exchange therefore cannot overwrite a newer result. The others
wait for the lock, read the record the holder wrote and use it (docs/replicas.md).

Redis failures become :class:`SharedStateUnavailable` (503 ``redis_unavailable``):
nothing that needs the lock is done without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError

from model_proxy.config import AuthType
from model_proxy.errors import ErrorCode, SharedStateUnavailable
from model_proxy.pacs.auth.session import PacsAuthUnavailable
from model_proxy.pacs.auth.token_cipher import TokenCipher
from model_proxy.pacs.auth.tokens import StoredTokens, TokenStore
from model_proxy.shared.redis_link import RedisLink, RedisSettings

logger = logging.getLogger("model_proxy.auth")

MIGRATED_SUFFIX = ".migrated-to-redis"
# The auth types whose tokens go to Redis; oauth2 tokens stay in each replica's memory
# (a new one costs one call; no single-use credential is at stake).
SHARED_TOKEN_TYPES = (AuthType.TOKEN, AuthType.ZHIVA)

# KEYS: record, lock, fence; ARGV: lock token, fence, value. Writes only for the
# replica that still holds the lock and was its last holder.
_FENCED_SET = """
if redis.call('GET', KEYS[2]) == ARGV[1] and redis.call('GET', KEYS[3]) == ARGV[2] then
    redis.call('SET', KEYS[1], ARGV[3])
    return 1
end
return 0
"""


@dataclass(frozen=True)
class _Keys:
    record: str
    lock: str
    fence: str


class SharedTokenStore:
    """The token records of all servers in Redis; one per process, across reloads."""

    def __init__(
        self,
        link: RedisLink,
        cipher: TokenCipher | None,
        disk: TokenStore,
        *,
        lease: float,
        wait: float,
    ) -> None:
        self.link = link
        self._cipher = cipher
        self._disk = disk  # token files of before --redis, migrated on first use
        self._lease = lease
        self._wait = wait
        self._fenced_set = link.client.register_script(_FENCED_SET)

    @classmethod
    def from_settings(
        cls, link: RedisLink, settings: RedisSettings, data_dir: Path
    ) -> SharedTokenStore:
        """The store of ``serve`` and ``check-auth``: encrypted with --redis-key-file
        (checked readable by the CLI; without it, a token server fails clearly at first
        use), token files of before --redis migrated from ``<data_dir>/tokens``."""
        key_file = settings.key_file
        return cls(
            link,
            TokenCipher.from_file(key_file) if key_file is not None else None,
            TokenStore(data_dir / "tokens"),
            lease=settings.token_lock_lease,
            wait=settings.token_lock_wait,
        )

    def keys(self, server_id: str) -> _Keys:
        self._disk.path_for(server_id)  # checks the id: config keys are UUIDs
        record = self.link.key("tokens", server_id)
        return _Keys(record, f"{record}:lock", f"{record}:fence")

    async def load(self, server_id: str, label: str) -> StoredTokens:
        """The server's record; a token file of before --redis is migrated into Redis."""
        keys = self.keys(server_id)
        self._require_cipher(label)  # before anything is obtained that could not be stored
        async with self._redis(label, "reading the shared PACS tokens"):
            value = _as_bytes(await self.link.client.get(keys.record))
        if value is None:
            return await self._migrate(server_id, keys, label)
        return self._decrypted(value, keys, label)

    @contextlib.asynccontextmanager
    async def renewing(self, server_id: str, label: str) -> AsyncIterator[HeldLock]:
        """Hold the server's renewal lock (waiting for another replica's renewal)."""
        keys = self.keys(server_id)
        lock = Lock(
            self.link.client,
            keys.lock,
            timeout=self._lease,
            sleep=0.05,
            blocking_timeout=self._wait,
        )
        async with self._redis(label, "a PACS token renewal (it takes the shared lock)"):
            acquired = await lock.acquire()
            if not acquired:
                raise PacsAuthUnavailable(
                    f"{label}: another replica has been renewing the PACS tokens for over"
                    f" {self._wait:.0f} s; try again later"
                )
            try:
                fence = int(await self.link.client.incr(keys.fence))
            except BaseException:
                await _release(lock, label)
                raise
        try:
            yield HeldLock(self, server_id, keys, lock, fence, label)
        finally:
            await _release(lock, label)

    def encrypted(self, tokens: StoredTokens, keys: _Keys) -> bytes:
        cipher = self._require_cipher()
        return cipher.encrypt(json.dumps(tokens.to_json()).encode(), keys.record)

    async def fenced_set(self, keys: _Keys, token: bytes, fence: int, value: bytes) -> bool:
        written = await self._fenced_set(
            keys=[keys.record, keys.lock, keys.fence], args=[token, str(fence), value]
        )
        return bool(written)

    @contextlib.asynccontextmanager
    async def _redis(self, label: str, what: str) -> AsyncIterator[None]:
        """Redis failures as a 503 naming Redis and what needed it; health recorded."""
        try:
            yield
        except (RedisError, OSError) as exc:
            self.link.health.failed(exc)
            raise SharedStateUnavailable(
                f"{label}: {what} needs the shared Redis at {self.link.where}, which does"
                f" not answer ({str(exc) or type(exc).__name__}); the PACS tokens are"
                " renewed only under its lock, so that no two replicas exchange or refresh"
                " them at once"
            ) from None
        self.link.health.succeeded()

    def _decrypted(self, value: bytes, keys: _Keys, label: str) -> StoredTokens:
        cipher = self._require_cipher(label)
        try:
            return StoredTokens.from_json(json.loads(cipher.decrypt(value, keys.record)))
        except ValueError as exc:
            raise SharedStateUnavailable(
                f"{label}: the PACS tokens in Redis ({keys.record}) cannot be read: {exc};"
                " every replica needs the same --redis-key-file",
                code=ErrorCode.REDIS_TOKENS_UNREADABLE,
            ) from None

    def _require_cipher(self, label: str = "PACS tokens") -> TokenCipher:
        if self._cipher is None:
            raise SharedStateUnavailable(
                f"{label}: the PACS tokens are shared through Redis (--redis) but no"
                " --redis-key-file is given to encrypt them; give every replica the same one",
                code=ErrorCode.REDIS_TOKENS_UNREADABLE,
            )
        return self._cipher

    async def _migrate(self, server_id: str, keys: _Keys, label: str) -> StoredTokens:
        path = self._disk.path_for(server_id)
        if not await asyncio.to_thread(path.exists):
            return StoredTokens()
        stored = await asyncio.to_thread(self._disk.load, server_id)
        if stored == StoredTokens():
            return stored
        value = self.encrypted(stored, keys)
        current: bytes | None = None
        async with self._redis(label, "migrating the token file into Redis"):
            # NX: another replica's record (or migration) wins; this file is then unused.
            written = await self.link.client.set(keys.record, value, nx=True)
            if not written:
                current = _as_bytes(await self.link.client.get(keys.record))
        target = path.with_name(path.name + MIGRATED_SUFFIX)
        try:
            await asyncio.to_thread(path.replace, target)
        except OSError as exc:
            logger.warning("%s: cannot rename %s (%s)", label, path, exc.strerror)
        if written:
            logger.info(
                "%s: migrated the token file %s into Redis (%s); the file is now %s",
                label,
                path,
                keys.record,
                target.name,
            )
            return stored
        logger.info(
            "%s: Redis already holds tokens for this server; the token file %s is not"
            " used (renamed to %s)",
            label,
            path,
            target.name,
        )
        return StoredTokens() if current is None else self._decrypted(current, keys, label)


class HeldLock:
    """The renewal lock of one server, held; ``save`` writes only while it is ours."""

    def __init__(
        self,
        store: SharedTokenStore,
        server_id: str,
        keys: _Keys,
        lock: Lock,
        fence: int,
        label: str,
    ) -> None:
        self._store = store
        self._server_id = server_id
        self._keys = keys
        self._lock = lock
        self.fence = fence
        self._label = label

    async def load(self) -> StoredTokens:
        return await self._store.load(self._server_id, self._label)

    async def save(self, tokens: StoredTokens) -> None:
        """Write ``tokens`` if the lock is still ours; the tokens work in this process
        whatever happens here, so a failure is logged, never raised."""
        token = self._lock.local.token
        if token is None:
            logger.error(
                "%s: the renewal lock was lost; the new tokens are not shared", self._label
            )
            return
        value = self._store.encrypted(tokens, self._keys)
        health = self._store.link.health
        try:
            written = await self._store.fenced_set(self._keys, token, self.fence, value)
        except (RedisError, OSError) as exc:
            health.failed(exc)
            logger.error(
                "%s: cannot write the new PACS tokens to Redis (%s); this replica uses them,"
                " the others cannot",
                self._label,
                str(exc) or type(exc).__name__,
            )
            return
        health.succeeded()
        if not written:
            logger.warning(
                "%s: the renewal lock's lease ran out before the new tokens were written;"
                " another replica's newer tokens stand (fence %d)",
                self._label,
                self.fence,
            )


async def _release(lock: Lock, label: str) -> None:
    try:
        await lock.release()
    except LockError:
        logger.warning("%s: the renewal lock's lease had run out before its release", label)
    except (RedisError, OSError):
        pass  # Redis is gone; the lease ends the lock


def _as_bytes(value: bytes | str | None) -> bytes | None:
    # The link's client never decodes (decode_responses=False); typing allows str.
    return value.encode() if isinstance(value, str) else value
