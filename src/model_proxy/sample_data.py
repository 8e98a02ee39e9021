"""Synthetic CT studies: a phantom chest that any PACS and Model API accept.

The demo, the tests and the benchmarks need realistic DICOM without shipping
patient data. Each study holds one or more CT series of the same phantom: air
outside, an elliptical body with a fat rim, two lungs whose size changes along
the patient axis (so volumes are non-trivial) and a spine disc.

>>> study = make_study(series_slices=(24, 12), rows=128, columns=128, seed=1)
>>> paths = write_study(study, Path("/tmp/phantom"))   # doctest: +SKIP

Instances are built lazily by :meth:`SampleStudy.iter_instances` and are the
same bytes on every call, so a 300-slice 512x512 series never sits in memory.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    PYDICOM_ROOT_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

__all__ = ["SampleSeries", "SampleStudy", "make_study", "write_study"]

# Field of view along the longer image side: 512 pixels of 0.7 mm, as on a chest CT.
FOV_MM = 512 * 0.7
# Every series covers the same anatomy, so volumes agree across slice counts.
Z_EXTENT_MM = 240.0
RESCALE_INTERCEPT = -1024
BITS_STORED = 12

# Hounsfield units of the phantom's tissues.
HU_AIR = -1000
HU_FAT = -100
HU_SOFT_TISSUE = 40
HU_LUNG = -850
HU_BONE = 700
NOISE_HU = 12

# A UID root ending in a dot: components without leading zeros.
_UID_ROOT = re.compile(r"((0|[1-9][0-9]*)\.)+")


@dataclass(frozen=True)
class SampleSeries:
    series_uid: str
    description: str
    sop_uids: tuple[str, ...]  # in InstanceNumber order


@dataclass(frozen=True)
class SampleStudy:
    study_uid: str
    series: tuple[SampleSeries, ...]
    rows: int
    columns: int
    seed: int = 0
    patient_id: str = "PHANTOM-0"
    frame_of_reference_uid: str = ""
    # YYYYMMDD; a prefetch rule's lookback window goes by it (docs/jobs.md).
    study_date: str = "20240101"

    def iter_instances(self) -> Iterator[tuple[SampleSeries, str, bytes]]:
        """Yield ``(series, sop_uid, Part-10 file bytes)``, series by series."""
        for index, series in enumerate(self.series):
            yield from _iter_series(self, index, series)

    @property
    def main_series(self) -> SampleSeries:
        """The first series: the one demos and tests run models on."""
        return self.series[0]


def make_study(
    *,
    series_slices: Sequence[int] = (24, 12),
    rows: int = 128,
    columns: int = 128,
    uid_prefix: str | None = None,
    seed: int = 0,
    study_date: str = "20240101",
) -> SampleStudy:
    """Describe a phantom study; UIDs depend only on ``uid_prefix`` and ``seed``."""
    if not series_slices or any(n < 1 for n in series_slices):
        raise ValueError(f"series_slices must be positive counts, got {list(series_slices)}")
    if rows < 16 or columns < 16:
        raise ValueError(f"images must be at least 16x16 pixels, got {rows}x{columns}")
    prefix = _normalise_prefix(uid_prefix)
    study_uid = generate_uid(prefix, entropy_srcs=["study", str(seed)])
    series = []
    for index, count in enumerate(series_slices):
        series_uid = generate_uid(prefix, entropy_srcs=[study_uid, "series", str(index)])
        sop_uids = tuple(
            generate_uid(prefix, entropy_srcs=[series_uid, "instance", str(number)])
            for number in range(1, count + 1)
        )
        series.append(SampleSeries(series_uid, f"Phantom CT {index + 1}", sop_uids))
    return SampleStudy(
        study_uid=study_uid,
        series=tuple(series),
        rows=rows,
        columns=columns,
        seed=seed,
        patient_id=f"PHANTOM-{seed}",
        frame_of_reference_uid=generate_uid(prefix, entropy_srcs=[study_uid, "frame"]),
        study_date=study_date,
    )


def write_study(study: SampleStudy, folder: Path) -> list[Path]:
    """Write every instance to ``folder/<series_uid>/<sop_uid>.dcm``."""
    paths = []
    for series, sop_uid, data in study.iter_instances():
        path = folder / series.series_uid / f"{sop_uid}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    return paths


def _normalise_prefix(uid_prefix: str | None) -> str:
    prefix: str = PYDICOM_ROOT_UID if uid_prefix is None else uid_prefix
    if not prefix.endswith("."):
        prefix += "."
    # generate_uid needs room for a hash-derived component after the prefix.
    if len(prefix) > 54 or not _UID_ROOT.fullmatch(prefix):
        raise ValueError(f"uid_prefix must be a valid UID root of at most 53 chars: {prefix!r}")
    return prefix


def _iter_series(
    study: SampleStudy, index: int, series: SampleSeries
) -> Iterator[tuple[SampleSeries, str, bytes]]:
    count = len(series.sop_uids)
    thickness = Z_EXTENT_MM / count
    spacing = FOV_MM / max(study.rows, study.columns)
    template = _series_template(study, index, series, thickness, spacing)
    phantom = _Phantom(study.rows, study.columns, lung_scale=1.0 - 0.05 * index)
    # One generator per series: the same bytes whichever series is asked for first.
    rng = np.random.default_rng([study.seed, index])
    for position, sop_uid in enumerate(series.sop_uids):
        # t runs through the slab from 0 to 1 at slice centres.
        t = (position + 0.5) / count
        hu = phantom.slice(t, rng)
        stored = np.clip(hu - RESCALE_INTERCEPT, 0, (1 << BITS_STORED) - 1).astype("<u2")
        z = -position * thickness
        template.SOPInstanceUID = sop_uid
        template.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(sop_uid)
        template.InstanceNumber = position + 1
        template.ImagePositionPatient = [
            round(-spacing * study.columns / 2, 3),
            round(-spacing * study.rows / 2, 3),
            round(z, 3),
        ]
        template.SliceLocation = round(z, 3)
        template.PixelData = stored.tobytes()
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, template, enforce_file_format=True)
        yield series, sop_uid, buffer.getvalue()


def _series_template(
    study: SampleStudy, index: int, series: SampleSeries, thickness: float, spacing: float
) -> Dataset:
    """Everything but the per-slice tags, built once per series."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = f"PH{study.seed:06d}"
    ds.Modality = "CT"
    ds.Manufacturer = "model-proxy"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Phantom chest CT"
    ds.SeriesDescription = series.description
    ds.PatientName = "Phantom^Synthetic"
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = round(thickness, 4)
    ds.KVP = 120
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = index + 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = study.rows
    ds.Columns = study.columns
    ds.PixelSpacing = [round(spacing, 4), round(spacing, 4)]
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.RescaleIntercept = RESCALE_INTERCEPT
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    return ds


class _Phantom:
    """Slices of the phantom in HU; geometry is precomputed once per series.

    Shapes are defined on coordinates normalised to the image (-0.5..0.5), so the
    phantom fills the same share of the field of view at any matrix size.
    """

    def __init__(self, rows: int, columns: int, lung_scale: float) -> None:
        y = (np.arange(rows, dtype=np.float32) + 0.5) / rows - 0.5
        x = (np.arange(columns, dtype=np.float32) + 0.5) / columns - 0.5
        yy, xx = y[:, None], x[None, :]

        def ellipse(cx: float, cy: float, ax: float, ay: float) -> npt.NDArray[np.float32]:
            # Squared normalised radius: < 1 inside the ellipse.
            return np.asarray(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2, dtype=np.float32)

        body = ellipse(0.0, 0.05, 0.42, 0.30) < 1.0
        inner = ellipse(0.0, 0.05, 0.42 * 0.92, 0.30 * 0.92) < 1.0
        spine = ellipse(0.0, 0.22, 0.045, 0.045) < 1.0
        base = np.full((rows, columns), HU_AIR, dtype=np.int16)
        base[body] = HU_FAT
        base[inner] = HU_SOFT_TISSUE
        base[spine] = HU_BONE
        self.base = base
        self.lungs = [
            ellipse(cx, 0.0, 0.11 * lung_scale, 0.15 * lung_scale) for cx in (-0.17, 0.17)
        ]

    def slice(self, t: float, rng: np.random.Generator) -> npt.NDArray[np.int16]:
        # Lungs grow from the apex to the middle of the slab and shrink again.
        size = 0.35 + 0.65 * math.sin(math.pi * t)
        hu = self.base.copy()
        for radius in self.lungs:
            hu[radius < size * size] = HU_LUNG
        noise = rng.integers(-NOISE_HU, NOISE_HU + 1, size=hu.shape, dtype=np.int16)
        hu += noise
        return hu
