"""A near miss of a known field is an error with "did you mean"; other unknown fields
stay warnings (a file written for a newer version still loads)."""

from __future__ import annotations

import pytest

from model_proxy.config import ConfigError, parse_models, parse_servers
from model_proxy.config.spelling import edit_distance, near_miss

S1 = "b1407f18-575d-487c-bc0c-640c6da651bc"
MODEL = {"uri": "http://127.0.0.1:9/m", "task": "prediction", "supports": ["/studies"]}


@pytest.mark.parametrize(
    ("field", "meant"),
    [("statusUrl", "statusUri"), ("URI", "uri"), ("url", "uri"), ("isdefault", "isDefault")],
)
# With "uri" spelt right next to "URI" nothing would be lost (see below): leave it out.
def test_a_near_miss_in_servers_json_is_an_error(field: str, meant: str) -> None:
    entry = {field: "https://pacs/x"} if meant == "uri" else {"uri": "https://pacs/x", field: "y"}
    with pytest.raises(ConfigError) as info:
        parse_servers({S1: entry})
    assert any(
        f'unknown field "{field}"; did you mean "{meant}"?' in message
        for message in info.value.messages
    ), info.value.messages


def test_a_misspelt_data_filter_is_an_error_not_a_lost_input() -> None:
    entry = MODEL | {"dataFilters": [{"dataKey": "series-one", "title": "One"}]}
    with pytest.raises(ConfigError) as info:
        parse_models({S1: entry})
    assert info.value.messages == [
        f'models.json: entry "{S1}": unknown field "dataFilters"; did you mean "dataFilter"?'
    ]


def test_unknown_fields_far_from_known_ones_stay_warnings() -> None:
    servers, warnings = parse_servers(
        {S1: {"uri": "https://pacs/dicom-web", "comment": "ward 3", "region": "eu"}}
    )
    assert S1 in servers
    assert warnings == [f'servers.json: entry "{S1}": unknown field(s) "comment", "region" ignored']


def test_warnings_come_with_the_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_servers({S1: {"URI": "https://pacs/dicom-web", "comment": "x"}})
    assert any('did you mean "uri"' in message for message in info.value.messages)
    assert any('"comment"' in warning for warning in info.value.warnings)


def test_a_near_miss_next_to_the_real_field_is_only_unknown() -> None:
    # Both spelt: the user kept an old copy on purpose; nothing is lost.
    servers, warnings = parse_servers({S1: {"uri": "https://pacs/dicom-web", "url": "x"}})
    assert S1 in servers and '"url"' in warnings[0]


def test_edit_distance() -> None:
    assert edit_distance("statusurl", "statusuri") == 1
    assert edit_distance("datafilters", "datafilter") == 1
    assert edit_distance("istdefualt", "isdefault") == 2  # insert + swap
    assert edit_distance("", "abc") == 3
    assert near_miss("task", ["uri", "supports"]) is None
    assert near_miss("tsak", ["task"]) == "task"
