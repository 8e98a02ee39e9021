"""The circuit breaker on a fake clock: opens, fails fast, half-opens, closes; and a
DICOM source behind one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from model_proxy.errors import NotFound, PacsError, UpstreamTimeout, UpstreamUnavailable
from model_proxy.pacs.guarded import GuardedSource
from model_proxy.pacs.source import Target
from model_proxy.upstream.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from model_proxy.upstream.probe import ProbeResult

LABEL = "PACS b1407f18…"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(threshold: int = 3, cooldown: float = 30.0) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    return CircuitBreaker(LABEL, BreakerPolicy(threshold, cooldown), clock=clock), clock


def state(breaker: CircuitBreaker) -> BreakerState:
    # A function, not the property: mypy would narrow the property across calls.
    return breaker.state


def own_failure(message: str = "unreachable") -> PacsError:
    return PacsError(f"{LABEL}: {message}", upstream=LABEL)


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.before_call()
        breaker.record(own_failure())


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker, _ = make(threshold=3)
    fail(breaker, 2)
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.failures == 2
    fail(breaker, 1)
    assert state(breaker) is BreakerState.OPEN


def test_success_resets_the_count() -> None:
    breaker, _ = make(threshold=3)
    fail(breaker, 2)
    breaker.before_call()
    breaker.record(None)
    fail(breaker, 2)
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.failures == 2


def test_open_breaker_fails_fast_with_503_retry_after_and_the_upstream_name() -> None:
    breaker, clock = make(threshold=1, cooldown=30)
    breaker.before_call()
    breaker.record(own_failure("timed out while connecting"))
    clock.now += 10.2
    with pytest.raises(UpstreamUnavailable) as raised:
        breaker.before_call()
    error = raised.value
    assert error.status_code == 503
    assert error.code == "upstream_unavailable"
    assert error.retry_after == 20  # 19.8 s left, rounded up
    assert error.headers() == {"Retry-After": "20"}
    assert LABEL in error.message and "timed out while connecting" in error.message
    assert "1 consecutive failures" in error.message


def test_half_open_lets_exactly_one_trial_through() -> None:
    breaker, clock = make(threshold=1, cooldown=30)
    fail(breaker, 1)
    clock.now += 30
    assert state(breaker) is BreakerState.HALF_OPEN
    breaker.before_call()  # the trial
    with pytest.raises(UpstreamUnavailable) as raised:
        breaker.before_call()  # everyone else still fails fast
    assert raised.value.retry_after == 1


def test_trial_success_closes() -> None:
    breaker, clock = make(threshold=2, cooldown=30)
    fail(breaker, 2)
    clock.now += 31
    breaker.before_call()
    breaker.record(None)
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.failures == 0
    breaker.before_call()
    breaker.before_call()


def test_trial_failure_reopens_for_a_whole_cooldown() -> None:
    breaker, clock = make(threshold=2, cooldown=30)
    fail(breaker, 2)
    clock.now += 31
    breaker.before_call()
    breaker.record(own_failure())
    assert state(breaker) is BreakerState.OPEN
    assert breaker.retry_in() == 30
    clock.now += 29.9
    with pytest.raises(UpstreamUnavailable):
        breaker.before_call()


@pytest.mark.parametrize(
    "outcome",
    [
        NotFound("study 1.2 was not found on PACS b1407f18…"),
        PacsError(f"{LABEL}: access refused (401)"),  # no upstream: a config problem
        PacsError("PACS 00000000…: unreachable", upstream="PACS 00000000…"),  # another PACS
        asyncio.CancelledError(),  # the viewer went away
        ValueError("a bug elsewhere"),
    ],
    ids=["not-found", "auth", "other-upstream", "cancelled", "other-error"],
)
def test_outcomes_not_blamed_on_the_upstream_change_nothing(outcome: BaseException) -> None:
    breaker, clock = make(threshold=2, cooldown=30)
    fail(breaker, 1)
    breaker.before_call()
    breaker.record(outcome)
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.failures == 1
    # ... and while half-open they free the trial slot for the next caller.
    fail(breaker, 1)
    clock.now += 30
    breaker.before_call()
    breaker.record(outcome)
    assert state(breaker) is BreakerState.HALF_OPEN
    breaker.before_call()


def test_timeouts_count() -> None:
    breaker, _ = make(threshold=1)
    breaker.before_call()
    breaker.record(UpstreamTimeout(f"{LABEL}: timed out", upstream=LABEL))
    assert state(breaker) is BreakerState.OPEN


def test_snapshot_for_status() -> None:
    breaker, clock = make(threshold=1, cooldown=30)
    assert breaker.snapshot() == {"state": "closed", "failures": 0}
    fail(breaker, 1)
    clock.now += 5
    assert breaker.snapshot() == {
        "state": "open",
        "failures": 1,
        "retryInSeconds": 25.0,
        "lastFailure": f"{LABEL}: unreachable",
    }
    clock.now += 25
    assert breaker.snapshot()["state"] == "half-open"


def test_the_last_failure_and_its_time_outlive_a_success() -> None:
    breaker, _ = make(threshold=5)
    assert (breaker.last_failure, breaker.last_failure_at) == (None, None)
    before = time.time()
    fail(breaker, 1)
    breaker.before_call()
    breaker.record(None)
    assert breaker.last_failure == f"{LABEL}: unreachable"
    assert breaker.last_failure_at is not None and before <= breaker.last_failure_at <= time.time()


@pytest.mark.anyio
async def test_guard_records_how_the_call_ended() -> None:
    breaker, clock = make(threshold=1, cooldown=30)
    with pytest.raises(PacsError):
        async with breaker.guard():
            raise own_failure()
    assert state(breaker) is BreakerState.OPEN
    with pytest.raises(UpstreamUnavailable):
        async with breaker.guard():
            raise AssertionError("not called while open")
    clock.now += 30
    async with breaker.guard():
        pass
    assert state(breaker) is BreakerState.CLOSED


class FakeSource:
    """A DicomSource whose retrievals succeed or fail as told; counts its calls."""

    label = LABEL

    def __init__(self) -> None:
        self.failing = False
        self.retrievals = 0
        self.fingerprints = 0

    @asynccontextmanager
    async def retrieve(self, target: Target) -> AsyncIterator[AsyncIterator[bytes]]:
        self.retrievals += 1
        if self.failing:
            raise own_failure()

        async def instances() -> AsyncIterator[bytes]:
            yield b"part10"

        yield instances()

    async def probe(self) -> ProbeResult:
        return ProbeResult(True, 1.0, "up")

    async def fingerprint(self, target: Target) -> str | None:
        self.fingerprints += 1
        return "count:1"

    async def store(self, objects: Sequence[Path]) -> None:
        raise NotImplementedError("the body pipeline and the breaker never store")

    async def aclose(self) -> None:
        pass


@pytest.mark.anyio
async def test_guarded_source_fails_fast_and_skips_the_cache_query_while_open() -> None:
    breaker, clock = make(threshold=1, cooldown=30)
    inner = FakeSource()
    source = GuardedSource(inner, breaker)
    target = Target("1.2.3")
    inner.failing = True
    with pytest.raises(PacsError):
        async with source.retrieve(target):
            pass
    assert await source.fingerprint(target) is None  # no QIDO to a PACS known down
    with pytest.raises(UpstreamUnavailable):
        async with source.retrieve(target):
            pass
    assert (inner.retrievals, inner.fingerprints) == (1, 0)
    assert (await source.probe()).ok  # probes bypass the breaker

    clock.now += 30
    inner.failing = False
    assert await source.fingerprint(target) == "count:1"
    async with source.retrieve(target) as instances:
        assert [part async for part in instances] == [b"part10"]
    assert state(breaker) is BreakerState.CLOSED
