"""Which replica watches the PACS: the seam for running several proxies on one PACS.

Every replica may serve requests and run jobs, but only one should poll the PACS and
submit prefetch jobs, or each new study would be run once per replica. The watcher
asks its :class:`WatcherRole` before every poll. ``SoleReplica`` (one proxy, the only
deployment today) always says yes; a shared lease (a Redis key renewed each poll, the
replica holding it watches) will implement the same protocol.
"""

from __future__ import annotations

from typing import Protocol


class WatcherRole(Protocol):
    """Whether this replica is the one that watches, asked before each poll."""

    @property
    def description(self) -> str:
        """For /status: how the role is decided."""
        ...

    async def is_watcher(self) -> bool: ...

    async def release(self) -> None:
        """At shutdown: let another replica take over at once."""
        ...


class SoleReplica:
    """One proxy: it always watches."""

    description = "single replica: always the watcher"

    async def is_watcher(self) -> bool:
        return True

    async def release(self) -> None:
        return None
