"""Read servers.json and models.json into a :class:`ProxyConfig`.

Every problem of both files is collected before anything is raised, so a user
fixes a config in one round instead of one error per restart::

    servers.json: entry "b1407f18-...", field "uri": expected a string (...), got 42
    models.json: entry "d4e548ad-...", field "task": expected one of ..., got "segment"

Things that work but are probably not what the user meant (unknown fields,
several servers and no default) are warnings: returned and logged, never fatal.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from .checks import (
    DATA_FILTER_FIELDS,
    MODEL_FIELDS,
    SECRET_FIELDS,
    SERVER_FIELDS,
    EntryProblems,
    describe,
    describe_type,
    is_member,
)
from .enums import AuthType, Level
from .rules import RULES_FILE, PrefetchRule, parse_rules
from .schema import ModelConfig, ServerConfig, missing_auth_fields
from .spelling import unknown_fields

logger = logging.getLogger("model_proxy.config")

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_EXAMPLE_UUID = "b1407f18-575d-487c-bc0c-640c6da651bc"

# Auth fields that mean something only for some authTypes; set elsewhere they
# hint at a forgotten authType (the PACS will answer 401).
_AUTH_FIELD_USERS: dict[str, tuple[AuthType, ...]] = {
    "login": (AuthType.BASIC, AuthType.ZHIVA),
    "password": (AuthType.BASIC, AuthType.ZHIVA),
    "auth_token": (AuthType.TOKEN, AuthType.BEARER),
    "sign_in_server": (AuthType.ZHIVA,),
    "sign_in_token_server": (AuthType.TOKEN, AuthType.ZHIVA),
    "refresh_server": (AuthType.TOKEN, AuthType.ZHIVA),
    "token_url": (AuthType.OAUTH2,),
    "client_id": (AuthType.OAUTH2,),
    "client_secret": (AuthType.OAUTH2,),
    "scope": (AuthType.OAUTH2,),
    "audience": (AuthType.OAUTH2,),
}


class ConfigError(Exception):
    """servers.json or models.json cannot be used; one line per problem."""

    def __init__(self, messages: Iterable[str], warnings: Iterable[str] = ()) -> None:
        self.messages = list(messages)
        self.warnings = list(warnings)
        super().__init__("\n".join(self.messages))


@dataclass(frozen=True)
class ProxyConfig:
    """The servers and models the proxy knows, keyed by their UUIDs."""

    servers: Mapping[str, ServerConfig]
    models: Mapping[str, ModelConfig]
    warnings: tuple[str, ...] = field(default=())
    # rules.json (optional): models that run by themselves on new studies.
    rules: tuple[PrefetchRule, ...] = field(default=())

    def __post_init__(self) -> None:
        # Read-only views: the config is shared by every request.
        object.__setattr__(self, "servers", MappingProxyType(dict(self.servers)))
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))
        object.__setattr__(self, "warnings", tuple(self.warnings))
        object.__setattr__(self, "rules", tuple(self.rules))

    def default_server(self) -> ServerConfig | None:
        """The server used when a request has no ``?server=``."""
        for server in self.servers.values():
            if server.is_default:
                return server
        if len(self.servers) == 1:
            return next(iter(self.servers.values()))
        return None


def load_config(config_dir: Path) -> ProxyConfig:
    """Load ``config_dir/servers.json`` and ``config_dir/models.json``, and
    ``config_dir/rules.json`` when it exists (config/rules.py)."""
    config_dir = Path(config_dir)
    errors: list[str] = []
    warnings: list[str] = []
    servers: dict[str, ServerConfig] = {}
    models: dict[str, ModelConfig] = {}

    servers_path = config_dir / "servers.json"
    data = _read_json(servers_path, "the PACS servers", errors, warnings)
    if data is not _UNREADABLE:
        try:
            servers, found = parse_servers(data, str(servers_path), base_dir=config_dir)
            warnings += found
        except ConfigError as exc:
            errors += exc.messages
            warnings += exc.warnings

    models_path = config_dir / "models.json"
    data = _read_json(models_path, "the Model APIs", errors, warnings)
    if data is not _UNREADABLE:
        try:
            models, found = parse_models(data, str(models_path), base_dir=config_dir)
            warnings += found
        except ConfigError as exc:
            errors += exc.messages
            warnings += exc.warnings

    errors += _unknown_store_servers(models, servers, str(models_path))
    rules: tuple[PrefetchRule, ...] = ()
    rules_path = config_dir / RULES_FILE
    if rules_path.exists():
        data = _read_json(rules_path, "the prefetch rules", errors, warnings)
        if data is not _UNREADABLE:
            rules, found, found_warnings = parse_rules(data, str(rules_path), models, servers)
            errors += found
            warnings += found_warnings
    if errors:
        raise ConfigError(errors, warnings)
    return ProxyConfig(servers=servers, models=models, warnings=tuple(warnings), rules=rules)


def _unknown_store_servers(
    models: Mapping[str, ModelConfig], servers: Mapping[str, ServerConfig], source: str
) -> list[str]:
    """A model's "store" must name a server of servers.json (checked across the files)."""
    return [
        f'{source}: model "{model_id}", field "store.server": {model.store.server!r}'
        " is not a server of servers.json"
        for model_id, model in models.items()
        if model.store is not None
        and model.store.server is not None
        and servers
        and model.store.server not in servers
    ]


def parse_servers(
    data: object, source: str = "servers.json", *, base_dir: Path | None = None
) -> tuple[dict[str, ServerConfig], list[str]]:
    """Validate the parsed content of servers.json: ``({uuid: server}, warnings)``.

    Relative ``tlsVerify`` paths are taken from ``base_dir`` (default: the
    working directory).
    """
    errors: list[str] = []
    warnings: list[str] = []
    servers = _parse_entries(
        data, source, ServerConfig, SERVER_FIELDS, base_dir, errors, warnings, _server_warnings
    )
    defaults = [key for key, server in servers.items() if server.is_default]
    if len(defaults) > 1:
        names = ", ".join(f'"{key}"' for key in defaults)
        errors.append(
            f'{source}: {len(defaults)} servers have "isDefault": true ({names}); '
            "at most one may be the default"
        )
    if not servers and not errors:
        warnings.append(f"{source}: no servers configured; every inference request will fail")
    elif len(servers) > 1 and not defaults:
        warnings.append(
            f'{source}: {len(servers)} servers and none has "isDefault": true; '
            "requests must name one with ?server=<uuid>"
        )
    return _finish(servers, errors, warnings)


def parse_models(
    data: object, source: str = "models.json", *, base_dir: Path | None = None
) -> tuple[dict[str, ModelConfig], list[str]]:
    """Validate the parsed content of models.json: ``({uuid: model}, warnings)``."""
    errors: list[str] = []
    warnings: list[str] = []
    fields = {**MODEL_FIELDS, **DATA_FILTER_FIELDS}
    models = _parse_entries(
        data, source, ModelConfig, fields, base_dir, errors, warnings, _model_warnings
    )
    if not models and not errors:
        warnings.append(f"{source}: no models configured; every inference request will fail")
    return _finish(models, errors, warnings)


_Entry = TypeVar("_Entry", ServerConfig, ModelConfig)
_UNREADABLE = object()


def _finish(
    entries: dict[str, _Entry], errors: list[str], warnings: list[str]
) -> tuple[dict[str, _Entry], list[str]]:
    for warning in warnings:
        logger.warning("%s", warning)
    if errors:
        raise ConfigError(errors, warnings)
    return entries, warnings


def _read_json(path: Path, what: str, errors: list[str], warnings: list[str]) -> object:
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: editors on Windows add a BOM
    except FileNotFoundError:
        errors.append(
            f"{path}: file not found; create it with {what}, keyed by UUID "
            "(an empty object {} is allowed)"
        )
        return _UNREADABLE
    except UnicodeDecodeError as exc:
        errors.append(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})")
        return _UNREADABLE
    except OSError as exc:
        errors.append(f"{path}: cannot be read: {exc.strerror or exc}")
        return _UNREADABLE

    duplicates: list[str] = []

    def keep_last(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # JSON.parse in the original keeps the last of duplicate keys; so do we,
        # but a silently shadowed server or field deserves a warning.
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                duplicates.append(key)
            seen[key] = value
        return seen

    try:
        data = json.loads(text, object_pairs_hook=keep_last)
    except json.JSONDecodeError as exc:
        errors.append(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")
        return _UNREADABLE
    for key in dict.fromkeys(duplicates):
        warning = f'{path}: key "{key}" appears more than once; only the last one is used'
        logger.warning("%s", warning)
        warnings.append(warning)
    return data


def _parse_entries(
    data: object,
    source: str,
    schema: type[_Entry],
    fields: Mapping[str, str],
    base_dir: Path | None,
    errors: list[str],
    warnings: list[str],
    entry_warnings: Callable[[str, _Entry, Mapping[str, Any]], list[str]],
) -> dict[str, _Entry]:
    if not isinstance(data, dict):
        errors.append(
            f"{source}: expected a JSON object keyed by UUID (an empty object {{}} is "
            f"allowed), got {describe_type(data)}"
        )
        return {}
    context = {"base_dir": base_dir}
    entries: dict[str, _Entry] = {}
    for key, raw in data.items():
        where = f'{source}: entry "{key}"'
        if not _UUID.fullmatch(key):
            errors.append(
                f'{where}: the key must be a UUID like "{_EXAMPLE_UUID}" '
                "(8-4-4-4-12 hexadecimal digits)"
            )
        if not isinstance(raw, dict):
            errors.append(f'{where}: expected an object with at least "uri", got {describe(raw)}')
            continue
        misspelt, unknown = unknown_fields(where, raw, fields)
        errors += misspelt
        warnings += unknown
        known = {name: value for name, value in raw.items() if name in fields}
        try:
            entry = schema.model_validate({**known, "id": key}, context=context)
        except ValidationError as exc:
            details = exc.errors(include_url=False)
            errors += _messages(where, details, fields)
            cross_field_checked = any(not error["loc"] for error in details)
            if schema is ServerConfig and not cross_field_checked:
                errors += _auth_messages(where, known)
            continue
        entries[key] = entry
        warnings += entry_warnings(where, entry, raw)
    return entries


def _server_warnings(where: str, server: ServerConfig, raw: Mapping[str, Any]) -> list[str]:
    warnings = []
    if raw.get("authToken") not in (None, "") and raw.get("token") not in (None, ""):
        warnings.append(f'{where}: both "authToken" and "token" are set; "authToken" is used')
    if server.auth_type is AuthType.TOKEN and server.refresh_server is None:
        warnings.append(
            f'{where}: authType "token" without "refreshServer": when the access token'
            " expires, this server fails until a new authToken is configured"
        )
    unused = [
        name
        for name, users in _AUTH_FIELD_USERS.items()
        if getattr(server, name) is not None and server.auth_type not in users
    ]
    if unused:
        fields = ServerConfig.model_fields
        names = ", ".join(f'"{fields[name].serialization_alias or name}"' for name in unused)
        warnings.append(
            f'{where}: {names} set but not used, because authType is "{server.auth_type}"'
        )
    return warnings


def _model_warnings(where: str, model: ModelConfig, raw: Mapping[str, Any]) -> list[str]:
    warnings = []
    if model.data_filter and not {Level.STUDY, Level.SERIES} & set(model.supports):
        warnings.append(
            f'{where}: "dataFilter" is only used by /studies and /studies/series requests, '
            "which this model does not support"
        )
    warnings += _data_filter_warnings(where, raw.get("dataFilter"), "dataFilter")
    return warnings


def _data_filter_warnings(where: str, entries: object, path: str) -> list[str]:
    warnings: list[str] = []
    if not isinstance(entries, list):
        return warnings
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        here = f"{path}[{index}]"
        if "title" not in entry:
            warnings.append(
                f'{where}, field "{here}.title": missing; using the dataKey '
                f"{describe(entry.get('dataKey'))} as title"
            )
        unknown = [name for name in entry if name not in DATA_FILTER_FIELDS]
        if unknown:
            names = ", ".join(f'"{name}"' for name in unknown)
            warnings.append(f'{where}, field "{here}": unknown field(s) {names} ignored')
        warnings += _data_filter_warnings(where, entry.get("dataFilter"), f"{here}.dataFilter")
    return warnings


def _auth_messages(where: str, raw: Mapping[str, Any]) -> list[str]:
    """Missing auth fields of a server entry that also has other errors.

    pydantic runs the cross-field auth check only once every field is valid;
    run it on the raw entry too so that one round of fixes is enough.
    """
    auth_type = raw.get("authType") or ""
    if not is_member(AuthType, auth_type):
        return []  # reported as a field error already

    def is_set(name: str) -> bool:
        names = ("authToken", "token") if name == "authToken" else (name,)
        return any(raw.get(name) not in (None, "") for name in names)

    missing = missing_auth_fields(AuthType(auth_type), is_set)
    return [_line(where, name, problem) for name, problem in missing]


def _messages(where: str, errors: Iterable[ErrorDetails], fields: Mapping[str, str]) -> list[str]:
    """pydantic's errors, one line each, in the words of the config file."""
    messages = []
    for error in errors:
        loc = error["loc"]
        path = _path(loc)
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, EntryProblems):
            for relative, problem in cause.problems:
                messages.append(_line(where, _join(path, relative), problem))
        elif isinstance(cause, ValueError):
            messages.append(_line(where, path, str(cause)))
        else:
            messages.append(_line(where, path, _type_problem(error, loc, fields)))
    return messages


def _type_problem(
    error: ErrorDetails, loc: tuple[str | int, ...], fields: Mapping[str, str]
) -> str:
    names = [part for part in loc if isinstance(part, str)]
    name = names[-1] if names else ""
    if loc and isinstance(loc[-1], int):
        expected = 'an object like {"dataKey": "series-one", "title": "Series one"}'
    else:
        expected = fields.get(name, error["msg"])
    if error["type"] == "missing":
        return f"missing; expected {expected}"
    value = error.get("input")
    got = describe_type(value) if name in SECRET_FIELDS else describe(value)
    return f"expected {expected}, got {got}"


def _path(loc: tuple[str | int, ...]) -> str:
    """``("dataFilter", 0, "dataKey")`` -> ``"dataFilter[0].dataKey"``."""
    path = ""
    for part in loc:
        path = _join(path, f"[{part}]" if isinstance(part, int) else part)
    return path


def _join(path: str, relative: str) -> str:
    if not path or relative.startswith("["):
        return path + relative
    return f"{path}.{relative}"


def _line(where: str, path: str, problem: str) -> str:
    return f'{where}, field "{path}": {problem}' if path else f"{where}: {problem}"


__all__ = [
    "ConfigError",
    "ProxyConfig",
    "load_config",
    "parse_models",
    "parse_servers",
]
