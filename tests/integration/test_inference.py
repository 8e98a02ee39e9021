"""The nine inference routes end to end: every task and level, server selection,
the caller's mistakes, CORS and TLS; real Orthanc, a local folder, the example model
over HTTP and the proxy over TLS."""

from __future__ import annotations

import json

import httpx
import pytest
from deployment import Deployment, expect_error, instances_of, uids_of
from harness import new_uid

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
    instances = instances_of(result, study.study_uid, series.series_uid)
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
        assert set(instances_of(result, study.study_uid, series.series_uid)) == uids_of(
            study, index
        )


def test_instance_segmentation_sends_only_that_instance(deployment: Deployment) -> None:
    study = deployment.study
    series = study.series[1]
    sop = series.sop_uids[3]
    path = deployment.series_path("segmentations", "seg", 1) + f"/instances/{sop}"
    response = deployment.get(path)
    assert response.status_code == 200, response.text
    assert set(instances_of(response.json(), study.study_uid, series.series_uid)) == {sop}


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_annotation_polygons_at_every_level(deployment: Deployment, level: str) -> None:
    study = deployment.study
    series = study.series[0]
    middle = len(series.sop_uids) // 2
    response = deployment.get(deployment.level_path("annotations", "ann", level, middle))
    assert response.status_code == 200, response.text
    instances = instances_of(response.json(), study.study_uid, series.series_uid)
    assert instances
    for instance in instances.values():
        for roi in instance.get("rois", []):
            assert len(roi["points"]) >= 3
            for x, y in roi["points"]:
                assert 0 <= x < study.columns and 0 <= y < study.rows


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_prediction_metadata_at_every_level(deployment: Deployment, level: str) -> None:
    study = deployment.study
    response = deployment.get(deployment.level_path("predictions", "pred", level))
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
    message = expect_error(
        deployment.get(path, params={"server": deployment.servers["basic"]}), 404, "not_on_pacs"
    )
    assert other.series[0].series_uid in message


# --- caller mistakes -------------------------------------------------------------------


def test_unknown_model_server_and_family_are_404(deployment: Deployment) -> None:
    study = deployment.study
    unknown = new_uid()
    expect_error(
        deployment.get(f"/segmentations/{unknown}/studies/{study.study_uid}"), 404, "unknown_model"
    )
    path = deployment.series_path("segmentations", "seg")
    expect_error(deployment.get(path, params={"server": unknown}), 404, "unknown_server")
    response = deployment.get(path.replace("/segmentations/", "/classifications/"))
    assert response.status_code == 404
    message = response.json()["message"]
    assert message.startswith("Not found") and "/segmentations/" in message


def test_wrong_task_says_what_the_model_does(deployment: Deployment) -> None:
    path = deployment.series_path("annotations", "seg")
    message = expect_error(deployment.get(path), 400, "wrong_task")
    assert "segmentation" in message and "/segmentations/" in message


def test_unsupported_level_lists_the_supported_ones(deployment: Deployment) -> None:
    study = deployment.study
    path = f"/segmentations/{deployment.models['seg-series-only']}/studies/{study.study_uid}"
    message = expect_error(deployment.get(path), 400, "unsupported_level")
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
        assert response.json()["message"].startswith("Not found")
        return
    expect_error(response, 400, "invalid_uid")


def test_study_missing_on_the_pacs_is_404(deployment: Deployment) -> None:
    path = f"/segmentations/{deployment.models['seg']}/studies/1.2.3.4.5.6.7.8.9"
    message = expect_error(deployment.get(path), 404, "not_on_pacs")
    assert "1.2.3.4.5.6.7.8.9" in message
    message = expect_error(
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
    with httpx.Client(trust_env=False) as client:
        plain = client.get(https_url.replace("https://", "http://") + "/health")
    assert plain.status_code == 400 and plain.json()["code"] == "https_required"
    assert deployment.get("/health").json()["status"] == "ok"
