"""The synthetic CT studies: valid DICOM, deterministic, a plausible phantom."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from model_proxy.sample_data import SampleStudy, make_study, write_study


@pytest.fixture(scope="module")
def study() -> SampleStudy:
    return make_study(series_slices=(8, 4), rows=64, columns=80, seed=3)


def read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)


def test_layout_and_uids(study: SampleStudy) -> None:
    assert [len(s.sop_uids) for s in study.series] == [8, 4]
    assert [s.description for s in study.series] == ["Phantom CT 1", "Phantom CT 2"]
    assert study.main_series is study.series[0]
    uids = [study.study_uid] + [s.series_uid for s in study.series]
    uids += [sop for s in study.series for sop in s.sop_uids]
    assert len(set(uids)) == len(uids)
    assert all(UID(uid).is_valid for uid in uids)


def test_uids_are_deterministic_per_seed_and_prefix() -> None:
    assert make_study(seed=5) == make_study(seed=5)
    assert make_study(seed=5).study_uid != make_study(seed=6).study_uid
    prefixed = make_study(series_slices=(2,), uid_prefix="1.2.3.4", seed=1)
    uids = [prefixed.study_uid, prefixed.series[0].series_uid, *prefixed.series[0].sop_uids]
    assert all(uid.startswith("1.2.3.4.") and UID(uid).is_valid for uid in uids)


def test_instances_are_valid_ct_part10(study: SampleStudy) -> None:
    instances = list(study.iter_instances())
    assert [sop for _, sop, _ in instances] == [
        sop for series in study.series for sop in series.sop_uids
    ]
    for series, sop_uid, data in instances:
        assert data[:128] == bytes(128)
        assert data[128:132] == b"DICM"
        ds = read(data)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == sop_uid
        assert ds.SOPClassUID == CTImageStorage
        assert ds.Modality == "CT"
        assert str(ds.PatientName) == "Phantom^Synthetic"
        assert ds.PatientID == "PHANTOM-3"
        assert ds.StudyInstanceUID == study.study_uid
        assert ds.SeriesInstanceUID == series.series_uid
        assert ds.SOPInstanceUID == sop_uid
        assert ds.SeriesDescription == series.description
        assert ds.InstanceNumber == series.sop_uids.index(sop_uid) + 1
        assert (ds.Rows, ds.Columns) == (64, 80)
        assert ds.BitsAllocated == 16
        assert ds.PixelRepresentation in (0, 1)
        assert (ds.RescaleIntercept, ds.RescaleSlope) == (-1024, 1)
        assert ds.SliceThickness > 0
        assert len(ds.ImagePositionPatient) == 3
        assert list(ds.ImageOrientationPatient) == [1, 0, 0, 0, 1, 0]


def test_slices_are_stacked_along_z(study: SampleStudy) -> None:
    series = study.main_series
    datasets = [read(data) for s, _, data in study.iter_instances() if s is series]
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    steps = np.diff(z)
    assert np.allclose(np.abs(steps), float(datasets[0].SliceThickness))
    # Both series cover the same slab, so volumes agree across slice counts.
    other = [read(data) for s, _, data in study.iter_instances() if s is not series]
    extent = len(datasets) * float(datasets[0].SliceThickness)
    assert extent == pytest.approx(len(other) * float(other[0].SliceThickness))


def test_bytes_are_the_same_on_every_call(study: SampleStudy) -> None:
    first = list(study.iter_instances())
    again = list(make_study(series_slices=(8, 4), rows=64, columns=80, seed=3).iter_instances())
    assert first == list(study.iter_instances()) == again


def test_phantom_in_hounsfield_units(study: SampleStudy) -> None:
    datasets = [read(data) for s, _, data in study.iter_instances() if s is study.main_series]
    middle = hu(datasets[len(datasets) // 2])
    rows, columns = middle.shape
    assert abs(middle[0, 0] + 1000) <= 20  # air
    assert abs(middle[int(rows * 0.5), int(columns * 0.33)] + 850) <= 20  # left lung
    assert abs(middle[int(rows * 0.5), int(columns * 0.67)] + 850) <= 20  # right lung
    assert abs(middle[int(rows * 0.72), columns // 2] - 700) <= 20  # spine
    assert abs(middle[int(rows * 0.3), columns // 2] - 40) <= 20  # soft tissue
    assert middle.min() >= -1024
    # Lungs change size along z, smallest at the ends of the slab.
    lung_pixels = [int((hu(ds) < -400).sum()) for ds in datasets]
    assert lung_pixels[0] < lung_pixels[len(lung_pixels) // 2]
    assert lung_pixels[-1] < lung_pixels[len(lung_pixels) // 2]
    assert min(lung_pixels) > 0


def test_write_study_round_trips_pixels(study: SampleStudy, tmp_path: Path) -> None:
    paths = write_study(study, tmp_path)
    instances = list(study.iter_instances())
    assert len(paths) == len(instances)
    for path, (series, sop_uid, data) in zip(paths, instances, strict=True):
        assert path == tmp_path / series.series_uid / f"{sop_uid}.dcm"
        assert path.read_bytes() == data
        from_file, from_bytes = pydicom.dcmread(path), read(data)
        assert np.array_equal(from_file.pixel_array, from_bytes.pixel_array)
        assert from_bytes.pixel_array.tobytes() == from_bytes.PixelData


def test_pixel_data_matches_the_declared_format(study: SampleStudy) -> None:
    _, _, data = next(study.iter_instances())
    ds = read(data)
    dtype = np.int16 if ds.PixelRepresentation else np.uint16
    raw = np.frombuffer(ds.PixelData, dtype=dtype).reshape(ds.Rows, ds.Columns)
    assert np.array_equal(raw, ds.pixel_array)
    assert int(raw.max()) < 1 << ds.BitsStored


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"series_slices": ()}, "series_slices"),
        ({"series_slices": (3, 0)}, "series_slices"),
        ({"rows": 8}, "16x16"),
        ({"uid_prefix": "1.2.abc"}, "uid_prefix"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_study(**kwargs)  # type: ignore[arg-type]
