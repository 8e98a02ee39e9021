"""One proxy in front of everything the inference tests need: both Orthancs, a local
folder, the example model's endpoints with and without data filters, and upstreams
that are down, hang or answer garbage. Used through the ``deployment`` fixture."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

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

    def level_path(self, family: str, model: str, level: str, instance_index: int = 0) -> str:
        """The route of ``level`` ("study", "series", "instance") on the main series."""
        series = self.study.series[0]
        path = f"/{family}/{self.models[model]}/studies/{self.study.study_uid}"
        if level != "study":
            path += f"/series/{series.series_uid}"
        if level == "instance":
            path += f"/instances/{series.sop_uids[instance_index]}"
        return path


@contextmanager
def deploy(
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


def uids_of(study: SampleStudy, series_index: int) -> set[str]:
    return set(study.series[series_index].sop_uids)


def instances_of(result: dict[str, Any], study: str, series: str) -> dict[str, Any]:
    return {key: value for key, value in result[study][series].items() if key != "metadata"}


def expect_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"message", "code"}
    assert body["code"] == code, body
    assert "Traceback" not in body["message"]
    message: str = body["message"]
    return message
