"""Fixtures of the in-process tier: ``create_app`` driven through
``httpx.ASGITransport`` with its lifespan run (app_proxy.py), against real upstreams on
loopback in a thread of the test process (app_upstreams.py): the example Model API, a
DICOMweb PACS with basic auth, and a local folder of DICOM files (``file://``).

These tests assert HTTP behaviour only (status, JSON bodies, headers, files the proxy
writes), never the internals of the request path.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from app_proxy import Deployment, new_uid
from app_upstreams import dicomweb_app, serve_in_thread

from model_proxy.example_model import create_app as create_example_model
from model_proxy.sample_data import SampleStudy, make_study, write_study


@pytest.fixture(scope="session")
def study() -> SampleStudy:
    """A small synthetic CT: two series of 4 and 2 slices, 64 x 64."""
    return make_study(series_slices=(4, 2), rows=64, columns=64, seed=3)


@pytest.fixture(scope="session")
def model_url() -> Iterator[str]:
    with serve_in_thread(create_example_model()) as url:
        yield url


@pytest.fixture(scope="session")
def pacs_url(study: SampleStudy) -> Iterator[str]:
    with serve_in_thread(dicomweb_app(study)) as url:
        yield url


@pytest.fixture(scope="session")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, study: SampleStudy, model_url: str, pacs_url: str
) -> Deployment:
    folder = tmp_path_factory.mktemp("dicom")
    write_study(study, folder)
    return Deployment(
        study=study,
        folder=folder,
        pacs_url=pacs_url,
        model_url=model_url,
        servers={"folder": new_uid(), "pacs": new_uid()},
        models={name: new_uid() for name in ("seg", "pred", "ann", "two-series")},
    )
