"""DICOM results without servers: UID roots, Accept parsing, models.json fields, and
what the SEG conversion refuses (docs/dicom-outputs.md). Valid objects, dciodvfy and
round trips are tested against Orthanc in tests/integration/test_dicom_outputs.py."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset

from model_proxy.cli import commands as cli
from model_proxy.cli.options import EXIT_USAGE
from model_proxy.config import ConfigError, Task, load_config
from model_proxy.dicom_results import Algorithm, check_uid_root, convert_result
from model_proxy.dicom_results.seg import build_segmentation
from model_proxy.dicom_results.uids import new_uid
from model_proxy.errors import ModelError
from model_proxy.inference.dicom_outputs import DicomMedia, body_chunks, dicom_media, read_whole
from model_proxy.inference.runner import Outcome
from model_proxy.sample_data import make_study

ALGORITHM = Algorithm("model-1", "Example", "1.0")
SERVER = "b5208f48-f748-4339-9402-d1148dab571e"
MODEL = "d4e548ad-f365-4c34-918b-4e61a8b896f0"


@pytest.mark.parametrize("root", ["2.25.", "1.2.826.0.1.3680043.10.1234.", "1.0."])
def test_uids_are_made_under_the_root(root: str) -> None:
    assert check_uid_root(root) == root
    uid = new_uid(root)
    assert uid.startswith(root) and len(uid) <= 64


@pytest.mark.parametrize("root", ["2.25", "1.02.3.", "a.b.", "", "1." * 21])
def test_a_bad_uid_root_is_refused(root: str) -> None:
    with pytest.raises(ValueError, match="expected dot-separated numbers"):
        check_uid_root(root)


def test_a_bad_uid_root_flag_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--uid-root", "2.25"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--uid-root: expected dot-separated numbers" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("accept", "media"),
    [
        ('multipart/related; type="application/dicom"', DicomMedia.MULTIPART),
        ("multipart/related; type=application/dicom; transfer-syntax=*", DicomMedia.MULTIPART),
        ("application/dicom", DicomMedia.SINGLE),
        ("application/json, application/dicom", DicomMedia.SINGLE),
        ("application/json", None),
        ("*/*", None),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", None),
        ('multipart/related; type="application/dicom+xml"', None),
        (None, None),
    ],
)
def test_dicom_media_from_accept(accept: str | None, media: DicomMedia | None) -> None:
    assert dicom_media(accept) is media


def _write_config(folder: Path, model: dict[str, Any]) -> None:
    servers = {SERVER: {"uri": "https://pacs.local/dicom-web", "isDefault": True}}
    base = {"uri": "http://model.local/seg", "task": "segmentation", "supports": ["/studies"]}
    (folder / "servers.json").write_text(json.dumps(servers))
    (folder / "models.json").write_text(json.dumps({MODEL: {**base, **model}}))


def test_algorithm_name_and_version_default_to_the_id_and_1(tmp_path: Path) -> None:
    _write_config(tmp_path, {})
    model = load_config(tmp_path).models[MODEL]
    assert (model.algorithm_name, model.algorithm_version, model.store) == (MODEL, "1", None)
    _write_config(tmp_path, {"name": "Lungs", "version": "2.0", "store": {"required": False}})
    model = load_config(tmp_path).models[MODEL]
    assert (model.algorithm_name, model.algorithm_version) == ("Lungs", "2.0")
    assert model.store is not None and model.store.required is False
    assert model.store.server is None
    assert not load_config(tmp_path).warnings


def test_store_must_name_a_server_of_servers_json(tmp_path: Path) -> None:
    _write_config(tmp_path, {"store": {"server": "not-a-server"}})
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path)
    assert any(
        '"store.server"' in line and "not a server" in line for line in raised.value.messages
    )


def _series() -> tuple[dict[str, Dataset], list[str], int]:
    study = make_study(series_slices=(3,), rows=16, columns=16)
    headers: dict[str, Dataset] = {
        uid: pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        for _, uid, data in study.iter_instances()
    }
    return headers, list(study.main_series.sop_uids), study.rows


def _segment(points: Any, color: str = "red", name: str = "Body") -> dict[str, Any]:
    return {"points": points, "color": color, "className": name}


def test_a_mask_of_the_wrong_size_is_a_bad_model_answer() -> None:
    headers, uids, size = _series()
    node = {uids[0]: {"segments": [_segment([[0] * size] * (size - 1))]}}
    with pytest.raises(ModelError, match=f"not a {size}x{size} mask of 0 and 1") as raised:
        build_segmentation(node, headers, ALGORITHM, "2.25.")
    assert raised.value.code == "model_bad_response"


def test_a_mask_with_other_values_than_0_and_1_is_refused() -> None:
    headers, uids, size = _series()
    node = {uids[0]: {"segments": [_segment([[2] * size] * size)]}}
    with pytest.raises(ModelError, match="mask of 0 and 1"):
        build_segmentation(node, headers, ALGORITHM, "2.25.")


def test_an_instance_the_model_was_not_sent_is_refused() -> None:
    headers, _, size = _series()
    node = {"1.2.3.4": {"segments": [_segment([[1] * size] * size)]}}
    with pytest.raises(ModelError, match="not in the series sent to it"):
        build_segmentation(node, headers, ALGORITHM, "2.25.")


def test_segments_by_classname_with_their_colours_and_unknown_colours_left_out() -> None:
    headers, uids, size = _series()
    full, empty = [[1] * size] * size, [[0] * size] * size
    node = {
        uids[0]: {"segments": [_segment(full, "salmon", "Body"), _segment(empty, "no-such")]},
        uids[1]: {"segments": [_segment(full, "#00ff00", "Lungs")]},
        uids[2]: {"segments": []},
        "metadata": [],
    }
    seg = build_segmentation(node, headers, ALGORITHM, "1.2.3.")
    assert seg is not None
    assert seg.SOPInstanceUID.startswith("1.2.3.")
    labels = [(d.SegmentLabel, "RecommendedDisplayCIELabValue" in d) for d in seg.SegmentSequence]
    assert labels == [("Body", True), ("Lungs", True)]
    # Empty frames are left out: one frame of Body, one of Lungs.
    assert seg.NumberOfFrames == 2


def test_a_result_without_anything_to_convert_makes_no_object(tmp_path: Path) -> None:
    headers, uids, size = _series()
    study = str(headers[uids[0]].StudyInstanceUID)
    series = str(headers[uids[0]].SeriesInstanceUID)
    empty = {study: {series: {uids[0]: {"segments": []}, "metadata": []}}}
    assert convert_result(Task.SEGMENTATION, empty, headers, ALGORITHM, "2.25.", tmp_path) == []
    no_rois: dict[str, Any] = {study: {series: {uids[0]: {"rois": []}}}}
    assert convert_result(Task.ANNOTATION, no_rois, headers, ALGORITHM, "2.25.", tmp_path) == []
    assert convert_result(Task.PREDICTION, {study: {}}, headers, ALGORITHM, "2.25.", tmp_path) == []
    all_zero = {study: {series: {uids[0]: {"segments": [_segment([[0] * size] * size)]}}}}
    (seg,) = convert_result(Task.SEGMENTATION, all_zero, headers, ALGORITHM, "2.25.", tmp_path)
    assert pydicom.dcmread(seg.path).Modality == "SEG"


def test_a_roi_that_is_not_a_polyline_is_refused(tmp_path: Path) -> None:
    headers, uids, _ = _series()
    study = str(headers[uids[0]].StudyInstanceUID)
    series = str(headers[uids[0]].SeriesInstanceUID)
    result = {study: {series: {uids[0]: {"rois": [{"points": [[1, 2]], "className": "x"}]}}}}
    with pytest.raises(ModelError, match="at least two"):
        convert_result(Task.ANNOTATION, result, headers, ALGORITHM, "2.25.", tmp_path)


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.anyio
async def test_a_result_is_read_whole_up_to_the_limit_and_always_finalized() -> None:
    endings: list[BaseException | None] = []

    async def finalize(error: BaseException | None) -> None:
        endings.append(error)

    outcome = Outcome(200, {}, _chunks(b"[1", b",2]"), finalize)
    async with aclosing(body_chunks(outcome)) as chunks:
        assert await read_whole(chunks, 5, "model-1") == b"[1,2]"
    assert endings == [None]

    outcome = Outcome(200, {}, _chunks(b"[1", b",2", b",3]"), finalize)
    with pytest.raises(ModelError, match="larger than 5 bytes") as raised:
        async with aclosing(body_chunks(outcome)) as chunks:
            await read_whole(chunks, 5, "model-1")
    assert raised.value.code == "model_result_too_large"
    # Not read to its end: the finalizer is told so (the result is not cached).
    assert endings[1] is not None
    with pytest.raises(ModelError, match="--dicom-max-result"):
        async with aclosing(body_chunks(Outcome(200, {}, b"[1,2,3]"))) as chunks:
            await read_whole(chunks, 5, "model-1")
