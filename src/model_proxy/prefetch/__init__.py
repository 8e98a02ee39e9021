"""Prefetch on arrival (docs/jobs.md, "Prefetch"): rules.json says which models run on
which new studies; the watcher finds those studies and submits their jobs.

``role.py`` (which replica watches), ``discovery.py`` (QIDO-RS or a folder's index),
``ledger.py`` (what ran, in jobs.sqlite), ``shared_ledger.py`` (what ran, in Redis
with ``--redis``), ``watcher.py`` (the polling loop). The rules themselves are config:
config/rules.py.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from model_proxy.jobs import JobManager
from model_proxy.prefetch.ledger import (
    LedgerTable,
    LedgerUnavailable,
    PrefetchLedger,
    SqliteLedger,
)
from model_proxy.prefetch.role import SoleReplica, WatcherRole
from model_proxy.prefetch.shared_ledger import RedisLedger, ledger_ttl
from model_proxy.prefetch.watcher import JobObserver, PrefetchWatcher, WatchPolicy
from model_proxy.runtime.reload import LiveState
from model_proxy.settings import Settings
from model_proxy.shared import RedisLink

logger = logging.getLogger(__name__)

__all__ = [
    "PrefetchWatcher",
    "SoleReplica",
    "WatchPolicy",
    "WatcherRole",
    "open_ledger",
    "start_watcher",
]


async def start_watcher(
    settings: Settings,
    live: LiveState,
    jobs: JobManager | None,
    ledger_path: Path,
    on_job: JobObserver | None = None,
    role: WatcherRole | None = None,
    redis: RedisLink | None = None,
) -> PrefetchWatcher | None:
    """The running watcher; None with ``--watch-interval 0`` or without jobs. ``role``
    says which replica polls (default: this one, the only one); with ``redis`` the
    ledger is the one the replicas share."""
    if settings.watch_interval <= 0:
        logger.info("prefetch watcher off (--watch-interval 0)")
        return None
    if jobs is None:
        logger.info("prefetch watcher off: jobs are off (--cache-size 0)")
        return None
    ledger = await open_ledger(ledger_path, settings.watch_lookback_days, redis)
    policy = WatchPolicy(
        interval=settings.watch_interval,
        lookback_days=settings.watch_lookback_days,
        max_studies=settings.watch_max_studies,
    )
    watcher = PrefetchWatcher(live, jobs, ledger, policy, role or SoleReplica(), on_job)
    watcher.start()
    return watcher


async def open_ledger(path: Path, lookback_days: int, redis: RedisLink | None) -> PrefetchLedger:
    """The SQLite ledger at ``path``, or with ``redis`` the shared one, into which the
    SQLite ledger's rows are migrated now (or, Redis down, before its first use)."""
    if redis is None:
        return await SqliteLedger.open(path)
    local = await asyncio.to_thread(LedgerTable, path)
    shared = RedisLedger(redis, ledger_ttl(lookback_days), migrate_from=local)
    try:
        await shared.migrate()
    except LedgerUnavailable as exc:
        logger.warning("prefetch: %s; the migration of jobs.sqlite's ledger waits for it", exc)
    return shared
