"""The streamed segmentation (dicom_results/json_split, seg_spool, seg_writer): the
result split instance by instance whatever the chunking, and a SEG written from
spooled frames that is highdicom's own SEG but for UIDs and times, masks bit for bit.
The round trip through the proxy, Orthanc and dciodvfy is in
tests/integration/test_dicom_outputs.py."""

from __future__ import annotations

import asyncio
import io
import json
import random
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import orjson
import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataset import FileDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from model_proxy.config import parse_servers
from model_proxy.dicom_results import seg_stream
from model_proxy.dicom_results.frame_items import FrameItemEncoder
from model_proxy.dicom_results.framing import part10
from model_proxy.dicom_results.headers import source_headers
from model_proxy.dicom_results.json_split import InstanceSplitter, SplitError
from model_proxy.dicom_results.mask_text import lift_masks, read_mask
from model_proxy.dicom_results.seg import Algorithm, build_segmentation
from model_proxy.dicom_results.seg_spool import MaskSpool
from model_proxy.dicom_results.seg_writer import write_segmentation
from model_proxy.errors import ModelError
from model_proxy.pacs.local_folder import LocalFolderSource
from model_proxy.pacs.source import Target
from model_proxy.sample_data import make_study, write_study

ALGORITHM = Algorithm("model-1", "Example", "1.0")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# Differ between two builds of one SEG: made new each time.
_NEW_EACH_TIME = (
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "InstanceCreationTime",
    "ContentTime",
    "ContributingEquipmentSequence",
    "DimensionOrganizationSequence",
    "DimensionIndexSequence",
)


def _split(text: bytes, *, max_chunk: int, seed: int) -> list[tuple[str, str, str, Any]]:
    rng = random.Random(seed)
    splitter = InstanceSplitter(max_value_bytes=10_000)
    members = []
    start = 0
    while start < len(text):
        end = start + rng.randint(1, max_chunk)
        members += splitter.feed(text[start:end])
        start = end
    splitter.close()
    return [(study, series, key, orjson.loads(value)) for study, series, key, value in members]


def test_members_come_out_whole_however_the_text_is_cut() -> None:
    tricky = 'a "quoted" \\ } ] { ['
    result = {
        "1.2": {
            "metadata": [{"title": tricky}],
            "1.2.3": {
                "1.2.3.4": {"segments": [{"points": [[0, 1], [1, 0]], "className": tricky}]},
                "1.2.3.5": {"segments": []},
                "metadata": [],
            },
            "1.2.4": {},
        },
        "1.3": {},
    }
    expected = [
        ("1.2", "1.2.3", "1.2.3.4", result["1.2"]["1.2.3"]["1.2.3.4"]),  # type: ignore[index]
        ("1.2", "1.2.3", "1.2.3.5", {"segments": []}),
        ("1.2", "1.2.3", "metadata", []),
    ]
    for option in (0, orjson.OPT_INDENT_2):
        text = orjson.dumps(result, option=option)
        for seed in range(20):
            assert _split(text, max_chunk=9, seed=seed) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"[1, 2]", "not a JSON object"),
        (b'{"1.2": {"1.3": {"1.4": [1}}}', "ends early"),
        (b'{"1.2": 1', "ends early"),
        (b'{"1.2": 1}}', "after the end"),
        (b'{"1.2" 1}', "expected ':'"),
        (b'{"1.2": {"1.3": {"1.4": "' + b"x" * 20_000 + b'"}}}', "larger than"),
    ],
)
def test_what_is_not_a_nested_result_is_refused(text: bytes, message: str) -> None:
    splitter = InstanceSplitter(max_value_bytes=10_000)
    with pytest.raises(SplitError, match=message):
        splitter.feed(text)
        splitter.close()


def _series(rows: int, slices: int = 6) -> tuple[dict[str, Dataset], dict[str, Any], str, str]:
    study = make_study(series_slices=(slices,), rows=rows, columns=rows, seed=7)
    rng = np.random.default_rng(rows)
    headers: dict[str, Dataset] = {}
    node: dict[str, Any] = {}
    for index, (_, _, data) in enumerate(study.iter_instances()):
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        headers[str(header.SOPInstanceUID)] = header
        # Empty masks, an empty plane (index 3), overlapping segments, a repeated class.
        body = (rng.random((rows, rows)) > 0.5).astype(np.uint8) * (index % 3 != 0)
        lungs = (rng.random((rows, rows)) > 0.7).astype(np.uint8) * (index % 2 == 0)
        more = (rng.random((rows, rows)) > 0.9).astype(np.uint8) * (index == 4)
        node[str(header.SOPInstanceUID)] = {
            "segments": [
                {"points": body.tolist(), "color": "red", "className": "Body"},
                {"points": lungs.tolist(), "color": "#0000ff", "className": "Lungs"},
                {"points": more.tolist(), "color": "red", "className": "Body"},
            ]
        }
    return headers, node, study.study_uid, study.series[0].series_uid


def _streamed(
    headers: dict[str, Dataset], node: dict[str, Any], study: str, series: str, folder: Path
) -> Path:
    spool = MaskSpool(folder / "masks.spool", ALGORITHM.model_id)
    try:
        for uid, value in node.items():
            spool.add_instance(study, series, uid, orjson.dumps(value))
        (masks,) = spool.series.values()
        out = folder / "seg.dcm"
        assert write_segmentation(masks, spool, headers, ALGORITHM, "2.25.", out) is not None
    finally:
        spool.close()
    assert not (folder / "masks.spool").exists()
    return out


@pytest.mark.parametrize("rows", [16, 17])
def test_the_streamed_seg_is_highdicoms_seg(rows: int, tmp_path: Path) -> None:
    """17x17: frames that do not end on a byte boundary are packed back to back."""
    headers, node, study, series = _series(rows)
    path = _streamed(headers, node, study, series, tmp_path)
    streamed = pydicom.dcmread(path)
    built = build_segmentation(node, headers, ALGORITHM, "2.25.")
    assert built is not None
    whole = pydicom.dcmread(io.BytesIO(part10(built)))
    for name in _NEW_EACH_TIME:
        for dataset in (streamed, whole):
            delattr(dataset, name)
    assert [e.keyword for e in streamed] == [e.keyword for e in whole]
    for element in whole:
        if element.keyword != "PixelData":
            assert streamed[element.tag] == element, element.keyword
    seg = hd.seg.segread(path)
    for uid, value in node.items():
        expected: dict[str, np.ndarray[Any, Any]] = {}
        for segment in value["segments"]:
            mask = np.asarray(segment["points"], dtype=np.bool_)
            name = segment["className"]
            expected[name] = expected[name] | mask if name in expected else mask
        for number, name in enumerate(["Body", "Lungs"], start=1):
            pixels = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[uid], segment_numbers=[number], combine_segments=False
            )
            assert np.array_equal(pixels[0, :, :, 0], expected[name]), (uid, name)


def test_each_per_frame_item_is_encoded_as_pydicom_encodes_highdicoms() -> None:
    headers, node, _, _ = _series(16)
    built = build_segmentation(node, headers, ALGORITHM, "2.25.")
    assert built is not None
    items = built.PerFrameFunctionalGroupsSequence
    encoder = FrameItemEncoder(items[0])
    for item in items:
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        segment_number, plane = item.FrameContentSequence[0].DimensionIndexValues
        image = headers[source.ReferencedSOPInstanceUID]
        expected = DicomBytesIO()
        expected.is_little_endian, expected.is_implicit_VR = True, False
        write_dataset(expected, item)
        encoded = encoder.encode(segment_number, plane, image)
        assert encoded[8:] == expected.getvalue()
        assert encoded[:8] == struct.pack("<HHI", 0xFFFE, 0xE000, len(expected.getvalue()))


def test_a_mask_that_does_not_fit_is_a_bad_model_answer(tmp_path: Path) -> None:
    spool = MaskSpool(tmp_path / "masks.spool", "model-1")
    try:
        spool.add_instance("1", "2", "3", b'{"segments": [{"points": [[0, 1], [1, 1]]}]}')
        with pytest.raises(ModelError, match="not a 2x2 mask of 0 and 1") as raised:
            spool.add_instance("1", "2", "4", b'{"segments": [{"points": [[0, 1]]}]}')
        assert raised.value.code == "model_bad_response"
        with pytest.raises(ModelError, match="mask of 0 and 1"):
            spool.add_instance("1", "2", "5", b'{"segments": [{"points": [[0, 2], [1, 1]]}]}')
    finally:
        spool.close()


@pytest.mark.parametrize(
    "text",
    [
        b"[[0,1,1],[1,0,0]]",
        b" [ [0, 1, 1] ,\n [1 ,0,0 ] ] ",
    ],
)
def test_a_mask_is_read_from_its_text_with_any_whitespace(text: bytes) -> None:
    mask = read_mask(text)
    assert mask is not None
    assert mask.astype(int).tolist() == [[0, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize(
    "text",
    [b"[[0,1],[1]]", b"[[0,2],[1,0]]", b"[[0,1,],[1,0]]", b"[[0 1],[1,0]]", b"[[]]", b"[[01,1]]"],
)
def test_text_that_is_not_exactly_a_mask_is_left_to_orjson(text: bytes) -> None:
    assert read_mask(text) is None


def test_only_points_arrays_are_lifted_and_the_rest_parses_as_before() -> None:
    value = orjson.dumps(
        {
            "segments": [
                {"className": 'tricky \\"points\\": [[1]]', "points": [[0, 1], [1, 1]]},
                {"className": "ragged", "points": [[0, 1], [1]]},
            ],
            "note": {"points": "not an array"},
        }
    )
    text, marker, masks = lift_masks(value)
    node = orjson.loads(text)
    assert node["segments"][0]["points"] == f"{marker}0"
    assert node["segments"][0]["className"] == 'tricky \\"points\\": [[1]]'
    assert node["segments"][1]["points"] == [[0, 1], [1]]  # left for orjson and its check
    assert node["note"] == {"points": "not an array"}
    assert [m.astype(int).tolist() for m in masks] == [[[0, 1], [1, 1]]]


@pytest.mark.parametrize(
    "separators", [(",", ":"), (", ", ": "), (" ,\n ", " :\t")], ids=["compact", "spaced", "odd"]
)
def test_masks_are_lifted_whatever_the_whitespace_between_rows(separators: tuple[str, str]) -> None:
    masks = [[[0, 1, 1], [1, 0, 0]], [[1, 1, 1], [0, 0, 0]]]
    value = json.dumps(
        {"segments": [{"points": mask, "className": "c"} for mask in masks]},
        separators=separators,
    ).encode()
    text, marker, lifted = lift_masks(value)
    assert [m.astype(int).tolist() for m in lifted] == masks
    assert [s["points"] for s in orjson.loads(text)["segments"]] == [f"{marker}0", f"{marker}1"]


@pytest.mark.anyio
async def test_headers_after_a_series_first_keep_its_geometry_not_its_bytes(
    tmp_path: Path,
) -> None:
    """A FileDataset keeps the buffer it was read from: the whole instance, pixels
    and all. Only the first header of a series may be one."""
    study = make_study(series_slices=(3,), rows=16, columns=16, seed=3)
    write_study(study, tmp_path)
    folder_server = {"b1407f18-575d-487c-bc0c-640c6da651bc": {"uri": tmp_path.as_uri()}}
    servers, _warnings = parse_servers(folder_server)
    source = LocalFolderSource(next(iter(servers.values())), min_rescan_interval=3600)
    target = Target(study.study_uid, study.series[0].series_uid)
    headers = await source_headers(source, [target], geometry_only=True)
    first, *others = headers.values()
    assert "PatientName" in first
    assert others
    for header in others:
        assert not isinstance(header, FileDataset)
        assert {element.keyword for element in header} <= {
            "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
            "FrameOfReferenceUID", "Rows", "Columns", "ImagePositionPatient",
            "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "SpecificCharacterSet",
        }  # fmt: skip
        assert len(header.ImagePositionPatient) == 3


@pytest.mark.anyio
async def test_a_result_refused_midway_stops_the_header_reads_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The headers of a series are read as soon as the result names it; a mask that
    does not fit later on ends the conversion and those reads with it."""
    monkeypatch.setattr(seg_stream, "_BYTES_PER_HOP", 1)  # a thread hop per chunk
    reads: list[asyncio.Task[Any]] = []

    async def recorded_read(*args: Any, **kwargs: Any) -> dict[str, Dataset]:
        task = asyncio.current_task()
        assert task is not None
        reads.append(task)
        await asyncio.sleep(3600)  # a slow PACS: still reading when the result is refused
        return await source_headers(*args, **kwargs)

    monkeypatch.setattr(seg_stream, "source_headers", recorded_read)
    study = make_study(series_slices=(3,), rows=16, columns=16, seed=3)
    write_study(study, tmp_path / "pacs")
    folder_server = {"b1407f18-575d-487c-bc0c-640c6da651bc": {"uri": (tmp_path / "pacs").as_uri()}}
    servers, _warnings = parse_servers(folder_server)
    source = LocalFolderSource(next(iter(servers.values())), min_rescan_interval=3600)
    series = study.series[0]
    sizes = [16, 16, 8]  # the third instance's mask is not the series' size
    members = [
        orjson.dumps(uid) + b":" + orjson.dumps({"segments": [{"points": [[1] * size] * size}]})
        for uid, size in zip(series.sop_uids, sizes, strict=True)
    ]
    text = b'{"%s": {"%s": {%s}}}' % (
        study.study_uid.encode(),
        series.series_uid.encode(),
        b",".join(members),
    )

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(text), 100):
            yield text[start : start + 100]

    (tmp_path / "out").mkdir()
    with pytest.raises(ModelError, match="not a 16x16 mask"):
        await seg_stream.stream_segmentations(
            chunks(), source, ALGORITHM, uid_root="2.25.", out_dir=tmp_path / "out",
            max_entry_bytes=1 << 20,
        )  # fmt: skip
    assert len(reads) == 1
    assert reads[0].cancelled()
    assert list((tmp_path / "out").iterdir()) == []
