"""Schemas of one servers.json entry and one models.json entry.

A schema validates a single entry on its own; rules that span a whole file
(UUID keys, a single default server, unknown fields) live in ``loader.py``.

Validators raise ``ValueError("expected X, got Y")`` (the loader prefixes file,
entry and field), or :class:`~.checks.EntryProblems` when a rule spanning several
fields finds more than one problem at once. Built directly in Python, the
schemas validate just the same; only the loader turns errors into config lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .checks import (
    DATA_FILTER_FIELDS,
    MODEL_FIELDS,
    EntryProblems,
    check_http_url,
    check_name,
    check_server_uri,
    check_tls_verify,
    describe,
    empty_is_unset,
    enum_member,
    is_member,
    one_of,
    resolve_secret,
)
from .enums import AuthType, CacheValidation, InputFormat, Level, Task

__all__ = [
    "AuthType",
    "CacheValidation",
    "ClientAuthMethod",
    "DataFilterEntry",
    "InputFormat",
    "Level",
    "ModelConfig",
    "ServerConfig",
    "StoreConfig",
    "Task",
]

_DATA_KEY = re.compile(r"[A-Za-z0-9-]+")


class _Schema(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        populate_by_name=True,
        extra="ignore",
        # pydantic's own messages would echo inputs, passwords included.
        hide_input_in_errors=True,
    )


class DataFilterEntry(_Schema):
    """A named input of a model: ``{"dataKey": "series-one", "title": "Series one"}``."""

    data_key: StrictStr = Field(alias="dataKey")
    title: StrictStr
    description: StrictStr | None = None
    data_filter: tuple[DataFilterEntry, ...] = Field((), alias="dataFilter")

    @model_validator(mode="before")
    @classmethod
    def _title_defaults_to_data_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "title" not in data:
            key = data.get("dataKey", data.get("data_key"))
            if isinstance(key, str):
                return {**data, "title": key}
        return data

    @field_validator("data_key")
    @classmethod
    def _check_data_key(cls, value: str) -> str:
        if not _DATA_KEY.fullmatch(value):
            raise ValueError(
                f'expected letters, digits and hyphens only (like "series-one"), '
                f"got {describe(value)}"
            )
        return value

    @field_validator("data_filter", mode="before")
    @classmethod
    def _check_array(cls, value: object) -> object:
        return _data_filter_array(value)


def _data_filter_array(value: object) -> object:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected {DATA_FILTER_FIELDS['dataFilter']}, got {describe(value)}")
    return value


# The fields each authType cannot work without, by their JSON names.
_AUTH_NEEDS: dict[AuthType, tuple[str, ...]] = {
    AuthType.NONE: (),
    AuthType.BASIC: ("login", "password"),
    AuthType.TOKEN: ("authToken", "signInTokenServer"),
    AuthType.ZHIVA: ("login", "password", "signInServer", "signInTokenServer"),
    AuthType.OAUTH2: ("tokenUrl", "clientId", "clientSecret"),
    AuthType.BEARER: ("authToken",),
}

_AUTH_ATTRIBUTES = {
    "login": "login",
    "password": "password",
    "authToken": "auth_token",
    "signInServer": "sign_in_server",
    "signInTokenServer": "sign_in_token_server",
    "tokenUrl": "token_url",
    "clientId": "client_id",
    "clientSecret": "client_secret",
}


class ClientAuthMethod(StrEnum):
    """How an OAuth 2.0 client authenticates at the token endpoint (RFC 6749 2.3.1)."""

    BASIC = "client_secret_basic"  # HTTP Basic; every server must support it
    POST = "client_secret_post"  # client_id and client_secret in the form body


def missing_auth_fields(
    auth_type: AuthType, is_set: Callable[[str], bool]
) -> list[tuple[str, str]]:
    """(field, message) for each field ``auth_type`` needs that is not set."""
    needs = _AUTH_NEEDS[auth_type]
    names = ", ".join(f'"{name}"' for name in needs)
    return [
        (name, f'required when authType is "{auth_type}" (it needs {names})')
        for name in needs
        if not is_set(name)
    ]


class ServerConfig(_Schema):
    """A PACS server of servers.json, or a local folder standing in for one."""

    id: StrictStr
    uri: StrictStr
    # Ours: shown on /status and by check-config (absent: the UUID is shown).
    name: StrictStr | None = None
    is_default: StrictBool = Field(False, alias="isDefault")
    status_uri: StrictStr | None = Field(None, alias="statusUri")
    auth_type: AuthType = Field(AuthType.NONE, alias="authType")
    login: StrictStr | None = None
    password: SecretStr | None = None
    auth_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("authToken", "token", "auth_token"),
        serialization_alias="authToken",
    )
    sign_in_server: StrictStr | None = Field(None, alias="signInServer")
    sign_in_token_server: StrictStr | None = Field(None, alias="signInTokenServer")
    refresh_server: StrictStr | None = Field(None, alias="refreshServer")
    token_url: StrictStr | None = Field(None, alias="tokenUrl")
    client_id: StrictStr | None = Field(None, alias="clientId")
    client_secret: SecretStr | None = Field(None, alias="clientSecret")
    client_auth_method: ClientAuthMethod = Field(ClientAuthMethod.BASIC, alias="clientAuthMethod")
    scope: StrictStr | None = None
    audience: StrictStr | None = None
    tls_verify: bool | str = Field(True, alias="tlsVerify")
    # Extension: how a cached result is checked before reuse (docs/performance.md).
    cache_validation: CacheValidation = Field(CacheValidation.COUNT, alias="cacheValidation")

    @property
    def is_local_folder(self) -> bool:
        return urlsplit(self.uri).scheme.lower() == "file"

    @property
    def local_path(self) -> Path:
        """The folder behind a ``file://`` URI."""
        if not self.is_local_folder:
            raise ValueError(f"server {self.id} is not a local folder: {self.uri}")
        return Path(url2pathname(urlsplit(self.uri).path))

    @field_validator(
        "name",
        "status_uri",
        "login",
        "sign_in_server",
        "sign_in_token_server",
        "refresh_server",
        "token_url",
        "client_id",
        "scope",
        "audience",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return empty_is_unset(value)

    @field_validator("password", "auth_token", "client_secret", mode="before")
    @classmethod
    def _resolve_secret(cls, value: object, info: ValidationInfo) -> object:
        return resolve_secret(empty_is_unset(value), info)

    @field_validator("client_auth_method", mode="before")
    @classmethod
    def _check_client_auth_method(cls, value: object) -> ClientAuthMethod:
        if value is None or value == "":
            return ClientAuthMethod.BASIC
        return enum_member(ClientAuthMethod, value)

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: str) -> str:
        return check_server_uri(value)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        return None if value is None else check_name(value)

    @field_validator(
        "status_uri", "sign_in_server", "sign_in_token_server", "refresh_server", "token_url"
    )
    @classmethod
    def _check_urls(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value)

    @field_validator("cache_validation", mode="before")
    @classmethod
    def _check_cache_validation(cls, value: object) -> CacheValidation:
        return enum_member(CacheValidation, value)

    @field_validator("auth_type", mode="before")
    @classmethod
    def _check_auth_type(cls, value: object) -> AuthType:
        return enum_member(AuthType, "" if value is None else value)

    @field_validator("tls_verify", mode="before")
    @classmethod
    def _check_tls_verify(cls, value: object, info: ValidationInfo) -> bool | str:
        return check_tls_verify(value, info)

    @model_validator(mode="after")
    def _check_auth_fields(self) -> ServerConfig:
        problems = missing_auth_fields(
            self.auth_type, lambda name: getattr(self, _AUTH_ATTRIBUTES[name]) is not None
        )
        if problems:
            raise EntryProblems(problems)
        return self


class StoreConfig(_Schema):
    """Where a model's DICOM results are stored: ``{"server": uuid, "required": bool}``.

    No server: the server the request read from. ``required`` false: a failed
    store is logged and shown on /status, and the JSON answer still comes back.
    """

    server: StrictStr | None = None
    required: StrictBool = True


class ModelConfig(_Schema):
    """A Model API of models.json."""

    id: StrictStr
    uri: StrictStr
    task: Task
    supports: tuple[Level, ...]
    status_uri: StrictStr | None = Field(None, alias="statusUri")
    data_filter: tuple[DataFilterEntry, ...] = Field((), alias="dataFilter")
    tls_verify: bool | str = Field(True, alias="tlsVerify")
    # Extension: how often a failed POST may be sent again; only when the model
    # could not have seen it (docs/reliability.md). 0: never, as the original.
    retries: StrictInt = Field(0, ge=0, le=5)
    # Ours: "dicom-multipart" sends Part-10 files instead of the original's JSON.
    input: InputFormat = InputFormat.JSON
    # Ours: the name /status and check-config show; also (docs/dicom-outputs.md) the
    # algorithm identification of DICOM results (defaults: the model's id and "1"),
    # and storing them in a PACS on every call.
    name: StrictStr | None = None
    version: StrictStr | None = None
    store: StoreConfig | None = None
    # Ours (docs/compatibility.md): a study request sends the SEG / SR / RT
    # structure sets of the study too (default: only what is not a result).
    send_result_objects: StrictBool = Field(False, alias="sendResultObjects")

    @property
    def algorithm_name(self) -> str:
        return self.name or self.id

    @property
    def algorithm_version(self) -> str:
        return self.version or "1"

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: str) -> str:
        # POSTed to exactly as written: validated, never rewritten.
        return check_http_url(value)

    @field_validator("status_uri", "name", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return empty_is_unset(value)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        return None if value is None else check_name(value)

    @field_validator("status_uri")
    @classmethod
    def _check_status_uri(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value)

    @field_validator("task", mode="before")
    @classmethod
    def _check_task(cls, value: object) -> Task:
        return enum_member(Task, value)

    @field_validator("input", mode="before")
    @classmethod
    def _check_input(cls, value: object) -> InputFormat:
        return enum_member(InputFormat, value)

    @field_validator("supports", mode="before")
    @classmethod
    def _check_supports(cls, value: object) -> tuple[Level, ...]:
        if not isinstance(value, list | tuple) or not value:
            raise ValueError(f"expected {MODEL_FIELDS['supports']}, got {describe(value)}")
        levels: list[Level] = []
        problems: list[tuple[str, str]] = []
        for index, item in enumerate(value):
            if not is_member(Level, item):
                problems.append(
                    (f"[{index}]", f"expected one of {one_of(Level)}, got {describe(item)}")
                )
            elif Level(item) in levels:
                problems.append((f"[{index}]", f"duplicate level {describe(item)}"))
            else:
                levels.append(Level(item))
        if problems:
            raise EntryProblems(problems)
        return tuple(levels)

    @field_validator("data_filter", mode="before")
    @classmethod
    def _check_array(cls, value: object) -> object:
        return _data_filter_array(value)

    @field_validator("tls_verify", mode="before")
    @classmethod
    def _check_tls_verify(cls, value: object, info: ValidationInfo) -> bool | str:
        return check_tls_verify(value, info)

    @model_validator(mode="after")
    def _check_data_filter(self) -> ModelConfig:
        problems = _duplicate_keys(self.data_filter, "dataFilter")
        for i, entry in enumerate(self.data_filter):
            if not entry.data_filter:
                continue
            path = f"dataFilter[{i}].dataFilter"
            if Level.STUDY not in self.supports:
                problems.append(
                    (
                        path,
                        "nested entries name instance inputs of a series, which only "
                        'exists for models whose "supports" lists "/studies"',
                    )
                )
            problems += _duplicate_keys(entry.data_filter, path)
            problems += [
                (f"{path}[{j}].dataFilter", "too deep: dataFilter nests at most 2 levels")
                for j, nested in enumerate(entry.data_filter)
                if nested.data_filter
            ]
        if problems:
            raise EntryProblems(problems)
        return self


def _duplicate_keys(entries: tuple[DataFilterEntry, ...], path: str) -> list[tuple[str, str]]:
    first: dict[str, int] = {}
    problems = []
    for index, entry in enumerate(entries):
        if entry.data_key in first:
            problems.append(
                (
                    f"{path}[{index}].dataKey",
                    f'duplicate dataKey "{entry.data_key}" (already used by '
                    f"{path}[{first[entry.data_key]}])",
                )
            )
        else:
            first[entry.data_key] = index
    return problems
