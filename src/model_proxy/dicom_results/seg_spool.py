"""The masks of a segmentation result, kept as bit-packed frames in a file.

Each instance's ``segments`` (text from :mod:`json_split`) is parsed on its
own, each mask checked and packed to one bit per pixel (np.packbits, DICOM's
little-endian bit order: 32 KiB for 512x512) and appended to a spool file
under the data dir; all-zero masks are not written. What stays in memory per
frame is its offset in the file. ``seg_writer.py`` then writes the SEG from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from model_proxy.dicom_results.mask_text import Mask, lift_masks
from model_proxy.errors import ErrorCode, ModelError


@dataclass
class SeriesMasks:
    """What one series of the result holds: per instance, per segment index, the
    offset of its packed frame in the spool (empty masks have none)."""

    study: str
    series: str
    shape: tuple[int, int] | None = None
    # Segments numbered in the order their className first appears in the series.
    class_names: list[str] = field(default_factory=list)
    colors: dict[str, str] = field(default_factory=dict)
    frames: dict[str, dict[int, int]] = field(default_factory=dict)
    segments_overlap: bool = False


class MaskSpool:
    """Packed frames of every series of one result, in one file opened for it."""

    def __init__(self, path: Path, model_id: str) -> None:
        self.path = path
        self._model_id = model_id
        self._file: IO[bytes] = open(path, "w+b")  # noqa: SIM115  (closed by close())
        self._size = 0
        self.series: dict[tuple[str, str], SeriesMasks] = {}

    def add_instance(self, study: str, series: str, sop: str, value: bytes) -> None:
        """Parse one instance's value and spool its masks (CPU-bound: run in a thread)."""
        # The masks read straight from their text; orjson parses the rest.
        text, marker, lifted = lift_masks(value)
        try:
            node = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise self._error("the result is not JSON; it cannot be converted to DICOM") from None
        segments = node.get("segments") if isinstance(node, dict) else None
        if not isinstance(segments, list):
            return
        masks = self.series.setdefault((study, series), SeriesMasks(study, series))
        union: np.ndarray[Any, np.dtype[np.bool_]] | None = None
        merged: dict[int, np.ndarray[Any, np.dtype[np.bool_]]] = {}
        for segment in segments:
            name = _class_name(segment)
            if name not in masks.colors:
                masks.class_names.append(name)
                masks.colors[name] = str(segment.get("color") or "")
            mask = self._mask(segment, sop, masks, marker, lifted)
            index = masks.class_names.index(name)
            # A className given twice on one instance: the union of its masks.
            merged[index] = merged[index] | mask if index in merged else mask
        instance_frames = masks.frames.setdefault(sop, {})
        for index, mask in merged.items():
            if union is not None and (union & mask).any():
                masks.segments_overlap = True
            union = mask if union is None else union | mask
            if mask.any():
                instance_frames[index] = self._write(np.packbits(mask, bitorder="little"))

    def read_frame(self, offset: int, size: int) -> bytes:
        self._file.seek(offset)
        return self._file.read(size)

    def close(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)

    def _write(self, packed: np.ndarray[Any, np.dtype[np.uint8]]) -> int:
        offset = self._size
        self._file.seek(offset)
        self._file.write(packed.tobytes())
        self._size += packed.size
        return offset

    def _mask(
        self, segment: Any, sop: str, masks: SeriesMasks, marker: str, lifted: list[Mask]
    ) -> Mask:
        points = segment.get("points") if isinstance(segment, dict) else None
        if isinstance(points, str) and points.startswith(marker):
            mask: np.ndarray[Any, Any] = lifted[int(points[len(marker) :])]
        else:
            try:
                mask = np.asarray(points, dtype=np.uint8)
            except (TypeError, ValueError, OverflowError):
                mask = np.zeros(0, dtype=np.uint8)
        if masks.shape is None and mask.ndim == 2 and mask.size:
            masks.shape = (int(mask.shape[0]), int(mask.shape[1]))
        if mask.shape != masks.shape or mask.max(initial=0) > 1:
            expected = "x".join(map(str, masks.shape or ()))
            raise self._error(
                f"a segment of instance {sop[:64]} is not a {expected or 'two-dimensional'}"
                " mask of 0 and 1 (one size per series)"
            )
        return mask.astype(np.bool_)

    def _error(self, message: str) -> ModelError:
        return ModelError(f"model {self._model_id}: {message}", code=ErrorCode.MODEL_BAD_RESPONSE)


def _class_name(segment: Any) -> str:
    name = segment.get("className") if isinstance(segment, dict) else None
    return name if isinstance(name, str) and name else "unnamed"
