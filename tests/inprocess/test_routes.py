"""The inference routes in process: every family and level, from a local folder and a
DICOMweb PACS, through the real example Model API; and the error answers the app
gives (400, 404, 405) in the proxy's error shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from app_proxy import Deployment

pytestmark = pytest.mark.anyio

# Refused request heads (414 URL too long, 431 headers too large) are answered by the
# proxy's uvicorn protocol before the app sees them: tests/integration/test_bad_input.py.


def error(response_json: object, code: str) -> str:
    assert isinstance(response_json, dict) and set(response_json) == {"message", "code"}
    assert response_json["code"] == code, response_json
    message = response_json["message"]
    assert isinstance(message, str)
    return message


@pytest.mark.parametrize("level", ["study", "series", "instance"])
@pytest.mark.parametrize("model", ["seg", "pred", "ann"])
async def test_every_family_and_level_from_a_folder(
    deployment: Deployment, tmp_path: Path, model: str, level: str
) -> None:
    async with deployment.proxy(tmp_path) as proxy:
        response = await proxy.client.get(deployment.path(model, level))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    series = deployment.study.series[0]
    sent = {"instance": series.sop_uids[:1], "series": series.sop_uids}
    if model == "seg":
        # Segmentations: masks for every instance that was sent, and no other.
        result = body[deployment.study.study_uid]
        if level == "study":
            assert set(result) == {s.series_uid for s in deployment.study.series}
        else:
            masks = {uid for uid in result[series.series_uid] if uid in series.sop_uids}
            assert masks == set(sent[level])
    else:
        assert body  # the model's JSON, relayed


@pytest.mark.parametrize("level", ["study", "series", "instance"])
async def test_the_same_result_from_a_dicomweb_pacs_and_a_folder(
    deployment: Deployment, tmp_path: Path, level: str
) -> None:
    path = deployment.path("seg", level)
    async with deployment.proxy(tmp_path, cache_max_bytes=0) as proxy:
        from_folder = await proxy.client.get(path)
        from_pacs = await proxy.client.get(path, params={"server": deployment.servers["pacs"]})
    assert from_folder.status_code == from_pacs.status_code == 200, from_pacs.text
    assert from_pacs.json() == from_folder.json()


async def test_results_are_cached_and_say_so_with_an_etag(
    deployment: Deployment, tmp_path: Path
) -> None:
    path = deployment.path("pred", "instance")
    async with deployment.proxy(tmp_path) as proxy:
        first = await proxy.client.get(path)
        second = await proxy.client.get(path)
        assert first.status_code == second.status_code == 200
        assert first.content == second.content
        etag = second.headers["etag"]
        assert first.headers["etag"] == etag
        again = await proxy.client.get(path, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == etag


async def test_compressed_when_asked(deployment: Deployment, tmp_path: Path) -> None:
    path = deployment.path("seg", "series")
    async with deployment.proxy(tmp_path) as proxy:
        plain = await proxy.client.get(path, headers={"Accept-Encoding": "identity"})
        gzipped = await proxy.client.get(path, headers={"Accept-Encoding": "gzip"})
    assert gzipped.status_code == 200
    assert gzipped.headers.get("content-encoding") == "gzip"
    assert gzipped.json() == plain.json()  # httpx decodes it


async def test_two_series_model_with_data_filters(deployment: Deployment, tmp_path: Path) -> None:
    study = deployment.study
    filters = json.dumps(
        [
            {"dataKey": "series-one", "uuid": study.series[0].series_uid},
            {"dataKey": "series-two", "uuid": study.series[1].series_uid},
        ]
    )
    brackets = "&".join(
        f"data-filters[{i}][dataKey]={key}&data-filters[{i}][uuid]={study.series[i].series_uid}"
        for i, key in enumerate(["series-one", "series-two"])
    )
    path = f"/predictions/{deployment.models['two-series']}/studies/{study.study_uid}"
    async with deployment.proxy(tmp_path) as proxy:
        response = await proxy.client.get(path, params={"data-filters": filters})
        assert response.status_code == 200, response.text
        same = await proxy.client.get(f"{path}?{brackets}")
        assert same.status_code == 200 and same.json() == response.json()
        no_filters = await proxy.client.get(path)
    assert no_filters.status_code == 400
    error(no_filters.json(), "data_filters_required")


async def test_bad_input_is_a_400_naming_it(deployment: Deployment, tmp_path: Path) -> None:
    series = deployment.path("seg", "series")
    async with deployment.proxy(tmp_path) as proxy:
        bad_uid = await proxy.client.get(f"{series}/instances/1..2")
        wrong_task = await proxy.client.get(deployment.path("seg", "series", "predictions"))
        filters = await proxy.client.get(series, params={"data-filters": "[]"})
        level = await proxy.client.get(deployment.path("two-series", "series", "predictions"))
    assert bad_uid.status_code == 400
    assert "1..2" in error(bad_uid.json(), "invalid_uid")
    assert wrong_task.status_code == 400
    error(wrong_task.json(), "wrong_task")
    assert filters.status_code == 400
    error(filters.json(), "data_filters_not_accepted")
    assert level.status_code == 400, level.text


async def test_unknown_things_are_404s(deployment: Deployment, tmp_path: Path) -> None:
    async with deployment.proxy(tmp_path) as proxy:
        model = await proxy.client.get(deployment.path("no-such-model", "series", "predictions"))
        server = await proxy.client.get(
            deployment.path("seg", "series"), params={"server": "a1b2c3d4-0000-4000-8000-1"}
        )
        study = await proxy.client.get(
            deployment.path("seg", "study").replace(deployment.study.study_uid, "1.2.3.4")
        )
        route = await proxy.client.get("/nothing/here")
    assert model.status_code == 404
    error(model.json(), "unknown_model")
    assert server.status_code == 404
    error(server.json(), "unknown_server")
    assert study.status_code == 404, study.text
    assert route.status_code == 404
    error(route.json(), "not_found")


async def test_only_get_is_allowed(deployment: Deployment, tmp_path: Path) -> None:
    async with deployment.proxy(tmp_path) as proxy:
        response = await proxy.client.post(deployment.path("seg", "series"))
        health = await proxy.client.delete("/health")
    assert response.status_code == health.status_code == 405
    assert "POST" in error(response.json(), "method_not_allowed")


async def test_cors_preflight_and_request_id(deployment: Deployment, tmp_path: Path) -> None:
    async with deployment.proxy(tmp_path, cors_origins=("https://viewer.test",)) as proxy:
        preflight = await proxy.client.options(
            deployment.path("seg", "series"),
            headers={
                "Origin": "https://viewer.test",
                "Access-Control-Request-Method": "GET",
            },
        )
        other = await proxy.client.get("/health", headers={"Origin": "https://elsewhere.test"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://viewer.test"
    assert "access-control-allow-origin" not in other.headers
