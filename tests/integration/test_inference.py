"""The nine inference routes end to end: real Orthanc (with and without basic auth), a
local folder, the example model over HTTP and the proxy over TLS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from faults import canned_http_server, closed_port_url, hanging_server
from harness import (
    ExampleModel,
    OrthancServer,
    ProxyProcess,
    TlsCert,
    model_entry,
    new_uid,
    server_entry,
    start_proxy,
)

from model_proxy.sample_data import SampleStudy, write_study

ALL_LEVELS = ["/studies", "/studies/series", "/studies/series/instances"]


@dataclass
class Deployment:
    proxy: ProxyProcess
    study: SampleStudy
    other_study: SampleStudy
    servers: dict[str, str]
    models: dict[str, str]

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        with self.proxy.client() as client:
            return client.get(path, **kwargs)

    def series_path(self, family: str, model: str, series_index: int = 0) -> str:
        study = self.study
        return (
            f"/{family}/{self.models[model]}/studies/{study.study_uid}"
            f"/series/{study.series[series_index].series_uid}"
        )


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory,
    orthanc: OrthancServer,
    orthanc_basic_auth: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
    second_study: SampleStudy,
    tls_cert: TlsCert,
) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("dicom-folder")
    write_study(sample_study, folder)
    with (
        hanging_server() as hanging,
        canned_http_server("200 OK", b"<html>not json</html>", "text/html") as not_json,
    ):
        servers = {
            "orthanc": new_uid(),
            "basic": new_uid(),
            "folder": new_uid(),
            "wrong-password": new_uid(),
            "down": new_uid(),
            "hanging": new_uid(),
            "token": new_uid(),
        }
        models = {
            "seg": new_uid(),
            "ann": new_uid(),
            "pred": new_uid(),
            "seg-legacy": new_uid(),
            "seg-series-only": new_uid(),
            "two-series": new_uid(),
            "two-series-legacy": new_uid(),
            "instance-inputs": new_uid(),
            "nested": new_uid(),
            "wrong-keys": new_uid(),
            "down": new_uid(),
            "hanging": new_uid(),
            "not-json": new_uid(),
        }
        servers_json = {
            servers["orthanc"]: server_entry(orthanc),
            servers["basic"]: server_entry(orthanc_basic_auth, isDefault=False),
            servers["folder"]: {"uri": folder.as_uri()},
            servers["wrong-password"]: server_entry(
                orthanc_basic_auth, isDefault=False, password="wrong"
            ),
            servers["down"]: {"uri": f"{closed_port_url()}/dicom-web"},
            servers["hanging"]: {"uri": f"{hanging}/dicom-web"},
            servers["token"]: {
                "uri": orthanc.dicomweb_url,
                "authType": "token",
                "authToken": "one-off-secret",
                "signInTokenServer": f"{closed_port_url()}/auth/generate-access-token",
            },
        }
        two_series = [
            {"dataKey": "series-one", "title": "Series one"},
            {"dataKey": "series-two", "title": "Series two"},
        ]
        models_json = {
            models["seg"]: model_entry(example_model, "/segmentation", "segmentation", ALL_LEVELS),
            models["ann"]: model_entry(example_model, "/annotation", "annotation", ALL_LEVELS),
            models["pred"]: model_entry(example_model, "/prediction", "prediction", ALL_LEVELS),
            models["seg-legacy"]: model_entry(
                example_model, "/legacy/segmentation", "segmentation", ALL_LEVELS
            ),
            models["seg-series-only"]: model_entry(
                example_model, "/segmentation", "segmentation", ["/studies/series"]
            ),
            models["two-series"]: model_entry(
                example_model,
                "/multiple-series-endpoint/predict",
                "prediction",
                ["/studies"],
                dataFilter=two_series,
            ),
            models["two-series-legacy"]: model_entry(
                example_model,
                "/legacy/multiple-series-endpoint/predict",
                "prediction",
                ["/studies"],
                dataFilter=two_series,
            ),
            models["instance-inputs"]: model_entry(
                example_model,
                "/prediction",
                "prediction",
                ["/studies/series"],
                dataFilter=[
                    {"dataKey": "first", "title": "First slice"},
                    {"dataKey": "last", "title": "Last slice"},
                ],
            ),
            models["nested"]: model_entry(
                example_model,
                "/prediction",
                "prediction",
                ["/studies"],
                dataFilter=[
                    {
                        "dataKey": "main",
                        "title": "Main series",
                        "dataFilter": [{"dataKey": "key-slice", "title": "Key slice"}],
                    },
                    {"dataKey": "other", "title": "Other series"},
                ],
            ),
            models["wrong-keys"]: model_entry(
                example_model,
                "/multiple-series-endpoint/predict",
                "prediction",
                ["/studies"],
                dataFilter=[{"dataKey": "a", "title": "A"}, {"dataKey": "b", "title": "B"}],
            ),
            models["down"]: {
                "uri": f"{closed_port_url()}/segmentation",
                "task": "segmentation",
                "supports": ALL_LEVELS,
            },
            models["hanging"]: {
                "uri": f"{hanging}/segmentation",
                "task": "segmentation",
                "supports": ALL_LEVELS,
            },
            models["not-json"]: {
                "uri": f"{not_json}/segmentation",
                "task": "segmentation",
                "supports": ALL_LEVELS,
            },
        }
        proxy = start_proxy(
            tmp_path_factory.mktemp("proxy"),
            servers_json,
            models_json,
            cert=tls_cert,
            env={"ZHIVA_SHOW_STATUS_PAGE": "true"},
            extra_args=["--pacs-timeout", "2", "--model-timeout", "3"],
        )
        try:
            yield Deployment(proxy, sample_study, second_study, servers, models)
        finally:
            proxy.stop()


def _uids_of(study: SampleStudy, series_index: int) -> set[str]:
    return set(study.series[series_index].sop_uids)


def _instances(result: dict[str, Any], study: str, series: str) -> dict[str, Any]:
    return {key: value for key, value in result[study][series].items() if key != "metadata"}


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"message", "code"}
    assert body["code"] == code, body
    assert "Traceback" not in body["message"]
    message: str = body["message"]
    return message


# --- results for every task and level --------------------------------------------------


def test_series_segmentation_has_full_size_masks_for_every_instance(
    deployment: Deployment,
) -> None:
    study = deployment.study
    response = deployment.get(deployment.series_path("segmentations", "seg"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    result = response.json()
    series = study.series[0]
    instances = _instances(result, study.study_uid, series.series_uid)
    assert set(instances) == set(series.sop_uids)
    for instance in instances.values():
        classes = {segment["className"]: segment for segment in instance["segments"]}
        assert set(classes) == {"Body", "Lungs"}
        mask = classes["Body"]["points"]
        assert len(mask) == study.rows and all(len(row) == study.columns for row in mask)
        assert {value for row in mask for value in row} <= {0, 1}
    assert result[study.study_uid][series.series_uid]["metadata"]


def test_study_segmentation_sends_every_series(deployment: Deployment) -> None:
    study = deployment.study
    response = deployment.get(
        f"/segmentations/{deployment.models['seg']}/studies/{study.study_uid}"
    )
    assert response.status_code == 200, response.text
    result = response.json()
    for index, series in enumerate(study.series):
        assert set(_instances(result, study.study_uid, series.series_uid)) == _uids_of(study, index)


def test_instance_segmentation_sends_only_that_instance(deployment: Deployment) -> None:
    study = deployment.study
    series = study.series[1]
    sop = series.sop_uids[3]
    path = deployment.series_path("segmentations", "seg", 1) + f"/instances/{sop}"
    response = deployment.get(path)
    assert response.status_code == 200, response.text
    assert set(_instances(response.json(), study.study_uid, series.series_uid)) == {sop}


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_annotation_polygons_at_every_level(deployment: Deployment, level: str) -> None:
    study = deployment.study
    series = study.series[0]
    path = f"/annotations/{deployment.models['ann']}/studies/{study.study_uid}"
    if level != "study":
        path += f"/series/{series.series_uid}"
    if level == "instance":
        path += f"/instances/{series.sop_uids[len(series.sop_uids) // 2]}"
    response = deployment.get(path)
    assert response.status_code == 200, response.text
    instances = _instances(response.json(), study.study_uid, series.series_uid)
    assert instances
    for instance in instances.values():
        for roi in instance.get("rois", []):
            assert len(roi["points"]) >= 3
            for x, y in roi["points"]:
                assert 0 <= x < study.columns and 0 <= y < study.rows


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_prediction_metadata_at_every_level(deployment: Deployment, level: str) -> None:
    study = deployment.study
    series = study.series[0]
    path = f"/predictions/{deployment.models['pred']}/studies/{study.study_uid}"
    if level != "study":
        path += f"/series/{series.series_uid}"
    if level == "instance":
        path += f"/instances/{series.sop_uids[0]}"
    response = deployment.get(path)
    assert response.status_code == 200, response.text
    text = json.dumps(response.json())
    assert '"metadata"' in text and '"dataType"' in text
    assert study.study_uid in response.json()


def test_double_encoded_answer_is_unwrapped_to_the_same_document(deployment: Deployment) -> None:
    plain = deployment.get(deployment.series_path("segmentations", "seg"))
    legacy = deployment.get(deployment.series_path("segmentations", "seg-legacy"))
    assert legacy.status_code == 200, legacy.text
    assert isinstance(legacy.json(), dict)
    assert legacy.json() == plain.json()


# --- server selection ------------------------------------------------------------------


@pytest.mark.parametrize("server", ["basic", "folder"])
def test_other_servers_give_the_same_result(deployment: Deployment, server: str) -> None:
    path = deployment.series_path("predictions", "pred")
    default = deployment.get(path)
    chosen = deployment.get(path, params={"server": deployment.servers[server]})
    assert chosen.status_code == 200, chosen.text
    assert chosen.json() == default.json()


def test_study_only_on_the_default_server_is_not_found_on_another(deployment: Deployment) -> None:
    other = deployment.other_study
    path = (
        f"/predictions/{deployment.models['pred']}/studies/{other.study_uid}"
        f"/series/{other.series[0].series_uid}"
    )
    assert deployment.get(path).status_code == 200
    message = _error(
        deployment.get(path, params={"server": deployment.servers["basic"]}), 404, "not_on_pacs"
    )
    assert other.series[0].series_uid in message


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
    assert set(_instances(response.json(), study.study_uid, series.series_uid)) == {
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
    message = _error(deployment.get(path + "?" + _as_json_param(filters)), 400, code)
    assert fragment in message


def test_data_filter_model_without_filters_is_400(deployment: Deployment) -> None:
    path = f"/predictions/{deployment.models['two-series']}/studies/{deployment.study.study_uid}"
    message = _error(deployment.get(path), 400, "data_filters_required")
    assert "'series-one', 'series-two'" in message


def test_filters_for_a_model_without_data_filter_are_400(deployment: Deployment) -> None:
    path = deployment.series_path("predictions", "pred") + "?data-filters=[]"
    _error(deployment.get(path), 400, "data_filters_not_accepted")


def test_model_rejecting_the_body_is_502_quoting_it(deployment: Deployment) -> None:
    study = deployment.study
    filters = [
        {"dataKey": "a", "uuid": study.series[0].series_uid},
        {"dataKey": "b", "uuid": study.series[1].series_uid},
    ]
    path = f"/predictions/{deployment.models['wrong-keys']}/studies/{study.study_uid}"
    message = _error(deployment.get(path + "?" + _as_json_param(filters)), 502, "model_failed")
    assert deployment.models["wrong-keys"][:8] in message
    assert "422" in message and "series-one" in message


# --- caller mistakes -------------------------------------------------------------------


def test_unknown_model_server_and_family_are_404(deployment: Deployment) -> None:
    study = deployment.study
    unknown = new_uid()
    _error(
        deployment.get(f"/segmentations/{unknown}/studies/{study.study_uid}"), 404, "unknown_model"
    )
    path = deployment.series_path("segmentations", "seg")
    _error(deployment.get(path, params={"server": unknown}), 404, "unknown_server")
    response = deployment.get(path.replace("/segmentations/", "/classifications/"))
    assert response.status_code == 404
    assert response.json()["message"] == "Not found"


def test_wrong_task_says_what_the_model_does(deployment: Deployment) -> None:
    path = deployment.series_path("annotations", "seg")
    message = _error(deployment.get(path), 400, "wrong_task")
    assert "segmentation" in message and "/segmentations/" in message


def test_unsupported_level_lists_the_supported_ones(deployment: Deployment) -> None:
    study = deployment.study
    path = f"/segmentations/{deployment.models['seg-series-only']}/studies/{study.study_uid}"
    message = _error(deployment.get(path), 400, "unsupported_level")
    assert "/studies/series" in message


@pytest.mark.parametrize(
    "bad_uid", ["1.2.abc", "01.2.3", "1..2", "1.2.", "9" * 65, "..%2F..%2Fetc"]
)
def test_malformed_uids_are_400_before_anything_goes_upstream(
    deployment: Deployment, bad_uid: str
) -> None:
    study = deployment.study
    path = f"/segmentations/{deployment.models['seg']}/studies/{study.study_uid}/series/{bad_uid}"
    response = deployment.get(path)
    if response.status_code == 404:  # a path the router cannot even match
        assert response.json()["message"] == "Not found"
        return
    _error(response, 400, "invalid_uid")


def test_study_missing_on_the_pacs_is_404(deployment: Deployment) -> None:
    path = f"/segmentations/{deployment.models['seg']}/studies/1.2.3.4.5.6.7.8.9"
    message = _error(deployment.get(path), 404, "not_on_pacs")
    assert "1.2.3.4.5.6.7.8.9" in message
    message = _error(
        deployment.get(path, params={"server": deployment.servers["folder"]}), 404, "not_on_pacs"
    )


def test_other_methods_are_405_with_a_json_message(deployment: Deployment) -> None:
    with deployment.proxy.client() as client:
        response = client.post(deployment.series_path("segmentations", "seg"))
        assert response.status_code == 405
        assert "GET" in response.json()["message"]
        # HEAD must not run an inference just to drop its result.
        head = client.head(deployment.series_path("segmentations", "hanging"))
        assert head.status_code == 405
        assert head.headers["allow"] == "GET"


# --- upstream failures: clear errors, and the proxy keeps serving ------------------------


@pytest.mark.parametrize(
    ("server", "status", "code", "fragment"),
    [
        ("down", 502, "pacs_error", "unreachable"),
        ("wrong-password", 502, "pacs_auth_failed", "401"),
        ("hanging", 504, "gateway_timeout", "timed out"),
        ("token", 502, "pacs_auth_unsupported", "'token' is not supported"),
    ],
)
def test_pacs_failures(
    deployment: Deployment, server: str, status: int, code: str, fragment: str
) -> None:
    path = deployment.series_path("segmentations", "seg")
    message = _error(
        deployment.get(path, params={"server": deployment.servers[server]}), status, code
    )
    assert f"PACS {deployment.servers[server][:8]}" in message
    assert fragment in message
    assert "wrong" not in message and "one-off-secret" not in message
    assert deployment.get(path).status_code == 200


@pytest.mark.parametrize(
    ("model", "status", "code", "fragment"),
    [
        ("down", 502, "model_error", "unreachable"),
        ("hanging", 504, "gateway_timeout", "timed out"),
        ("not-json", 502, "model_bad_response", "not JSON"),
    ],
)
def test_model_failures(
    deployment: Deployment, model: str, status: int, code: str, fragment: str
) -> None:
    message = _error(deployment.get(deployment.series_path("segmentations", model)), status, code)
    assert f"model {deployment.models[model][:8]}" in message
    assert fragment in message
    assert deployment.get(deployment.series_path("segmentations", "seg")).status_code == 200


def test_no_traceback_or_secret_in_the_log(deployment: Deployment) -> None:
    # Runs after the failure tests above: their errors are in this log.
    log = deployment.proxy.log_text()
    assert "Traceback" not in log
    assert "502" in log and "504" in log
    for secret in ("one-off-secret", "dXNlcjpwYXNz", "dXNlcjp3cm9uZw==", '"wrong"', ":pass@"):
        assert secret not in log


# --- CORS and TLS ----------------------------------------------------------------------


def test_cors_preflight_and_headers(deployment: Deployment) -> None:
    path = deployment.series_path("segmentations", "seg")
    origin = "https://viewer.example.org"
    with deployment.proxy.client() as client:
        preflight = client.options(
            path,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] in {"*", origin}
        assert "GET" in preflight.headers["access-control-allow-methods"]
        response = client.get(path, headers={"Origin": origin})
        assert response.headers["access-control-allow-origin"] in {"*", origin}


def test_tls_is_required_and_verifiable(deployment: Deployment) -> None:
    https_url = deployment.proxy.url
    with httpx.Client(verify=True, trust_env=False) as client, pytest.raises(httpx.ConnectError):
        client.get(f"{https_url}/health")  # self-signed: not trusted by default
    with httpx.Client(trust_env=False) as client, pytest.raises(httpx.HTTPError):
        client.get(https_url.replace("https://", "http://") + "/health")
    assert deployment.get("/health").json()["status"] == "ok"
