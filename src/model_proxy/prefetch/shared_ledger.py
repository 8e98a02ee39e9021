"""The prefetch ledger shared by the replicas (``--redis``): one key per entry.

Only the replica holding the watcher lease (prefetch/lease.py) reads and writes it, so
the replica that takes the lease over knows what the one before it ran. Each entry is
its own key with a TTL, so the ledger cannot grow without bound (a hash of entries
would, Redis 7.0 expiring only whole keys)::

    model-proxy:<ns>:prefetch:ledger:<server>:<study>:<digest of rule, server, study, series>

holding ``{"fingerprint", "jobId", "at", "rule", "series"}`` as JSON. The TTL outlasts
the lookback window (``--watch-lookback`` days and today) by a day: past it the study
is no longer listed, so its entry is never asked for again.

Redis down: a read or write raises :class:`LedgerUnavailable` after reporting to the
link's health (logged once per outage, /status, /metrics); the watcher leaves the
study for a later poll. At start (Redis down then: before the first use) the rows of
the replica's SQLite ledger are migrated into it, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterator

from redis.exceptions import RedisError

from model_proxy.prefetch.ledger import (
    MIGRATED_TABLE,
    LedgerTable,
    LedgerUnavailable,
    RunKey,
)
from model_proxy.shared import RedisLink

logger = logging.getLogger("model_proxy")

DAY = 86400.0
# Entries copied per round trip when the SQLite ledger is migrated.
_MIGRATION_BATCH = 500


def ledger_ttl(lookback_days: int) -> float:
    """Seconds an entry is kept: today and the lookback days, and a day for the
    difference between the proxy's local date and a study's StudyDate."""
    return (lookback_days + 2) * DAY


class RedisLedger:
    """A :class:`~model_proxy.prefetch.ledger.PrefetchLedger` in Redis."""

    def __init__(
        self, link: RedisLink, ttl: float, migrate_from: LedgerTable | None = None
    ) -> None:
        self._link = link
        self._ttl_ms = max(1, round(ttl * 1000))
        # The replica's SQLite ledger, copied in before the first use, then let go.
        self._local = migrate_from

    def key_of(self, key: RunKey) -> str:
        digest = hashlib.sha256(
            json.dumps([key.rule, key.server, key.study, key.series]).encode()
        ).hexdigest()[:32]
        # Server and study in clear: an administrator can find (and delete) a study's
        # entries with SCAN; the digest keeps rule names and series apart exactly.
        return self._link.key("prefetch", "ledger", key.server, key.study, digest)

    async def fingerprint(self, key: RunKey) -> str | None:
        await self.migrate()
        with self._reporting("read"):
            value = await self._link.client.get(self.key_of(key))
        if value is None:
            return None
        try:
            return str(json.loads(value)["fingerprint"])
        except (ValueError, KeyError, TypeError):
            # Not ours to interpret: run it again rather than never.
            logger.warning("prefetch: unreadable ledger entry %s; it is replaced", self.key_of(key))
            return None

    async def record(self, key: RunKey, fingerprint: str, job_id: str) -> None:
        value = _entry(key, fingerprint, job_id, time.time())
        with self._reporting("written"):
            await self._link.client.set(self.key_of(key), value, px=self._ttl_ms)

    async def forget(self, key: RunKey) -> None:
        with self._reporting("written"):
            await self._link.client.delete(self.key_of(key))

    async def close(self) -> None:
        if self._local is not None:
            local, self._local = self._local, None
            await asyncio.to_thread(local.close)

    async def migrate(self) -> None:
        """Copy the rows of the replica's SQLite ledger that Redis lacks (``SET NX``:
        never over another replica's entry), then move them to the backup table. Once:
        at start, or before the first use when Redis did not answer then."""
        if self._local is None:
            return
        rows = await asyncio.to_thread(self._local.rows)
        now = time.time()
        current = [(row, self._ttl_ms - round((now - row.at) * 1000)) for row in rows]
        # Past its TTL the study has left the lookback window: nothing to remember.
        current = [(row, left_ms) for row, left_ms in current if left_ms > 0]
        written: list[bool] = []
        for start in range(0, len(current), _MIGRATION_BATCH):
            with self._reporting("written"):
                async with self._link.client.pipeline(transaction=False) as pipe:
                    for row, left_ms in current[start : start + _MIGRATION_BATCH]:
                        value = _entry(row.key, row.fingerprint, row.job_id, row.at)
                        pipe.set(self.key_of(row.key), value, px=left_ms, nx=True)
                    written += [bool(answer) for answer in await pipe.execute()]
        if rows:
            await asyncio.to_thread(self._local.move_to_backup, rows)
        await self.close()
        if rows:
            logger.info(
                "prefetch: migrated the ledger of jobs.sqlite into Redis: %d entries copied,"
                " %d already there, %d past the lookback window; the rows are kept in the"
                " table %s",
                written.count(True),
                written.count(False),
                len(rows) - len(written),
                MIGRATED_TABLE,
            )

    @contextlib.contextmanager
    def _reporting(self, what: str) -> Iterator[None]:
        """Redis failures as LedgerUnavailable, and every outcome to the link's health."""
        try:
            yield
        except (RedisError, OSError) as exc:
            self._link.health.failed(exc)  # the warning, once per outage
            reason = str(exc) or type(exc).__name__
            raise LedgerUnavailable(
                f"the ledger in Redis at {self._link.where} cannot be {what} ({reason})"
            ) from None
        self._link.health.succeeded()


def _entry(key: RunKey, fingerprint: str, job_id: str, at: float) -> bytes:
    entry = {"fingerprint": fingerprint, "jobId": job_id, "at": at, "rule": key.rule}
    entry["series"] = key.series or ""
    return json.dumps(entry).encode()
