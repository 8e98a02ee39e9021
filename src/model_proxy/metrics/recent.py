"""Recent traffic per model for ``/status``: requests, errors, p50/p95 latency and cache
hits over the last 5 and 60 minutes.

Fed like the Prometheus metrics, from each finished request's audit record
(``RecentTraffic.observe_request``: the audit middleware calls it), but kept in process
so the page answers without a Prometheus in between. Memory is bounded whatever the
traffic: per model, 60 one-minute buckets, each a few counts and a latency histogram of
at most ``LATENCY_BUCKETS`` counters (bounds growing by 10 %, so a percentile read from
it is within 5 % of the exact one)::

    window = RollingWindow()
    window.add(latency_ms=120.0, error=False, cache="miss")
    window.figures(5).p95_ms      # ~120.0
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from model_proxy.config import Task
from model_proxy.errors import ErrorCode

from .registry import route_family

if TYPE_CHECKING:
    from model_proxy.audit.record import AuditRecord

WINDOWS_MINUTES = (5, 60)
SPAN_MINUTES = max(WINDOWS_MINUTES)
_GROWTH = 1.1
# 1 ms to an hour: an inference streams a 2,000-slice study for minutes at most.
LATENCY_BUCKETS = math.ceil(math.log(3_600_000) / math.log(_GROWTH)) + 1
_INFERENCE_FAMILIES = frozenset(task.route_family for task in Task)
# Cache outcomes that answered without calling the model (inference/runner.py's names).
_CACHE_HITS = frozenset({"hit", "not_modified"})


def latency_bucket(ms: float) -> int:
    """The histogram bucket of ``ms``: bucket ``i`` holds (1.1**(i-1), 1.1**i] ms."""
    if ms <= 1.0:
        return 0
    return min(math.ceil(math.log(ms) / math.log(_GROWTH)), LATENCY_BUCKETS - 1)


def bucket_value(index: int) -> float:
    """What a bucket stands for: the geometric middle of its bounds (1 ms for bucket 0)."""
    return 1.0 if index == 0 else _GROWTH ** (index - 0.5)


@dataclass
class _Minute:
    minute: int
    requests: int = 0
    errors: int = 0
    cache_lookups: int = 0
    cache_hits: int = 0
    latencies: Counter[int] = field(default_factory=Counter)


@dataclass(frozen=True)
class WindowFigures:
    """What one model did in the last ``minutes`` minutes."""

    minutes: int
    requests: int
    errors: int
    per_minute: float
    p50_ms: float | None
    p95_ms: float | None
    cache_lookups: int
    cache_hits: int

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def cache_hit_rate(self) -> float | None:
        return self.cache_hits / self.cache_lookups if self.cache_lookups else None

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "errorRate": _rounded(self.error_rate, 4),
            "requestsPerMinute": round(self.per_minute, 2),
            "p50Ms": _rounded(self.p50_ms, 1),
            "p95Ms": _rounded(self.p95_ms, 1),
            "cacheLookups": self.cache_lookups,
            "cacheHits": self.cache_hits,
            "cacheHitRate": _rounded(self.cache_hit_rate, 4),
        }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


class RollingWindow:
    """Per-minute buckets of the last ``SPAN_MINUTES`` minutes, in a ring reused in place.

    ``clock`` is monotonic seconds (a fake in tests). Latency is recorded for answered
    requests only: a refusal in a millisecond says nothing about how fast results come.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started = clock()
        self._ring: list[_Minute | None] = [None] * SPAN_MINUTES

    def _bucket(self, minute: int) -> _Minute:
        slot = minute % SPAN_MINUTES
        bucket = self._ring[slot]
        if bucket is None or bucket.minute != minute:
            bucket = self._ring[slot] = _Minute(minute)
        return bucket

    def add(self, *, latency_ms: float | None, error: bool, cache: str | None = None) -> None:
        bucket = self._bucket(int(self._clock() // 60))
        bucket.requests += 1
        bucket.errors += error
        if latency_ms is not None:
            bucket.latencies[latency_bucket(latency_ms)] += 1
        if cache is not None:
            bucket.cache_lookups += 1
            bucket.cache_hits += cache in _CACHE_HITS

    def figures(self, minutes: int) -> WindowFigures:
        """The last ``minutes`` minutes: this minute so far and the ``minutes - 1`` before."""
        if not 1 <= minutes <= SPAN_MINUTES:
            raise ValueError(f"a window is 1 to {SPAN_MINUTES} minutes, got {minutes}")
        now = self._clock()
        current = int(now // 60)
        buckets = [
            bucket
            for bucket in self._ring
            if bucket is not None and current - minutes < bucket.minute <= current
        ]
        latencies: Counter[int] = Counter()
        for bucket in buckets:
            latencies.update(bucket.latencies)
        requests = sum(bucket.requests for bucket in buckets)
        # Seconds the window covers, no more than the process has run; a rate over a
        # few seconds would be a guess, so at least a minute.
        covered = min((minutes - 1) * 60 + now - current * 60, now - self._started)
        return WindowFigures(
            minutes=minutes,
            requests=requests,
            errors=sum(bucket.errors for bucket in buckets),
            per_minute=requests / (max(covered, 60.0) / 60),
            p50_ms=percentile(latencies, 0.50),
            p95_ms=percentile(latencies, 0.95),
            cache_lookups=sum(bucket.cache_lookups for bucket in buckets),
            cache_hits=sum(bucket.cache_hits for bucket in buckets),
        )


def percentile(histogram: Counter[int], q: float) -> float | None:
    """The nearest-rank ``q`` quantile of a latency histogram, None when it is empty."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return bucket_value(index)
    raise AssertionError("unreachable: rank <= total")


class RecentTraffic:
    """One RollingWindow per model, for the whole process (kept across config reloads).

    Counts the inference routes' requests: an error is a 5xx answer or a response cut
    short (the proxy or an upstream failed); a caller's mistake (4xx) is a request but
    no error.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._models: dict[str, RollingWindow] = {}

    def observe_request(self, record: AuditRecord) -> None:
        """Count a finished request from its audit record (an audit observer)."""
        # record.model is set once the model was found in the config: a bounded set.
        if record.model is None or route_family(record.path) not in _INFERENCE_FAMILIES:
            return
        status = record.status or 500
        failed = status >= 500 or record.code == ErrorCode.RESPONSE_ABORTED
        figures = record.figures
        window = self._models.get(record.model)
        if window is None:
            window = self._models[record.model] = RollingWindow(clock=self._clock)
        window.add(
            latency_ms=record.duration_ms if status < 400 and not failed else None,
            error=failed,
            cache=figures.cache if figures is not None else None,
        )

    def of_model(self, model_id: str) -> dict[str, WindowFigures]:
        """``{"5m": ..., "60m": ...}`` for one model (zeros when it had no traffic)."""
        window = self._models.get(model_id) or RollingWindow(clock=self._clock)
        return {f"{minutes}m": window.figures(minutes) for minutes in WINDOWS_MINUTES}

    def keep_only(self, model_ids: Collection[str]) -> None:
        """Forget the models a reloaded config no longer has."""
        for model_id in [known for known in self._models if known not in model_ids]:
            del self._models[model_id]
