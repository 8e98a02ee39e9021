"""?data-filters end to end: both encodings, series and instance inputs, nesting, and
every mistake a viewer can make with them."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from deployment import Deployment, expect_error, instances_of

from model_proxy.sample_data import SampleStudy

# --- data filters ----------------------------------------------------------------------


def _two_series_brackets(study: SampleStudy) -> str:
    pairs = []
    for index, key in enumerate(["series-one", "series-two"]):
        pairs.append(f"data-filters%5B{index}%5D%5BdataKey%5D={key}")
        pairs.append(f"data-filters%5B{index}%5D%5Buuid%5D={study.series[index].series_uid}")
    return "&".join(pairs)


def _as_json_param(filters: list[dict[str, Any]]) -> str:
    return "data-filters=" + quote(json.dumps(filters))


def test_two_series_model_with_bracket_and_json_filters(deployment: Deployment) -> None:
    study = deployment.study
    base = f"/predictions/{deployment.models['two-series']}/studies/{study.study_uid}"
    brackets = deployment.get(f"{base}?{_two_series_brackets(study)}")
    assert brackets.status_code == 200, brackets.text
    as_json = deployment.get(
        base
        + "?"
        + _as_json_param(
            [
                {"dataKey": "series-one", "uuid": study.series[0].series_uid},
                {"dataKey": "series-two", "uuid": study.series[1].series_uid},
            ]
        )
    )
    assert as_json.status_code == 200, as_json.text
    assert brackets.json() == as_json.json()
    assert "series one" in json.dumps(brackets.json()).lower()
    legacy_base = base.replace(
        deployment.models["two-series"], deployment.models["two-series-legacy"]
    )
    legacy = deployment.get(f"{legacy_base}?{_two_series_brackets(study)}")
    assert legacy.json() == brackets.json()


def test_two_series_model_with_a_keyed_map(deployment: Deployment) -> None:
    """data-filters[series-one]=<UID> and {"series-one": "<UID>"} give the same result
    as the array forms."""
    study = deployment.study
    base = f"/predictions/{deployment.models['two-series']}/studies/{study.study_uid}"
    one, two = study.series[0].series_uid, study.series[1].series_uid
    array = deployment.get(f"{base}?{_two_series_brackets(study)}")
    keyed = deployment.get(
        f"{base}?data-filters%5Bseries-one%5D={one}&data-filters%5Bseries-two%5D={two}"
    )
    as_object = deployment.get(
        f"{base}?data-filters=" + quote(json.dumps({"series-two": two, "series-one": one}))
    )
    assert array.status_code == keyed.status_code == as_object.status_code == 200, keyed.text
    assert keyed.json() == as_object.json() == array.json()


def test_series_model_with_instance_inputs(deployment: Deployment) -> None:
    study = deployment.study
    series = study.series[0]
    filters = [
        {"dataKey": "first", "uuid": series.sop_uids[0]},
        {"dataKey": "last", "uuid": series.sop_uids[-1]},
    ]
    path = deployment.series_path("predictions", "instance-inputs") + "?" + _as_json_param(filters)
    response = deployment.get(path)
    assert response.status_code == 200, response.text
    assert set(instances_of(response.json(), study.study_uid, series.series_uid)) == {
        series.sop_uids[0],
        series.sop_uids[-1],
    }


def test_study_model_with_nested_instance_inputs(deployment: Deployment) -> None:
    study = deployment.study
    main, other = study.series
    filters: list[dict[str, Any]] = [
        {
            "dataKey": "main",
            "uuid": main.series_uid,
            "dataFilter": [{"dataKey": "key-slice", "uuid": main.sop_uids[5]}],
        },
        {"dataKey": "other", "uuid": other.series_uid},
    ]
    path = f"/predictions/{deployment.models['nested']}/studies/{study.study_uid}"
    response = deployment.get(path + "?" + _as_json_param(filters))
    assert response.status_code == 200, response.text
    result = response.json()[study.study_uid]
    assert set(result[main.series_uid]) - {"metadata"} <= {main.sop_uids[5]}
    assert other.series_uid in result
    # The same in bracket notation, nested two levels deep.
    brackets = (
        f"data-filters[0][dataKey]=main&data-filters[0][uuid]={main.series_uid}"
        f"&data-filters[0][dataFilter][0][dataKey]=key-slice"
        f"&data-filters[0][dataFilter][0][uuid]={main.sop_uids[5]}"
        f"&data-filters[1][dataKey]=other&data-filters[1][uuid]={other.series_uid}"
    )
    again = deployment.get(path + "?" + brackets.replace("[", "%5B").replace("]", "%5D"))
    assert again.json() == response.json()


@pytest.mark.parametrize(
    ("filters", "code", "fragment"),
    [
        ([{"dataKey": "series-one", "uuid": "SERIES0"}], "invalid_data_filters", "'series-two'"),
        (
            [
                {"dataKey": "series-one", "uuid": "SERIES0"},
                {"dataKey": "series-two", "uuid": "SERIES1"},
                {"dataKey": "series-three", "uuid": "SERIES1"},
            ],
            "invalid_data_filters",
            "unknown dataKey 'series-three'",
        ),
        ([{"dataKey": "series-one"}], "invalid_data_filters", "uuid"),
        ([{"dataKey": "series-one", "uuid": "1.02"}], "invalid_uid", "not a valid DICOM UID"),
    ],
)
def test_bad_data_filters_are_400(
    deployment: Deployment, filters: list[dict[str, Any]], code: str, fragment: str
) -> None:
    study = deployment.study
    for entry in filters:
        if "uuid" in entry and entry["uuid"].startswith("SERIES"):
            entry["uuid"] = study.series[int(entry["uuid"][-1])].series_uid
    path = f"/predictions/{deployment.models['two-series']}/studies/{study.study_uid}"
    message = expect_error(deployment.get(path + "?" + _as_json_param(filters)), 400, code)
    assert fragment in message


def test_data_filter_model_without_filters_is_400(deployment: Deployment) -> None:
    path = f"/predictions/{deployment.models['two-series']}/studies/{deployment.study.study_uid}"
    message = expect_error(deployment.get(path), 400, "data_filters_required")
    assert "'series-one', 'series-two'" in message


def test_filters_for_a_model_without_data_filter_are_400(deployment: Deployment) -> None:
    path = deployment.series_path("predictions", "pred") + "?data-filters=[]"
    expect_error(deployment.get(path), 400, "data_filters_not_accepted")


def test_model_rejecting_the_body_is_502_quoting_it(deployment: Deployment) -> None:
    study = deployment.study
    filters = [
        {"dataKey": "a", "uuid": study.series[0].series_uid},
        {"dataKey": "b", "uuid": study.series[1].series_uid},
    ]
    path = f"/predictions/{deployment.models['wrong-keys']}/studies/{study.study_uid}"
    message = expect_error(
        deployment.get(path + "?" + _as_json_param(filters)), 502, "model_failed"
    )
    assert deployment.models["wrong-keys"][:8] in message
    assert "422" in message and "series-one" in message
