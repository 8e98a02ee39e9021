"""Which instance a Part-10 file is, read cheaply: to skip instances already sent
when a broken retrieval is resumed by asking the PACS again."""

from __future__ import annotations

import hashlib
import struct

_PREAMBLE = 128
_MAGIC = b"DICM"
# Explicit VR little endian, as the file meta group always is (PS3.10 7.1).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})  # fmt: skip
_MEDIA_STORAGE_SOP_INSTANCE_UID = (0x0002, 0x0003)
# The file meta group is a few hundred bytes; past this, stop looking.
_META_SCAN_LIMIT = 16 * 1024


def instance_key(part10: bytes) -> bytes:
    """The file's MediaStorageSOPInstanceUID, or a digest of the whole file when it
    has none (not a proper Part-10 file): equal keys mean the same instance."""
    uid = media_storage_sop_instance_uid(part10)
    if uid is not None:
        return uid
    return hashlib.blake2b(part10, digest_size=16).digest()


def media_storage_sop_instance_uid(part10: bytes) -> bytes | None:
    """(0002,0003) from the file meta group, or None.

    >>> header = b"\\0" * 128 + b"DICM" + b"\\2\\0\\3\\0UI" + struct.pack("<H", 6) + b"1.2.3\\0"
    >>> media_storage_sop_instance_uid(header)
    b'1.2.3'
    """
    if part10[_PREAMBLE : _PREAMBLE + 4] != _MAGIC:
        return None
    offset = _PREAMBLE + 4
    end = min(len(part10), _META_SCAN_LIMIT)
    while offset + 8 <= end:
        group, element = struct.unpack_from("<HH", part10, offset)
        if group != 0x0002:
            return None
        vr = part10[offset + 4 : offset + 6]
        if vr in _LONG_VRS:
            if offset + 12 > end:
                return None
            (length,) = struct.unpack_from("<I", part10, offset + 8)
            offset += 12
        else:
            (length,) = struct.unpack_from("<H", part10, offset + 6)
            offset += 8
        if (group, element) == _MEDIA_STORAGE_SOP_INSTANCE_UID:
            value = part10[offset : offset + length].rstrip(b"\0 ")
            return value or None
        offset += length
    return None
