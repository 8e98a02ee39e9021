"""The ``model-proxy`` command: serve, gen-cert, check-config, check-auth, example-model, demo.

Every flag can also come from ``MODEL_PROXY_<FLAG>`` (``--config-dir`` from
``MODEL_PROXY_CONFIG_DIR``); a flag on the command line wins. Errors end as one
clear line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from redis.exceptions import AuthenticationError, RedisError

from model_proxy import __version__
from model_proxy.cli.options import (
    EXIT_USAGE,
    CommandError,
    add_option,
    load_checked_access,
    load_checked_config,
    optional_path,
    parse_count,
    parse_port,
    parse_seconds,
    secret_file_warnings,
    write_private_files,
)
from model_proxy.cli.redis_options import add_redis_options, check_shared_tokens, redis_settings
from model_proxy.cli.serve import serve
from model_proxy.cli.serve_options import add_serve_options
from model_proxy.config import ServerConfig
from model_proxy.errors import redact_urls
from model_proxy.pacs.auth.flows import PacsAuth
from model_proxy.pacs.auth.shared_tokens import SHARED_TOKEN_TYPES, SharedTokenStore
from model_proxy.shared import RedisLink
from model_proxy.upstream.clients import Timeouts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-proxy",
        description="Runs AI models on DICOMweb imaging data (a drop-in zhiva model proxy).",
    )
    parser.add_argument("--version", action="version", version=f"model-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_serve_options(commands.add_parser("serve", help="run the proxy"))

    gen_cert = commands.add_parser("gen-cert", help="write a self-signed zhiva.crt and zhiva.key")
    add_option(gen_cert, "out-dir", ".", "where to write the files")
    add_option(
        gen_cert,
        "hostname",
        None,
        "the name (or IP address) viewers use to reach the proxy: the CN and first SAN"
        " (default: localhost, 127.0.0.1 and ::1)",
    )
    gen_cert.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="DNS:NAME,IP:ADDRESS",
        help="more subject alternative names, comma-separated; may be repeated",
    )
    add_option(gen_cert, "days", "365", "days the certificate is valid")

    check = commands.add_parser(
        "check-config", help="validate servers.json, models.json and access.json"
    )
    add_option(check, "config-dir", ".", "folder holding servers.json and models.json")
    add_option(
        check, "access-config", None, "access rules (default: access.json in the config dir)"
    )

    api_key = commands.add_parser(
        "gen-api-key", help="make a client API key and the access.json entry that accepts it"
    )
    add_option(api_key, "name", "viewer", "the key's name in access.json (shown in the audit log)")

    check_auth = commands.add_parser(
        "check-auth",
        help="sign in, exchange and refresh tokens live for each PACS server, step by step",
    )
    add_option(check_auth, "config-dir", ".", "folder holding servers.json and models.json")
    add_option(
        check_auth, "data-dir", "data", "folder of the proxy's data (tokens are stored there)"
    )
    add_option(check_auth, "pacs-timeout", "60", "seconds a PACS or token server may stay silent")
    check_auth.add_argument("--server", help="check only this server (its UUID)")
    # With serve's --redis flags it checks the tokens the replicas share, under their lock.
    add_redis_options(check_auth)

    example = commands.add_parser("example-model", help="run the bundled example Model API")
    add_option(example, "host", "127.0.0.1", "address to listen on")
    add_option(example, "port", "8011", "port to listen on")

    demo = commands.add_parser(
        "demo", help="generate a sample CT study and run the example model and the proxy on it"
    )
    add_option(demo, "dir", "demo-data", "folder for the sample data, configs and certificate")
    add_option(demo, "host", "127.0.0.1", "address for the proxy to listen on")
    add_option(demo, "port", "8002", "proxy port")
    add_option(demo, "model-port", "8011", "example model port")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "gen-cert":
            return gen_cert(
                Path(args.out_dir),
                hostname=args.hostname,
                sans=args.san,
                days=parse_count(args.days, "days", 1, 3650),
            )
        if args.command == "check-config":
            return check_config(Path(args.config_dir), optional_path(args.access_config))
        if args.command == "gen-api-key":
            return gen_api_key(args.name)
        if args.command == "check-auth":
            return check_auth(args)
        if args.command == "example-model":
            from model_proxy.example_model import run

            run(host=args.host, port=parse_port(args.port))
            return 0
        if args.command == "demo":
            from model_proxy.cli.demo import run_demo

            return run_demo(
                Path(args.dir),
                host=args.host,
                port=parse_port(args.port),
                model_port=parse_port(args.model_port),
            )
    except CommandError as exc:
        print(f"model-proxy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command}")


def gen_cert(
    out_dir: Path, *, hostname: str | None = None, sans: Sequence[str] = (), days: int = 365
) -> int:
    from model_proxy.cli.certificates import (
        BadName,
        describe,
        generate_self_signed,
        subject_names,
    )

    try:
        common_name, names = subject_names(hostname, sans)
        cert, key = generate_self_signed(out_dir, days=days, hostname=hostname, sans=sans)
    except BadName as exc:
        raise CommandError(f"gen-cert: {exc}") from None
    except OSError as exc:
        raise CommandError(f"cannot write into {out_dir}: {exc.strerror or exc}") from None
    print(
        f"wrote {cert} and {key} (self-signed, CN={common_name}, valid {days} days;"
        f" names: {describe(names)})"
    )
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
        name = f' "{server.name}"' if server.name else ""
        print(f"  {server.id}{name}{flags}: {redact_urls(server.uri)} [{auth}]")
    print(f"{config_dir / 'models.json'}: {len(config.models)} models")
    for model in config.models.values():
        levels = ", ".join(level.value for level in model.supports)
        inputs = ", ".join(entry.data_key for entry in model.data_filter)
        extra = f"; inputs: {inputs}" if inputs else ""
        name = f' "{model.name}"' if model.name else ""
        print(
            f"  {model.id}{name}: {model.task.value} [{levels}] -> {redact_urls(model.uri)}{extra}"
        )
    if config.rules:
        print(f"{config_dir / 'rules.json'}: {len(config.rules)} prefetch rules")
        for rule in config.rules:
            where = f"server {rule.server}" if rule.server else "every server"
            print(f"  {rule.name!r}: model {rule.model}, each {rule.level}, on {where}")
    if access is None:
        print("no access.json: client authentication is off, any caller may run every model")
    else:
        ways = [f"{len(access.api_keys)} API keys"] + (["bearer JWTs"] if access.jwt else [])
        rules = f"{len(access.models)} model rules"
        if access.servers:
            rules += f", {len(access.servers)} server rules"
        if access.monitoring is not None:
            rules += ", a monitoring rule"
        print(f"{access.source}: {' and '.join(ways)}; {rules}")
    default_key = config_dir / "zhiva.key"
    tls_key = default_key if default_key.is_file() else None
    warnings = [
        *config.warnings,
        *(access.warnings if access else ()),
        *secret_file_warnings(config_dir, access, tls_key),
    ]
    for warning in warnings:
        print(f"warning: {warning}")
    print("configuration is valid")
    return 0


def check_auth(args: argparse.Namespace) -> int:
    """Exit 0 when every step passed, 1 when one failed or the shared Redis does not
    answer (2: unusable config or flags)."""
    import asyncio

    logging.getLogger("model_proxy.config").disabled = True  # check-config reports those
    config = load_checked_config(Path(args.config_dir))
    servers = list(config.servers.values())
    if args.server is not None:
        servers = [s for s in servers if s.id.lower() == args.server.lower()]
        if not servers:
            known = ", ".join(config.servers) or "none"
            raise CommandError(f"server {args.server!r} is not in servers.json (known: {known})")
    redis = redis_settings(args)
    check_shared_tokens(redis, servers)
    if redis is not None and not any(s.auth_type in SHARED_TOKEN_TYPES for s in servers):
        redis = None  # nothing of these servers is in Redis
    timeouts = Timeouts(idle=parse_seconds(args.pacs_timeout, "pacs-timeout"))
    write_private_files()  # it stores tokens, as serve does
    data_dir = Path(args.data_dir)

    async def run() -> bool:
        if redis is None:
            return await _check(servers, PacsAuth(data_dir, timeouts), timeouts)
        link = RedisLink.connect(redis)
        try:
            await _require_redis(link)
            shared = SharedTokenStore.from_settings(link, redis, data_dir)
            return await _check(servers, PacsAuth(data_dir, timeouts, shared=shared), timeouts)
        finally:
            await link.aclose()

    try:
        return 0 if asyncio.run(run()) else 1
    except RedisUnreachable as exc:
        print(f"model-proxy: {exc}", file=sys.stderr)
        return 1


async def _check(servers: list[ServerConfig], auth: PacsAuth, timeouts: Timeouts) -> bool:
    from model_proxy.pacs.auth.check import check_servers

    try:
        return await check_servers(servers, auth, timeouts)
    finally:
        await auth.aclose()


class RedisUnreachable(Exception):
    """check-auth --redis: the shared Redis does not answer; nothing was checked."""


async def _require_redis(link: RedisLink) -> None:
    # One clear line up front rather than one failed step per server; a Redis that
    # fails later is reported in the step that needed it.
    try:
        await link.client.ping()
    except (RedisError, OSError) as exc:
        problem = "refuses the password" if isinstance(exc, AuthenticationError) else ""
        raise RedisUnreachable(
            f"check-auth: the shared Redis at {link.where} (--redis)"
            f" {problem or 'does not answer'} ({str(exc) or type(exc).__name__}); the PACS"
            " tokens of token and zhivaAuth servers live there, so nothing was checked"
        ) from None


def gen_api_key(name: str) -> int:
    import json

    from model_proxy.access import digest_of, new_api_key

    key = new_api_key()
    entry = {name: {"sha256": digest_of(key).hex()}}
    print(f"API key (give it to the client; it is not stored anywhere): {key}")
    print('access.json entry (under "apiKeys"):')
    print(json.dumps(entry, indent=2))
    return 0
