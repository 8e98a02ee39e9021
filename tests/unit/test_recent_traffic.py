"""The rolling windows behind /status's traffic figures (metrics/recent.py): percentiles
on known data, expiry as an injected clock moves, bounded memory, what counts as an error."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from model_proxy.audit.record import AuditRecord
from model_proxy.metrics.recent import (
    LATENCY_BUCKETS,
    SPAN_MINUTES,
    RecentTraffic,
    RollingWindow,
    bucket_value,
    latency_bucket,
    percentile,
)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def within(value: float | None, exact: float, tolerance: float = 0.05) -> bool:
    return value is not None and abs(value - exact) <= tolerance * exact


def test_percentiles_of_known_data_are_within_five_percent() -> None:
    clock = Clock()
    window = RollingWindow(clock=clock)
    for ms in range(1, 1001):  # 1..1000 ms: p50 is 500, p95 is 950
        window.add(latency_ms=float(ms), error=False)
    figures = window.figures(5)
    assert figures.requests == 1000
    assert within(figures.p50_ms, 500) and within(figures.p95_ms, 950)


def test_percentiles_of_a_skewed_sample_match_the_exact_ones() -> None:
    rng = random.Random(7)
    samples = [rng.lognormvariate(5, 1.2) for _ in range(5000)]
    histogram = Counter(latency_bucket(ms) for ms in samples)
    ordered = sorted(samples)
    for q in (0.5, 0.95, 0.99):
        exact = ordered[max(0, int(q * len(ordered) + 0.999999) - 1)]
        assert within(percentile(histogram, q), exact), q


def test_a_single_value_is_its_own_p50_and_p95() -> None:
    window = RollingWindow(clock=Clock())
    window.add(latency_ms=250.0, error=False)
    figures = window.figures(60)
    assert within(figures.p50_ms, 250) and figures.p50_ms == figures.p95_ms


def test_bucket_edges() -> None:
    assert latency_bucket(0.2) == latency_bucket(1.0) == 0 and bucket_value(0) == 1.0
    assert latency_bucket(10 * 3600 * 1000) == LATENCY_BUCKETS - 1  # ten hours: the last
    for ms in (1.5, 37.0, 999.0, 120_000.0):
        assert within(bucket_value(latency_bucket(ms)), ms)


def test_minutes_leave_the_five_minute_window_then_the_hour() -> None:
    clock = Clock(60 * 1000)  # at the start of a minute
    window = RollingWindow(clock=clock)
    window.add(latency_ms=100.0, error=True)
    clock.now += 4 * 60  # four minutes on: still inside the last five
    window.add(latency_ms=300.0, error=False)
    assert (window.figures(5).requests, window.figures(5).errors) == (2, 1)
    clock.now += 60  # the first minute has left the 5-minute window, not the hour
    assert (window.figures(5).requests, window.figures(5).errors) == (1, 0)
    assert window.figures(60).requests == 2 and within(window.figures(60).p50_ms, 100)
    clock.now += 56 * 60  # 61 minutes after the first: only the second is left
    assert window.figures(60).requests == 1 and within(window.figures(60).p95_ms, 300)
    clock.now += 60 * 60
    empty = window.figures(60)
    assert (empty.requests, empty.p50_ms, empty.p95_ms, empty.error_rate) == (0, None, None, None)


def test_memory_is_bounded_by_the_hour_of_minutes() -> None:
    clock = Clock()
    window = RollingWindow(clock=clock)
    for _ in range(3 * SPAN_MINUTES):  # three hours, a few latencies each minute
        for ms in (1.0, 50.0, 4000.0):
            window.add(latency_ms=ms, error=False)
        clock.now += 60
    slots = [bucket for bucket in window._ring if bucket is not None]
    assert len(window._ring) == SPAN_MINUTES and len(slots) == SPAN_MINUTES
    assert all(len(bucket.latencies) <= 3 for bucket in slots)
    assert window.figures(60).requests == 3 * 59  # this minute is empty so far


def test_rate_is_per_minute_of_the_window_or_of_the_uptime() -> None:
    clock = Clock(60 * 1000)
    window = RollingWindow(clock=clock)
    for _ in range(10):
        window.add(latency_ms=10.0, error=False)
    clock.now += 30  # half a minute of uptime counts as a minute
    assert window.figures(5).per_minute == 10.0
    clock.now += 150  # three minutes up: 10 requests over 3 minutes
    assert window.figures(5).per_minute == pytest.approx(10 / 3)
    assert window.figures(60).per_minute == pytest.approx(10 / 3)


def test_window_length_is_checked() -> None:
    with pytest.raises(ValueError, match="1 to 60 minutes"):
        RollingWindow(clock=Clock()).figures(61)


def _record(path: str, status: int, *, model: str | None = "m1", ms: float = 20.0) -> AuditRecord:
    record = AuditRecord(request_id="r", time="t", client=None, method="GET", path=path)
    record.model, record.status, record.duration_ms = model, status, ms
    record.code = "ok" if status < 400 else f"http_{status}"
    return record


def test_traffic_counts_inference_routes_and_5xx_as_errors() -> None:
    clock = Clock()
    traffic = RecentTraffic(clock=clock)
    path = "/segmentations/m1/studies/1.2.3/series/4.5.6"
    traffic.observe_request(_record(path, 200, ms=100.0))
    traffic.observe_request(_record(path, 502, ms=5.0))  # an upstream failed: an error
    traffic.observe_request(_record(path, 404, ms=1.0))  # a caller's mistake: no error
    traffic.observe_request(_record("/status", 200))  # not an inference route
    traffic.observe_request(_record(path, 404, model=None))  # the model was not found
    figures = traffic.of_model("m1")["5m"]
    assert (figures.requests, figures.errors) == (3, 1)
    assert figures.error_rate == pytest.approx(1 / 3)
    # Latency of answered requests only: the fast refusals do not pull p50 down.
    assert within(figures.p50_ms, 100) and within(figures.p95_ms, 100)
    assert traffic.of_model("m2")["60m"].requests == 0
    traffic.keep_only(["m2"])
    assert traffic.of_model("m1")["60m"].requests == 0


def test_messages_shown_on_the_page_lose_passwords_and_uids() -> None:
    from model_proxy.routes.status import public_message

    message = (
        "PACS b1407f18…: https://proxy:s3cret@pacs.local/dicom-web/studies/"
        "1.2.826.0.1.3680043.8.498.1/series/1.2.3.4.5 answered 500\n  Internal"
    )
    shown = public_message(message)
    assert shown == (
        "PACS b1407f18…: https://proxy:***@pacs.local/dicom-web/studies/<uid>/series/<uid>"
        " answered 500 Internal"
    )
    assert len(public_message("x " * 400)) == 300
