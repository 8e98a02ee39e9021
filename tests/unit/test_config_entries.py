"""servers.json / models.json: every mistake in an entry is refused with a message
naming the file, the entry, the field and what was expected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from config_cases import (
    BASIC,
    M1,
    PASSWORD,
    S1,
    S2,
    TOKEN,
    ZHIVA,
    model,
    model_errors,
    only,
    server_errors,
)

from model_proxy.config import (
    ConfigError,
    parse_models,
    parse_servers,
)

# --- entry refusals ----------------------------------------------------------------


def test_key_must_be_a_uuid() -> None:
    message = only(server_errors(BASIC, key="my-pacs"))
    assert 'entry "my-pacs"' in message and "UUID" in message
    parse_servers({S1.upper(): BASIC})  # any version, any case


def test_entry_must_be_an_object() -> None:
    message = only(server_errors("https://pacs"))
    assert f'entry "{S1}"' in message and "expected an object" in message


def test_uri_missing() -> None:
    message = only(server_errors({"isDefault": True}))
    assert message == (
        f'servers.json: entry "{S1}", field "uri": missing; '
        "expected a string (an http(s):// or file:// URL)"
    )


def test_uri_not_a_string() -> None:
    assert only(server_errors({"uri": 42})) == (
        f'servers.json: entry "{S1}", field "uri": expected a string '
        "(an http(s):// or file:// URL), got 42"
    )


@pytest.mark.parametrize("uri", ["ftp://pacs/dicom-web", "pacs.local/dicom-web", "https://"])
def test_uri_scheme(uri: str) -> None:
    message = only(server_errors({"uri": uri}))
    assert 'field "uri"' in message and uri in message


def test_credentials_in_urls_are_masked() -> None:
    message = only(server_errors({"uri": "ftp://zhiva:hunter2@pacs/dicom-web"}))
    assert "hunter2" not in message and "zhiva:***@pacs" in message
    assert "expected a URL" in only(server_errors({"uri": "http://[::1/dicom-web"}))


def test_model_uri_must_be_http() -> None:
    message = only(model_errors(model(uri="file:///srv/model", supports=["/studies"])))
    assert 'field "uri"' in message and "http://" in message


def test_local_folder_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    message = only(server_errors({"uri": missing.as_uri()}))
    assert "does not exist" in message and str(missing) in message


def test_wrong_types() -> None:
    messages = server_errors(
        {"uri": "https://pacs", "isDefault": "true", "statusUri": 5, "login": ["a"]}
    )
    assert len(messages) == 3
    assert 'field "isDefault": expected true or false, got "true"' in messages[0]
    assert 'field "statusUri": expected a string (an http(s):// URL), got 5' in messages[1]
    assert 'field "login": expected a string, got ["a"]' in messages[2]


def test_status_uri_must_be_a_url() -> None:
    message = only(model_errors(model(supports=["/studies"], statusUri="localhost:8011")))
    assert 'field "statusUri"' in message and "localhost:8011" in message


def test_unknown_task_lists_allowed() -> None:
    message = only(model_errors(model(task="segmentations", supports=["/studies"])))
    assert 'field "task"' in message and '"segmentations"' in message
    assert '"segmentation", "annotation", "prediction"' in message


def test_supports_refusals() -> None:
    message = only(model_errors(model(supports=["/studies", "/series"])))
    assert 'field "supports[1]"' in message and '"/series"' in message
    assert '"/studies", "/studies/series", "/studies/series/instances"' in message
    assert "non-empty" in only(model_errors(model(supports=[])))
    assert "non-empty" in only(model_errors(model(supports="/studies")))
    assert "missing" in only(model_errors(model()))
    assert "duplicate" in only(model_errors(model(supports=["/studies", "/studies"])))


def test_several_defaults_are_named() -> None:
    with pytest.raises(ConfigError) as info:
        parse_servers({S1: BASIC | {"isDefault": True}, S2: ZHIVA | {"isDefault": True}})
    message = only(info.value.messages)
    assert S1 in message and S2 in message and "isDefault" in message


def test_data_key_characters() -> None:
    entry = model(supports=["/studies"], dataFilter=[{"dataKey": "series one", "title": "x"}])
    message = only(model_errors(entry))
    assert 'field "dataFilter[0].dataKey"' in message and '"series one"' in message


def test_duplicate_data_keys() -> None:
    entry = model(
        supports=["/studies"],
        dataFilter=[
            {"dataKey": "a", "title": "A"},
            {"dataKey": "a", "title": "A again"},
            {
                "dataKey": "b",
                "title": "B",
                "dataFilter": [{"dataKey": "i", "title": "I"}, {"dataKey": "i", "title": "J"}],
            },
        ],
    )
    first, nested = model_errors(entry)
    assert 'field "dataFilter[1].dataKey": duplicate dataKey "a"' in first
    assert 'field "dataFilter[2].dataFilter[1].dataKey": duplicate dataKey "i"' in nested


def test_same_data_key_under_different_series_is_fine() -> None:
    nested = [{"dataKey": "first", "title": "First"}]
    entry = model(
        supports=["/studies"],
        dataFilter=[
            {"dataKey": "a", "title": "A", "dataFilter": nested},
            {"dataKey": "b", "title": "B", "dataFilter": nested},
        ],
    )
    assert parse_models({M1: entry})[0][M1].data_filter[1].data_filter[0].data_key == "first"


def test_data_filter_depth() -> None:
    deep = [{"dataKey": "c", "title": "C", "dataFilter": [{"dataKey": "d", "title": "D"}]}]
    entry = model(
        supports=["/studies"],
        dataFilter=[
            {"dataKey": "a", "title": "A", "dataFilter": [{"dataKey": "b", "title": "B"}]},
            {"dataKey": "b", "title": "B", "dataFilter": deep},
        ],
    )
    messages = model_errors(entry)
    assert any(
        'field "dataFilter[1].dataFilter[0].dataFilter"' in m and "at most 2 levels" in m
        for m in messages
    ), messages


def test_nested_entries_need_studies() -> None:
    entry = model(
        supports=["/studies/series"],
        dataFilter=[{"dataKey": "a", "title": "A", "dataFilter": [{"dataKey": "i", "title": "I"}]}],
    )
    message = only(model_errors(entry))
    assert 'field "dataFilter[0].dataFilter"' in message and '"/studies"' in message


def test_data_filter_must_be_an_array() -> None:
    entry = model(supports=["/studies"], dataFilter={"series-one": {"title": "Series one"}})
    message = only(model_errors(entry))
    assert 'field "dataFilter": expected an array' in message
    item = only(model_errors(model(supports=["/studies"], dataFilter=["series-one"])))
    assert 'field "dataFilter[0]": expected an object' in item


def test_missing_title_defaults_to_data_key() -> None:
    entry = model(supports=["/studies"], dataFilter=[{"dataKey": "series-one"}])
    models, warnings = parse_models({M1: entry})
    assert models[M1].data_filter[0].title == "series-one"
    assert only(warnings) == (
        f'models.json: entry "{M1}", field "dataFilter[0].title": missing; '
        'using the dataKey "series-one" as title'
    )


@pytest.mark.parametrize(
    ("entry", "missing"),
    [
        ({"authType": "basicAuth", "login": "zhiva"}, ["password"]),
        ({"authType": "token", "authToken": TOKEN}, ["signInTokenServer"]),
        ({"authType": "token", "signInTokenServer": "https://t/x"}, ["authToken"]),
        (
            {"authType": "zhivaAuth", "password": PASSWORD},
            ["login", "signInServer", "signInTokenServer"],
        ),
    ],
)
def test_auth_fields_must_match_auth_type(entry: dict[str, Any], missing: list[str]) -> None:
    messages = server_errors({"uri": "https://pacs"} | entry)
    assert [m.split('field "')[1].split('"')[0] for m in messages] == missing
    assert all(f'required when authType is "{entry["authType"]}"' in m for m in messages)


def test_auth_is_checked_even_with_other_errors() -> None:
    messages = server_errors({"uri": 42, "authType": "basicAuth", "login": "zhiva"})
    assert len(messages) == 2
    assert 'field "uri"' in messages[0] and 'field "password": required' in messages[1]


def test_unknown_auth_type_lists_allowed() -> None:
    message = only(server_errors({"uri": "https://pacs", "authType": "kerberos"}))
    assert 'field "authType"' in message and '"kerberos"' in message
    assert '"", "basicAuth", "token", "zhivaAuth", "oauth2", "bearer"' in message


def test_tls_verify(tmp_path: Path) -> None:
    bundle = tmp_path / "pacs-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    servers, _ = parse_servers(
        {
            S1: {"uri": "https://a", "tlsVerify": False},
            S2: {"uri": "https://b", "tlsVerify": "pacs-ca.pem", "isDefault": True},
        },
        base_dir=tmp_path,
    )
    assert servers[S1].tls_verify is False
    assert servers[S2].tls_verify == str(bundle)
    model_entry = model(supports=["/studies"], tlsVerify=str(bundle))
    assert parse_models({M1: model_entry})[0][M1].tls_verify == str(bundle)


@pytest.mark.parametrize("value", ["true", 1, None, "missing-ca.pem"])
def test_tls_verify_refusals(value: object, tmp_path: Path) -> None:
    message = only(server_errors({"uri": "https://a", "tlsVerify": value}, base_dir=tmp_path))
    assert 'field "tlsVerify": expected true, false or the path of a CA bundle file' in message


# --- names (ours: shown on /status and by check-config) ------------------------------


def test_names_are_optional_display_names() -> None:
    servers, _ = parse_servers({S1: BASIC | {"name": "Main PACS"}, S2: BASIC | {"name": ""}})
    assert (servers[S1].name, servers[S2].name) == ("Main PACS", None)
    models, _ = parse_models({M1: model(supports=["/studies"], name="Lung segmenter")})
    assert models[M1].name == "Lung segmenter"


@pytest.mark.parametrize(
    ("value", "got"),
    [(42, "got 42"), ("x" * 65, "got 65 characters"), ("Main\nPACS", 'got "Main\\nPACS"')],
)
def test_a_bad_name_is_refused(value: object, got: str) -> None:
    expected = "expected a string of 1 to 64 characters, no control characters"
    message = only(server_errors(BASIC | {"name": value}))
    assert message.startswith(f'servers.json: entry "{S1}", field "name": {expected}'), message
    assert message.endswith(got), message
    message = only(model_errors(model(supports=["/studies"], name=value)))
    assert f'field "name": {expected}' in message and message.endswith(got), message


def test_a_misspelt_name_gets_did_you_mean() -> None:
    message = only(server_errors(BASIC | {"Name": "Main PACS"}))
    assert message.endswith('unknown field "Name"; did you mean "name"?'), message
