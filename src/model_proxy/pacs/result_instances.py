"""Instances that are results rather than images: SEG, SR, RT structure sets.

Once the proxy has stored a SEG or an SR in a study (docs/dicom-outputs.md), a
later study-level request would send it to the model with the images, and a
model that reads images refuses it. Study retrievals leave such instances out
unless the model asks for them (models.json ``"sendResultObjects": true``;
docs/compatibility.md). Told apart by their SOP Class, read from the Part-10
file meta (a few hundred bytes at the start), so nothing is parsed further.
"""

from __future__ import annotations

import io
import struct
import warnings

import pydicom
from pydicom.errors import InvalidDicomError

# PS3.4 B.5: Segmentation, Surface Segmentation, RT Structure Set; every SR
# Storage class, Key Object Selection included, is under 1.2.840.10008.5.1.4.1.1.88.
RESULT_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.66.4",
        "1.2.840.10008.5.1.4.1.1.66.5",
        "1.2.840.10008.5.1.4.1.1.481.3",
    }
)
SR_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."

_PREAMBLE = 128
# Explicit VR with a 4-byte length after two reserved bytes (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"})


def is_result_sop_class(sop_class_uid: str) -> bool:
    """
    >>> is_result_sop_class("1.2.840.10008.5.1.4.1.1.88.33")  # Comprehensive SR
    True
    >>> is_result_sop_class("1.2.840.10008.5.1.4.1.1.2")  # CT Image
    False
    """
    return sop_class_uid in RESULT_SOP_CLASSES or sop_class_uid.startswith(SR_SOP_CLASS_PREFIX)


def is_result_instance(part10: bytes) -> bool:
    """True for a Part-10 file whose SOP Class is a result's (see above)."""
    sop_class = _media_storage_sop_class(part10)
    if sop_class is None:
        sop_class = _sop_class_parsed(part10)
    return sop_class is not None and is_result_sop_class(sop_class)


def _media_storage_sop_class(part10: bytes) -> str | None:
    """(0002,0002) from the file meta, or None when the file has no usual meta."""
    if part10[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
        return None
    pos = _PREAMBLE + 4
    end = min(len(part10), pos + 4096)
    while pos + 8 <= end:
        group, element = struct.unpack_from("<HH", part10, pos)
        if group != 0x0002:
            return None
        vr = part10[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", part10, pos + 8)
            value_at = pos + 12
        else:
            (length,) = struct.unpack_from("<H", part10, pos + 6)
            value_at = pos + 8
        if element == 0x0002:
            return part10[value_at : value_at + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos = value_at + length
    return None


def _sop_class_parsed(part10: bytes) -> str | None:
    """SOPClassUID of a file without the usual meta (rare): parsed by pydicom."""
    try:
        with warnings.catch_warnings():
            # Without a meta, pydicom guesses the VR encoding and says so: expected here.
            warnings.simplefilter("ignore")
            header = pydicom.dcmread(
                io.BytesIO(part10),
                stop_before_pixels=True,
                force=True,
                specific_tags=["SOPClassUID"],
            )
    except (InvalidDicomError, ValueError, EOFError, struct.error):
        return None
    value = header.get("SOPClassUID")
    return str(value) if value is not None else None
