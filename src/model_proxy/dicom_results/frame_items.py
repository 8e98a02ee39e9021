"""The items of a SEG's Per-Frame Functional Groups Sequence, encoded from one template.

The items of a BINARY SEG are all alike but for five values: the source instance
(SOP Class and Instance UID), the dimension index values, the image position and
the segment number. pydicom takes some ten milliseconds to deep-copy and write one
item as a dataset, 40 s for the 4,000 items of a 2,000-slice series with two
segments. Here the template item is encoded once, in pieces; an item is those
pieces with its five values encoded in between and the lengths of the sequences
around them set: the bytes pydicom writes for the same item (checked in
tests/unit/test_seg_stream.py)::

    encoder = FrameItemEncoder(template_item)
    file.write(encoder.encode(segment_number=1, plane=3, image=source_header))
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

# Where the values that differ from frame to frame are (keywords from the item
# down), and the name each is given in the values of one frame.
_VARYING: dict[tuple[str, ...], str] = {
    ("DerivationImageSequence", "SourceImageSequence", "ReferencedSOPClassUID"): "class",
    ("DerivationImageSequence", "SourceImageSequence", "ReferencedSOPInstanceUID"): "instance",
    ("FrameContentSequence", "DimensionIndexValues"): "dimension",
    ("PlanePositionSequence", "ImagePositionPatient"): "position",
    ("SegmentIdentificationSequence", "ReferencedSegmentNumber"): "segment",
}
_ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
_NUMBERS = {"UL": "I", "US": "H"}  # struct formats of the VRs of the frame numbers


@dataclass(frozen=True)
class _Sequence:
    """A sequence holding a varying value: its tag and VR, and its items' parts."""

    header: bytes
    items: list[list[_Part]]


_Part = bytes | str | _Sequence  # encoded as is, a varying value by name, a sequence


class FrameItemEncoder:
    """Encodes per-frame items like ``template`` (Explicit VR Little Endian)."""

    def __init__(self, template: Dataset) -> None:
        self._parts = _compile(template, ())
        self._vrs = _varying_vrs(template)
        self._images: dict[str, tuple[bytes, bytes, bytes]] = {}

    def encode(self, segment_number: int, plane: int, image: Dataset) -> bytes:
        """The item of the frame of segment ``segment_number`` on the ``plane``-th
        plane (from 1), whose source instance is ``image``: tag, length, content."""
        uid = str(image.SOPInstanceUID)
        from_image = self._images.get(uid)
        if from_image is None:
            # Each image is the source of one frame per segment: encoded once.
            from_image = (
                self._element("class", image.SOPClassUID),
                self._element("instance", image.SOPInstanceUID),
                self._element("position", image.ImagePositionPatient),
            )
            self._images[uid] = from_image
        values = {
            "class": from_image[0],
            "instance": from_image[1],
            "position": from_image[2],
            "dimension": self._element("dimension", [segment_number, plane]),
            "segment": self._element("segment", segment_number),
        }
        return _item(_render(self._parts, values))

    def _element(self, name: str, value: object) -> bytes:
        tag, vr = self._vrs[name]
        if vr in _NUMBERS and isinstance(value, (int, list)):
            # The numbers of every frame, packed here: pydicom takes half a millisecond.
            numbers = value if isinstance(value, list) else [value]
            data = struct.pack(f"<{len(numbers)}{_NUMBERS[vr]}", *numbers)
            return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(data)) + data
        return _encoded(DataElement(tag, vr, value))


def _compile(dataset: Dataset, path: tuple[str, ...]) -> list[_Part]:
    parts: list[_Part] = []
    for element in dataset:
        keys = (*path, element.keyword)
        if keys in _VARYING:
            parts.append(_VARYING[keys])
        elif element.VR == "SQ" and any(varying[: len(keys)] == keys for varying in _VARYING):
            header = struct.pack("<HH", element.tag.group, element.tag.element) + b"SQ\0\0"
            parts.append(_Sequence(header, [_compile(item, keys) for item in element.value]))
        else:
            parts.append(_encoded(element))
    return parts


def _varying_vrs(template: Dataset) -> dict[str, tuple[int, str]]:
    """The tag and VR of each varying value, as the template has them."""
    found: dict[str, tuple[int, str]] = {}

    def visit(dataset: Dataset, path: tuple[str, ...]) -> None:
        for element in dataset:
            keys = (*path, element.keyword)
            if keys in _VARYING:
                found[_VARYING[keys]] = (int(element.tag), str(element.VR))
            elif element.VR == "SQ":
                for item in element.value:
                    visit(item, keys)

    visit(template, ())
    missing = set(_VARYING.values()) - set(found)
    if missing:
        raise ValueError(f"the per-frame item has no {', '.join(sorted(missing))}")
    return found


def _render(parts: list[_Part], values: dict[str, bytes]) -> bytes:
    pieces: list[bytes] = []
    for part in parts:
        if isinstance(part, bytes):
            pieces.append(part)
        elif isinstance(part, str):
            pieces.append(values[part])
        else:
            items = b"".join(_item(_render(item, values)) for item in part.items)
            pieces += [part.header, struct.pack("<I", len(items)), items]
    return b"".join(pieces)


def _item(content: bytes) -> bytes:
    return _ITEM + struct.pack("<I", len(content)) + content


def _encoded(element: DataElement) -> bytes:
    """One element as write_dataset writes it in an item (Explicit VR Little Endian)."""
    single = Dataset()
    single.add(element)
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_dataset(buffer, single)
    return buffer.getvalue()
