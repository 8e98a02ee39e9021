"""The original's wire format for one DICOM instance (docs/compatibility.md §5.1).

An instance travels as a JSON *string* whose text is the JSON array of the
Part-10 file's byte values, written compactly, as ``json.dumps`` or orjson
would write it. Model APIs decode it with ``bytes(json.loads(instance))``::

    >>> encode_instance(bytes([0, 10, 255]))
    b'"[0,10,255]"'

The text is written by a small compiled loop (``models/_compact.c``) that
releases the GIL, so two instances encode on two cores at once, as fast per
core as the fixed-width table lookup it replaced (``"[  0, 10,255]"``, a third
more bytes to send and to parse; measured in docs/performance.md, "The
encoder"). Where the extension could not be built (no C compiler at install
time) the same text comes from orjson, several times slower and holding the
GIL: ``IMPLEMENTATION`` says which one runs.

The text holds only digits, commas and brackets: nothing inside the
surrounding JSON string needs escaping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
import orjson

__all__ = [
    "IMPLEMENTATION",
    "OPENING",
    "SLICE_BYTES",
    "encode_instance",
    "encode_range",
    "encode_range_into",
    "max_slice_text_size",
    "slice_ranges",
]

# Instances are encoded in slices of this many input bytes: a slice is one unit
# of work for a thread and one chunk of the request body (up to 4 MiB of text).
SLICE_BYTES = 1 << 20

# What starts every instance's text; encode_range writes the rest.
OPENING = b'"['


def _write_values_with_orjson(source: bytes | memoryview, out: bytearray | memoryview) -> int:
    """``"0,10,255,"`` for the bytes 0, 10, 255, at the start of ``out``; its length."""
    if not len(source):
        return 0
    array = orjson.dumps(np.frombuffer(source, dtype=np.uint8), option=orjson.OPT_SERIALIZE_NUMPY)
    length = len(array) - 1  # without "[", with "]" turned into the last comma
    out[: length - 1] = memoryview(array)[1:-1]
    out[length - 1 : length] = b","
    return length


_write_values: Callable[[bytes | memoryview, bytearray | memoryview], int]
try:
    from model_proxy.models._compact import write_values as _write_values
except ImportError:  # pragma: no cover - the install had no C compiler
    _write_values = _write_values_with_orjson

# "compiled" or "orjson": printed by the benchmarks, logged at start-up when slow.
IMPLEMENTATION: Final = "orjson" if _write_values is _write_values_with_orjson else "compiled"


def max_slice_text_size(total: int, start: int, stop: int) -> int:
    """The most bytes of text ``encode_range`` writes for that range of an
    instance of ``total`` bytes (``"255,"`` for every byte): the buffer to give it.

    >>> max_slice_text_size(3, 0, 2), max_slice_text_size(3, 2, 3), max_slice_text_size(0, 0, 0)
    (8, 5, 2)
    """
    if total == 0:
        return 2
    return 4 * (stop - start) + (1 if stop >= total else 0)


def encode_range(part10: bytes | memoryview, start: int, stop: int) -> bytes:
    """The text of ``part10[start:stop]``; when ``stop`` is the end of the
    instance, the last comma becomes ``]`` and the closing quote follows.

    An instance's text is OPENING followed by the ranges of consecutive slices:

    >>> data = bytes(range(7))
    >>> text = OPENING + encode_range(data, 0, 4) + encode_range(data, 4, 7)
    >>> text == encode_instance(data)
    True
    """
    out = bytearray(max_slice_text_size(len(part10), start, stop))
    return bytes(out[: encode_range_into(part10, start, stop, out)])


def encode_range_into(
    part10: bytes | memoryview, start: int, stop: int, out: bytearray | memoryview
) -> int:
    """Write what ``encode_range`` returns at the start of ``out``; return its length.

    The proxy encodes into recycled buffers (``models/slice_buffers.py``): on
    a fresh buffer the kernel's page faults cost more than the encoding.
    ``out`` must hold ``max_slice_text_size(len(part10), start, stop)`` bytes.

    >>> out = bytearray(16)
    >>> length = encode_range_into(bytes([1, 200]), 0, 2, out)
    >>> bytes(out[:length])
    b'1,200]"'
    """
    total = len(part10)
    needed = max_slice_text_size(total, start, stop)
    if len(out) < needed:
        raise ValueError(f"the output buffer holds {len(out)} bytes, the range needs {needed}")
    if total == 0:
        out[:2] = b']"'
        return 2
    length = _write_values(memoryview(part10)[start:stop], out)
    if stop >= total:
        out[length - 1 : length + 1] = b']"'  # the last comma closes the array
        length += 1
    return length


def slice_ranges(size: int) -> list[tuple[int, int]]:
    """The (start, stop) ranges an instance of ``size`` bytes is encoded in.

    >>> slice_ranges(3), len(slice_ranges(SLICE_BYTES + 1)), slice_ranges(0)
    ([(0, 3)], 2, [(0, 0)])
    """
    return [(start, min(start + SLICE_BYTES, size)) for start in range(0, size, SLICE_BYTES)] or [
        (0, 0)
    ]


def encode_instance(part10: bytes | memoryview) -> bytes:
    """The JSON string (quotes included) that carries ``part10`` to a model.

    One piece, for tests and small bodies; the proxy streams an instance in
    slices instead (``encode_range_into``).

    >>> encode_instance(bytes([0, 0, 1]))
    b'"[0,0,1]"'
    """
    return OPENING + encode_range(part10, 0, len(part10))
