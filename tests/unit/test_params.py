"""Request parameters: DICOM UIDs and ?data-filters (test_resolve_inputs.py: how
filters meet a model's inputs)."""

from __future__ import annotations

import json

import pytest

from model_proxy.errors import BadRequest
from model_proxy.routes.params import (
    RequestedFilter,
    parse_data_filters,
    validate_uid,
)

# --- validate_uid -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "uid",
    [
        "0",
        "1",
        "1.2.840.10008.5.1.4.1.1.2",
        "1.0.0.10",
        "2.25.329800735698586629295641978511506172918",
        "1." + "2" * 62,  # 64 characters
    ],
)
def test_valid_uids(uid: str) -> None:
    assert validate_uid(uid, "study") == uid


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "01.2",
        "1.02.3",
        "1.00",
        "1.2a",
        "abc",
        "1..2",
        ".1.2",
        "1.2.",
        "1." + "2" * 63,  # 65 characters
        "..%2F..%2Fetc%2Fpasswd",
        "../../etc/passwd",
        "1.2/3",
        " 1.2",
        "1.2\n",
        "1,2",
        "-1.2",
        "1.2.\u0663",  # an Arabic-Indic digit
    ],
)
def test_invalid_uids(uid: str) -> None:
    with pytest.raises(BadRequest, match="series UID") as info:
        validate_uid(uid, "series UID")
    assert info.value.code == "invalid_uid"
    assert info.value.status_code == 400


def test_a_very_long_invalid_uid_is_shortened_in_the_message() -> None:
    with pytest.raises(BadRequest) as info:
        validate_uid("9" * 5000, "study")
    assert len(info.value.message) < 300
    assert "..." in info.value.message


# --- parse_data_filters ---------------------------------------------------------------


def brackets(prefix: str, **fields: str) -> list[tuple[str, str]]:
    return [(f"data-filters{prefix}[{name}]", value) for name, value in fields.items()]


def test_absent_parameter_is_none() -> None:
    assert parse_data_filters([]) is None
    assert parse_data_filters([("server", "x"), ("data-filter", "[]")]) is None


def test_bracket_notation() -> None:
    items = [
        ("server", "b1407f18-575d-487c-bc0c-640c6da651bc"),
        *brackets("[0]", dataKey="series-one", uuid="1.2.3"),
        *brackets("[1]", dataKey="series-two", uuid="1.2.4"),
    ]
    assert parse_data_filters(items) == [
        RequestedFilter("series-one", "1.2.3"),
        RequestedFilter("series-two", "1.2.4"),
    ]


def test_bracket_notation_with_nested_data_filter() -> None:
    items = [
        *brackets("[0]", dataKey="ct", uuid="1.2.3"),
        *brackets("[0][dataFilter][0]", dataKey="first", uuid="1.2.3.1"),
        *brackets("[0][dataFilter][1]", dataKey="last", uuid="1.2.3.9"),
        *brackets("[1]", dataKey="pet", uuid="1.2.4"),
    ]
    assert parse_data_filters(items) == [
        RequestedFilter(
            "ct",
            "1.2.3",
            (RequestedFilter("first", "1.2.3.1"), RequestedFilter("last", "1.2.3.9")),
        ),
        RequestedFilter("pet", "1.2.4"),
    ]


def test_bracket_indexes_are_ordered_numerically_whatever_the_order_given() -> None:
    items: list[tuple[str, str]] = []
    for index in reversed(range(12)):
        items += brackets(f"[{index}]", uuid=f"1.{index}", dataKey=f"k{index}")
    filters = parse_data_filters(items)
    assert filters is not None
    assert [f.data_key for f in filters] == [f"k{i}" for i in range(12)]
    assert [f.uid for f in filters] == [f"1.{i}" for i in range(12)]


def test_json_form() -> None:
    document = [
        {"dataKey": "ct", "uuid": "1.2.3", "dataFilter": [{"dataKey": "i", "uuid": "1.2.3.4"}]},
        {"dataKey": "pet", "uuid": "1.2.4"},
    ]
    assert parse_data_filters([("data-filters", json.dumps(document))]) == [
        RequestedFilter("ct", "1.2.3", (RequestedFilter("i", "1.2.3.4"),)),
        RequestedFilter("pet", "1.2.4"),
    ]


def test_json_and_bracket_forms_agree() -> None:
    document = [{"dataKey": "a", "uuid": "1.2"}, {"dataKey": "b", "uuid": "1.3"}]
    from_json = parse_data_filters([("data-filters", json.dumps(document))])
    from_brackets = parse_data_filters(
        brackets("[0]", dataKey="a", uuid="1.2") + brackets("[1]", dataKey="b", uuid="1.3")
    )
    assert from_json == from_brackets


def test_empty_json_array_is_an_empty_list_not_none() -> None:
    assert parse_data_filters([("data-filters", "[]")]) == []


def filter_error(items: list[tuple[str, str]], match: str) -> BadRequest:
    with pytest.raises(BadRequest, match=match) as info:
        parse_data_filters(items)
    assert info.value.status_code == 400
    return info.value


def test_both_forms_given() -> None:
    items = [("data-filters", "[]"), *brackets("[0]", dataKey="a", uuid="1.2")]
    assert filter_error(items, "not both").code == "invalid_data_filters"


def test_json_given_twice() -> None:
    filter_error([("data-filters", "[]"), ("data-filters", "[]")], "more than once")


@pytest.mark.parametrize(
    "indexes", [[1], [0, 2], [1, 2], [0, 1, 3], [1024], list(range(1025))], ids=str
)
def test_bracket_index_gaps_are_rejected(indexes: list[int]) -> None:
    items: list[tuple[str, str]] = []
    for index in indexes:
        items += brackets(f"[{index}]", dataKey=f"k{index}", uuid="1.2")
    filter_error(items, "without gaps")


def test_nested_bracket_index_gaps_are_rejected() -> None:
    items = [
        *brackets("[0]", dataKey="ct", uuid="1.2.3"),
        *brackets("[0][dataFilter][1]", dataKey="i", uuid="1.2.3.4"),
    ]
    filter_error(items, "without gaps")


def test_bracket_index_with_leading_zero_is_a_bad_request() -> None:
    items = brackets("[0]", dataKey="a", uuid="1.2") + brackets("[01]", dataKey="b", uuid="1.3")
    filter_error(items, "data-filters")


def test_bracket_index_with_superscript_digit_is_a_bad_request() -> None:
    filter_error(brackets("[\u00b2]", dataKey="a", uuid="1.2"), "data-filters")


def test_bracket_index_with_non_ascii_digit_is_a_bad_request() -> None:
    filter_error(brackets("[\u0660]", dataKey="a", uuid="1.2"), "data-filters")


@pytest.mark.parametrize(
    ("items", "match"),
    [
        ([("data-filters[0]dataKey", "a")], "cannot read the parameter name"),
        ([("data-filters[0][dataKey", "a")], "cannot read the parameter name"),
        ([("data-filters[0][dataKey]x", "a")], "cannot read the parameter name"),
        (
            [("data-filters[0][dataKey]", "a"), ("data-filters[0][dataKey]", "b")],
            "more than once",
        ),
        ([("data-filters[0]", "x"), ("data-filters[0][dataKey]", "a")], "conflicts"),
        ([("data-filters[0][dataKey]", "a"), ("data-filters[0]", "x")], "more than once"),
        (brackets("[first]", dataKey="a", uuid="1.2"), r"data-filters\[first\] .* cannot nest"),
        (brackets("[0]", dataKey="a", uuid="1.2") + brackets("[x]", uuid="1"), "array"),
        ([("data-filters[0]", "1.2")], r"data-filters\[0\] must be an object"),
        ([("data-filters[0][dataFilter][0][dataFilter][0]", "x")], "nests deeper"),
        # Deep enough to overflow Python's recursion limit if it were followed.
        ([("data-filters" + "[a]" * 2000, "x")], "nests deeper"),
    ],
)
def test_malformed_bracket_parameters(items: list[tuple[str, str]], match: str) -> None:
    filter_error(items, match)


@pytest.mark.parametrize(
    ("document", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"dataKey": "a", "uuid": "1.2"}', "must be an array"),
        ('"a"', "must be an array"),
        ("null", "must be an array"),
        ("[1]", r"data-filters\[0\] must be an object"),
        ('[["a", "1.2"]]', "must be an object"),
        ('[{"dataKey": "a", "uuid": "1.2", "uid": "1.3"}]', "unknown fields: uid"),
        ('[{"dataKey": "a", "uuid": "1.2", "z": 1, "b": 2}]', "unknown fields: b, z"),
        ('[{"uuid": "1.2"}]', r"data-filters\[0\]\.dataKey is missing"),
        ('[{"dataKey": "", "uuid": "1.2"}]', "dataKey is missing"),
        ('[{"dataKey": 7, "uuid": "1.2"}]', "dataKey is missing or not a string"),
        ('[{"dataKey": "a"}]', r"data-filters\[0\]\.uuid is missing"),
        ('[{"dataKey": "a", "uuid": 1.2}]', "uuid is missing or not a string"),
        ('[{"dataKey": "a", "uuid": "1.2"}, {"dataKey": "b", "uuid": "x"}]', "not a valid"),
        ('[{"dataKey": "a", "uuid": "1.2", "dataFilter": {}}]', "dataFilter must be an array"),
        (
            '[{"dataKey": "a", "uuid": "1.2", "dataFilter": [{"dataKey": "b"}]}]',
            r"data-filters\[0\]\.dataFilter\[0\]\.uuid is missing",
        ),
        (
            '[{"dataKey": "a", "uuid": "1.2", "dataFilter": [{"dataKey": "b", "uuid": "1.3",'
            ' "dataFilter": []}]}]',
            "nest at most two levels",
        ),
        ("[" * 5000 + "]" * 5000, "not valid JSON"),
    ],
)
def test_invalid_json_filters(document: str, match: str) -> None:
    filter_error([("data-filters", document)], match)


def test_invalid_uid_in_a_filter_names_where_it_is() -> None:
    error = filter_error(
        [("data-filters", '[{"dataKey": "a", "uuid": "1.2"}, {"dataKey": "b", "uuid": "1.02"}]')],
        r"data-filters\[1\]\.uuid '1\.02' is not a valid DICOM UID",
    )
    assert error.code == "invalid_uid"


def test_too_many_entries() -> None:
    entries = [{"dataKey": f"k{i}", "uuid": "1.2"} for i in range(257)]
    filter_error([("data-filters", json.dumps(entries))], "more than 256 entries")
    filters = parse_data_filters([("data-filters", json.dumps(entries[:256]))])
    assert filters is not None
    assert len(filters) == 256
