"""The shared Redis (``--redis``) as /metrics sees it: up or not, and failed commands.

Read from the link's health (shared/redis_health.py) at each scrape; nothing is
exported without ``--redis``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from model_proxy.shared import RedisLink


class RedisCollector(Collector):
    """``link()`` gives the process's Redis link, None without --redis or before start."""

    def __init__(self, link: Callable[[], RedisLink | None]) -> None:
        self._link = link

    def collect(self) -> Iterator[Metric]:
        link = self._link()
        if link is None:
            return
        health = link.health
        up = GaugeMetricFamily(
            "model_proxy_redis_up",
            "1 while the shared Redis answered the last command, 0 while it does not"
            " (1 before the first command)",
        )
        up.add_metric([], 0.0 if health.reachable is False else 1.0)
        yield up
        failures = CounterMetricFamily(
            "model_proxy_redis_command_failures",
            "Redis commands that failed (unreachable, timed out, refused)",
        )
        failures.add_metric([], float(health.failures))
        yield failures
