"""The proxy's own metrics, one registry per app (never the process-global one: two
apps in one test process must not share counts).

Everything a request did is read from its audit record when the response is over
(``observe_request``: the audit middleware calls it), so the request path is
instrumented once. Calls to upstreams are timed by their circuit breakers
(``upstream_observer``) and token renewals by their sessions (``token_observer``).

Labels carry route families and config UUIDs only, never a study, series or
instance UID and never a path a caller chose: the number of series is unbounded,
the number of configured models and servers is not.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from model_proxy.config import PrefetchRule, Task
from model_proxy.errors import ErrorCode

if TYPE_CHECKING:
    from model_proxy.audit.record import AuditRecord

# Route families: the first path segment of every route the app serves.
_FAMILIES = frozenset(
    {
        *(task.route_family for task in Task),
        "health",
        "livez",
        "readyz",
        "status",
        "metrics",
        "openapi.json",
    }
)
# An inference may stream a 2,000-slice study for minutes; a cached answer takes ms.
_REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_ADMISSION_CODES = (ErrorCode.TOO_MANY_INFERENCES, ErrorCode.MEMORY_BUDGET_EXHAUSTED)
# A job may wait behind --max-running-jobs others for a long time, and run for minutes.
_JOB_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class UpstreamKind(StrEnum):
    PACS = "pacs"
    MODEL = "model"


# The jobs API (routes/jobs.py) by its routes, never by job id (one series per job would
# be unbounded). The event stream has a family of its own: it lasts as long as its job,
# a duration that would swamp the latency of the other jobs requests.
_JOB_ROUTE_TAILS = {(): "jobs", ("result",): "jobs", ("events",): "job-events"}


def route_family(path: str) -> str:
    """``/segmentations/<uuid>/studies/...`` -> ``segmentations``; ``/jobs/<id>/events``
    -> ``job-events``, the other jobs routes -> ``jobs``; unknown paths -> ``other``."""
    first, *rest = path.lstrip("/").split("/")
    if first == "jobs":
        if not rest:
            return "jobs"
        job_id, *tail = rest
        return _JOB_ROUTE_TAILS.get(tuple(tail), "other") if job_id else "other"
    return first if first in _FAMILIES else "other"


class ProxyMetrics:
    def __init__(self) -> None:
        registry = self.registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        self.requests = Counter(
            "model_proxy_requests",
            "HTTP requests answered, by route family, model UUID and status code",
            ["route", "model", "status"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "model_proxy_request_duration_seconds",
            "Time from the request to the last byte of its response",
            ["route", "model"],
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "model_proxy_upstream_call_duration_seconds",
            "PACS retrievals (until the last instance was read) and model calls (until the"
            " last result byte), by upstream kind and config UUID",
            ["kind", "upstream"],
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        self.upstream_failures = Counter(
            "model_proxy_upstream_call_failures",
            "Calls that failed because of the upstream (unreachable, timed out, 5xx,"
            " broken stream), by upstream kind and config UUID",
            ["kind", "upstream"],
            registry=registry,
        )
        self.dicom_bytes_in = Counter(
            "model_proxy_dicom_received_bytes",
            "DICOM instance bytes read from PACS servers and sent on to models",
            ["model", "server"],
            registry=registry,
        )
        self.wire_bytes_out = Counter(
            "model_proxy_model_request_bytes",
            "Wire-format request body bytes sent to models",
            ["model"],
            registry=registry,
        )
        self.result_bytes_out = Counter(
            "model_proxy_result_sent_bytes",
            "Result bytes sent to callers (as sent: compressed when the caller accepted it)",
            ["model"],
            registry=registry,
        )
        self.cache_lookups = Counter(
            "model_proxy_cache_lookups",
            "Result cache answers: hit, miss (the model was called), coalesced (joined an"
            " identical request's model call), not_modified (304), shared (--redis: another"
            " replica's result, read from Redis)",
            ["model", "result"],
            registry=registry,
        )
        self.admission_rejections = Counter(
            "model_proxy_admission_rejections",
            "Inferences refused with 503 by admission control, by reason (error code)",
            ["reason"],
            registry=registry,
        )
        self.token_refreshes = Counter(
            "model_proxy_pacs_token_refreshes",
            "PACS access token renewals that worked, by server UUID",
            ["server"],
            registry=registry,
        )
        self.token_refresh_failures = Counter(
            "model_proxy_pacs_token_refresh_failures",
            "PACS access token renewals that failed, by server UUID",
            ["server"],
            registry=registry,
        )
        self.prefetch_jobs = Counter(
            "model_proxy_prefetch_jobs",
            "Jobs the prefetch watcher started, by rule name (rules.json), model and server UUID",
            ["rule", "model", "server"],
            registry=registry,
        )
        for code in _ADMISSION_CODES:
            self.admission_rejections.labels(code.value)  # 0 from the start: alerts see it
        self._job_metrics(registry)

    def _job_metrics(self, registry: CollectorRegistry) -> None:
        # Jobs by state (queued, running) are read at each scrape: collector.py.
        self.jobs_finished = Counter(
            "model_proxy_jobs_finished",
            "Jobs that ended, by model UUID and final status (succeeded, failed, cancelled)",
            ["model", "status"],
            registry=registry,
        )
        self.job_queue_wait = Histogram(
            "model_proxy_job_queue_wait_seconds",
            "Time from a job's submission to the start of its run, by model UUID",
            ["model"],
            buckets=_JOB_BUCKETS,
            registry=registry,
        )
        self.job_run_duration = Histogram(
            "model_proxy_job_run_duration_seconds",
            "Time from the start of a job's run to its end (model call and store step),"
            " by model UUID",
            ["model"],
            buckets=_JOB_BUCKETS,
            registry=registry,
        )
        self.dicom_results_stored = Counter(
            "model_proxy_dicom_results_stored",
            "DICOM objects (SEG, SR) that jobs stored, by server UUID",
            ["server"],
            registry=registry,
        )
        self.dicom_store_failures = Counter(
            "model_proxy_dicom_store_failures",
            "Store steps of jobs that failed (required or not), by server UUID",
            ["server"],
            registry=registry,
        )

    def job_started(self, model: str, queued_seconds: float) -> None:
        self.job_queue_wait.labels(model).observe(max(queued_seconds, 0.0))

    def job_finished(self, model: str, status: str, run_seconds: float | None) -> None:
        self.jobs_finished.labels(model, status).inc()
        if run_seconds is not None:
            self.job_run_duration.labels(model).observe(max(run_seconds, 0.0))

    def job_stored(self, server: str, objects: int, failed: bool) -> None:
        if failed:
            self.dicom_store_failures.labels(server).inc()
        else:
            self.dicom_results_stored.labels(server).inc(objects)

    def observe_request(self, record: AuditRecord) -> None:
        """Count a finished request from its audit record."""
        route = route_family(record.path)
        model = record.model or ""
        self.requests.labels(route, model, str(record.status or 0)).inc()
        self.request_duration.labels(route, model).observe(record.duration_ms / 1000)
        if record.code in _ADMISSION_CODES:
            self.admission_rejections.labels(record.code).inc()
        figures = record.figures
        if figures is None:
            return
        if figures.cache is not None:
            self.cache_lookups.labels(model, figures.cache).inc()
        if figures.dicom_bytes_in:
            self.dicom_bytes_in.labels(model, record.server or "").inc(figures.dicom_bytes_in)
        if figures.wire_bytes_out:
            self.wire_bytes_out.labels(model).inc(figures.wire_bytes_out)
        if record.result_bytes_out:
            self.result_bytes_out.labels(model).inc(record.result_bytes_out)

    def upstream_observer(self, kind: UpstreamKind, upstream: str) -> Callable[[float, bool], None]:
        """What a circuit breaker calls after each call to ``upstream`` (a config UUID)."""
        duration = self.upstream_duration.labels(kind.value, upstream)
        failures = self.upstream_failures.labels(kind.value, upstream)

        def observe(seconds: float, failed: bool) -> None:
            duration.observe(seconds)
            if failed:
                failures.inc()

        return observe

    def prefetch_job(self, rule: PrefetchRule, server: str) -> None:
        """What the prefetch watcher calls for each job it starts."""
        self.prefetch_jobs.labels(rule.name, rule.model, server).inc()

    def token_observer(self, server: str, renewed: bool) -> None:
        """What the PACS token sessions call after each renewal."""
        (self.token_refreshes if renewed else self.token_refresh_failures).labels(server).inc()
