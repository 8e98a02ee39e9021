"""Viewers that ask for a large result and read nothing do not hold inference slots
(inference/runner.py, private flights in cache/flights.py): with the cache off and every
slot taken by such a viewer, a new request is served once the model has answered them,
and the stalled viewers still get their whole result when they read it."""

from __future__ import annotations

import http.client
import json
import time
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from harness import ExampleModel, ProxyFactory, ProxyProcess, model_entry, new_uid

from model_proxy.sample_data import SampleStudy, make_study, write_study

SLOTS = 2


@pytest.fixture(scope="module")
def large_result_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SampleStudy]:
    """30 slices of 512 x 512: a segmentation result of about 30 MB uncompressed, far
    more than the socket buffers between a viewer that reads nothing and the proxy
    (Linux's defaults grow to 6 MB for receiving and 4 MB for sending)."""
    folder = tmp_path_factory.mktemp("large-result")
    study = make_study(series_slices=(30,), rows=512, columns=512, seed=47)
    write_study(study, folder)
    return folder, study


def stalled_viewer(proxy: ProxyProcess, path: str) -> http.client.HTTPSConnection:
    """Send the request (identity coding: the whole result) and read nothing yet."""
    assert proxy.cert is not None
    url = urlsplit(proxy.url)
    assert url.hostname is not None and url.port is not None
    connection = http.client.HTTPSConnection(
        url.hostname, url.port, context=proxy.cert.ssl_context(), timeout=120
    )
    connection.request("GET", path)
    return connection


def test_stalled_readers_do_not_hold_inference_slots(
    start_proxy: ProxyFactory,
    example_model: ExampleModel,
    large_result_folder: tuple[Path, SampleStudy],
) -> None:
    folder, study = large_result_folder
    model = new_uid()
    proxy = start_proxy(
        {new_uid(): {"uri": folder.as_uri(), "isDefault": True}},
        {model: model_entry(example_model, "/segmentation", "segmentation", ["/studies/series"])},
        extra_args=["--cache-size", "0", "--max-concurrent-inferences", str(SLOTS)],
    )
    path = f"/segmentations/{model}/studies/{study.study_uid}/series/{study.main_series.series_uid}"
    with ExitStack() as stack:
        stalled = [stalled_viewer(proxy, path) for _ in range(SLOTS)]
        for connection in stalled:
            stack.callback(connection.close)

        # Refused (503) while the stalled requests' model calls run; served once the
        # model has answered them, though their viewers have not read a byte.
        deadline = time.monotonic() + 120
        with proxy.client() as client:
            while True:
                response = client.get(path)
                if response.status_code != 503:
                    break
                assert response.json()["code"] == "too_many_inferences"
                assert time.monotonic() < deadline, "the stalled readers kept their slots"
                time.sleep(0.2)
        assert response.status_code == 200, response.text
        expected = len(response.content)
        assert expected > 8 * 1024 * 1024

        # The stalled viewers, reading at last, get the whole result.
        for connection in stalled:
            answer = connection.getresponse()
            assert answer.status == 200
            body = answer.read()
            assert len(body) == expected
            json.loads(body)
    assert "aborted=yes" not in proxy.log_text()
