"""The headers of the source instances a result describes, read through the source API."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterable

import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError

from model_proxy.errors import ErrorCode, PacsError
from model_proxy.pacs.source import DicomSource, Target

# What a SEG needs of every source instance but the first (whose patient, study
# and equipment attributes it copies): its reference and its geometry.
_GEOMETRY = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "Rows",
    "Columns",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
)


async def source_headers(
    source: DicomSource, targets: Iterable[Target], *, geometry_only: bool = False
) -> dict[str, Dataset]:
    """SOPInstanceUID -> header (pixel data left out) of every instance of ``targets``.

    The instances come from the same retrieval the model's input came from; each
    is parsed in a thread and its bytes dropped at once, so only headers are held.
    With ``geometry_only``, only the first instance of each target keeps its whole
    header, the others what a SEG needs of them (a few hundred bytes, not tens of
    KiB, for a 2,000-slice series).
    """
    headers: dict[str, Dataset] = {}
    for target in targets:
        tags: tuple[str, ...] | None = None  # the first instance is read whole
        async with source.retrieve(target) as instances:
            async for data in instances:
                header = await asyncio.to_thread(_header, data, source.label, tags)
                if geometry_only:
                    tags = _GEOMETRY
                headers[str(header.SOPInstanceUID)] = header
    return headers


def _header(data: bytes, label: str, tags: tuple[str, ...] | None) -> Dataset:
    try:
        # Only ``tags`` read (when given): pydicom then skips the other elements
        # without decoding them, several times faster than reading them all.
        header = pydicom.dcmread(
            io.BytesIO(data), stop_before_pixels=True, specific_tags=list(tags) if tags else None
        )
        header.SOPInstanceUID  # noqa: B018  (a file without it cannot be referenced)
        if tags:
            # A plain Dataset of the elements read, decoded: the FileDataset holds on
            # to its buffer, the whole instance (250 MiB for 500 slices of 512x512).
            trimmed = Dataset()
            for element in header:
                trimmed.add(element)
            return trimmed
    except (InvalidDicomError, AttributeError, ValueError, EOFError) as exc:
        raise PacsError(
            f"{label}: sent an instance that is not a DICOM file ({str(exc)[:100]})",
            code=ErrorCode.PACS_BAD_RESPONSE,
            upstream=label,
        ) from exc
    return header
