"""The prefetch ledger's two places (prefetch/ledger.py, prefetch/shared_ledger.py): the
SQLite table's entries and its migrated-rows backup, and a shared ledger whose Redis
does not answer (nothing listens on its port): every call raises LedgerUnavailable
naming Redis without its password, the link's health says so, and the SQLite rows wait
for the migration. The shared ledger against a real Redis:
tests/integration/test_shared_ledger.py."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from model_proxy.prefetch import open_ledger
from model_proxy.prefetch.ledger import LedgerTable, LedgerUnavailable, RunKey, SqliteLedger
from model_proxy.prefetch.shared_ledger import DAY, RedisLedger, ledger_ttl
from model_proxy.shared import RedisLink, RedisSettings

pytestmark = pytest.mark.anyio

STUDY = RunKey("chest CT", "server-1", "1.2.3", None)
SERIES = RunKey("chest CT", "server-1", "1.2.3", "1.2.3.1")


def unreachable_redis() -> RedisLink:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    url = f"redis://:s3cret@127.0.0.1:{port}/0"
    return RedisLink.connect(RedisSettings(url=url, timeout=1.0))


async def test_the_sqlite_ledger_keeps_study_and_series_entries_apart(tmp_path: Path) -> None:
    ledger = await SqliteLedger.open(tmp_path / "jobs.sqlite")
    try:
        assert await ledger.fingerprint(STUDY) is None
        await ledger.record(STUDY, "model:study:10", "")
        await ledger.record(SERIES, "model:series:6", "job-1")
        await ledger.record(STUDY, "model:study:10", "job-2")  # the job id, once submitted
        assert await ledger.fingerprint(STUDY) == "model:study:10"
        assert await ledger.fingerprint(SERIES) == "model:series:6"
        await ledger.forget(SERIES)
        assert await ledger.fingerprint(SERIES) is None
    finally:
        await ledger.close()
    table = LedgerTable(tmp_path / "jobs.sqlite")  # a restart: the entries are kept
    try:
        (row,) = table.rows()
        assert (row.key, row.fingerprint, row.job_id) == (STUDY, "model:study:10", "job-2")
        table.move_to_backup([row])
        assert table.rows() == []
    finally:
        table.close()


async def test_a_closed_sqlite_ledger_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    table = LedgerTable(tmp_path / "jobs.sqlite")
    ledger = SqliteLedger(table)
    table.close()
    with pytest.raises(LedgerUnavailable, match=r"the ledger in jobs\.sqlite cannot be read"):
        await ledger.fingerprint(STUDY)
    with pytest.raises(LedgerUnavailable, match="cannot be written"):
        await ledger.record(STUDY, "model:study:10", "")


async def test_a_shared_ledger_whose_redis_does_not_answer_says_so(tmp_path: Path) -> None:
    link = unreachable_redis()
    ledger = RedisLedger(link, ledger_ttl(1))
    try:
        with pytest.raises(LedgerUnavailable) as refused:
            await ledger.fingerprint(STUDY)
        message = str(refused.value)
        assert "the ledger in Redis at redis://:***@127.0.0.1:" in message
        assert "cannot be read" in message and "s3cret" not in message
        with pytest.raises(LedgerUnavailable, match="cannot be written"):
            await ledger.record(STUDY, "model:study:10", "")
        assert link.health.reachable is False and link.health.failures == 2
    finally:
        await link.aclose()


async def test_with_redis_down_at_start_the_sqlite_rows_wait_for_the_migration(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.sqlite"
    table = LedgerTable(path)
    table.record(STUDY, "model:study:10", "job-1")
    table.close()
    link = unreachable_redis()
    try:
        ledger = await open_ledger(path, 1, link)  # a warning, not a failed start
        with pytest.raises(LedgerUnavailable):
            await ledger.fingerprint(STUDY)  # the migration is tried again first
        await ledger.close()
    finally:
        await link.aclose()
    table = LedgerTable(path)
    try:
        assert [row.key for row in table.rows()] == [STUDY]
    finally:
        table.close()


def test_an_entry_outlives_the_lookback_window_by_a_day() -> None:
    # The window is today and --watch-lookback days before it.
    assert ledger_ttl(0) == 2 * DAY
    assert ledger_ttl(1) == 3 * DAY
