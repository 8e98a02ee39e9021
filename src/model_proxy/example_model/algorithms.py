"""The example model's "AI": thresholds on Hounsfield units, in plain numpy.

Good enough to find the body and the lungs of a chest CT (and of the phantom in
:mod:`model_proxy.sample_data`), fast, and with no dependency beyond numpy. A
real Model API replaces :func:`analyse` with its network and keeps the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from .wire import WireFormatError

__all__ = ["Slice", "analyse", "body_mask", "lung_mask", "outline"]

Mask = npt.NDArray[np.bool_]

BODY_MIN_HU = -300.0  # fat is about -100, air -1000
LUNG_MAX_HU = -400.0  # aerated lung is about -850


@dataclass(frozen=True)
class Slice:
    """What the endpoints need of one instance; the pixels are dropped early."""

    study_uid: str
    series_uid: str
    sop_uid: str
    instance_number: int
    pixel_area_mm2: float
    thickness_mm: float
    body: Mask
    lungs: Mask

    @property
    def body_area_cm2(self) -> float:
        return int(self.body.sum()) * self.pixel_area_mm2 / 100.0

    @property
    def lung_area_cm2(self) -> float:
        return int(self.lungs.sum()) * self.pixel_area_mm2 / 100.0

    @property
    def body_volume_cm3(self) -> float:
        return self.body_area_cm2 * self.thickness_mm / 10.0

    @property
    def lung_volume_cm3(self) -> float:
        return self.lung_area_cm2 * self.thickness_mm / 10.0


def analyse(ds: Dataset, where: str = "instance") -> Slice:
    """Segment one CT image; ``where`` names the instance in error messages."""
    try:
        study_uid = str(ds.StudyInstanceUID)
        series_uid = str(ds.SeriesInstanceUID)
        sop_uid = str(ds.SOPInstanceUID)
    except AttributeError as exc:
        raise WireFormatError(f"{where} lacks a UID: {exc}") from None
    if int(ds.get("NumberOfFrames", 1) or 1) != 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise WireFormatError(f"{where} ({sop_uid}) is not a single-frame grayscale image")
    try:
        stored = ds.pixel_array
    except Exception as exc:  # no PixelData, an unsupported codec, a short buffer...
        raise WireFormatError(f"{where} ({sop_uid}) has no readable pixel data: {exc}") from None
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    hu = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    body = body_mask(hu)
    return Slice(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        instance_number=_number(ds.get("InstanceNumber")),
        pixel_area_mm2=_pixel_area(ds.get("PixelSpacing")),
        # SliceThickness stands in for slice spacing; 1 mm when a file has none.
        thickness_mm=_positive(ds.get("SliceThickness"), 1.0),
        body=body,
        lungs=lung_mask(hu, body),
    )


def body_mask(hu: npt.NDArray[Any]) -> Mask:
    """Tissue above -300 HU, with enclosed holes (lungs, airways) filled.

    A pixel is inside when tissue lies to its left, right, above and below: four
    cumulative maxima, no flood fill and no scipy. Concavities get filled too,
    which a body outline does not mind.
    """
    tissue = hu > BODY_MIN_HU
    left = np.logical_or.accumulate(tissue, axis=1)
    right = np.logical_or.accumulate(tissue[:, ::-1], axis=1)[:, ::-1]
    above = np.logical_or.accumulate(tissue, axis=0)
    below = np.logical_or.accumulate(tissue[::-1, :], axis=0)[::-1, :]
    return np.asarray(left & right & above & below)


def lung_mask(hu: npt.NDArray[Any], body: Mask) -> Mask:
    """Air inside the body."""
    return np.asarray((hu < LUNG_MAX_HU) & body)


def outline(body: Mask, max_rows: int = 64) -> list[list[int]]:
    """A closed polygon ``[[x, y], ...]`` around the body, or ``[]`` if there is none.

    Goes down the left edge of sampled rows and back up the right edge; the last
    point repeats the first.
    """
    rows = np.flatnonzero(body.any(axis=1))
    if rows.size == 0:
        return []
    step = max(1, -(-rows.size // max_rows))
    sampled = rows[::step]
    if sampled[-1] != rows[-1]:
        sampled = np.append(sampled, rows[-1])
    lines = body[sampled]
    left = lines.argmax(axis=1)
    right = body.shape[1] - 1 - lines[:, ::-1].argmax(axis=1)
    down = [[int(x), int(y)] for x, y in zip(left, sampled, strict=True)]
    up = [[int(x), int(y)] for x, y in zip(right[::-1], sampled[::-1], strict=True)]
    return [*down, *up, down[0]]


def _number(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _positive(value: Any, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if number > 0 else default


def _pixel_area(spacing: Any) -> float:
    try:
        row, column = (float(v) for v in spacing)
    except (TypeError, ValueError):
        return 1.0  # no calibration: areas come out in pixels
    return row * column if row > 0 and column > 0 else 1.0
