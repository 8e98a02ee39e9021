"""The original's wire format for one DICOM instance (docs/compatibility.md §5.1).

An instance travels as a JSON *string* whose text is the JSON array of the
Part-10 file's byte values. Model APIs decode it with
``bytes(json.loads(instance))``.

Every byte value is written in a fixed width of four characters, digits
right-aligned and followed by a comma: ``0`` is ``"  0,"``, ``255`` is
``"255,"``. Spaces are JSON whitespace, so ``json.loads`` gives exactly the
list a compact encoder would; the last comma becomes ``]``::

    >>> encode_instance(bytes([0, 10, 255]))
    b'"[  0, 10,255]"'

Why fixed width (measured, see docs/performance.md): writing it is a table
lookup, ``numpy.take`` of one 8-byte token per *pair* of input bytes, which
runs at memory speed and releases the GIL, so two instances encode on two
cores at once: 1,650-1,900 MB/s of DICOM per core on the benchmark VM. A
compact encoder (orjson over a numpy array) does 100-270 MB/s there and holds
the GIL. The fixed text is larger (4 bytes per byte
against about 2.6 for CT pixel data), but the reference decoder's cost is
the creation of one Python int per byte, so Model APIs decode both at the
same speed.

The text holds only digits, spaces, commas and brackets: nothing inside the
surrounding JSON string needs escaping.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

__all__ = [
    "OPENING",
    "SLICE_BYTES",
    "encode_instance",
    "encode_range",
    "encode_range_into",
    "encoded_size",
    "slice_ranges",
    "slice_text_size",
]

# Instances are encoded in slices of this many input bytes: a slice is one unit
# of work for a thread and one chunk of the request body (4 MiB of text).
SLICE_BYTES = 1 << 20


# Explicit little-endian types: a pair of input bytes read as "<u2" has the
# first byte low, and a "<u8" token is written with its low half first.
_PAIR = np.dtype("<u2")
_PAIR_TOKEN = np.dtype("<u8")

# Each thread's index array for numpy.take, which wants intp indices: given
# pairs, numpy would allocate a temporary of 8 bytes per pair on every call,
# and fresh memory costs page faults (see models/slice_buffers.py).
_scratch = threading.local()


def _pair_tokens() -> npt.NDArray[np.uint64]:
    """The 8-byte token of every pair of bytes (512 KiB): ``"  0,255,"`` for (0, 255)."""
    single = np.array(
        [int.from_bytes(f"{value:>3},".encode(), "little") for value in range(256)],
        dtype=np.uint64,
    )
    pairs = np.arange(65536)
    tokens: npt.NDArray[np.uint64] = single[pairs & 0xFF] | (single[pairs >> 8] << np.uint64(32))
    return tokens.astype(_PAIR_TOKEN)


_PAIR_TOKENS = _pair_tokens()

# What starts every instance's text; encode_range writes the rest.
OPENING = b'"['


def encoded_size(length: int) -> int:
    """Bytes of text for an instance of ``length`` bytes, quotes included.

    >>> encoded_size(3), len(encode_instance(bytes(3)))
    (15, 15)
    """
    return 4 * length + 3 if length else 4


def encode_range(part10: bytes | memoryview, start: int, stop: int) -> bytearray:
    """The tokens of ``part10[start:stop]``; when ``stop`` is the end of the
    instance, the last comma becomes ``]`` and the closing quote follows.

    An instance's text is OPENING followed by the ranges of consecutive slices:

    >>> data = bytes(range(7))
    >>> text = OPENING + encode_range(data, 0, 4) + encode_range(data, 4, 7)
    >>> text == encode_instance(data)
    True
    """
    out = bytearray(slice_text_size(len(part10), start, stop))
    encode_range_into(part10, start, stop, out)
    return out


def encode_range_into(
    part10: bytes | memoryview, start: int, stop: int, out: bytearray | memoryview
) -> int:
    """Write what ``encode_range`` returns at the start of ``out``; return its length.

    The proxy encodes into recycled buffers (``models/slice_buffers.py``): on
    a fresh buffer the kernel's page faults cost more than the encoding.
    ``out`` must hold ``slice_text_size(len(part10), start, stop)`` bytes; it
    is written through a uint64 view, so it should start 8-byte aligned, as a
    bytearray's storage does.

    >>> out = bytearray(16)
    >>> length = encode_range_into(bytes([1, 200]), 0, 2, out)
    >>> bytes(out[:length])
    b'  1,200]"'
    """
    total = len(part10)
    length = slice_text_size(total, start, stop)
    if len(out) < length:
        raise ValueError(f"the output buffer holds {len(out)} bytes, the range needs {length}")
    if total == 0:
        out[:2] = b']"'
        return 2
    source = np.frombuffer(part10, dtype=np.uint8)[start:stop]
    _write_tokens(source, np.frombuffer(out, dtype=np.uint8)[: 4 * len(source)])
    if stop >= total:
        out[length - 2 : length] = b']"'
    return length


def slice_text_size(total: int, start: int, stop: int) -> int:
    """Bytes of text ``encode_range`` writes for that range of an instance of ``total`` bytes.

    >>> slice_text_size(3, 0, 2), slice_text_size(3, 2, 3), slice_text_size(0, 0, 0)
    (8, 5, 2)
    """
    if total == 0:
        return 2
    return 4 * (stop - start) + (1 if stop >= total else 0)


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
    b'"[  0,  0,  1]"'
    """
    return OPENING + encode_range(part10, 0, len(part10))


def _write_tokens(source: npt.NDArray[np.uint8], out: npt.NDArray[np.uint8]) -> None:
    """Fill ``out`` (4 bytes per input byte) with the tokens of ``source``."""
    pairs = len(source) // 2
    if pairs:
        index = _pair_index(pairs)
        index[:] = source[: 2 * pairs].view(_PAIR)
        # mode="clip" because every pair is a valid index (< 65,536): it skips the
        # per-index range check of the default mode, about 1.5x faster (measured).
        np.take(_PAIR_TOKENS, index, out=out[: 8 * pairs].view(_PAIR_TOKEN), mode="clip")
    if len(source) % 2:
        odd = int(_PAIR_TOKENS[int(source[-1])])  # the pair (value, 0): its first half
        out[8 * pairs :] = np.frombuffer(odd.to_bytes(8, "little")[:4], dtype=np.uint8)


def _pair_index(pairs: int) -> npt.NDArray[np.intp]:
    """This thread's index array, ``pairs`` long (4 MiB kept per thread for a slice)."""
    if pairs > SLICE_BYTES // 2:
        return np.empty(pairs, dtype=np.intp)  # a whole large instance: not kept
    index: npt.NDArray[np.intp] | None = getattr(_scratch, "index", None)
    if index is None:
        index = _scratch.index = np.empty(SLICE_BYTES // 2, dtype=np.intp)
    return index[:pairs]
