"""How ?data-filters meet a model's declared inputs (``resolve_inputs``)."""

from __future__ import annotations

from typing import Any

import pytest
from test_params import brackets

from model_proxy.config import Level, ModelConfig, parse_models
from model_proxy.errors import BadRequest
from model_proxy.models.body import InstanceInput, SeriesInput
from model_proxy.routes.params import RequestedFilter, parse_data_filters, resolve_inputs

PLAIN = "d4e548ad-f365-4c34-918b-4e61a8b896f0"
TWO_SERIES = "7472e576-d49c-4fbf-9b2a-a52e1f59a906"
NESTED = "0f5d6a7c-2b3e-4c1d-8e9f-a0b1c2d3e4f5"
INSTANCES = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"

MODELS_JSON: dict[str, Any] = {
    PLAIN: {
        "uri": "http://localhost:8011/segmentation",
        "task": "segmentation",
        "supports": ["/studies", "/studies/series", "/studies/series/instances"],
    },
    TWO_SERIES: {
        "uri": "http://localhost:8011/multiple-series-endpoint/predict",
        "task": "segmentation",
        "supports": ["/studies"],
        "dataFilter": [
            {"dataKey": "series-one", "title": "Series one"},
            {"dataKey": "series-two", "title": "Series two"},
        ],
    },
    NESTED: {
        "uri": "http://localhost:8011/nested",
        "task": "prediction",
        "supports": ["/studies"],
        "dataFilter": [
            {
                "dataKey": "ct",
                "title": "CT",
                "dataFilter": [
                    {"dataKey": "first", "title": "First slice"},
                    {"dataKey": "last", "title": "Last slice"},
                ],
            },
            {"dataKey": "pet", "title": "PET"},
        ],
    },
    INSTANCES: {
        "uri": "http://localhost:8011/registration",
        "task": "annotation",
        "supports": ["/studies/series", "/studies/series/instances"],
        "dataFilter": [
            {"dataKey": "fixed", "title": "Fixed"},
            {"dataKey": "moving", "title": "Moving"},
        ],
    },
}


@pytest.fixture(scope="module")
def models() -> dict[str, ModelConfig]:
    parsed, _warnings = parse_models(MODELS_JSON)
    assert set(parsed) == set(MODELS_JSON)
    return parsed


F = RequestedFilter


def bad_request(
    model: ModelConfig, level: Level, requested: list[RequestedFilter] | None, match: str
) -> BadRequest:
    with pytest.raises(BadRequest, match=match) as info:
        resolve_inputs(model, level, requested)
    assert info.value.status_code == 400
    return info.value


@pytest.mark.parametrize("level", list(Level))
def test_model_without_data_filter_and_no_filters(
    models: dict[str, ModelConfig], level: Level
) -> None:
    assert resolve_inputs(models[PLAIN], level, None) == []


@pytest.mark.parametrize("level", [Level.STUDY, Level.SERIES])
def test_filters_for_a_model_without_data_filter(
    models: dict[str, ModelConfig], level: Level
) -> None:
    error = bad_request(models[PLAIN], level, [F("a", "1.2")], "declares no dataFilter")
    assert error.code == "data_filters_not_accepted"
    # An empty list was still given, and is refused the same way.
    bad_request(models[PLAIN], level, [], "declares no dataFilter")


@pytest.mark.parametrize("model_id", [PLAIN, INSTANCES])
def test_filters_on_an_instance_request(models: dict[str, ModelConfig], model_id: str) -> None:
    error = bad_request(models[model_id], Level.INSTANCE, [F("fixed", "1.2")], "study and series")
    assert error.code == "data_filters_not_accepted"


def test_instance_request_to_a_model_with_data_filter_needs_none(
    models: dict[str, ModelConfig],
) -> None:
    assert resolve_inputs(models[INSTANCES], Level.INSTANCE, None) == []


def test_missing_filters_for_a_model_that_needs_them(models: dict[str, ModelConfig]) -> None:
    error = bad_request(models[TWO_SERIES], Level.STUDY, None, "'series-one', 'series-two'")
    assert error.code == "data_filters_required"


def test_study_series_inputs_follow_the_declared_order(models: dict[str, ModelConfig]) -> None:
    requested = [F("series-two", "1.2.4"), F("series-one", "1.2.3")]
    assert resolve_inputs(models[TWO_SERIES], Level.STUDY, requested) == [
        SeriesInput("series-one", "1.2.3"),
        SeriesInput("series-two", "1.2.4"),
    ]


def test_study_nested_instance_inputs(models: dict[str, ModelConfig]) -> None:
    requested = [
        F("pet", "1.2.4"),
        F("ct", "1.2.3", (F("last", "1.2.3.9"), F("first", "1.2.3.1"))),
    ]
    assert resolve_inputs(models[NESTED], Level.STUDY, requested) == [
        SeriesInput(
            "ct", "1.2.3", (InstanceInput("first", "1.2.3.1"), InstanceInput("last", "1.2.3.9"))
        ),
        SeriesInput("pet", "1.2.4"),
    ]


def test_series_instance_inputs(models: dict[str, ModelConfig]) -> None:
    requested = [F("moving", "1.2.3.2"), F("fixed", "1.2.3.1")]
    assert resolve_inputs(models[INSTANCES], Level.SERIES, requested) == [
        InstanceInput("fixed", "1.2.3.1"),
        InstanceInput("moving", "1.2.3.2"),
    ]


def test_unknown_data_key(models: dict[str, ModelConfig]) -> None:
    requested = [F("series-one", "1.2.3"), F("series-2", "1.2.4"), F("series-two", "1.2.5")]
    error = bad_request(models[TWO_SERIES], Level.STUDY, requested, "unknown dataKey 'series-2'")
    assert error.code == "invalid_data_filters"
    assert "'series-one', 'series-two'" in error.message


def test_missing_declared_data_key(models: dict[str, ModelConfig]) -> None:
    error = bad_request(
        models[TWO_SERIES], Level.STUDY, [F("series-two", "1.2.4")], "no UID given for 'series-one'"
    )
    assert error.code == "invalid_data_filters"
    bad_request(models[TWO_SERIES], Level.STUDY, [], "'series-one', 'series-two'")


def test_duplicate_data_key(models: dict[str, ModelConfig]) -> None:
    requested = [F("series-one", "1.2.3"), F("series-two", "1.2.4"), F("series-one", "1.2.5")]
    bad_request(models[TWO_SERIES], Level.STUDY, requested, "'series-one' is given more than once")


def test_nested_filters_where_the_declared_entry_has_none(models: dict[str, ModelConfig]) -> None:
    requested = [F("series-one", "1.2.3", (F("x", "1.2.3.1"),)), F("series-two", "1.2.4")]
    error = bad_request(models[TWO_SERIES], Level.STUDY, requested, "takes a whole series")
    assert error.code == "invalid_data_filters"


def test_nested_declared_entry_needs_its_instances(models: dict[str, ModelConfig]) -> None:
    requested = [F("ct", "1.2.3"), F("pet", "1.2.4")]
    bad_request(models[NESTED], Level.STUDY, requested, "for 'ct'.*no UID given for 'first'")
    requested = [F("ct", "1.2.3", (F("first", "1.2.3.1"), F("mid", "1.2.3.5"))), F("pet", "1.2")]
    bad_request(models[NESTED], Level.STUDY, requested, "unknown dataKey 'mid'")


def test_nested_filters_under_an_instance_input(models: dict[str, ModelConfig]) -> None:
    requested = [F("fixed", "1.2.3.1", (F("x", "1.2.3.1.1"),)), F("moving", "1.2.3.2")]
    bad_request(models[INSTANCES], Level.SERIES, requested, "'fixed' names an instance")


def test_parse_then_resolve(models: dict[str, ModelConfig]) -> None:
    items = [
        *brackets("[0]", dataKey="pet", uuid="1.2.4"),
        *brackets("[1]", dataKey="ct", uuid="1.2.3"),
        *brackets("[1][dataFilter][0]", dataKey="first", uuid="1.2.3.1"),
        *brackets("[1][dataFilter][1]", dataKey="last", uuid="1.2.3.9"),
    ]
    inputs = resolve_inputs(models[NESTED], Level.STUDY, parse_data_filters(items))
    assert inputs == [
        SeriesInput(
            "ct", "1.2.3", (InstanceInput("first", "1.2.3.1"), InstanceInput("last", "1.2.3.9"))
        ),
        SeriesInput("pet", "1.2.4"),
    ]
