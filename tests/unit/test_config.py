"""servers.json / models.json: the real examples load, every mistake is named."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pydantic
import pytest
from config_cases import (
    BASIC,
    CONTRACT_MODELS,
    M1,
    M2,
    PASSWORD,
    S1,
    S2,
    TOKEN,
    TOKEN_AUTH,
    ZHIVA,
    load_errors,
    model,
    only,
    write_config,
)

import model_proxy.config
from model_proxy.config import (
    AuthType,
    ConfigError,
    DataFilterEntry,
    Level,
    ModelConfig,
    ProxyConfig,
    ServerConfig,
    Task,
    load_config,
    parse_models,
    parse_servers,
)


def test_public_api() -> None:
    assert sorted(model_proxy.config.__all__) == sorted(
        [
            "AuthType",
            "CacheValidation",
            "ConfigError",
            "DataFilterEntry",
            "InputFormat",
            "Level",
            "ModelConfig",
            "PrefetchRule",
            "ProxyConfig",
            "RuleLevel",
            "ServerConfig",
            "Task",
            "load_config",
            "parse_models",
            "parse_servers",
        ]
    )


# --- the real examples --------------------------------------------------------


def test_contract_models_load() -> None:
    models, warnings = parse_models(CONTRACT_MODELS)
    assert warnings == []
    single, double = models[M1], models[M2]
    assert single.id == M1
    assert single.uri == "http://localhost:8011/segmentation"
    assert single.task is Task.SEGMENTATION
    assert single.supports == (Level.SERIES,)
    assert single.status_uri == "http://localhost:8011"
    assert single.data_filter == ()
    assert single.tls_verify is True
    assert double.supports == (Level.STUDY,)
    assert double.data_filter == (
        DataFilterEntry(data_key="series-one", title="Series one"),
        DataFilterEntry(data_key="series-two", title="Series two"),
    )


def test_basic_auth_example_loads() -> None:
    servers, warnings = parse_servers({S1: BASIC})
    assert warnings == []
    server = servers[S1]
    assert server.auth_type is AuthType.BASIC
    assert server.login == "zhiva"
    assert server.password is not None
    assert server.password.get_secret_value() == PASSWORD
    assert server.status_uri == "https://localhost/zhiva/pacs/studies"
    assert not server.is_local_folder


def test_zhiva_auth_example_loads() -> None:
    server = parse_servers({S1: ZHIVA})[0][S1]
    assert server.auth_type is AuthType.ZHIVA
    assert server.sign_in_server == "https://localhost/auth/sign-user"
    assert server.sign_in_token_server == "https://localhost/auth/generate-access-token"
    assert server.refresh_server == "https://localhost/auth/refresh-token"


def test_token_example_loads() -> None:
    server = parse_servers({S1: TOKEN_AUTH})[0][S1]
    assert server.auth_type is AuthType.TOKEN
    assert server.auth_token is not None
    assert server.auth_token.get_secret_value() == TOKEN


def test_token_alias() -> None:
    entry = {k: v for k, v in TOKEN_AUTH.items() if k != "authToken"} | {"token": TOKEN}
    servers, warnings = parse_servers({S1: entry})
    assert warnings == []
    token = servers[S1].auth_token
    assert token is not None and token.get_secret_value() == TOKEN


def test_both_token_spellings_warn() -> None:
    _, warnings = parse_servers({S1: TOKEN_AUTH | {"token": "other"}})
    assert any('"authToken" and "token"' in w for w in warnings)


def test_no_auth_and_null_auth_type() -> None:
    servers, _ = parse_servers(
        {S1: {"uri": "https://pacs/dicom-web/", "authType": None}, S2: {"uri": "http://b"}}
    )
    assert servers[S1].auth_type is AuthType.NONE
    assert servers[S1].uri == "https://pacs/dicom-web"  # trailing "/" stripped
    assert servers[S2].auth_type is AuthType.NONE


def test_empty_strings_of_the_template_mean_unset() -> None:
    entry = {
        "uri": "https://pacs",
        "authType": "",
        "login": "",
        "password": "",
        "token": "",
        "statusUri": "",
        "signInServer": "",
        "signInTokenServer": "",
        "refreshServer": "",
    }
    server, warnings = parse_servers({S1: entry})
    assert warnings == []
    assert server[S1].password is None and server[S1].status_uri is None


def test_model_uri_is_kept_exactly() -> None:
    uri = "http://localhost:8011/predict/?x=1"
    assert parse_models({M1: model(uri=uri, supports=["/studies"])})[0][M1].uri == uri


def test_local_folder_server(tmp_path: Path) -> None:
    servers, _ = parse_servers({S1: {"uri": tmp_path.as_uri() + "/"}})
    server = servers[S1]
    assert server.is_local_folder
    assert server.local_path == tmp_path
    assert server.uri == tmp_path.as_uri()


def test_local_path_of_http_server_is_an_error() -> None:
    server = parse_servers({S1: BASIC})[0][S1]
    with pytest.raises(ValueError, match="not a local folder"):
        _ = server.local_path


def test_load_config(tmp_path: Path) -> None:
    write_config(tmp_path, {S1: BASIC, S2: ZHIVA | {"isDefault": True}}, CONTRACT_MODELS)
    config = load_config(tmp_path)
    assert isinstance(config, ProxyConfig)
    assert set(config.servers) == {S1, S2}
    assert set(config.models) == {M1, M2}
    assert config.warnings == ()
    default = config.default_server()
    assert default is not None and default.id == S2


def test_bom_is_accepted(tmp_path: Path) -> None:
    write_config(tmp_path, {}, {})
    (tmp_path / "models.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(CONTRACT_MODELS).encode())
    assert set(load_config(tmp_path).models) == {M1, M2}


def test_default_server_selection() -> None:
    one = ProxyConfig(servers=parse_servers({S1: BASIC})[0], models={})
    assert one.default_server() is not None
    servers, warnings = parse_servers({S1: BASIC, S2: ZHIVA})
    assert ProxyConfig(servers=servers, models={}).default_server() is None
    assert any("none has" in w and "?server=" in w for w in warnings)
    assert ProxyConfig(servers={}, models={}).default_server() is None


def test_config_is_immutable() -> None:
    servers, _ = parse_servers({S1: BASIC})
    config = ProxyConfig(servers=servers, models={})
    with pytest.raises(pydantic.ValidationError):
        config.servers[S1].uri = "http://elsewhere"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.servers[S2] = config.servers[S1]  # type: ignore[index]
    servers.clear()
    assert S1 in config.servers  # a copy, not a view of the caller's dict


def test_task_and_level() -> None:
    assert Task.ANNOTATION.route_family == "annotations"
    assert Task.from_route_family("predictions") is Task.PREDICTION
    with pytest.raises(ValueError, match="unknown route family"):
        Task.from_route_family("prediction")
    assert [level.value for level in Level] == [
        "/studies",
        "/studies/series",
        "/studies/series/instances",
    ]


# --- file-level refusals ----------------------------------------------------------


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    servers, models = info.value.messages
    assert str(tmp_path / "servers.json") in servers and "create it" in servers
    assert "{}" in servers
    assert str(tmp_path / "models.json") in models


def test_invalid_json_gives_line_and_column(tmp_path: Path) -> None:
    write_config(tmp_path, {}, {})
    (tmp_path / "servers.json").write_text('{\n  "a": 1,\n}\n')
    message = only(load_errors(tmp_path))
    assert "servers.json" in message and "invalid JSON at line 3, column 1" in message


def test_unreadable_and_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "servers.json").mkdir()
    (tmp_path / "models.json").write_bytes(b'{"\xff": 1}')
    servers, models = load_errors(tmp_path)
    assert "servers.json: cannot be read" in servers
    assert "models.json: not UTF-8" in models


def test_top_level_must_be_an_object() -> None:
    with pytest.raises(ConfigError) as info:
        parse_servers([BASIC])
    message = only(info.value.messages)
    assert message.startswith("servers.json: expected a JSON object keyed by UUID")
    assert "got an array" in message


def test_problems_of_both_files_are_reported_together(tmp_path: Path) -> None:
    write_config(tmp_path, {"nope": BASIC}, {M1: model(supports=[])})
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert len(info.value.messages) == 2
    assert str(info.value) == "\n".join(info.value.messages)
    assert "servers.json" in info.value.messages[0]
    assert "models.json" in info.value.messages[1]


def test_duplicate_json_keys_warn(tmp_path: Path) -> None:
    write_config(tmp_path, {}, {})
    body = json.dumps(BASIC)
    (tmp_path / "servers.json").write_text(f'{{"{S1}": {body}, "{S1}": {body}}}')
    config = load_config(tmp_path)
    assert any(f'key "{S1}" appears more than once' in w for w in config.warnings)


# --- warnings -----------------------------------------------------------------------


def test_unknown_fields_warn(caplog: pytest.LogCaptureFixture) -> None:
    entry = BASIC | {"label": "Main PACS", "timeout": 5}
    with caplog.at_level(logging.WARNING, logger="model_proxy.config"):
        _, warnings = parse_servers({S1: entry})
    message = only(warnings)
    assert message == f'servers.json: entry "{S1}": unknown field(s) "label", "timeout" ignored'
    assert [r.getMessage() for r in caplog.records] == [message]
    assert caplog.records[0].name == "model_proxy.config"


def test_unknown_fields_in_data_filter_warn() -> None:
    entry = model(supports=["/studies"], dataFilter=[{"dataKey": "a", "title": "A", "uuid": "1"}])
    assert '"uuid"' in only(parse_models({M1: entry})[1])


def test_python_field_names_are_not_json_fields() -> None:
    # Only the camelCase names of the docs count in a file; a near miss is an error.
    with pytest.raises(ConfigError) as info:
        parse_servers({S1: {"uri": "https://a", "is_default": True}})
    assert 'unknown field "is_default"; did you mean "isDefault"?' in only(info.value.messages)


def test_empty_files_warn(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, {}, {}))
    assert config.servers == {} and config.models == {}
    servers, models = config.warnings
    assert "no servers configured" in servers and "no models configured" in models


def test_auth_fields_without_auth_type_warn() -> None:
    _, warnings = parse_servers({S1: {"uri": "https://pacs", "login": "zhiva", "password": "x"}})
    assert only(warnings) == (
        f'servers.json: entry "{S1}": "login", "password" set but not used, because authType is ""'
    )


def test_data_filter_on_instance_model_warns() -> None:
    entry = model(
        supports=["/studies/series/instances"], dataFilter=[{"dataKey": "a", "title": "A"}]
    )
    assert "dataFilter" in only(parse_models({M1: entry})[1])


# --- secrets ------------------------------------------------------------------------


def test_secrets_never_shown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    servers, _ = parse_servers({S1: BASIC, S2: TOKEN_AUTH | {"isDefault": True}})
    for server in servers.values():
        for text in (repr(server), str(server), repr(ProxyConfig(servers, {}))):
            assert PASSWORD not in text and TOKEN not in text
    # Secrets of the wrong type, next to other errors, are described, not shown.
    bad = {"uri": 7, "authType": "zhivaAuth", "password": 35123989, "token": ["t0k3n"]}
    write_config(tmp_path, {S1: bad, "x": BASIC | {"isDefault": "yes"}}, {})
    with caplog.at_level(logging.DEBUG, logger="model_proxy"), pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    shown = str(info.value) + "\n".join(info.value.warnings) + caplog.text
    for secret in (PASSWORD, "35123989", "t0k3n"):
        assert secret not in shown
    expected = 'expected a string, {"env": "VARIABLE"} or {"file": "/path/of/file"}'
    assert f'field "password": {expected}, got a number' in str(info.value)


def test_direct_construction_validates_without_leaking() -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        ServerConfig(id=S1, uri="https://pacs", auth_type=AuthType.BASIC, password=PASSWORD)
    assert "login" in str(info.value) and PASSWORD not in str(info.value)
    with pytest.raises(pydantic.ValidationError):
        ModelConfig(id=M1, uri="http://m", task=Task.PREDICTION, supports=())


def test_dump_round_trips_without_secrets() -> None:
    server = parse_servers({S1: TOKEN_AUTH})[0][S1]
    dumped = server.model_dump(mode="json", by_alias=True)
    assert dumped["authType"] == "token" and dumped["authToken"] == "**********"
    models = parse_models(CONTRACT_MODELS)[0]
    dumped = models[M2].model_dump(mode="json", by_alias=True)
    assert dumped["supports"] == ["/studies"] and dumped["task"] == "segmentation"
    assert ModelConfig.model_validate(dumped) == models[M2]
