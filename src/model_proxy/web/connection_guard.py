"""Slow clients: a deadline for the request head and a cap on open client connections.

A client that opens a connection and sends its request head one byte at a time
(slowloris) costs the proxy a file descriptor for as long as it keeps going; enough of
them take every descriptor and the proxy can no longer accept a viewer or open a
connection to a PACS. Two bounds stop that:

- the request head must be complete within ``head_timeout`` seconds of the connection
  being made (or of the first byte of a later request on a kept-alive connection),
  however steadily its bytes trickle in: a deadline, not an idle timer, which a byte
  every few seconds would keep resetting;
- at most ``max_connections`` client connections are open at once. When a new one
  arrives at the cap, the connection that has waited longest for a request head is
  closed to make room (an attacker's connections are the ones that never finish a
  head; a connection whose request is being answered is never closed for this). Only
  when every open connection is busy with a request is the new one refused.

Both are logged at most once per ``report_interval`` seconds with the counts since the
last line: under attack there would otherwise be a line per connection.

The protocol (web/http_limits.py) calls ``admit`` when a connection is made,
``awaiting_head`` / ``head_received`` as requests come and go, and ``release`` when it
is lost. One guard serves one listening server on one event loop.
"""

from __future__ import annotations

import logging
import resource
import time
from typing import Protocol

logger = logging.getLogger(__name__)

# Descriptors kept for what is not a client connection: connections to PACS servers and
# models (up to 32 per upstream), cache and log files, the event loop's own. Past 1,024
# open files a quarter of the limit is kept.
MIN_RESERVED_FILES = 256

DEFAULT_HEAD_TIMEOUT = 15.0
REPORT_INTERVAL = 10.0


class Sheddable(Protocol):
    """A client connection the guard may close (the HTTP protocol of one connection)."""

    def shed(self) -> None:
        """Close the connection now, without an answer: it has sent no request to answer."""


class ConnectionGuard:
    """Counts open client connections and chooses which to close at the cap."""

    def __init__(
        self,
        *,
        head_timeout: float = DEFAULT_HEAD_TIMEOUT,
        max_connections: int | None = None,
        report_interval: float = REPORT_INTERVAL,
    ) -> None:
        self.head_timeout = head_timeout
        self.max_connections = max_connections
        self.report_interval = report_interval
        self._open: set[Sheddable] = set()
        # Connections waiting for a request head, oldest first (dicts keep insertion order).
        self._waiting: dict[Sheddable, None] = {}
        self._shed = self._refused = self._timed_out = 0
        self._limit_logged_at = self._timeouts_logged_at = -float("inf")

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def admit(self, connection: Sheddable) -> bool:
        """Count a new connection; False: refused, the caller closes it."""
        if self.max_connections is not None and len(self._open) >= self.max_connections:
            oldest = next(iter(self._waiting), None)
            if oldest is None:
                self._refused += 1
                self._report_limit()
                return False
            self.release(oldest)
            self._shed += 1
            self._report_limit()
            oldest.shed()
        self._open.add(connection)
        return True

    def awaiting_head(self, connection: Sheddable) -> None:
        """``connection`` has no request in progress: it may be closed at the cap."""
        if connection in self._open:
            self._waiting.setdefault(connection, None)

    def head_received(self, connection: Sheddable) -> None:
        self._waiting.pop(connection, None)

    def head_timed_out(self) -> None:
        self._timed_out += 1
        now = time.monotonic()
        if now - self._timeouts_logged_at >= self.report_interval:
            self._timeouts_logged_at = now
            logger.warning(
                "closed %d client connection(s) that sent no complete request head within"
                " %g s (--request-head-timeout): slow or stalled clients",
                self._timed_out,
                self.head_timeout,
            )
            self._timed_out = 0

    def release(self, connection: Sheddable) -> None:
        self._open.discard(connection)
        self._waiting.pop(connection, None)

    def _report_limit(self) -> None:
        now = time.monotonic()
        if now - self._limit_logged_at < self.report_interval:
            return
        self._limit_logged_at = now
        logger.warning(
            "open client connections at the limit of %d (--max-connections): closed %d"
            " that waited longest for a request head, refused %d new one(s)",
            self.max_connections,
            self._shed,
            self._refused,
        )
        self._shed = self._refused = 0


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the limit now in force.

    The soft limit is often 1,024 while the hard one is far higher: the proxy would run
    out of descriptors long before the machine does.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Linux refuses an infinite soft limit for open files (past fs.nr_open).
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            logger.warning(
                "could not raise the open-file limit from %d to %d: %s", soft, wanted, exc
            )
            return soft
        return wanted
    return soft


def connection_cap(requested: int | None, open_files: int) -> int:
    """The cap on client connections: ``requested`` (None: as many as the open-file
    limit allows), never more than leaves ``MIN_RESERVED_FILES`` (or a quarter of the
    limit) for upstream connections and files.

    >>> connection_cap(None, 1024), connection_cap(100, 1024), connection_cap(None, 65536)
    (768, 100, 49152)
    """
    allowed = max(open_files - max(MIN_RESERVED_FILES, open_files // 4), open_files // 2, 1)
    if requested is None:
        return allowed
    if requested > allowed:
        logger.warning(
            "--max-connections %d is more than the open-file limit of %d allows; using %d",
            requested,
            open_files,
            allowed,
        )
        return allowed
    return requested
