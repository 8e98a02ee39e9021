"""``model-proxy serve``'s flags: names, defaults, environment variables and help."""

from __future__ import annotations

import argparse

from model_proxy.cli.options import (
    add_option,
)
from model_proxy.cli.redis_options import add_redis_options
from model_proxy.settings import env_flag


def add_serve_options(serve: argparse.ArgumentParser) -> None:
    """The flags of ``serve``."""
    add_option(serve, "config-dir", ".", "folder holding servers.json and models.json")
    add_option(serve, "host", "0.0.0.0", "address to listen on")
    add_option(serve, "port", "8002", "port to listen on")
    add_option(serve, "cert", None, "TLS certificate (PEM; default: zhiva.crt in the config dir)")
    add_option(serve, "key", None, "TLS private key (PEM; default: zhiva.key in the config dir)")
    serve.add_argument(
        "--no-tls",
        action="store_true",
        default=env_flag("MODEL_PROXY_NO_TLS"),
        help="serve plain HTTP behind a TLS-terminating load balancer (env MODEL_PROXY_NO_TLS)",
    )
    serve.add_argument(
        "--allow-symlinks-outside-folder",
        action="store_true",
        default=env_flag("MODEL_PROXY_ALLOW_SYMLINKS_OUTSIDE_FOLDER"),
        help="serve files of a file:// PACS folder that are symlinks to files outside it"
        " (env MODEL_PROXY_ALLOW_SYMLINKS_OUTSIDE_FOLDER)",
    )
    serve.add_argument(
        "--browser-revalidation",
        action="store_true",
        default=env_flag("MODEL_PROXY_BROWSER_REVALIDATION"),
        help="let browsers keep results and revalidate them (Cache-Control: private,"
        " no-cache) instead of no-store (env MODEL_PROXY_BROWSER_REVALIDATION)",
    )
    add_option(serve, "data-dir", "data", "folder for the proxy's persistent data")
    add_option(serve, "log-dir", "log", "folder for log files")
    add_option(
        serve, "pacs-timeout", "60", "seconds a PACS may stay silent before the request fails"
    )
    add_option(
        serve,
        "pacs-answer-deadline",
        "60",
        "seconds a PACS has to start answering a retrieval, retries included; a PACS"
        " that has started sending is never cut by it",
    )
    add_option(
        serve, "model-timeout", "600", "seconds a model may stay silent before the request fails"
    )
    add_option(serve, "probe-timeout", "10", "seconds a /status probe may take")
    add_option(
        serve,
        "status-cache",
        "5",
        "seconds /status reuses its last probe round (0: probe on every call; one round"
        " runs at a time either way)",
    )
    add_option(
        serve,
        "pacs-auth-failure-memory",
        "5",
        "seconds a PACS token server that failed is reported without asking it again"
        " (a refused credential: 30)",
    )
    add_option(
        serve, "pacs-retries", "2", "further attempts of a PACS read that failed transiently"
    )
    add_option(
        serve,
        "breaker-failures",
        "5",
        "consecutive failures of a PACS or model before calls to it fail fast",
    )
    add_option(serve, "breaker-cooldown", "30", "seconds a tripped PACS or model is left alone")
    add_option(
        serve,
        "shutdown-grace",
        "30",
        "seconds in-flight requests may take to finish after SIGTERM",
    )
    add_option(
        serve,
        "folder-rescan",
        "1",
        "seconds after which a request starts a background rescan of a file:// folder"
        " (only changed subfolders are listed again)",
    )
    add_option(
        serve,
        "watch-config",
        "0",
        "seconds between checks for changed config files (0: reload on SIGHUP only)",
    )
    add_option(
        serve,
        "cache-size",
        "2GiB",
        "disk space for cached results (like 500MB, 2GiB; 0 turns the cache off)",
    )
    add_option(
        serve,
        "result-spool-size",
        "2GiB",
        "disk space for results not cached, held for viewers that read slowly so the model"
        " call ends when the model has answered (0: stream them straight through)",
    )
    add_option(
        serve,
        "memory-budget",
        "512MiB",
        "instance data all inferences may hold in memory at once (like 512MiB, 2GiB)",
    )
    add_option(
        serve,
        "max-concurrent-inferences",
        "32",
        "inferences that may run at once; more are answered 503 with Retry-After",
    )
    add_option(serve, "pacs-concurrency", "4", "retrievals one inference runs at once on its PACS")
    add_option(serve, "max-running-jobs", "4", "jobs (POST /jobs) that run at once; the rest queue")
    add_option(
        serve,
        "job-retention",
        "7d",
        "how long finished jobs are kept (seconds, or like 30m, 12h, 7d)",
    )
    add_option(
        serve,
        "watch-interval",
        "30",
        "seconds between polls of each PACS for new studies that rules.json says to run"
        " models on (0: no prefetch)",
    )
    add_option(
        serve,
        "watch-lookback",
        "1",
        "days before today whose studies the prefetch watcher looks at (by StudyDate;"
        " a file:// folder: by file time)",
    )
    add_option(
        serve,
        "access-config",
        None,
        "client authentication and per-model access rules (default: access.json in the"
        " config dir if present; without it any caller may run every model)",
    )
    add_option(
        serve,
        "forwarded-allow-ips",
        "",
        "comma-separated addresses or networks of reverse proxies (nginx) whose"
        " X-Forwarded-For and X-Forwarded-Proto are believed; from anyone else they are"
        " ignored (default: nobody's)",
    )
    add_option(
        serve,
        "request-head-timeout",
        "15",
        "seconds a client has to send a whole request head; slower ones are closed",
    )
    add_option(
        serve,
        "max-connections",
        "auto",
        "client connections open at once (auto: what the open-file limit allows, keeping"
        " a quarter, at least 256, for PACS and model connections and files)",
    )
    add_option(
        serve, "cors-origins", "*", "comma-separated browser origins allowed to call the proxy"
    )
    add_option(
        serve,
        "dicom-max-result",
        "256MiB",
        "most of a model's JSON result held at once to convert it to DICOM: one instance's"
        " part of a segmentation (which streams), a whole annotation or prediction result",
    )
    add_option(
        serve,
        "uid-root",
        "2.25.",
        "root of the UIDs of DICOM results (default 2.25.: UUID-derived, needs no registration)",
    )
    add_option(
        serve,
        "metrics-port",
        None,
        "also serve /metrics on this port, plain HTTP, for in-cluster scraping"
        " (default: /metrics on the main port only)",
    )
    serve.add_argument(
        "--ready-requires-upstreams",
        action="store_true",
        default=env_flag("MODEL_PROXY_READY_REQUIRES_UPSTREAMS"),
        help="/readyz also probes every PACS and model and fails while one is down"
        " (env MODEL_PROXY_READY_REQUIRES_UPSTREAMS)",
    )
    add_option(
        serve,
        "otlp-endpoint",
        None,
        "send OpenTelemetry traces to this OTLP/HTTP collector, like http://collector:4318"
        " (needs the otel extra; default: no tracing)",
    )
    add_redis_options(serve)
    add_option(
        serve,
        "redis-max-entry",
        "8MiB",
        "largest result shared with the other replicas through Redis; larger ones stay"
        " in this replica's disk cache (0: results are not shared)",
    )
    add_option(
        serve,
        "redis-result-ttl",
        "24h",
        "how long a shared result stays in Redis after it was stored or last read",
    )
    add_option(
        serve,
        "redis-lock-lease",
        "30",
        "seconds the other replicas wait for a replica that stopped while computing a"
        " result they also need (its lease is renewed while it computes)",
    )
    add_option(
        serve,
        "job-lease",
        "30",
        "seconds after which another replica takes over a job whose replica stopped"
        " renewing it (renewed every second while it runs)",
    )
    add_option(
        serve,
        "redis-check-interval",
        "5",
        "seconds between the pings that tell whether Redis is back after a failure",
    )
    add_option(serve, "log-format", "text", "log lines as text or json")
    add_option(serve, "log-level", "info", "debug, info, warning or error")
    add_option(
        serve,
        "audit-log",
        None,
        "JSON-lines audit file, or off (default: audit.jsonl in the log dir, else the data dir)",
    )
