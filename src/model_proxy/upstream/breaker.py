"""A circuit breaker per upstream (each PACS, each model).

After ``failure_threshold`` consecutive failures of the upstream itself
(unreachable, timed out, broke the exchange, answered 5xx or garbage: errors
whose ``upstream`` is this breaker's label), the breaker *opens*: calls fail at
once with 503 and a Retry-After instead of each waiting for a timeout. After
``cooldown`` seconds it is *half-open*: one call goes through as a trial while
the others still fail fast; the trial's success closes the breaker, its failure
opens it for another cooldown. A caller's mistake (404, bad input) or another
upstream's failure neither counts nor resets the count::

    closed --threshold failures--> open --cooldown--> half-open --success--> closed
                                     ^------------------failure------------'
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from model_proxy.errors import ProxyError, UpstreamUnavailable

logger = logging.getLogger(__name__)

# Told of every guarded call when it ends: the seconds it took and whether it was a
# failure of this upstream (the metrics count them: metrics/registry.py).
CallObserver = Callable[[float, bool], None]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int = 5
    cooldown: float = 30.0


class CircuitBreaker:
    """Guards the calls to one upstream; ``clock`` is monotonic seconds (a fake in tests)."""

    def __init__(
        self,
        label: str,
        policy: BreakerPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        observer: CallObserver | None = None,
    ) -> None:
        self.label = label
        self.observer = observer
        self._policy = policy
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False
        self.last_failure: str | None = None
        # Wall-clock time of the last failure, kept after a success: /status shows the
        # last error of each upstream with its time.
        self.last_failure_at: float | None = None

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at < self._policy.cooldown:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    @property
    def failures(self) -> int:
        """Consecutive failures so far."""
        return self._failures

    def retry_in(self) -> float:
        """Seconds until the breaker lets a trial call through (0 when it would now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self._policy.cooldown - self._clock())

    def before_call(self) -> None:
        """Raise UpstreamUnavailable unless a call may go out now; a call let through
        while half-open is the trial, and must end in one of the ``record_*`` methods."""
        state = self.state
        if state is BreakerState.CLOSED:
            return
        if state is BreakerState.HALF_OPEN and not self._trial_running:
            self._trial_running = True
            return
        wait = max(1, math.ceil(self.retry_in()))
        raise UpstreamUnavailable(
            f"{self.label} is unavailable after {self._failures} consecutive failures"
            f" (last: {self.last_failure}); not calling it again for {wait} s",
            retry_after=wait,
            upstream=self.label,
        )

    def record_success(self) -> None:
        if self._opened_at is not None:
            logger.warning("%s answers again: circuit breaker closed", self.label)
        self._failures = 0
        self._opened_at = None
        self._trial_running = False

    def record_failure(self, reason: str) -> None:
        self._failures += 1
        self.last_failure = reason
        self.last_failure_at = time.time()
        if self._trial_running or self._failures >= self._policy.failure_threshold:
            if self._opened_at is None or self._trial_running:
                logger.warning(
                    "%s failed %d times in a row: circuit breaker open for %.0f s (last: %s)",
                    self.label,
                    self._failures,
                    self._policy.cooldown,
                    reason,
                )
            self._opened_at = self._clock()
        self._trial_running = False

    def record_neutral(self) -> None:
        """The call ended without telling whether the upstream works (cancelled, or
        failed for another reason): free the trial slot, change nothing else."""
        self._trial_running = False

    def record(self, exc: BaseException | None) -> None:
        """Record how a call ended: None for success, else the exception it raised."""
        if exc is None:
            self.record_success()
        elif isinstance(exc, ProxyError) and exc.upstream == self.label:
            self.record_failure(exc.message)
        else:
            self.record_neutral()

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """``async with breaker.guard():`` around one call to the upstream."""
        self.before_call()
        started = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            self.record(exc)
            self._observe(started, exc)
            raise
        self.record(None)
        self._observe(started, None)

    def _observe(self, started: float, exc: BaseException | None) -> None:
        if self.observer is not None:
            failed = isinstance(exc, ProxyError) and exc.upstream == self.label
            self.observer(time.perf_counter() - started, failed)

    def snapshot(self) -> dict[str, Any]:
        """What /status shows."""
        state = self.state
        entry: dict[str, Any] = {"state": state.value, "failures": self._failures}
        if state is not BreakerState.CLOSED:
            entry["retryInSeconds"] = round(self.retry_in(), 1)
            entry["lastFailure"] = self.last_failure
        return entry
