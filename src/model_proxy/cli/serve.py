"""``model-proxy serve``: the Settings its flags make (serve_options.py), and running uvicorn."""

from __future__ import annotations

import argparse
import errno
import logging
import math
import signal
import socket
import sqlite3
from pathlib import Path

from model_proxy.access import AccessPolicy
from model_proxy.cli.options import (
    CommandError,
    load_checked_access,
    load_checked_config,
    optional_path,
    parse_choice,
    parse_count,
    parse_duration,
    parse_forwarded_allow_ips,
    parse_memory_budget,
    parse_port,
    parse_seconds,
    parse_size,
    secret_file_warnings,
    write_private_files,
)
from model_proxy.cli.redis_options import check_shared_tokens, redis_settings
from model_proxy.cli.tracing import otlp_url_of, tracing_to
from model_proxy.config import ProxyConfig
from model_proxy.jobs.store import JOB_STORE_FILE, JobStore
from model_proxy.pacs.auth.session import FailureMemory
from model_proxy.prefetch.ledger import LedgerTable
from model_proxy.settings import Settings, env_flag
from model_proxy.upstream.breaker import BreakerPolicy
from model_proxy.upstream.clients import Timeouts
from model_proxy.upstream.retry import RetryPolicy

logger = logging.getLogger("model_proxy")


def serve(args: argparse.Namespace) -> int:
    from model_proxy.access.posture import parse_cors_origins
    from model_proxy.cli.logs import LogFormat, LogLevel, setup_logging

    probe = parse_seconds(args.probe_timeout, "probe-timeout")
    # uvicorn takes whole seconds
    shutdown_grace = math.ceil(
        parse_seconds(args.shutdown_grace, "shutdown-grace", allow_zero=True)
    )
    try:
        cors_origins = parse_cors_origins(args.cors_origins)
    except ValueError as exc:
        raise CommandError(f"--cors-origins: {exc}") from None
    log_dir = Path(args.log_dir) if args.log_dir else None
    settings = Settings(
        config_dir=Path(args.config_dir),
        data_dir=Path(args.data_dir),
        log_dir=log_dir,
        cors_origins=cors_origins,
        audit_log=_audit_log(args.audit_log, log_dir, Path(args.data_dir)),
        access_file=optional_path(args.access_config),
        show_status_page=env_flag("ZHIVA_SHOW_STATUS_PAGE"),
        status_cache_seconds=parse_seconds(args.status_cache, "status-cache", allow_zero=True),
        pacs_timeouts=Timeouts(idle=parse_seconds(args.pacs_timeout, "pacs-timeout"), probe=probe),
        pacs_answer_deadline=parse_seconds(args.pacs_answer_deadline, "pacs-answer-deadline"),
        model_timeouts=Timeouts(
            idle=parse_seconds(args.model_timeout, "model-timeout"), probe=probe
        ),
        auth_failure_memory=FailureMemory(
            unavailable=parse_seconds(
                args.pacs_auth_failure_memory, "pacs-auth-failure-memory", allow_zero=True
            )
        ),
        retry=RetryPolicy(retries=parse_count(args.pacs_retries, "pacs-retries", 0, 10)),
        breaker=BreakerPolicy(
            failure_threshold=parse_count(args.breaker_failures, "breaker-failures", 1, 1000),
            cooldown=parse_seconds(args.breaker_cooldown, "breaker-cooldown"),
        ),
        folder_rescan_seconds=parse_seconds(args.folder_rescan, "folder-rescan", allow_zero=True),
        watch_config=parse_seconds(args.watch_config, "watch-config", allow_zero=True),
        cache_max_bytes=parse_size(args.cache_size, "cache-size"),
        uid_root=_uid_root(args.uid_root),
        dicom_max_result_bytes=parse_size(args.dicom_max_result, "dicom-max-result"),
        result_spool_bytes=parse_size(args.result_spool_size, "result-spool-size"),
        memory_budget=parse_memory_budget(args.memory_budget),
        max_concurrent_inferences=parse_count(
            args.max_concurrent_inferences, "max-concurrent-inferences", 1, 100_000
        ),
        pacs_concurrency=parse_count(args.pacs_concurrency, "pacs-concurrency", 1, 64),
        max_running_jobs=parse_count(args.max_running_jobs, "max-running-jobs", 1, 10_000),
        job_retention=parse_duration(args.job_retention, "job-retention"),
        job_lease=parse_seconds(args.job_lease, "job-lease"),
        watch_interval=parse_seconds(args.watch_interval, "watch-interval", allow_zero=True),
        watch_lookback_days=parse_count(args.watch_lookback, "watch-lookback", 0, 3650),
        request_head_timeout=parse_seconds(args.request_head_timeout, "request-head-timeout"),
        max_connections=_max_connections(args.max_connections),
        metrics_port=parse_port(args.metrics_port) if args.metrics_port else None,
        metrics_host=args.host,
        ready_requires_upstreams=args.ready_requires_upstreams,
        allow_symlinks_outside_folder=args.allow_symlinks_outside_folder,
        browser_revalidation=args.browser_revalidation,
        redis=redis_settings(args),
        redis_max_entry_bytes=parse_size(args.redis_max_entry, "redis-max-entry"),
        redis_result_ttl=parse_duration(args.redis_result_ttl, "redis-result-ttl"),
        redis_lock_lease=parse_seconds(args.redis_lock_lease, "redis-lock-lease"),
        redis_check_interval=parse_seconds(args.redis_check_interval, "redis-check-interval"),
    )
    log_format = parse_choice(args.log_format, "log-format", LogFormat)
    log_level = parse_choice(args.log_level, "log-level", LogLevel)
    port = parse_port(args.port)
    forwarded_allow_ips = parse_forwarded_allow_ips(args.forwarded_allow_ips)
    otlp_url = otlp_url_of(args.otlp_endpoint)
    if settings.metrics_port == port:
        raise CommandError(f"--metrics-port must differ from --port ({port})")
    if settings.metrics_port is not None:
        _check_free(args.host, settings.metrics_port, "--metrics-port")
    tls_files = None if args.no_tls else _tls_files(settings.config_dir, args.cert, args.key)
    write_private_files()
    try:
        setup_logging(
            settings.log_dir,
            level=LogLevel(log_level).number,
            log_format=LogFormat(log_format),
        )
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        where = Path(exc.filename).absolute() if exc.filename else "a folder"
        raise CommandError(f"cannot create {where}: {exc.strerror}") from None
    _check_job_store(settings)
    config = load_checked_config(settings.config_dir)
    check_shared_tokens(settings.redis, config.servers.values())
    access = load_checked_access(settings.config_dir, settings.access_file, config)
    tls_key = tls_files[1] if tls_files else None
    for warning in secret_file_warnings(settings.config_dir, access, tls_key):
        logger.warning("%s", warning)
    with tracing_to(otlp_url):
        run_server(
            settings,
            config,
            host=args.host,
            port=port,
            tls_files=tls_files,
            shutdown_grace=shutdown_grace,
            access=access,
            forwarded_allow_ips=forwarded_allow_ips,
        )
    return 0


def _check_job_store(settings: Settings) -> None:
    """One clear line for a job store that cannot be opened (damaged, not SQLite, not
    writable) instead of a failed start-up; none is opened with jobs off (no cache)."""
    if settings.cache_max_bytes == 0:
        return
    path = settings.data_dir / JOB_STORE_FILE
    try:
        JobStore(path).close()
        if settings.watch_interval > 0:
            LedgerTable(path).close()  # the prefetch watcher's table, in the same file
    except (sqlite3.Error, OSError) as exc:
        raise CommandError(
            f"cannot open the job store {path} ({exc}); move it aside to start without its jobs"
        ) from None


def _check_free(host: str, port: int, flag: str) -> None:
    """One clear line now rather than a failed start-up later (the app binds it)."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise CommandError(
            f"{flag}: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None


def _tls_files(config_dir: Path, cert: str | None, key: str | None) -> tuple[Path, Path]:
    """--cert / --key as given (relative to the current folder), else zhiva.crt and
    zhiva.key next to servers.json, where the original's users keep them."""
    cert_path = Path(cert) if cert else config_dir / "zhiva.crt"
    key_path = Path(key) if key else config_dir / "zhiva.key"
    for path, what, flag in ((cert_path, "certificate", cert), (key_path, "private key", key)):
        if not path.is_file():
            source = "" if flag else " (the default: next to the config files)"
            raise CommandError(
                f"TLS {what} {path.absolute()} not found{source}. Create a self-signed pair"
                f" with `model-proxy gen-cert --out-dir {config_dir}`, pass --cert/--key,"
                " or use --no-tls behind a TLS-terminating proxy"
            )
    return cert_path.absolute(), key_path.absolute()


def run_server(
    settings: Settings,
    config: ProxyConfig,
    *,
    host: str,
    port: int,
    tls_files: tuple[Path, Path] | None,
    shutdown_grace: int = 30,
    access: AccessPolicy | None = None,
    forwarded_allow_ips: list[str] | None = None,
) -> None:
    """Run uvicorn until SIGTERM or SIGINT.

    Only connections from ``forwarded_allow_ips`` may set the client address and the
    scheme with X-Forwarded-For / X-Forwarded-Proto (what the audit log and the access
    line show); with none, uvicorn's proxy-header middleware is off altogether, so its
    own default (trust 127.0.0.1, or $FORWARDED_ALLOW_IPS) never applies unasked.
    """
    import uvicorn

    from model_proxy.app import create_app
    from model_proxy.web.connection_guard import (
        ConnectionGuard,
        connection_cap,
        raise_open_file_limit,
    )
    from model_proxy.web.http_limits import guarded_protocol
    from model_proxy.web.tls import server_context

    open_files = raise_open_file_limit()
    guard = ConnectionGuard(
        head_timeout=settings.request_head_timeout,
        max_connections=connection_cap(settings.max_connections, open_files),
    )
    scheme = "https" if tls_files else "http"
    # Bound before the app starts: a taken port is one clear line and exit code 2,
    # not uvicorn's errno after "Application startup complete".
    listener = listen(host, port)
    logger.info(
        "serving on %s://%s:%d (open-file limit %d, at most %d client connections)",
        scheme,
        host,
        port,
        open_files,
        guard.max_connections,
    )
    app = create_app(settings, config, access)
    uvicorn_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(tls_files[0]) if tls_files else None,
        ssl_keyfile=str(tls_files[1]) if tls_files else None,
        # Our context (web/tls.py): AEAD-only TLS 1.2, plain HTTP told to use https.
        ssl_context_factory=(
            (lambda _config, _default: server_context(*tls_files, port)) if tls_files else None
        ),
        log_config=None,
        # The app logs one line per request itself (audit/request_log.py).
        access_log=False,
        server_header=False,
        http=guarded_protocol(guard),
        timeout_graceful_shutdown=shutdown_grace,
        proxy_headers=bool(forwarded_allow_ips),
        forwarded_allow_ips=forwarded_allow_ips or None,
    )
    server = uvicorn.Server(uvicorn_config)
    # /readyz fails from SIGTERM on, while the requests in flight drain.
    app.state.is_draining = lambda: server.should_exit
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the
    # handler it found; the default one would kill the process with status -15 after
    # a clean shutdown. A no-op handler makes the exit status 0.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[listener])
    except OSError as exc:
        raise CommandError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        listener.close()
    if not server.started:
        raise CommandError(f"the server did not start on {host}:{port}; see the log above")


def _uid_root(value: str) -> str:
    # Imported here: the package loads highdicom, which only serve needs.
    from model_proxy.dicom_results import check_uid_root

    try:
        return check_uid_root(value)
    except ValueError as exc:
        raise CommandError(f"--uid-root: {exc}") from None


def _max_connections(value: str) -> int | None:
    if value.strip().lower() == "auto":
        return None
    return parse_count(value, "max-connections", 1, 10_000_000)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or CommandError saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)  # uvicorn's default backlog
    except OSError as exc:
        sock.close()
        hint = (
            "; another process uses it (stop it, or pick another port with --port)"
            if exc.errno == errno.EADDRINUSE
            else ""
        )
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    return sock


def _audit_log(value: str | None, log_dir: Path | None, data_dir: Path) -> Path | None:
    if value is not None and value.strip().lower() == "off":
        return None
    if value:
        return Path(value)
    return (log_dir or data_dir) / "audit.jsonl"
