"""Admission control and memory accounting, without servers (the 503 over HTTP is in
tests/integration/test_admission.py)."""

from __future__ import annotations

import asyncio

import pytest

from model_proxy.errors import Overloaded
from model_proxy.runtime.admission import Admission, MemoryBudget, RequestMemory

MiB = 1024 * 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.anyio
async def test_admission_refuses_past_the_concurrency_limit_and_admits_again() -> None:
    admission = Admission(MemoryBudget(64 * MiB), max_concurrent=2)
    async with admission.admit(), admission.admit():
        with pytest.raises(Overloaded) as info:
            async with admission.admit():
                pytest.fail("a third inference must not be admitted")
        assert info.value.status_code == 503
        assert info.value.code == "too_many_inferences"
        assert info.value.retry_after > 0
        assert "--max-concurrent-inferences" in info.value.message
    async with admission.admit() as memory:
        assert memory.window == 32 * MiB
    assert admission.running == 0
    assert admission.budget.used == 0


@pytest.mark.anyio
async def test_admission_refuses_when_the_budget_cannot_give_a_window() -> None:
    budget = MemoryBudget(4 * MiB)
    admission = Admission(budget, max_concurrent=2)  # windows of 2 MiB
    async with admission.admit() as first:
        # One instance larger than the window: charged to the budget past it.
        grant = await first.acquire(3 * MiB, lane=0)
        assert grant.over == 1 * MiB
        assert budget.used == 3 * MiB
        with pytest.raises(Overloaded) as info:
            async with admission.admit():
                pytest.fail("no window is left")
        assert info.value.code == "memory_budget_exhausted"
        assert "--memory-budget" in info.value.message
        first.release(grant)
        async with admission.admit():
            assert budget.used == 4 * MiB
    assert budget.used == 0


@pytest.mark.anyio
async def test_head_lane_waits_for_its_own_bytes_and_is_woken_by_a_release() -> None:
    memory = RequestMemory(MemoryBudget(64 * MiB), window=10)
    first = await memory.acquire(6, lane=0)
    waiting = asyncio.create_task(memory.acquire(6, lane=0))
    await settle()
    assert not waiting.done()
    memory.release(first)
    second = await asyncio.wait_for(waiting, 1)
    assert (second.size, second.over, memory.in_flight) == (6, 0, 6)


@pytest.mark.anyio
async def test_read_ahead_lanes_hold_at_most_half_the_window() -> None:
    memory = RequestMemory(MemoryBudget(64 * MiB), window=100)
    ahead = [await memory.acquire(20, lane=1), await memory.acquire(30, lane=2)]
    blocked = asyncio.create_task(memory.acquire(1, lane=3))
    await settle()
    assert not blocked.done()
    # The head still has the other half.
    head = await memory.acquire(50, lane=0)
    assert memory.in_flight == 100
    memory.release(head)
    await settle()
    assert not blocked.done()  # still half the window read ahead
    memory.release(ahead[0])
    await asyncio.wait_for(blocked, 1)


@pytest.mark.anyio
async def test_a_lane_becoming_head_may_use_the_whole_window() -> None:
    memory = RequestMemory(MemoryBudget(64 * MiB), window=100)
    await memory.acquire(50, lane=1)
    blocked = asyncio.create_task(memory.acquire(40, lane=1))
    await settle()
    assert not blocked.done()
    memory.set_head(1)
    await asyncio.wait_for(blocked, 1)
    assert memory.in_flight == 90


@pytest.mark.anyio
async def test_an_empty_head_takes_an_oversized_instance_and_gives_the_excess_back() -> None:
    budget = MemoryBudget(64 * MiB)
    memory = RequestMemory(budget, window=10)
    ahead = await memory.acquire(5, lane=1)
    big = await memory.acquire(25, lane=0)
    assert big.over == 20
    assert budget.used == 20
    assert memory.peak == 30
    memory.release(big)
    memory.release(ahead)
    assert (budget.used, memory.in_flight) == (0, 0)


@pytest.mark.anyio
async def test_closing_gives_back_what_an_aborted_request_still_held() -> None:
    budget = MemoryBudget(64 * MiB)
    admission = Admission(budget, max_concurrent=4)
    async with admission.admit() as memory:
        await memory.acquire(20 * MiB, lane=0)  # never released: the request failed
    assert budget.used == 0


@pytest.mark.anyio
async def test_a_cancelled_wait_does_not_break_later_wakeups() -> None:
    memory = RequestMemory(MemoryBudget(64 * MiB), window=10)
    first = await memory.acquire(10, lane=0)
    cancelled = asyncio.create_task(memory.acquire(5, lane=0))
    await settle()
    cancelled.cancel()
    waiting = asyncio.create_task(memory.acquire(5, lane=0))
    await settle()
    memory.release(first)
    await asyncio.wait_for(waiting, 1)
    assert cancelled.cancelled()


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        MemoryBudget(0)
    with pytest.raises(ValueError, match="at least 1"):
        Admission(MemoryBudget(MiB), max_concurrent=0)
