"""The bundled example Model API with JSON bodies, over a real loopback socket and
in-process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from example_model_bodies import COLUMNS, ROWS, SHAPES, Shape, encode, post

from model_proxy.example_model import create_app
from model_proxy.sample_data import SampleStudy, make_study


def instances_of(series_node: dict[str, Any]) -> list[str]:
    return [key for key in series_node if key != "metadata"]


def check_nesting(result: dict[str, Any], study: SampleStudy, shape: Shape, task: str) -> None:
    assert list(result) == [study.study_uid]
    series_nodes = {k: v for k, v in result[study.study_uid].items() if k != "metadata"}
    assert set(series_nodes) == set(shape.sent)
    for series_uid, node in series_nodes.items():
        expected = shape.sent[series_uid]
        if task == "prediction":
            expected = [sop for sop in expected if sop in shape.single]
        # Sorted by InstanceNumber whatever the arrival order.
        assert instances_of(node) == expected
        assert ("metadata" in node) == (shape.summary and task != "annotation")


@pytest.mark.parametrize("shape_name", SHAPES)
@pytest.mark.parametrize("task", ["segmentation", "annotation", "prediction"])
def test_every_endpoint_takes_every_body_shape(
    client: httpx.Client, study: SampleStudy, shapes: dict[str, Shape], task: str, shape_name: str
) -> None:
    shape = shapes[shape_name]
    response = post(client, f"/{task}", shape.body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    check_nesting(response.json(), study, shape, task)


@pytest.mark.parametrize(
    "task",
    ["segmentation", "annotation", "prediction", "multiple-series-endpoint/predict"],
)
def test_legacy_endpoints_double_encode(
    client: httpx.Client, shapes: dict[str, Shape], task: str
) -> None:
    body = shapes["study-filtered"].body
    plain = post(client, f"/{task}", body)
    legacy = post(client, f"/legacy/{task}", body)
    assert plain.status_code == legacy.status_code == 200
    inner = legacy.json()
    assert isinstance(inner, str)
    assert json.loads(inner) == plain.json()


def test_segmentation_masks(client: httpx.Client, study: SampleStudy, wire: dict[str, str]) -> None:
    series = study.main_series
    result = post(client, "/segmentation", [wire[s] for s in series.sop_uids]).json()
    node = result[study.study_uid][series.series_uid]
    for position, sop in enumerate(series.sop_uids):
        segments = node[sop]["segments"]
        assert [s["className"] for s in segments] == ["Body", "Lungs"]
        assert segments[1]["color"] == "lightskyblue"
        body, lungs = (np.array(s["points"]) for s in segments)
        assert body.shape == lungs.shape == (ROWS, COLUMNS)
        assert set(np.unique(body)) <= {0, 1} and set(np.unique(lungs)) <= {0, 1}
        assert body[0, 0] == body[-1, -1] == 0
        assert body[ROWS // 2, COLUMNS // 2] == 1
        assert lungs.sum() > 0, position
        assert not (lungs & (1 - body)).any()  # lungs lie inside the body
        # The phantom's lungs sit left and right of the midline.
        assert lungs[:, : COLUMNS // 2].sum() > 0 and lungs[:, COLUMNS // 2 :].sum() > 0


def test_volumes_are_plausible(
    client: httpx.Client, study: SampleStudy, shapes: dict[str, Shape]
) -> None:
    result = post(client, "/prediction", shapes["study"].body).json()
    node = result[study.study_uid]
    counts = {m["title"]: m["value"] for m in node["metadata"] if m["dataType"] == "number"}
    assert counts == {"Series": 2, "Instances": 12}
    # The phantom body is an ellipse of 0.84 x 0.60 of the image, 240 mm long;
    # 358.4 mm span the longer image side.
    spacing = 358.4 / max(ROWS, COLUMNS)
    expected_body = np.pi * (0.42 * COLUMNS * spacing) * (0.30 * ROWS * spacing) * 240 / 1000
    for series in study.series:
        values = {m["title"]: m for m in node[series.series_uid]["metadata"]}
        body = values["Body volume"]["value"]
        lungs = values["Lung volume"]["value"]
        assert body == pytest.approx(expected_body, rel=0.08)
        assert 0.05 * body < lungs < 0.4 * body
        fraction = values["Lung fraction"]
        assert fraction["dataType"] == "percentage"
        assert fraction["value"] == pytest.approx(lungs / body * 100, abs=0.05)
    seg = post(client, "/segmentation", shapes["series"].body).json()
    text = {
        m["title"]: m["value"]
        for m in seg[study.study_uid][study.main_series.series_uid]["metadata"]
    }
    assert text["Lung volume"].endswith(" cm3") and float(text["Lung volume"][:-4]) > 0


def test_instance_prediction_is_lung_area(
    client: httpx.Client, study: SampleStudy, shapes: dict[str, Shape]
) -> None:
    shape = shapes["instance"]
    result = post(client, "/prediction", shape.body).json()
    (sop,) = shape.single
    (entry,) = result[study.study_uid][study.main_series.series_uid][sop]["metadata"]
    assert entry["dataType"] == "number" and entry["title"] == "Lung area"
    assert 20 < entry["value"] < 300  # cm2 in a chest-sized slice


def test_annotation_polygons(
    client: httpx.Client, study: SampleStudy, wire: dict[str, str]
) -> None:
    series = study.main_series
    body = [wire[s] for s in series.sop_uids]
    rois = post(client, "/annotation", body).json()[study.study_uid][series.series_uid]
    masks = post(client, "/segmentation", body).json()[study.study_uid][series.series_uid]
    for sop in series.sop_uids:
        (roi,) = rois[sop]["rois"]
        assert roi["className"] == "Body outline"
        points = np.array(roi["points"])
        assert len(points) >= 5 and points[0].tolist() == points[-1].tolist()
        assert (points[:, 0] >= 0).all() and (points[:, 0] < COLUMNS).all()
        assert (points[:, 1] >= 0).all() and (points[:, 1] < ROWS).all()
        mask = np.array(masks[sop]["segments"][0]["points"])
        assert all(mask[y, x] == 1 for x, y in points)  # vertices lie on the body
        x, y = points[:, 0].astype(float), points[:, 1].astype(float)
        area = abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2
        assert area == pytest.approx(mask.sum(), rel=0.2)


def test_annotation_skips_slices_without_body(client: httpx.Client) -> None:
    empty = make_study(series_slices=(1,), rows=32, columns=32, seed=1)
    _, sop, data = next(empty.iter_instances())
    # Blank the pixels to air: same header, PixelData is the last element.
    header_size = len(data) - 32 * 32 * 2
    air = data[:header_size] + np.full(32 * 32, 24, dtype="<u2").tobytes()
    result = post(client, "/annotation", encode(air)).json()
    series_uid = empty.main_series.series_uid
    assert result[empty.study_uid][series_uid][sop] == {"rois": []}


def test_two_series_model(
    client: httpx.Client, study: SampleStudy, shapes: dict[str, Shape]
) -> None:
    response = post(client, "/multiple-series-endpoint/predict", shapes["study-filtered"].body)
    assert response.status_code == 200, response.text
    node = response.json()[study.study_uid]
    one, two = study.series
    assert set(node) == {one.series_uid, two.series_uid, "metadata"}
    volumes = []
    for series, label in ((one, "series one"), (two, "series two")):
        assert instances_of(node[series.series_uid]) == []
        titles = {m["title"]: m["value"] for m in node[series.series_uid]["metadata"]}
        volumes.append(titles[f"Lung volume ({label})"])
    summary = {m["title"]: m["value"] for m in node["metadata"]}
    assert summary["Lung volume difference (cm3)"] == pytest.approx(
        volumes[1] - volumes[0], abs=0.2
    )


@pytest.mark.parametrize("case", ["no-filters", "only-one", "one-empty"])
def test_two_series_model_needs_both_keys(
    client: httpx.Client, shapes: dict[str, Shape], case: str
) -> None:
    series_one = shapes["study-filtered"].body["series-one"]
    body = {
        "no-filters": shapes["series"].body,
        "only-one": {"series-one": series_one},
        "one-empty": {"series-one": series_one, "series-two": {"data": []}},
    }[case]
    response = post(client, "/multiple-series-endpoint/predict", body)
    assert response.status_code == 422
    assert "missing ['series-two']" in response.json()["message"] or case == "no-filters"
    assert "series-one" in response.json()["message"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "empty"),
        (b"{not json", "not JSON"),
        (b"42", "JSON int"),
        (b"[42]", "must be a JSON string"),
        (b'["hello"]', "not a JSON array"),
        (b'"{\\"a\\": 1}"', "not an array of bytes"),
        (b'["[1, 2, 300]"]', "0-255"),
        (b'["[1.5]"]', "0-255"),
        (b'["[0, 0, 1]"]', "not a DICOM"),
        (b'{"series-one": []}', '"data" member'),
        (b'{"series-one": {"data": 3}}', "data is a JSON int"),
        (b'{"a": {"data": {"b": {}}}}', '"data" member'),
    ],
)
@pytest.mark.parametrize("task", ["segmentation", "legacy/prediction"])
def test_malformed_bodies_are_422(
    client: httpx.Client, task: str, content: bytes, fragment: str
) -> None:
    response = post(client, f"/{task}", content)
    assert response.status_code == 422
    message = response.json()["message"]
    assert fragment in message
    assert "Traceback" not in message


def test_dicom_without_pixels_is_422(client: httpx.Client) -> None:
    one = make_study(series_slices=(1,), rows=32, columns=32, seed=2)
    _, _, data = next(one.iter_instances())
    truncated = data[: len(data) - 32 * 32 * 2 - 12]  # cut off the PixelData element
    response = post(client, "/segmentation", [encode(truncated)])
    assert response.status_code == 422
    assert "pixel data" in response.json()["message"]


def test_root_redirects_to_docs(client: httpx.Client) -> None:
    response = client.get("/")
    assert response.status_code == 307
    assert response.headers["location"] == "/docs"
    followed = client.get("/", follow_redirects=True)
    assert followed.status_code == 200
    assert "/segmentation" in followed.text
    assert client.get("/health").json() == {"status": "ok"}


@pytest.mark.anyio
async def test_in_process_with_asgi_transport(study: SampleStudy, wire: dict[str, str]) -> None:
    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://model") as client:
        sop = study.main_series.sop_uids[0]
        response = await client.post("/segmentation", content=orjson.dumps(wire[sop]))
    assert response.status_code == 200
    assert list(response.json()[study.study_uid][study.main_series.series_uid]) == [sop]


def test_run_serves_on_the_given_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = f"from model_proxy.example_model import run; run(port={port})"
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, "the example model exited"
                assert time.monotonic() < deadline, "the example model did not start"
                time.sleep(0.05)
        assert response.json() == {"status": "ok"}
    finally:
        process.terminate()
        process.wait(10)
