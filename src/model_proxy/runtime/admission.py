"""Admission control and the memory budget of inference requests.

The proxy holds instance data only while it is in flight: retrieved from the
PACS but not yet sent to the model, or encoded and waiting to be sent. All of
that is accounted against one :class:`MemoryBudget` (``--memory-budget``).

Each admitted inference reserves a fixed *window* of the budget and never
holds more than that (one oversized instance aside, see
:meth:`RequestMemory.acquire`), so the proxy's memory does not depend on the
size of a study. A request that finds no room, because
``--max-concurrent-inferences`` requests already run or because the budget
cannot give it a window, is refused at once with 503 and ``Retry-After``
instead of slowing every request down::

    admission = Admission(MemoryBudget(512 * MiB), max_concurrent=32)
    async with admission.admit() as memory:      # raises Overloaded (503)
        grant = await memory.acquire(size, lane=0)
        ...
        memory.release(grant)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from model_proxy.errors import ErrorCode, Overloaded

MiB = 1024 * 1024

# Retry-After when the limit is the number of running inferences: one of them
# has to finish, and a CT series takes seconds.
RETRY_AFTER_SECONDS = 5


class MemoryBudget:
    """Bytes of instance data the whole proxy may hold; plain counters, one event loop."""

    def __init__(self, total: int) -> None:
        if total <= 0:
            raise ValueError(f"the memory budget must be positive, got {total}")
        self.total = total
        self.used = 0

    @property
    def available(self) -> int:
        return self.total - self.used

    def try_take(self, size: int) -> bool:
        if size > self.available:
            return False
        self.used += size
        return True

    def take_over(self, size: int) -> None:
        """Take ``size`` even past the total: an instance larger than a window."""
        self.used += size

    def give_back(self, size: int) -> None:
        self.used -= size


@dataclass(frozen=True)
class Grant:
    """Bytes one instance holds; ``over`` is the part charged past the window."""

    lane: int
    size: int
    over: int = 0


class RequestMemory:
    """One inference's window, shared by the retrievals (lanes) of its body.

    The body is written lane after lane; the lane being written is the *head*.
    Lanes retrieved ahead of it may hold at most half the window, so the head
    always finds room once what was queued before it has been sent, and a head
    holding nothing may take one instance of any size (charged to the budget
    past the window): a request never waits on itself.
    """

    def __init__(self, budget: MemoryBudget, window: int) -> None:
        self._budget = budget
        self.window = window
        self._in_flight = 0
        self._by_lane: dict[int, int] = {}
        self._head = 0
        self._over = 0
        self._waiters: list[asyncio.Future[None]] = []
        self.peak = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _grant_now(self, size: int, lane: int) -> Grant | None:
        head_bytes = self._by_lane.get(self._head, 0)
        fits = self._in_flight + size <= self.window
        if lane == self._head:
            if not fits and head_bytes:
                return None
        elif lane < self._head:
            raise ValueError(f"lane {lane} is behind the head lane {self._head}")
        elif not fits or self._in_flight - head_bytes + size > self.window // 2:
            return None
        over = max(0, self._in_flight + size - self.window)
        if over:
            self._budget.take_over(over)
            self._over += over
        self._in_flight += size
        self._by_lane[lane] = self._by_lane.get(lane, 0) + size
        self.peak = max(self.peak, self._in_flight)
        return Grant(lane, size, over)

    async def acquire(self, size: int, lane: int) -> Grant:
        """Wait until ``lane`` may hold ``size`` more bytes."""
        while (grant := self._grant_now(size, lane)) is None:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        return grant

    def release(self, grant: Grant) -> None:
        self._in_flight -= grant.size
        self._by_lane[grant.lane] -= grant.size
        if grant.over:
            self._over -= grant.over
            self._budget.give_back(grant.over)
        self._wake()

    def set_head(self, lane: int) -> None:
        """The body has reached ``lane``: it may now use the whole window."""
        self._head = lane
        self._wake()

    def close(self) -> None:
        """Give back what is still charged past the window (the request ended early)."""
        self._budget.give_back(self._over)
        self._over = 0
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():  # a cancelled acquire leaves its waiter behind
                waiter.set_result(None)


class Admission:
    """Admits an inference when a slot and a memory window are free, else 503."""

    def __init__(
        self, budget: MemoryBudget, *, max_concurrent: int, window: int | None = None
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        self.budget = budget
        self.max_concurrent = max_concurrent
        self.window = window or max(budget.total // max_concurrent, 1)
        self.running = 0

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[RequestMemory]:
        if self.running >= self.max_concurrent:
            raise Overloaded(
                f"model-proxy is busy: {self.running} inferences are running, the limit"
                " (--max-concurrent-inferences); retry later",
                code=ErrorCode.TOO_MANY_INFERENCES,
                retry_after=RETRY_AFTER_SECONDS,
            )
        if not self.budget.try_take(self.window):
            raise Overloaded(
                "model-proxy is busy: its memory budget (--memory-budget,"
                f" {self.budget.total // MiB} MiB) is in use by running inferences;"
                " retry later",
                code=ErrorCode.MEMORY_BUDGET_EXHAUSTED,
                retry_after=RETRY_AFTER_SECONDS,
            )
        self.running += 1
        memory = RequestMemory(self.budget, self.window)
        try:
            yield memory
        finally:
            memory.close()
            self.running -= 1
            self.budget.give_back(self.window)
