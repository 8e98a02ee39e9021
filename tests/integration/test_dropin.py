"""Drop-in compatibility: the original's config files, unchanged, and a Model API written
like the reference zhiva ones (FastAPI, reference decoder, double-encoded answers),
through Orthanc, for all three tasks at all three levels."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import (
    LOOPBACK,
    ManagedProcess,
    OrthancServer,
    ProxyProcess,
    TlsCert,
    http_client,
    start_on_free_port,
    start_proxy,
)

from model_proxy.sample_data import SampleStudy

MODEL_SCRIPT = Path(__file__).with_name("zhiva_style_model.py")
LEVELS = ["/studies", "/studies/series", "/studies/series/instances"]
TASKS = {"segmentation": "segmentations", "annotation": "annotations", "prediction": "predictions"}
MODEL_IDS = {
    "segmentation": "d4e548ad-f365-4c34-918b-4e61a8b896f0",
    "annotation": "cf8063dc-d4bb-4b68-8e74-eba77c248c8b",
    "prediction": "e0f3d1a2-4b5c-4d6e-8f70-8192a3b4c5d6",
}
TWO_SERIES_ID = "7472e576-d49c-4fbf-9b2a-a52e1f59a906"
SERVER_ID = "b5208f48-f748-4339-9402-d1148dab571e"


@pytest.fixture(scope="module")
def zhiva_style_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("zhiva-style-model")

    def make(port: int) -> ManagedProcess:
        argv = [sys.executable, str(MODEL_SCRIPT), str(port)]
        return ManagedProcess(
            "zhiva-style model", argv, log_path=workdir / "model.log", cwd=workdir
        )

    def probe(port: int) -> bool:
        with http_client(timeout=2.0) as client:  # "/" redirects to FastAPI's /docs
            return client.get(f"http://{LOOPBACK}:{port}/", follow_redirects=True).is_success

    process, port = start_on_free_port(make, probe, 30.0)
    yield f"http://{LOOPBACK}:{port}"
    process.stop()


@pytest.fixture(scope="module")
def original_configs_proxy(
    tmp_path_factory: pytest.TempPathFactory,
    orthanc: OrthancServer,
    zhiva_style_model: str,
    sample_study: SampleStudy,
    tls_cert: TlsCert,
) -> Iterator[ProxyProcess]:
    # servers.json as the original's setup guide shows it, unused fields included.
    servers = {
        SERVER_ID: {
            "uri": orthanc.dicomweb_url,
            "isDefault": True,
            "statusUri": f"{orthanc.dicomweb_url}/studies",
            "authType": "",
            "login": "",
            "password": "",
            "token": "",
            "signInServer": "",
            "signInTokenServer": "",
            "refreshServer": "",
        }
    }
    models: dict[str, Any] = {
        MODEL_IDS[task]: {
            "uri": f"{zhiva_style_model}/{task}",
            "supports": LEVELS,
            "task": task,
            "statusUri": zhiva_style_model,
        }
        for task in TASKS
    }
    models[TWO_SERIES_ID] = {
        "uri": f"{zhiva_style_model}/multiple-series-endpoint/predict",
        "task": "segmentation",
        "supports": ["/studies"],
        "dataFilter": [
            {"dataKey": "series-one", "title": "Series one"},
            {"dataKey": "series-two", "title": "Series two"},
        ],
    }
    proxy = start_proxy(
        tmp_path_factory.mktemp("dropin-proxy"),
        servers,
        models,
        cert=tls_cert,
        env={"ZHIVA_SHOW_STATUS_PAGE": "true"},
    )
    yield proxy
    proxy.stop()


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("level", LEVELS)
def test_every_task_and_level_with_a_zhiva_style_model(
    original_configs_proxy: ProxyProcess, sample_study: SampleStudy, task: str, level: str
) -> None:
    series = sample_study.series[0]
    path = f"/{TASKS[task]}/{MODEL_IDS[task]}/studies/{sample_study.study_uid}"
    expected_series = {s.series_uid for s in sample_study.series}
    expected_instances = {sop for s in sample_study.series for sop in s.sop_uids}
    if level != "/studies":
        path += f"/series/{series.series_uid}"
        expected_series = {series.series_uid}
        expected_instances = set(series.sop_uids)
    if level == "/studies/series/instances":
        path += f"/instances/{series.sop_uids[2]}"
        expected_instances = {series.sop_uids[2]}
    with original_configs_proxy.client() as client:
        response = client.get(path)
    assert response.status_code == 200, response.text
    result = response.json()  # unwrapped: an object, not the model's JSON string
    assert set(result) == {sample_study.study_uid}
    assert set(result[sample_study.study_uid]) == expected_series
    instances = {sop for s in result[sample_study.study_uid].values() for sop in s}
    assert instances == expected_instances
    first = next(iter(next(iter(result[sample_study.study_uid].values())).values()))
    key = {"segmentation": "segments", "annotation": "rois", "prediction": "metadata"}[task]
    assert first[key]
    if task == "segmentation":
        mask = first["segments"][0]["points"]
        assert (len(mask), len(mask[0])) == (sample_study.rows, sample_study.columns)


def test_two_series_model_of_the_contract(
    original_configs_proxy: ProxyProcess, sample_study: SampleStudy
) -> None:
    one, two = sample_study.series
    query = (
        f"data-filters[0][dataKey]=series-one&data-filters[0][uuid]={one.series_uid}"
        f"&data-filters[1][dataKey]=series-two&data-filters[1][uuid]={two.series_uid}"
    )
    path = f"/segmentations/{TWO_SERIES_ID}/studies/{sample_study.study_uid}?{query}"
    with original_configs_proxy.client() as client:
        response = client.get(path)
    assert response.status_code == 200, response.text
    values = {m["title"]: m["value"] for m in response.json()[sample_study.study_uid]["metadata"]}
    assert values == {
        "Series one slices": len(one.sop_uids),
        "Series two slices": len(two.sop_uids),
    }


def test_status_of_the_original_configs(original_configs_proxy: ProxyProcess) -> None:
    with original_configs_proxy.client() as client:
        report = client.get("/status", headers={"Accept": "application/json"}).json()
    assert report["servers"][SERVER_ID]["ok"] is True
    assert all(entry["ok"] for entry in report["models"].values())
