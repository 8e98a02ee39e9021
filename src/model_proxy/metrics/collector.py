"""Figures read from the running state at each scrape: the memory budget and admission
in use, the circuit breaker of every upstream, the version.

They are gauges of what is, not counts of what happened, so they are read when
Prometheus asks rather than kept up to date on every request.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from model_proxy import __version__
from model_proxy.runtime.state import ProxyState
from model_proxy.upstream.breaker import BreakerState, CircuitBreaker

from .registry import UpstreamKind


class StateCollector(Collector):
    """``state()`` gives the config state in force, None before start-up."""

    def __init__(self, state: Callable[[], ProxyState | None]) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily("model_proxy_build", "The running model-proxy")
        info.add_metric([], {"version": __version__})
        yield info
        state = self._state()
        if state is None:
            return
        admission = state.capacity.admission
        yield _gauge(
            "model_proxy_memory_budget_bytes",
            "Instance bytes all inferences may hold at once (--memory-budget)",
            admission.budget.total,
        )
        yield _gauge(
            "model_proxy_memory_budget_used_bytes",
            "Bytes of the memory budget reserved by running inferences",
            admission.budget.used,
        )
        yield _gauge(
            "model_proxy_inferences_running",
            "Inferences admitted and running",
            admission.running,
        )
        yield _gauge(
            "model_proxy_inferences_max",
            "Inferences that may run at once (--max-concurrent-inferences)",
            admission.max_concurrent,
        )
        yield _breakers(state)
        yield from _cache_and_disk(state)


def _cache_and_disk(state: ProxyState) -> Iterator[Metric]:
    store = state.result_cache.store
    yield _gauge(
        "model_proxy_cache_size_bytes", "Bytes of results in the result cache", store.total_bytes
    )
    yield _gauge(
        "model_proxy_cache_max_bytes", "Size of the result cache (--cache-size)", store.max_bytes
    )
    try:
        # One statvfs call: the cache, the PACS tokens and the audit log may live here.
        free = shutil.disk_usage(state.settings.data_dir).free
    except OSError:
        return
    yield _gauge(
        "model_proxy_data_disk_free_bytes",
        "Free bytes on the file system of --data-dir (result cache, PACS tokens)",
        free,
    )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _breakers(state: ProxyState) -> GaugeMetricFamily:
    # One series per state, 1 for the current one: Prometheus's way of showing an enum.
    family = GaugeMetricFamily(
        "model_proxy_breaker_state",
        "Circuit breaker of each upstream: 1 for its current state (closed, open, half-open)",
        labels=["kind", "upstream", "state"],
    )
    breakers: list[tuple[UpstreamKind, str, CircuitBreaker]] = []
    for server_id in state.config.servers:
        breaker = state.breaker_of_server(server_id)
        if breaker is not None:
            breakers.append((UpstreamKind.PACS, server_id, breaker))
    for model_id, client in state.models.items():
        breakers.append((UpstreamKind.MODEL, model_id, client.breaker))
    for kind, upstream, breaker in breakers:
        current = breaker.state
        for candidate in BreakerState:
            family.add_metric(
                [kind.value, upstream, candidate.value], 1.0 if candidate is current else 0.0
            )
    return family


# The states a job is in before it ends; finished jobs are counted by registry.py.
_ACTIVE_JOB_STATES = ("queued", "running")


class JobsCollector(Collector):
    """Jobs by state and model UUID: ``counts()`` gives the queued and running ones by
    (model, state), None when jobs are off; ``state()`` the config in force, whose
    models appear with 0 so that a query sees every model from the start."""

    def __init__(
        self,
        counts: Callable[[], Mapping[tuple[str, str], int] | None],
        state: Callable[[], ProxyState | None],
    ) -> None:
        self._counts = counts
        self._state = state

    def collect(self) -> Iterator[Metric]:
        counts = self._counts()
        if counts is None:
            return
        state = self._state()
        models = set(state.config.models) if state is not None else set()
        models.update(model for model, _ in counts)
        family = GaugeMetricFamily(
            "model_proxy_jobs",
            "Jobs queued or running now, by model UUID and state",
            labels=["model", "state"],
        )
        for model in sorted(models):
            for job_state in _ACTIVE_JOB_STATES:
                family.add_metric([model, job_state], counts.get((model, job_state), 0))
        yield family
