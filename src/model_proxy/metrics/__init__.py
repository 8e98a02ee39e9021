"""Prometheus metrics: what the proxy counts (``registry.py``), what it reads from the
running state at each scrape (``collector.py``) and the ``/metrics`` endpoint
(``endpoint.py``). See docs/operations.md for every metric."""

from .registry import ProxyMetrics, route_family

__all__ = ["ProxyMetrics", "route_family"]
