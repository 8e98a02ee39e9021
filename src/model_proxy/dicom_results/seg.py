"""A segmentation result (docs/compatibility.md §6) as one DICOM Segmentation per series.

``{SOPInstanceUID: {"segments": [{"points": <rows x columns of 0/1>, "color": css,
"className": name}]}}`` becomes a BINARY Segmentation: one segment per className
(in the order they first appear), its display colour from the CSS colour, a frame
per source instance and segment where the mask is not empty, each frame referencing
its source instance and placed by that instance's geometry (highdicom derives the
plane positions from the source headers).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from model_proxy.dicom_results.uids import new_uid
from model_proxy.errors import ErrorCode, ModelError

logger = logging.getLogger(__name__)

# Codes the proxy makes up for classNames: a private coding scheme (PS3.16 8.2,
# designators starting "99"); the className is the code meaning.
PRIVATE_SCHEME = "99MODELPROXY"
MANUFACTURER = "model-proxy"
# The category of every segment: the proxy cannot know what a className denotes.
SEGMENT_CATEGORY = hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure")
SEG_SERIES_NUMBER = 9001


@dataclass(frozen=True)
class Algorithm:
    """Who made the result: models.json ``name`` / ``version`` (defaults: the id, "1")."""

    model_id: str
    name: str
    version: str


def class_code(class_name: str) -> hd.sr.CodedConcept:
    """A stable private code for a className (the same name gives the same code)."""
    value = hashlib.sha256(class_name.encode()).hexdigest()[:16]
    return hd.sr.CodedConcept(value, PRIVATE_SCHEME, class_name[:64] or "unnamed")


def build_segmentation(
    series_node: Mapping[str, Any],
    sources: Mapping[str, Dataset],
    algorithm: Algorithm,
    uid_root: str,
) -> Dataset | None:
    """The SEG of one series of the result, or None when no instance has segments.

    ``sources`` maps the SOPInstanceUIDs of the series to their headers (no pixel
    data needed). Raises ModelError when the result does not fit the images.
    """
    instances = [
        (uid, node["segments"])
        for uid, node in series_node.items()
        if isinstance(node, dict) and isinstance(node.get("segments"), list)
    ]
    if not instances:
        return None
    class_names: list[str] = []
    colors: dict[str, str] = {}
    for _, segments in instances:
        for segment in segments:
            name = _class_name(segment)
            if name not in colors:
                class_names.append(name)
                colors[name] = str(segment.get("color") or "")
    if not class_names:
        return None
    images: list[Dataset] = []
    for uid, _ in instances:
        header = sources.get(uid)
        if header is None:
            raise ModelError(
                f"model {algorithm.model_id}: the result names instance {uid[:64]},"
                " which is not in the series sent to it",
                code=ErrorCode.MODEL_BAD_RESPONSE,
                upstream=None,
            )
        images.append(header)
    pixels = _pixel_array(instances, images, class_names, algorithm.model_id)
    descriptions = [
        segment_description(number, name, colors[name], algorithm)
        for number, name in enumerate(class_names, start=1)
    ]
    return hd.seg.Segmentation(
        source_images=images,
        pixel_array=pixels,
        segment_descriptions=descriptions,
        **seg_attributes(algorithm, uid_root),
    )


def seg_attributes(algorithm: Algorithm, uid_root: str) -> dict[str, Any]:
    """What every SEG of ours says about itself, built whole here or streamed
    (seg_writer.py): new UIDs, the algorithm as device, the encoding."""
    return {
        "segmentation_type": hd.seg.SegmentationTypeValues.BINARY,
        "series_instance_uid": new_uid(uid_root),
        "series_number": SEG_SERIES_NUMBER,
        "sop_instance_uid": new_uid(uid_root),
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": algorithm.name[:64],
        "software_versions": algorithm.version[:64],
        "device_serial_number": algorithm.model_id[:64],
        "series_description": f"{algorithm.name} segmentation"[:64],
        "content_label": "SEGMENTATION",
        "content_description": f"{algorithm.name} {algorithm.version}"[:64],
        # Bit-packed: one bit per pixel, frames that are all zero left out.
        "transfer_syntax_uid": ExplicitVRLittleEndian,
        "omit_empty_frames": True,
    }


def _class_name(segment: Any) -> str:
    name = segment.get("className") if isinstance(segment, dict) else None
    return name if isinstance(name, str) and name else "unnamed"


def _pixel_array(
    instances: Sequence[tuple[str, list[Any]]],
    images: Sequence[Dataset],
    class_names: Sequence[str],
    model_id: str,
) -> np.ndarray[Any, np.dtype[np.bool_]]:
    first = images[0]
    rows, columns = int(first.Rows), int(first.Columns)
    index = {name: i for i, name in enumerate(class_names)}
    pixels = np.zeros((len(instances), rows, columns, len(class_names)), dtype=np.bool_)
    for frame, ((uid, segments), image) in enumerate(zip(instances, images, strict=True)):
        if (int(image.Rows), int(image.Columns)) != (rows, columns):
            raise ModelError(
                f"model {model_id}: instances of one series differ in size; a DICOM"
                " Segmentation needs one size",
                code=ErrorCode.MODEL_BAD_RESPONSE,
            )
        for segment in segments:
            mask = _mask(segment, rows, columns, uid, model_id)
            # A className given twice on one instance: the union of its masks.
            pixels[frame, :, :, index[_class_name(segment)]] |= mask
    return pixels


def _mask(
    segment: Any, rows: int, columns: int, uid: str, model_id: str
) -> np.ndarray[Any, np.dtype[np.bool_]]:
    points = segment.get("points") if isinstance(segment, dict) else None
    try:
        mask = np.asarray(points, dtype=np.uint8)
    except (TypeError, ValueError, OverflowError):
        mask = np.zeros(0, dtype=np.uint8)
    if mask.shape != (rows, columns) or mask.max(initial=0) > 1:
        raise ModelError(
            f"model {model_id}: a segment of instance {uid[:64]} is not a {rows}x{columns}"
            " mask of 0 and 1",
            code=ErrorCode.MODEL_BAD_RESPONSE,
        )
    return mask.astype(np.bool_)


def segment_description(
    number: int, class_name: str, color: str, algorithm: Algorithm
) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=class_name[:64],
        segmented_property_category=SEGMENT_CATEGORY,
        segmented_property_type=class_code(class_name),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm.name[:64],
            family=codes.cid7162.ArtificialIntelligence,
            version=algorithm.version[:64],
            source=MANUFACTURER,
        ),
        display_color=_color(color),
    )


def _color(css: str) -> hd.color.CIELabColor | None:
    try:
        return hd.color.CIELabColor.from_string(css)
    except ValueError:
        # The viewer then picks a colour; the segment is still valid.
        logger.info("DICOM SEG: colour %r is not a CSS colour; left to the viewer", css[:40])
        return None
