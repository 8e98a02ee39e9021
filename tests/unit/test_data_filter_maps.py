"""The two short data-filter encodings (issue 16, item 12): a map from dataKey to UID,
in bracket notation or as a JSON object; they give what the array forms give."""

from __future__ import annotations

import json

import pytest

from model_proxy.errors import BadRequest, ErrorCode
from model_proxy.routes.params import RequestedFilter, parse_data_filters

ONE, TWO = "1.2.840.1.1", "1.2.840.1.2"
EXPECTED = [RequestedFilter("series-one", ONE), RequestedFilter("series-two", TWO)]


def test_a_keyed_map_in_bracket_notation() -> None:
    items = [("data-filters[series-one]", ONE), ("data-filters[series-two]", TWO)]
    assert parse_data_filters(items) == EXPECTED


def test_a_json_object() -> None:
    document = json.dumps({"series-one": ONE, "series-two": TWO})
    assert parse_data_filters([("data-filters", document)]) == EXPECTED


def test_all_four_encodings_agree() -> None:
    array = [{"dataKey": "series-one", "uuid": ONE}, {"dataKey": "series-two", "uuid": TWO}]
    indexed = [
        ("data-filters[0][dataKey]", "series-one"),
        ("data-filters[0][uuid]", ONE),
        ("data-filters[1][dataKey]", "series-two"),
        ("data-filters[1][uuid]", TWO),
    ]
    assert parse_data_filters([("data-filters", json.dumps(array))]) == EXPECTED
    assert parse_data_filters(indexed) == EXPECTED


@pytest.mark.parametrize(
    ("items", "match", "code"),
    [
        (
            [("data-filters", json.dumps({"series-one": {"uuid": ONE}}))],
            "must be a UID string",
            ErrorCode.INVALID_DATA_FILTERS,
        ),
        (
            [("data-filters[series-one][0]", ONE)],
            "cannot nest",
            ErrorCode.INVALID_DATA_FILTERS,
        ),
        (
            [("data-filters", json.dumps({"series-one": "1.02"}))],
            r"data-filters\[series-one\] '1.02' is not a valid DICOM UID",
            ErrorCode.INVALID_UID,
        ),
        (
            [("data-filters", json.dumps({"dataKey": "series-one", "uuid": ONE}))],
            "one object was given",
            ErrorCode.INVALID_DATA_FILTERS,
        ),
    ],
)
def test_malformed_maps_are_400(items: list[tuple[str, str]], match: str, code: str) -> None:
    with pytest.raises(BadRequest, match=match) as info:
        parse_data_filters(items)
    assert info.value.code == code
