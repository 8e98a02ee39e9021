"""Process settings: where the files are, what to listen on, limits and timeouts.

Built once by the CLI from flags and ``MODEL_PROXY_*`` environment variables and
passed to ``create_app``; nothing here is read at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from model_proxy.pacs.auth.session import FailureMemory
from model_proxy.shared import RedisSettings
from model_proxy.upstream.breaker import BreakerPolicy
from model_proxy.upstream.clients import Timeouts
from model_proxy.upstream.retry import RetryPolicy

MiB = 1024 * 1024


def env_flag(name: str, environ: dict[str, str] | None = None) -> bool:
    value = (environ if environ is not None else os.environ).get(name, "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    config_dir: Path = field(default_factory=Path.cwd)
    data_dir: Path = field(default_factory=lambda: Path.cwd() / "data")
    log_dir: Path | None = None
    show_status_page: bool = False
    # Seconds /status answers from its last probe round (one round runs at a time);
    # 0: every call probes, still one round at a time.
    status_cache_seconds: float = 5.0
    pacs_timeouts: Timeouts = field(default_factory=lambda: Timeouts(connect=10.0, idle=60.0))
    # A PACS that never starts answering is reported within this, retries included.
    pacs_answer_deadline: float = 60.0
    # A model may think for minutes before its first byte.
    model_timeouts: Timeouts = field(default_factory=lambda: Timeouts(connect=10.0, idle=600.0))
    max_instance_bytes: int = 1024 * MiB
    max_result_bytes: int = 2048 * MiB
    # "*" keeps the original's behaviour: any viewer origin may call the routes.
    cors_origins: tuple[str, ...] = ("*",)
    # PACS reads are retried; model POSTs only as their models.json entry allows.
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    # How long a failed PACS token renewal is answered from memory (pacs/auth/session.py).
    auth_failure_memory: FailureMemory = field(default_factory=FailureMemory)
    # A file:// folder's index older than this is rescanned (incrementally, in the
    # background) when a request uses it; requests never wait for a rescan.
    folder_rescan_seconds: float = 1.0
    # Seconds between checks for changed config files; 0 reloads on SIGHUP only.
    watch_config: float = 0.0
    # Results on disk under data_dir/result-cache, LRU-evicted past this; 0: no cache.
    cache_max_bytes: int = 2048 * MiB
    # Results not cached, spooled for viewers that read slower than the model answers
    # (inference/runner.py); past this many bytes held, results stream straight through.
    result_spool_bytes: int = 2048 * MiB
    # Instance bytes in flight across all inferences (docs/performance.md).
    memory_budget: int = 512 * MiB
    # Past either limit, a new inference is answered 503 with Retry-After.
    max_concurrent_inferences: int = 32
    # Retrievals one inference runs at once against its PACS.
    pacs_concurrency: int = 4
    # Threads that encode the wire format; 0: one per CPU.
    encoder_threads: int = 0
    # JSON lines, one per inference request; None: no audit log (warned at start-up).
    audit_log: Path | None = None
    # --access-config; None: access.json in config_dir when it exists.
    access_file: Path | None = None
    # Jobs (docs/jobs.md): how many run at once; the rest queue.
    max_running_jobs: int = 4
    # Finished jobs are deleted from <data-dir>/jobs.sqlite after this many seconds.
    job_retention: float = 7 * 24 * 3600.0
    # With --redis: a running job whose replica did not renew it for this many seconds
    # is taken over by another replica (docs/replicas.md, "Jobs").
    job_lease: float = 30.0
    # How often a job's events stream looks at its progress.
    job_progress_interval: float = 0.5
    # A job that found admission full (the GET routes' 503) tries again after this.
    job_retry_interval: float = 1.0
    # Prefetch (rules.json, docs/jobs.md): seconds between polls of each PACS; 0: off.
    watch_interval: float = 30.0
    # Studies of today and this many days before (StudyDate; a folder: file times).
    watch_lookback_days: int = 1
    # Studies listed per PACS and poll, at most (QIDO pages of 100).
    watch_max_studies: int = 5000
    # The largest JSON result converted to DICOM: it is held and parsed whole
    # (docs/dicom-outputs.md, "Not done yet").
    dicom_max_result_bytes: int = 256 * MiB
    # Root of the UIDs of DICOM results (dicom_results/uids.py); "2.25.": UUID-derived.
    uid_root: str = "2.25."
    # Seconds a client has to send a whole request head (web/connection_guard.py).
    request_head_timeout: float = 15.0
    # Open client connections at once; None: as many as the open-file limit allows.
    max_connections: int | None = None
    # --metrics-port: /metrics also on this plain-HTTP port (in-cluster scraping).
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"
    # /readyz also probes every PACS and model (--ready-requires-upstreams).
    ready_requires_upstreams: bool = False
    # Serve files of a file:// folder that are symlinks to files outside it.
    allow_symlinks_outside_folder: bool = False
    # Results say Cache-Control "private, no-cache" (browsers keep and revalidate
    # them) rather than "no-store".
    browser_revalidation: bool = False
    # --redis: the state replicas share (docs/replicas.md); None: each process keeps
    # its own, as a single proxy does.
    redis: RedisSettings | None = None
    # Results up to this size are shared in Redis; larger ones stay on the disk of the
    # replica that made them (docs/replicas.md, "Results"). 0: results are not shared.
    redis_max_entry_bytes: int = 8 * MiB
    # Seconds a shared result lives in Redis after it was stored or last read.
    redis_result_ttl: float = 24 * 3600.0
    # Seconds the lease on a result being computed lasts (renewed while the model runs):
    # how long the other replicas wait for a replica that died while computing.
    redis_lock_lease: float = 30.0
    # Seconds between pings that tell whether Redis is up (/status, model_proxy_redis_up);
    # while it is down, requests do not try it.
    redis_check_interval: float = 5.0
