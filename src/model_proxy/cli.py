"""The ``model-proxy`` command: serve, gen-cert, check-config, check-auth, example-model, demo.

Every flag can also come from ``MODEL_PROXY_<FLAG>`` (``--config-dir`` from
``MODEL_PROXY_CONFIG_DIR``); a flag on the command line wins. Errors end as one
clear line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from model_proxy import __version__
from model_proxy.access import AccessPolicy
from model_proxy.breaker import BreakerPolicy
from model_proxy.config import ConfigError, ProxyConfig, load_config
from model_proxy.retry import RetryPolicy
from model_proxy.settings import MiB, Settings, env_flag
from model_proxy.upstream import Timeouts

EXIT_USAGE = 2

logger = logging.getLogger("model_proxy")


class CommandError(Exception):
    """A problem the user can fix; printed as is, exit code 2."""


def _env(flag: str) -> str | None:
    return os.environ.get("MODEL_PROXY_" + flag.upper().replace("-", "_"))


def _add(parser: argparse.ArgumentParser, flag: str, default: str | None, help_text: str) -> None:
    value = _env(flag)
    env_name = "MODEL_PROXY_" + flag.upper().replace("-", "_")
    parser.add_argument(
        f"--{flag}",
        default=value if value is not None else default,
        help=f"{help_text} (env {env_name}; default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-proxy",
        description="Runs AI models on DICOMweb imaging data (a drop-in zhiva model proxy).",
    )
    parser.add_argument("--version", action="version", version=f"model-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the proxy")
    _add(serve, "config-dir", ".", "folder holding servers.json and models.json")
    _add(serve, "host", "0.0.0.0", "address to listen on")
    _add(serve, "port", "8002", "port to listen on")
    _add(serve, "cert", "zhiva.crt", "TLS certificate (PEM)")
    _add(serve, "key", "zhiva.key", "TLS private key (PEM)")
    serve.add_argument(
        "--no-tls",
        action="store_true",
        default=env_flag("MODEL_PROXY_NO_TLS"),
        help="serve plain HTTP behind a TLS-terminating load balancer (env MODEL_PROXY_NO_TLS)",
    )
    _add(serve, "data-dir", "data", "folder for the proxy's persistent data")
    _add(serve, "log-dir", "log", "folder for log files")
    _add(serve, "pacs-timeout", "60", "seconds a PACS may stay silent before the request fails")
    _add(serve, "model-timeout", "600", "seconds a model may stay silent before the request fails")
    _add(serve, "probe-timeout", "10", "seconds a /status probe may take")
    _add(serve, "pacs-retries", "2", "further attempts of a PACS read that failed transiently")
    _add(
        serve,
        "breaker-failures",
        "5",
        "consecutive failures of a PACS or model before calls to it fail fast",
    )
    _add(serve, "breaker-cooldown", "30", "seconds a tripped PACS or model is left alone")
    _add(
        serve,
        "shutdown-grace",
        "30",
        "seconds in-flight requests may take to finish after SIGTERM",
    )
    _add(
        serve,
        "watch-config",
        "0",
        "seconds between checks for changed config files (0: reload on SIGHUP only)",
    )
    _add(
        serve,
        "cache-size",
        "2GiB",
        "disk space for cached results (like 500MB, 2GiB; 0 turns the cache off)",
    )
    _add(
        serve,
        "memory-budget",
        "512MiB",
        "instance data all inferences may hold in memory at once (like 512MiB, 2GiB)",
    )
    _add(
        serve,
        "max-concurrent-inferences",
        "32",
        "inferences that may run at once; more are answered 503 with Retry-After",
    )
    _add(serve, "pacs-concurrency", "4", "retrievals one inference runs at once on its PACS")
    _add(
        serve,
        "access-config",
        None,
        "client authentication and per-model access rules (default: access.json in the"
        " config dir if present; without it any caller may run every model)",
    )
    _add(serve, "cors-origins", "*", "comma-separated browser origins allowed to call the proxy")
    _add(
        serve,
        "audit-log",
        None,
        "JSON-lines audit file, or off (default: audit.jsonl in the log dir, else the data dir)",
    )

    gen_cert = commands.add_parser("gen-cert", help="write a self-signed zhiva.crt and zhiva.key")
    _add(gen_cert, "out-dir", ".", "where to write the files")

    check = commands.add_parser(
        "check-config", help="validate servers.json, models.json and access.json"
    )
    _add(check, "config-dir", ".", "folder holding servers.json and models.json")
    _add(check, "access-config", None, "access rules (default: access.json in the config dir)")

    api_key = commands.add_parser(
        "gen-api-key", help="make a client API key and the access.json entry that accepts it"
    )
    _add(api_key, "name", "viewer", "the key's name in access.json (shown in the audit log)")

    check_auth = commands.add_parser(
        "check-auth",
        help="sign in, exchange and refresh tokens live for each PACS server, step by step",
    )
    _add(check_auth, "config-dir", ".", "folder holding servers.json and models.json")
    _add(check_auth, "data-dir", "data", "folder of the proxy's data (tokens are stored there)")
    _add(check_auth, "pacs-timeout", "60", "seconds a PACS or token server may stay silent")
    check_auth.add_argument("--server", help="check only this server (its UUID)")

    example = commands.add_parser("example-model", help="run the bundled example Model API")
    _add(example, "host", "127.0.0.1", "address to listen on")
    _add(example, "port", "8011", "port to listen on")

    demo = commands.add_parser(
        "demo", help="generate a sample CT study and run the example model and the proxy on it"
    )
    _add(demo, "dir", "demo-data", "folder for the sample data, configs and certificate")
    _add(demo, "host", "127.0.0.1", "address for the proxy to listen on")
    _add(demo, "port", "8002", "proxy port")
    _add(demo, "model-port", "8011", "example model port")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "gen-cert":
            return gen_cert(Path(args.out_dir))
        if args.command == "check-config":
            return check_config(Path(args.config_dir), _optional_path(args.access_config))
        if args.command == "gen-api-key":
            return gen_api_key(args.name)
        if args.command == "check-auth":
            return check_auth(args)
        if args.command == "example-model":
            from model_proxy.example_model import run

            run(host=args.host, port=_port(args.port))
            return 0
        if args.command == "demo":
            from model_proxy.demo import run_demo

            return run_demo(
                Path(args.dir),
                host=args.host,
                port=_port(args.port),
                model_port=_port(args.model_port),
            )
    except CommandError as exc:
        print(f"model-proxy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command}")


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise CommandError(f"port must be a number from 1 to 65535, got {value!r}")
    return int(value)


def _seconds(value: str, flag: str, *, allow_zero: bool = False) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        kind = "zero or a positive" if allow_zero else "a positive"
        raise CommandError(f"--{flag} must be {kind} number of seconds, got {value!r}")
    return seconds


def _count(value: str, flag: str, low: int, high: int) -> int:
    if not value.isdigit() or not low <= int(value) <= high:
        raise CommandError(f"--{flag} must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kKmMgGtT]i?[bB]?|[bB])?")
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def _size(value: str, flag: str) -> int:
    """Bytes from "0", "1500000", "500MB", "2GiB" (k/M/G/T; with i, powers of 1024)."""
    found = _SIZE.fullmatch(value.strip())
    if found is None:
        raise CommandError(f"--{flag} must be a size like 0, 500MB or 2GiB, got {value!r}")
    unit = (found.group(2) or "").lower().removesuffix("b")
    factor = 1024 ** "kmgt".index(unit[0]) * 1024 if unit.endswith("i") else _UNITS[unit]
    return int(float(found.group(1)) * factor)


def _memory_budget(value: str) -> int:
    budget = _size(value, "memory-budget")
    if budget < MiB:
        raise CommandError(f"--memory-budget must be at least 1MiB, got {value!r}")
    return budget


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def load_checked_access(
    config_dir: Path, explicit: Path | None, config: ProxyConfig
) -> AccessPolicy | None:
    from model_proxy.access import find_access_file, load_access

    path = find_access_file(config_dir, explicit)
    if path is None:
        return None
    try:
        return load_access(path, known_models=config.models)
    except ConfigError as exc:
        lines = "\n".join(f"  - {line}" for line in exc.messages)
        raise CommandError(f"invalid access rules in {path}:\n{lines}") from None


def _audit_log(value: str | None, log_dir: Path | None, data_dir: Path) -> Path | None:
    if value is not None and value.strip().lower() == "off":
        return None
    if value:
        return Path(value)
    return (log_dir or data_dir) / "audit.jsonl"


def _secret_file_warnings(
    config_dir: Path, access: AccessPolicy | None, tls_key: Path | None
) -> list[str]:
    from model_proxy.security import exposure_warnings, files_with_secrets

    access_file = access.source if access else None
    return exposure_warnings(
        files_with_secrets(config_dir, access_file=access_file, tls_key=tls_key)
    )


def load_checked_config(config_dir: Path) -> ProxyConfig:
    try:
        return load_config(config_dir)
    except ConfigError as exc:
        lines = "\n".join(f"  - {line}" for line in exc.messages)
        raise CommandError(f"invalid configuration in {config_dir}:\n{lines}") from None


def serve(args: argparse.Namespace) -> int:
    from model_proxy.logs import setup_logging
    from model_proxy.security import parse_cors_origins

    probe = _seconds(args.probe_timeout, "probe-timeout")
    # uvicorn takes whole seconds
    shutdown_grace = math.ceil(_seconds(args.shutdown_grace, "shutdown-grace", allow_zero=True))
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
        access_file=_optional_path(args.access_config),
        show_status_page=env_flag("ZHIVA_SHOW_STATUS_PAGE"),
        pacs_timeouts=Timeouts(idle=_seconds(args.pacs_timeout, "pacs-timeout"), probe=probe),
        model_timeouts=Timeouts(idle=_seconds(args.model_timeout, "model-timeout"), probe=probe),
        retry=RetryPolicy(retries=_count(args.pacs_retries, "pacs-retries", 0, 10)),
        breaker=BreakerPolicy(
            failure_threshold=_count(args.breaker_failures, "breaker-failures", 1, 1000),
            cooldown=_seconds(args.breaker_cooldown, "breaker-cooldown"),
        ),
        watch_config=_seconds(args.watch_config, "watch-config", allow_zero=True),
        cache_max_bytes=_size(args.cache_size, "cache-size"),
        memory_budget=_memory_budget(args.memory_budget),
        max_concurrent_inferences=_count(
            args.max_concurrent_inferences, "max-concurrent-inferences", 1, 100_000
        ),
        pacs_concurrency=_count(args.pacs_concurrency, "pacs-concurrency", 1, 64),
    )
    port = _port(args.port)
    tls_files = None if args.no_tls else _tls_files(Path(args.cert), Path(args.key))
    try:
        setup_logging(settings.log_dir)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot create {exc.filename}: {exc.strerror}") from None
    config = load_checked_config(settings.config_dir)
    access = load_checked_access(settings.config_dir, settings.access_file, config)
    tls_key = tls_files[1] if tls_files else None
    for warning in _secret_file_warnings(settings.config_dir, access, tls_key):
        logger.warning("%s", warning)
    run_server(
        settings,
        config,
        host=args.host,
        port=port,
        tls_files=tls_files,
        shutdown_grace=shutdown_grace,
        access=access,
    )
    return 0


def _tls_files(cert: Path, key: Path) -> tuple[Path, Path]:
    for path, what in ((cert, "certificate"), (key, "private key")):
        if not path.is_file():
            raise CommandError(
                f"TLS {what} {path} not found. Create a self-signed pair with"
                " `model-proxy gen-cert`, pass --cert/--key, or use --no-tls behind a"
                " TLS-terminating proxy"
            )
    return cert, key


def run_server(
    settings: Settings,
    config: ProxyConfig,
    *,
    host: str,
    port: int,
    tls_files: tuple[Path, Path] | None,
    shutdown_grace: int = 30,
    access: AccessPolicy | None = None,
) -> None:
    import uvicorn

    from model_proxy.app import create_app
    from model_proxy.http_limits import BoundedHttpToolsProtocol

    scheme = "https" if tls_files else "http"
    logger.info("serving on %s://%s:%d", scheme, host, port)
    uvicorn_config = uvicorn.Config(
        create_app(settings, config, access),
        host=host,
        port=port,
        ssl_certfile=str(tls_files[0]) if tls_files else None,
        ssl_keyfile=str(tls_files[1]) if tls_files else None,
        log_config=None,
        server_header=False,
        http=BoundedHttpToolsProtocol,
        timeout_graceful_shutdown=shutdown_grace,
    )
    server = uvicorn.Server(uvicorn_config)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the
    # handler it found; the default one would kill the process with status -15 after
    # a clean shutdown. A no-op handler makes the exit status 0.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    except OSError as exc:  # e.g. the port is taken
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise CommandError(f"the server did not start on {host}:{port}; see the log above")


def gen_cert(out_dir: Path) -> int:
    from model_proxy.tls import generate_self_signed

    try:
        cert, key = generate_self_signed(out_dir)
    except OSError as exc:
        raise CommandError(f"cannot write into {out_dir}: {exc.strerror or exc}") from None
    print(f"wrote {cert} and {key} (self-signed, CN=localhost, valid 365 days)")
    return 0


def check_config(config_dir: Path, access_file: Path | None = None) -> int:
    # Warnings are printed below; the loader's log lines would repeat them.
    logging.getLogger("model_proxy.config").disabled = True
    config = load_checked_config(config_dir)
    access = load_checked_access(config_dir, access_file, config)
    default = config.default_server()
    print(f"{config_dir / 'servers.json'}: {len(config.servers)} servers")
    for server in config.servers.values():
        flags = " (default)" if default is not None and default.id == server.id else ""
        auth = server.auth_type.value or "no auth"
        print(f"  {server.id}{flags}: {server.uri} [{auth}]")
    print(f"{config_dir / 'models.json'}: {len(config.models)} models")
    for model in config.models.values():
        levels = ", ".join(level.value for level in model.supports)
        inputs = ", ".join(entry.data_key for entry in model.data_filter)
        extra = f"; inputs: {inputs}" if inputs else ""
        print(f"  {model.id}: {model.task.value} [{levels}] -> {model.uri}{extra}")
    if access is None:
        print("no access.json: client authentication is off, any caller may run every model")
    else:
        ways = [f"{len(access.api_keys)} API keys"] + (["bearer JWTs"] if access.jwt else [])
        print(f"{access.source}: {' and '.join(ways)}; {len(access.models)} model rules")
    default_key = config_dir / "zhiva.key"
    tls_key = default_key if default_key.is_file() else None
    warnings = [
        *config.warnings,
        *(access.warnings if access else ()),
        *_secret_file_warnings(config_dir, access, tls_key),
    ]
    for warning in warnings:
        print(f"warning: {warning}")
    print("configuration is valid")
    return 0


def check_auth(args: argparse.Namespace) -> int:
    """Exit 0 when every step passed, 1 when one failed (2: unusable config)."""
    import asyncio

    from model_proxy.pacs.auth import PacsAuth
    from model_proxy.pacs.auth_check import check_servers

    logging.getLogger("model_proxy.config").disabled = True  # check-config reports those
    config = load_checked_config(Path(args.config_dir))
    servers = list(config.servers.values())
    if args.server is not None:
        servers = [s for s in servers if s.id.lower() == args.server.lower()]
        if not servers:
            known = ", ".join(config.servers) or "none"
            raise CommandError(f"server {args.server!r} is not in servers.json (known: {known})")
    timeouts = Timeouts(idle=_seconds(args.pacs_timeout, "pacs-timeout"))
    auth = PacsAuth(Path(args.data_dir), timeouts)

    async def run() -> bool:
        try:
            return await check_servers(servers, auth, timeouts)
        finally:
            await auth.aclose()

    return 0 if asyncio.run(run()) else 1


def gen_api_key(name: str) -> int:
    import json

    from model_proxy.access import digest_of, new_api_key

    key = new_api_key()
    entry = {name: {"sha256": digest_of(key).hex()}}
    print(f"API key (give it to the client; it is not stored anywhere): {key}")
    print('access.json entry (under "apiKeys"):')
    print(json.dumps(entry, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
