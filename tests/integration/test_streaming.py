"""Streaming correctness end to end: the bytes the PACS holds are the bytes a model
receives, in both input formats, at every level and with data filters, through a
small memory window; a PACS answering broken multipart is a clear 502.

Real Orthanc, the proxy over TLS, and real Model APIs on loopback: the digest
model (tests/integration/digest_model.py) and the bundled example model.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pydicom
import pydicom.uid
import pytest
from deployment import expect_error
from digest_model import digest_model
from faults import canned_http_server
from harness import (
    ExampleModel,
    OrthancServer,
    ProxyFactory,
    ProxyProcess,
    TlsCert,
    model_entry,
    new_uid,
    server_entry,
    start_proxy,
)

from model_proxy.sample_data import SampleSeries, SampleStudy, make_study

ALL_LEVELS = ["/studies", "/studies/series", "/studies/series/instances"]


@dataclass
class Setup:
    proxy: ProxyProcess
    study: SampleStudy
    digests: dict[str, str]  # SOP UID -> sha256 of the Part-10 file in Orthanc
    models: dict[str, str]

    def get(self, model: str, path: str, **kwargs: Any) -> httpx.Response:
        with self.proxy.client() as client:
            return client.get(f"/predictions/{self.models[model]}{path}", **kwargs)

    def series_digests(self, index: int) -> list[str]:
        return [self.digests[sop] for sop in self.study.series[index].sop_uids]


@pytest.fixture(scope="module")
def generated_study(orthanc: OrthancServer) -> tuple[SampleStudy, dict[str, str]]:
    """A study made on the fly: a 24-slice series, one of 2 MiB instances (more than
    one encoder slice each) and a small one, stored in the session's Orthanc."""
    study = make_study(series_slices=(24, 3, 10), rows=256, columns=256, seed=404)
    big = make_study(series_slices=(3,), rows=1024, columns=1024, seed=405)
    digests: dict[str, str] = {}
    files = []
    for index, (series, sop, data) in enumerate(study.iter_instances()):
        if series is study.series[1]:
            # Swap in the 2 MiB pixels of the big study, keeping this study's UIDs.
            data = rewrite_uids(list(big.iter_instances())[index - 24][2], study, series, sop)
        digests[sop] = hashlib.sha256(data).hexdigest()
        files.append(data)
    orthanc.upload_many(files)
    return study, digests


def rewrite_uids(data: bytes, study: SampleStudy, series: SampleSeries, sop: str) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.StudyInstanceUID = study.study_uid
    dataset.SeriesInstanceUID = series.series_uid
    dataset.SOPInstanceUID = sop
    dataset.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(sop)
    # Orthanc files a study under its patient: the same one as the other series.
    dataset.PatientID = study.patient_id
    dataset.FrameOfReferenceUID = study.frame_of_reference_uid
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    generated_study: tuple[SampleStudy, dict[str, str]],
    tls_cert: TlsCert,
) -> Iterator[Setup]:
    study, digests = generated_study
    with digest_model() as digest_url:
        models = {name: new_uid() for name in ("json", "multipart", "study-keys", "series-keys")}
        models |= {"keys-multipart": new_uid(), "seg-json": new_uid(), "seg-multipart": new_uid()}
        digest = {"uri": f"{digest_url}/digest", "task": "prediction", "supports": ALL_LEVELS}
        keys = [{"dataKey": k, "title": k} for k in ("first", "second", "third")]
        nested = [{"dataKey": "a", "title": "A"}, {"dataKey": "b", "title": "B"}]
        study_keys = {**digest, "supports": ["/studies"], "dataFilter": keys}
        study_keys["dataFilter"] = [*keys[:2], {**keys[2], "dataFilter": nested}]
        seg = model_entry(example_model, "/segmentation", "prediction", ALL_LEVELS)
        models_json = {
            models["json"]: digest,
            models["multipart"]: {**digest, "input": "dicom-multipart"},
            models["study-keys"]: study_keys,
            models["keys-multipart"]: {**study_keys, "input": "dicom-multipart"},
            models["series-keys"]: {
                **digest,
                "supports": ["/studies/series"],
                "dataFilter": nested,
            },
            models["seg-json"]: seg,
            models["seg-multipart"]: {**seg, "input": "dicom-multipart"},
        }
        proxy = start_proxy(
            tmp_path_factory.mktemp("streaming-proxy"),
            {new_uid(): server_entry(orthanc)},
            models_json,
            cert=tls_cert,
            # A window of 12 MiB per inference: far less than the study's encoded size.
            extra_args=["--memory-budget", "48MiB", "--max-concurrent-inferences", "4"],
        )
        try:
            yield Setup(proxy, study, digests, models)
        finally:
            proxy.stop()


def entries(response: httpx.Response) -> list[tuple[str | None, str | None, str]]:
    assert response.status_code == 200, response.text
    return [(series, instance, value) for series, instance, value in response.json()["entries"]]


@pytest.mark.parametrize("model", ["json", "multipart"])
def test_series_instances_reach_the_model_byte_exact(setup: Setup, model: str) -> None:
    study = setup.study
    for index, series in enumerate(study.series):
        got = entries(setup.get(model, f"/studies/{study.study_uid}/series/{series.series_uid}"))
        assert Counter(d for _, _, d in got) == Counter(setup.series_digests(index))
        assert all(s is None and i is None for s, i, _ in got)


@pytest.mark.parametrize("model", ["json", "multipart"])
def test_study_body_holds_every_instance_of_every_series(setup: Setup, model: str) -> None:
    got = entries(setup.get(model, f"/studies/{setup.study.study_uid}"))
    assert Counter(d for _, _, d in got) == Counter(setup.digests.values())


@pytest.mark.parametrize("model", ["json", "multipart"])
def test_instance_body_is_that_instance(setup: Setup, model: str) -> None:
    series = setup.study.series[1]  # 2 MiB instances: several encoder slices
    sop = series.sop_uids[2]
    path = f"/studies/{setup.study.study_uid}/series/{series.series_uid}/instances/{sop}"
    assert entries(setup.get(model, path)) == [(None, None, setup.digests[sop])]


@pytest.mark.parametrize("model", ["study-keys", "keys-multipart"])
def test_study_data_filters_fill_each_key_in_order(setup: Setup, model: str) -> None:
    study = setup.study
    one, two, three = study.series
    filters = [
        {"dataKey": "second", "uuid": one.series_uid},
        {"dataKey": "first", "uuid": two.series_uid},
        {
            "dataKey": "third",
            "uuid": three.series_uid,
            "dataFilter": [
                {"dataKey": "b", "uuid": three.sop_uids[7]},
                {"dataKey": "a", "uuid": three.sop_uids[0]},
            ],
        },
    ]
    response = setup.get(
        model, f"/studies/{study.study_uid}", params={"data-filters": json.dumps(filters)}
    )
    got = entries(response)
    by_key: dict[tuple[str | None, str | None], list[str]] = {}
    for series_key, instance_key, value in got:
        by_key.setdefault((series_key, instance_key), []).append(value)
    assert Counter(by_key[("first", None)]) == Counter(setup.series_digests(1))
    assert Counter(by_key[("second", None)]) == Counter(setup.series_digests(0))
    assert by_key[("third", "b")] == [setup.digests[three.sop_uids[7]]]
    assert by_key[("third", "a")] == [setup.digests[three.sop_uids[0]]]
    # The body follows the model's declared dataFilter order, whatever the request's.
    order = list(dict.fromkeys((s, i) for s, i, _ in got))
    assert order == [("first", None), ("second", None), ("third", "a"), ("third", "b")]
    if model == "keys-multipart":
        assert response.json()["content_type"].startswith(
            'multipart/related; type="application/dicom"; boundary='
        )


def test_series_data_filters_name_instances(setup: Setup) -> None:
    study = setup.study
    series = study.series[1]
    filters = [
        {"dataKey": "a", "uuid": series.sop_uids[1]},
        {"dataKey": "b", "uuid": series.sop_uids[0]},
    ]
    path = f"/studies/{study.study_uid}/series/{series.series_uid}"
    response = setup.get("series-keys", path, params={"data-filters": json.dumps(filters)})
    assert entries(response) == [
        (None, "a", setup.digests[series.sop_uids[1]]),
        (None, "b", setup.digests[series.sop_uids[0]]),
    ]


@pytest.mark.parametrize("level", ["study", "series", "instance", "study-keys", "series-keys"])
def test_json_bodies_are_compact(setup: Setup, level: str) -> None:
    # The wire format carries no padding (docs/performance.md, "The encoder"): the body
    # is what json.dumps(..., separators=(",", ":")) would write, byte for byte.
    study = setup.study
    series = study.series[1]
    path = f"/studies/{study.study_uid}"
    params: dict[str, str] = {}
    model = "json"
    if level in ("series", "instance", "series-keys"):
        path += f"/series/{series.series_uid}"
    if level == "instance":
        path += f"/instances/{series.sop_uids[0]}"
    if level == "series-keys":
        model = "series-keys"
        filters = [{"dataKey": key, "uuid": series.sop_uids[n]} for n, key in enumerate("ab")]
        params = {"data-filters": json.dumps(filters)}
    if level == "study-keys":
        model = "study-keys"
        one, two, three = study.series
        filters_: list[dict[str, Any]] = [
            {"dataKey": "first", "uuid": one.series_uid},
            {"dataKey": "second", "uuid": two.series_uid},
            {
                "dataKey": "third",
                "uuid": three.series_uid,
                "dataFilter": [
                    {"dataKey": key, "uuid": three.sop_uids[n]} for n, key in enumerate("ab")
                ],
            },
        ]
        params = {"data-filters": json.dumps(filters_)}
    response = setup.get(model, path, params=params)
    assert entries(response)
    assert response.json()["whitespace"] == 0


@pytest.mark.parametrize("level", ["series", "instance"])
def test_example_model_answers_the_same_for_both_input_formats(setup: Setup, level: str) -> None:
    study = setup.study
    series = study.series[2]
    path = f"/studies/{study.study_uid}/series/{series.series_uid}"
    if level == "instance":
        path += f"/instances/{series.sop_uids[4]}"
    as_json = setup.get("seg-json", path)
    as_multipart = setup.get("seg-multipart", path)
    assert as_json.status_code == as_multipart.status_code == 200, as_multipart.text
    assert as_multipart.json() == as_json.json()
    assert set(as_json.json()[study.study_uid][series.series_uid]) >= (
        {series.sop_uids[4]} if level == "instance" else set(series.sop_uids)
    )


# --- a PACS that answers broken multipart -------------------------------------------

BOUNDARY = "pacs-boundary"
PART = b"--pacs-boundary\r\nContent-Type: application/dicom\r\n\r\nDICM-not-really\r\n"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (PART + b"--pacs-boundary", "ended after a delimiter"),  # cut after a whole part
        (PART + b"--pacs-boundary\r\nContent-Type: application/dicom\r\n\r\nhalf a", "truncated"),
        (b"--pacs-boundary\r\nbroken header line\r\n\r\nx\r\n--pacs-boundary--", "header"),
        (b"this is not multipart at all", "ended before the first part"),
    ],
    ids=["cut-after-part", "cut-inside-part", "bad-header", "no-boundary"],
)
def test_partial_or_malformed_multipart_from_the_pacs_is_a_502(
    start_proxy: ProxyFactory, body: bytes, fragment: str
) -> None:
    content_type = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    with (
        canned_http_server("200 OK", body, content_type) as pacs_url,
        digest_model() as model_url,
    ):
        model = new_uid()
        proxy = start_proxy(
            {new_uid(): {"uri": f"{pacs_url}/dicom-web", "isDefault": True}},
            {model: {"uri": f"{model_url}/digest", "task": "prediction", "supports": ALL_LEVELS}},
        )
        with proxy.client() as client:
            response = client.get(f"/predictions/{model}/studies/1.2.3/series/1.2.3.4")
    message = expect_error(response, 502, "pacs_bad_response")
    # A cut stream is retried first (docs/reliability.md), a malformed one is not.
    assert ("malformed" in message or "cut short" in message) and fragment in message
