"""A DICOM Segmentation written from spooled frames, never whole in memory.

highdicom builds every module from a template: the Segmentation of the series'
first instance alone, with the real segment descriptions. The attributes that
depend on all instances are then set as highdicom would set them (referenced
and source instances, spacing between slices, segments overlap, the number of
frames), and the file is written in three steps: the dataset up to the
Per-Frame Functional Groups, that sequence (undefined length; its items encoded
from the template's first by ``frame_items.py``), and Pixel Data from the spool.
What is held: the headers of the instances and 256 items or frames at a time.

Frames are ordered as highdicom orders them: by segment, then by plane along the
slice normal; planes where every segment is empty are left out, and so are empty
frames, unless the whole series is empty (then all frames are written, as
highdicom does).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.valuerep import format_number_as_ds

from model_proxy.dicom_results.frame_items import FrameItemEncoder
from model_proxy.dicom_results.seg import Algorithm, seg_attributes, segment_description
from model_proxy.dicom_results.seg_spool import MaskSpool, SeriesMasks
from model_proxy.errors import ErrorCode, ModelError

_PER_FRAME = Tag(0x5200, 0x9230)
_PIXEL_DATA = Tag(0x7FE0, 0x0010)
_COPY_CHUNK = 1 << 20
# Per-frame items and frames written per call: 256 frames of 512x512 are 8 MiB.
_FRAMES_PER_WRITE = 256


def write_segmentation(
    masks: SeriesMasks,
    spool: MaskSpool,
    headers: Mapping[str, Dataset],
    algorithm: Algorithm,
    uid_root: str,
    out: Path,
) -> Dataset | None:
    """Write the SEG of one series to ``out``; its dataset without the per-frame
    groups and pixel data (for the UIDs), or None when the series has no segments."""
    if not masks.class_names or not masks.frames:
        return None
    images = [_source(headers, uid, algorithm.model_id) for uid in masks.frames]
    rows, columns = int(images[0].Rows), int(images[0].Columns)
    for image in images:
        if (int(image.Rows), int(image.Columns)) != (rows, columns):
            raise _error(
                algorithm,
                "instances of one series differ in size; a DICOM Segmentation needs one size",
            )
    if masks.shape is not None and masks.shape != (rows, columns):
        raise _error(
            algorithm,
            f"the masks are {masks.shape[0]}x{masks.shape[1]} but the images {rows}x{columns}",
        )
    # The one whole header (source_headers(geometry_only=True) trims the others).
    template = _template(masks, max(images, key=len), algorithm, uid_root)
    frame_item = template.PerFrameFunctionalGroupsSequence[0]
    del template.PerFrameFunctionalGroupsSequence
    del template.PixelData
    _refer_to_all(template, images)
    planes = _sorted_planes(images, algorithm)
    _set_spacing(template, images)
    template.SegmentsOverlap = "YES" if masks.segments_overlap else "NO"
    frames = _frames(masks, images, planes)
    template.NumberOfFrames = len(frames)
    with open(out, "wb") as file:
        pydicom.dcmwrite(file, template, enforce_file_format=True)
        file.write(_tag(_PER_FRAME) + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF))
        encoder = FrameItemEncoder(frame_item)
        for start in range(0, len(frames), _FRAMES_PER_WRITE):
            batch = frames[start : start + _FRAMES_PER_WRITE]
            file.write(
                b"".join(encoder.encode(number, plane, image) for number, plane, image, _ in batch)
            )
        file.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
        _write_pixel_data(file, frames, spool, rows * columns)
    return template


def _template(masks: SeriesMasks, first: Dataset, algorithm: Algorithm, uid_root: str) -> Dataset:
    count = len(masks.class_names)
    return hd.seg.Segmentation(
        source_images=[first],
        pixel_array=np.ones((1, int(first.Rows), int(first.Columns), count), dtype=np.bool_),
        segment_descriptions=[
            segment_description(number, name, masks.colors[name], algorithm)
            for number, name in enumerate(masks.class_names, start=1)
        ],
        **seg_attributes(algorithm, uid_root),
    )


def _refer_to_all(template: Dataset, images: list[Dataset]) -> None:
    """ReferencedSeriesSequence and SourceImageSequence: every source instance."""

    def references() -> DicomSequence:
        items = []
        for image in images:
            item = Dataset()
            item.ReferencedSOPClassUID = image.SOPClassUID
            item.ReferencedSOPInstanceUID = image.SOPInstanceUID
            items.append(item)
        return DicomSequence(items)

    template.ReferencedSeriesSequence[0].ReferencedInstanceSequence = references()
    template.SourceImageSequence = references()


def _sorted_planes(images: list[Dataset], algorithm: Algorithm) -> list[int]:
    """Indices of ``images`` by their distance along the slice normal (as highdicom)."""
    positions = np.array([[float(v) for v in i.ImagePositionPatient] for i in images])
    normal = hd.spatial.get_normal_vector(
        [float(v) for v in images[0].ImageOrientationPatient],
        index_convention=hd.spatial.VOLUME_INDEX_CONVENTION,
    )
    distances, order = np.unique(positions @ normal, return_index=True)
    if len(distances) != len(images):
        raise _error(algorithm, "two instances of the series have one position")
    return [int(index) for index in order]


def _set_spacing(template: Dataset, images: list[Dataset]) -> None:
    """The spacing of all the planes (the template's is that of its one plane)."""
    measures = template.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    if len(images) < 2:
        return
    spacing, _ = hd.spatial.get_volume_positions(
        image_positions=[[float(v) for v in i.ImagePositionPatient] for i in images],
        image_orientation=[float(v) for v in images[0].ImageOrientationPatient],
    )
    if spacing is not None:
        measures.SpacingBetweenSlices = format_number_as_ds(spacing)
    elif "SpacingBetweenSlices" in measures:
        del measures.SpacingBetweenSlices


Frame = tuple[int, int, Dataset, int | None]  # segment number, plane index, image, offset


def _frames(masks: SeriesMasks, images: list[Dataset], planes: list[int]) -> list[Frame]:
    per_image = [masks.frames[str(image.SOPInstanceUID)] for image in images]
    everything_empty = not any(per_image)
    included = [plane for plane in planes if everything_empty or per_image[plane]]
    frames: list[Frame] = []
    for segment_index in range(len(masks.class_names)):
        for dim_index, plane in enumerate(included, start=1):
            offset = per_image[plane].get(segment_index)
            if offset is not None or everything_empty:
                frames.append((segment_index + 1, dim_index, images[plane], offset))
    return frames


def _tag(tag: Any) -> bytes:
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF)


def _write_pixel_data(file: IO[bytes], frames: list[Frame], spool: MaskSpool, pixels: int) -> None:
    """BINARY pixel data: one bit per pixel, frames back to back (a frame whose size is
    not a multiple of 8 pixels starts inside the previous frame's last byte)."""
    size = (len(frames) * pixels + 7) // 8
    file.write(_tag(_PIXEL_DATA) + b"OB\0\0" + struct.pack("<I", size + size % 2))
    chunks = _packed(frames, spool, pixels)
    while batch := list(itertools.islice(chunks, _FRAMES_PER_WRITE)):
        file.write(b"".join(batch))
    if size % 2:
        file.write(b"\0")


def _packed(frames: list[Frame], spool: MaskSpool, pixels: int) -> Iterator[bytes]:
    frame_bytes = (pixels + 7) // 8
    if pixels % 8 == 0:
        for *_, offset in frames:
            yield bytes(frame_bytes) if offset is None else spool.read_frame(offset, frame_bytes)
        return
    carry = np.zeros(0, dtype=np.uint8)
    for *_, offset in frames:
        if offset is None:
            bits = np.zeros(pixels, dtype=np.uint8)
        else:
            packed = np.frombuffer(spool.read_frame(offset, frame_bytes), dtype=np.uint8)
            bits = np.unpackbits(packed, bitorder="little")[:pixels]
        bits = np.concatenate([carry, bits])
        whole = len(bits) - len(bits) % 8
        yield np.packbits(bits[:whole], bitorder="little").tobytes()
        carry = bits[whole:]
    if len(carry):
        yield np.packbits(carry, bitorder="little").tobytes()


def _source(headers: Mapping[str, Dataset], uid: str, model_id: str) -> Dataset:
    header = headers.get(uid)
    if header is None:
        raise ModelError(
            f"model {model_id}: the result names instance {uid[:64]},"
            " which is not in the series sent to it",
            code=ErrorCode.MODEL_BAD_RESPONSE,
        )
    return header


def _error(algorithm: Algorithm, message: str) -> ModelError:
    return ModelError(f"model {algorithm.model_id}: {message}", code=ErrorCode.MODEL_BAD_RESPONSE)
