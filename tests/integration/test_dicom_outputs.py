"""DICOM results end to end (docs/dicom-outputs.md): a SEG returned over DICOMweb
framing and stored with STOW-RS in a real Orthanc (basic auth, as the reads), or in
a local folder; validated with dciodvfy, read back with highdicom, masks compared
bit for bit with the JSON result of the bundled example model."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import pydicom
import pytest
from deployment import expect_error
from dicom_checks import assert_masks_equal, dciodvfy_errors
from faults import closed_port_url
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

from model_proxy.pacs.multipart import MultipartDecoder, boundary_from_content_type
from model_proxy.sample_data import SampleStudy, make_study, write_study

MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
SERIES_LEVELS = ["/studies", "/studies/series"]
ALL_LEVELS = [*SERIES_LEVELS, "/studies/series/instances"]


@dataclass
class Setup:
    proxy: ProxyProcess
    study: SampleStudy
    seg_store_study: SampleStudy
    sr_store_study: SampleStudy
    later_study: SampleStudy
    long_study: SampleStudy
    pacs: OrthancServer
    folder: Path
    servers: dict[str, str]
    models: dict[str, str]

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        with self.proxy.client() as client:
            return client.get(path, **kwargs)

    def series_path(
        self,
        model: str = "seg",
        index: int = 0,
        family: str = "segmentations",
        study: SampleStudy | None = None,
    ) -> str:
        study = study or self.study
        return (
            f"/{family}/{self.models[model]}/studies/{study.study_uid}"
            f"/series/{study.series[index].series_uid}"
        )


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
    orthanc_basic_auth: OrthancServer,
    example_model: ExampleModel,
    tls_cert: TlsCert,
) -> Iterator[Setup]:
    # Studies of their own: the SEGs and SRs stored here must not reach other tests'
    # studies, nor the study-level requests of this module (a stored SEG series would
    # be sent to the model with the CT series): each store test stores into its own.
    study, seg_store, sr_store, later = (
        make_study(series_slices=(5, 3), rows=64, columns=64, seed=seed)
        for seed in (41, 42, 43, 45)
    )
    for each in (study, seg_store, sr_store, later):
        orthanc_basic_auth.upload_many(data for _, _, data in each.iter_instances())
    folder = tmp_path_factory.mktemp("dicom-results-folder")
    write_study(study, folder)
    # Many slices, small: the streamed SEG's round trip (the memory is the benchmark's).
    long_study = make_study(series_slices=(300,), rows=64, columns=64, seed=46)
    write_study(long_study, folder)
    servers = {"pacs": new_uid(), "folder": new_uid(), "down": new_uid()}
    models = {
        "seg": new_uid(),
        "seg-optional": new_uid(),
        "seg-required": new_uid(),
        "seg-all": new_uid(),
        "ann": new_uid(),
        "pred": new_uid(),
    }
    seg = ("/segmentation", "segmentation", SERIES_LEVELS)
    proxy = start_proxy(
        tmp_path_factory.mktemp("dicom-results-proxy"),
        {
            servers["pacs"]: server_entry(orthanc_basic_auth),
            servers["folder"]: {"uri": folder.as_uri(), "isDefault": False},
            servers["down"]: {"uri": f"{closed_port_url()}/dicom-web", "isDefault": False},
        },
        {
            models["seg"]: model_entry(
                example_model, *seg, name="Phantom segmenter", version="2.1"
            ),
            models["seg-optional"]: model_entry(
                example_model, *seg, store={"server": servers["down"], "required": False}
            ),
            models["seg-required"]: model_entry(
                example_model, *seg, store={"server": servers["down"]}
            ),
            models["seg-all"]: model_entry(example_model, *seg, sendResultObjects=True),
            models["ann"]: model_entry(example_model, "/annotation", "annotation", ALL_LEVELS),
            models["pred"]: model_entry(example_model, "/prediction", "prediction", ALL_LEVELS),
        },
        cert=tls_cert,
        env={"ZHIVA_SHOW_STATUS_PAGE": "true"},
    )
    try:
        yield Setup(
            proxy,
            study,
            seg_store,
            sr_store,
            later,
            long_study,
            orthanc_basic_auth,
            folder,
            servers,
            models,
        )
    finally:
        proxy.stop()


def _parts(response: httpx.Response) -> list[bytes]:
    boundary = boundary_from_content_type(response.headers["content-type"])
    assert boundary is not None
    decoder = MultipartDecoder(boundary)
    parts = decoder.feed(response.content)
    decoder.close()
    return parts


def _checked_seg(data: bytes, tmp_path: Path) -> hd.seg.Segmentation:
    path = tmp_path / f"{len(list(tmp_path.iterdir()))}.dcm"
    path.write_bytes(data)
    assert dciodvfy_errors(path) == []
    return hd.seg.segread(path)


def test_series_segmentation_as_dicomweb_seg_round_trips(setup: Setup, tmp_path: Path) -> None:
    study, series = setup.study, setup.study.series[0]
    json_result = setup.get(setup.series_path()).json()
    response = setup.get(setup.series_path(), headers={"Accept": MULTIPART_DICOM})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(MULTIPART_DICOM)
    parts = _parts(response)
    assert len(parts) == 1
    seg = _checked_seg(parts[0], tmp_path)
    assert seg.Modality == "SEG"
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == study.study_uid
    assert seg.PatientID == study.patient_id
    assert seg.SOPInstanceUID.startswith("2.25.")
    assert {d.SegmentLabel for d in seg.SegmentSequence} == {"Body", "Lungs"}
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("Phantom segmenter", "2.1")
    referenced = {
        ref.ReferencedSOPInstanceUID
        for item in seg.ReferencedSeriesSequence
        for ref in item.ReferencedInstanceSequence
    }
    assert referenced == set(series.sop_uids)
    assert_masks_equal(seg, json_result[study.study_uid][series.series_uid])


def test_other_accept_values_get_the_json_byte_for_byte(setup: Setup) -> None:
    plain = setup.get(setup.series_path())
    assert plain.status_code == 200
    for accept in ("application/json", "*/*", "text/html, application/xhtml+xml"):
        response = setup.get(setup.series_path(), headers={"Accept": accept})
        assert response.content == plain.content, accept
        assert response.headers["content-type"] == "application/json"
        assert "dicom-stored" not in response.headers


def test_single_object_as_application_dicom(setup: Setup, tmp_path: Path) -> None:
    response = setup.get(setup.series_path(index=1), headers={"Accept": "application/dicom"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    seg = _checked_seg(response.content, tmp_path)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == setup.study.series[1].series_uid

    study_path = f"/segmentations/{setup.models['seg']}/studies/{setup.study.study_uid}"
    refused = setup.get(study_path, headers={"Accept": "application/dicom"})
    assert "2 DICOM objects" in expect_error(refused, 406, "not_acceptable")


def test_store_true_stows_the_seg_into_the_study(setup: Setup, tmp_path: Path) -> None:
    study = setup.seg_store_study
    plain = setup.get(setup.series_path(study=study))
    response = setup.get(setup.series_path(study=study), params={"store": "true"})
    assert response.status_code == 200, response.text
    assert response.content == plain.content
    sop_uid = response.headers["dicom-stored"]
    with setup.pacs.client() as pacs:
        found = pacs.get(
            f"/dicom-web/studies/{study.study_uid}/series", params={"Modality": "SEG"}
        ).json()
        series_uids = [entry["0020000E"]["Value"][0] for entry in found]
        assert series_uids
        stored = None
        for series_uid in series_uids:
            instances = pacs.get(
                f"/dicom-web/studies/{study.study_uid}/series/{series_uid}/instances"
            ).json()
            if sop_uid in [entry["00080018"]["Value"][0] for entry in instances]:
                stored = series_uid
        assert stored is not None
        wado = pacs.get(
            f"/dicom-web/studies/{study.study_uid}/series/{stored}/instances/{sop_uid}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
    assert wado.status_code == 200
    (data,) = _parts(wado)
    seg = _checked_seg(data, tmp_path)
    assert seg.SOPInstanceUID == sop_uid
    assert_masks_equal(seg, plain.json()[study.study_uid][study.series[0].series_uid])


def test_store_into_a_local_folder(setup: Setup) -> None:
    study = setup.study
    path = (
        f"/segmentations/{setup.models['seg']}/studies/{study.study_uid}"
        f"/series/{study.series[1].series_uid}"
    )
    response = setup.get(path, params={"store": "true", "server": setup.servers["folder"]})
    assert response.status_code == 200, response.text
    sop_uid = response.headers["dicom-stored"]
    (stored,) = setup.folder.glob(f"*/{sop_uid}.dcm")
    assert pydicom.dcmread(io.BytesIO(stored.read_bytes())).StudyInstanceUID == study.study_uid
    assert dciodvfy_errors(stored) == []


def test_a_long_series_streams_into_one_seg_that_round_trips(setup: Setup, tmp_path: Path) -> None:
    study, series = setup.long_study, setup.long_study.series[0]
    path = setup.series_path(study=study)
    params = {"server": setup.servers["folder"]}
    json_result = setup.get(path, params=params).json()
    response = setup.get(path, params=params, headers={"Accept": "application/dicom"})
    assert response.status_code == 200, response.text
    seg = _checked_seg(response.content, tmp_path)
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert {ref.ReferencedSOPInstanceUID for ref in referenced} == set(series.sop_uids)
    assert_masks_equal(seg, json_result[study.study_uid][series.series_uid])


def test_a_stored_seg_is_not_sent_with_the_study_to_the_model(setup: Setup) -> None:
    """A study request after a store: the model gets the images, as before the store
    (it would refuse the SEG); a model with "sendResultObjects": true gets it too."""
    study = setup.later_study
    study_path = f"/segmentations/{setup.models['seg']}/studies/{study.study_uid}"
    before = setup.get(study_path)
    assert before.status_code == 200, before.text
    stored = setup.get(setup.series_path(study=study), params={"store": "true"})
    assert stored.status_code == 200, stored.text
    assert stored.headers["dicom-stored"]
    after = setup.get(study_path)
    assert after.status_code == 200, after.text
    assert after.json() == before.json()
    every_object = setup.get(study_path.replace(setup.models["seg"], setup.models["seg-all"]))
    assert "not a single-frame grayscale image" in every_object.text


def test_a_required_store_that_fails_is_a_502_naming_the_pacs(setup: Setup) -> None:
    response = setup.get(setup.series_path("seg-required"))
    message = expect_error(response, 502, "pacs_error")
    assert "PACS" in message and "storing" in message


def test_an_optional_store_that_fails_still_answers_and_shows_on_status(setup: Setup) -> None:
    plain = setup.get(setup.series_path())
    response = setup.get(setup.series_path("seg-optional"))
    assert response.status_code == 200, response.text
    assert response.content == plain.content
    assert "dicom-stored" not in response.headers
    status = setup.get("/status", headers={"Accept": "application/json"}).json()
    failure = status["servers"][setup.servers["down"]]["lastStoreFailure"]
    assert "storing" in failure["message"]
    assert "DICOM results not stored" in setup.proxy.log_text()


def test_store_takes_true_or_false(setup: Setup) -> None:
    response = setup.get(setup.series_path(), params={"store": "yes"})
    assert "?store=" in expect_error(response, 400, "bad_request")


def _checked_sr(data: bytes, tmp_path: Path) -> hd.sr.ComprehensiveSR:
    path = tmp_path / f"{len(list(tmp_path.iterdir()))}.dcm"
    path.write_bytes(data)
    assert dciodvfy_errors(path) == []
    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    return sr


def test_annotation_as_tid1500_sr_with_a_polyline_per_roi(setup: Setup, tmp_path: Path) -> None:
    study, series = setup.study, setup.study.series[0]
    path = setup.series_path("ann", family="annotations")
    rois = {
        uid: node["rois"]
        for uid, node in setup.get(path).json()[study.study_uid][series.series_uid].items()
    }
    response = setup.get(path, headers={"Accept": MULTIPART_DICOM})
    assert response.status_code == 200, response.text
    (data,) = _parts(response)
    sr = _checked_sr(data, tmp_path)
    assert (sr.StudyInstanceUID, sr.PatientID) == (study.study_uid, study.patient_id)
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    # srread gives the content as highdicom's MeasurementReport, typed as its base class.
    report: Any = sr.content
    found = [
        (
            group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID,
            group.finding_type.meaning,
            group.roi.graphic_type,
            group.roi.value.tolist(),
        )
        for group in report.get_planar_roi_measurement_groups()
    ]
    expected = [
        (uid, roi["className"], hd.sr.GraphicTypeValues.POLYLINE, roi["points"])
        for uid, instance_rois in rois.items()
        for roi in instance_rois
    ]
    assert expected and found == expected


def _sr_items(container: Any) -> tuple[str, dict[str, Any]]:
    """(what the container references, {title: value or (value, unit, comment)})."""
    reference = ""
    values: dict[str, Any] = {}
    for item in container.ContentSequence:
        meaning = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.ValueType == "UIDREF":
            reference = item.UID
        elif item.ValueType == "IMAGE":
            reference = item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        elif item.ValueType == "TEXT":
            values[meaning] = item.TextValue
        elif item.ValueType == "NUM":
            measured = item.MeasuredValueSequence[0]
            unit = measured.MeasurementUnitsCodeSequence[0].CodeValue
            comments = [child.TextValue for child in getattr(item, "ContentSequence", [])]
            values[meaning] = (float(measured.NumericValue), unit, comments)
    return reference, values


def _json_items(entries: list[dict[str, Any]]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for entry in entries:
        if isinstance(entry["value"], str):
            values[entry["title"]] = entry["value"]
            continue
        description = entry.get("description")
        unit = "%" if entry["dataType"] == "percentage" else "1"
        if entry["dataType"] != "percentage" and description in ("cm2", "cm3"):
            unit, description = description, None
        values[entry["title"]] = (float(entry["value"]), unit, [description] if description else [])
    return values


def test_prediction_as_sr_with_num_and_text_items_stored_in_the_pacs(
    setup: Setup, tmp_path: Path
) -> None:
    study = setup.sr_store_study
    path = f"/predictions/{setup.models['pred']}/studies/{study.study_uid}"
    result = setup.get(path).json()[study.study_uid]
    expected = {study.study_uid: _json_items(result["metadata"])}
    for series_uid, node in result.items():
        if series_uid != "metadata":
            expected[series_uid] = _json_items(node["metadata"])
    response = setup.get(path, params={"store": "true"}, headers={"Accept": MULTIPART_DICOM})
    assert response.status_code == 200, response.text
    (data,) = _parts(response)
    sr = _checked_sr(data, tmp_path)
    assert response.headers["dicom-stored"] == sr.SOPInstanceUID
    found = dict(_sr_items(item) for item in sr.ContentSequence if item.ValueType == "CONTAINER")
    assert found == expected
    with setup.pacs.client() as pacs:
        series = pacs.get(
            f"/dicom-web/studies/{study.study_uid}/series", params={"Modality": "SR"}
        ).json()
    assert sr.SeriesInstanceUID in [entry["0020000E"]["Value"][0] for entry in series]


def test_a_result_over_dicom_max_result_is_a_502_and_json_still_works(
    setup: Setup, start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(
        None, None, config_dir=setup.proxy.config_dir, extra_args=["--dicom-max-result", "1KiB"]
    )
    with proxy.client() as client:
        refused = client.get(setup.series_path(), headers={"Accept": MULTIPART_DICOM})
        plain = client.get(setup.series_path())
    assert "--dicom-max-result" in expect_error(refused, 502, "model_result_too_large")
    assert plain.status_code == 200


def test_an_instance_annotation_as_one_application_dicom_sr(setup: Setup, tmp_path: Path) -> None:
    series = setup.study.series[0]
    sop_uid = series.sop_uids[2]
    path = setup.series_path("ann", family="annotations") + f"/instances/{sop_uid}"
    response = setup.get(path, headers={"Accept": "application/dicom"})
    assert response.status_code == 200, response.text
    sr = _checked_sr(response.content, tmp_path)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert [ref.ReferencedSOPInstanceUID for ref in evidence.ReferencedSOPSequence] == [sop_uid]
