"""Appends audit records to a JSON-lines file from a thread of its own.

The event loop only puts a ready line on a bounded queue (``write`` never blocks);
a writer thread appends batches to the file. The file rotates by size
(``audit.jsonl`` -> ``audit.jsonl.1`` ...), and is reopened when someone else
moved it away (logrotate without ``copytruncate``) or when ``reopen()`` is called
(the SIGHUP hook). A full or failing disk costs records, never requests: the loss
is counted and logged at most once a minute, and writing resumes once the disk
accepts data again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
_STOP = b""
_ERROR_LOG_INTERVAL = 60.0


class AuditWriter:
    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 100 * MiB,
        backups: int = 10,
        queue_size: int = 10_000,
    ) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._backups = backups
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self._reopen = threading.Event()
        self._broken_line = False  # a failed write may have left half a line
        self._last_error_log = -_ERROR_LOG_INTERVAL
        self._loss_lock = threading.Lock()  # losses are counted by both threads
        self.lost = 0  # records that never reached the file

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def write(self, record: Mapping[str, Any]) -> None:
        """Queue one record; never blocks the event loop."""
        line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self._lose(1, "the writer is behind (queue full)")

    def reopen(self) -> None:
        """Close and reopen the file before the next record (after external rotation)."""
        self._reopen.set()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the thread (blocks up to ``timeout``)."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < 1000:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = _STOP in batch
            lines = [line for line in batch if line != _STOP]
            if lines:
                self._append(b"".join(lines), len(lines))
            if stop:
                self._close_fd()
                return

    def _append(self, data: bytes, count: int) -> None:
        try:
            self._ensure_open(len(data))
            assert self._fd is not None
            if self._broken_line:
                data = b"\n" + data
            self._broken_line = True
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self._broken_line = False
        except OSError as exc:
            self._close_fd()
            self._lose(count, exc.strerror or str(exc))

    def _ensure_open(self, incoming: int) -> None:
        if self._reopen.is_set():
            self._reopen.clear()
            self._close_fd()
        if self._fd is not None and self._moved_away():
            self._close_fd()
        if self._fd is None:
            self._open()
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        if self._max_bytes > 0 and size > 0 and size + incoming > self._max_bytes:
            self._close_fd()
            self._rotate()
            self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size == 0:
            self._broken_line = False  # a new file has no half line to end

    def _moved_away(self) -> bool:
        assert self._fd is not None
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return True
        opened = os.fstat(self._fd)
        return (on_disk.st_dev, on_disk.st_ino) != (opened.st_dev, opened.st_ino)

    def _rotate(self) -> None:
        for index in range(self._backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self._backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _lose(self, count: int, reason: str) -> None:
        with self._loss_lock:
            self.lost += count
            now = time.monotonic()
            if now - self._last_error_log < _ERROR_LOG_INTERVAL:
                return
            self._last_error_log = now
        logger.error(
            "audit log %s: cannot write (%s); %d records lost so far; requests are still served",
            self.path,
            reason,
            self.lost,
        )
