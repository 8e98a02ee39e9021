"""Whether the shared Redis answers: reachable or not, since when, the last error.

Every user of the Redis link (PACS tokens, results...) reports the outcome of its
commands here; ``/status`` shows the snapshot and ``/metrics`` the gauge and the
failure count (docs/replicas.md, "Redis down"). Messages come from redis-py, which
names host and port, never the password.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

logger = logging.getLogger("model_proxy")


class RedisHealth:
    """The last known state of one Redis, as its users saw their commands end."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._lock = threading.Lock()  # read by the metrics scrape in its own thread
        self.reachable: bool | None = None  # None: no command has run yet
        self.since = time.time()
        self.failures = 0  # commands that failed since start (a counter)
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    def succeeded(self) -> None:
        with self._lock:
            changed = self.reachable is not True
            if changed:
                self.reachable, self.since = True, time.time()
        if changed and self.failures:
            logger.info("Redis at %s answers again", self.where)

    def failed(self, exc: BaseException) -> None:
        reason = str(exc) or type(exc).__name__
        with self._lock:
            changed = self.reachable is not False
            now = time.time()
            if changed:
                self.reachable, self.since = False, now
            self.failures += 1
            self.last_error, self.last_error_at = reason, now
        if changed:
            logger.warning("Redis at %s does not answer: %s", self.where, reason)

    def snapshot(self) -> dict[str, Any]:
        """The ``redis`` entry of /status."""
        with self._lock:
            entry: dict[str, Any] = {
                "url": self.where,
                "reachable": self.reachable,
                "since": _iso(self.since),
                "commandFailures": self.failures,
            }
            if self.last_error is not None and self.last_error_at is not None:
                entry["lastError"] = {"at": _iso(self.last_error_at), "message": self.last_error}
        return entry


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
