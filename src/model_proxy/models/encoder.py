"""The original's wire format for one DICOM instance (compat-contract section 5.1).

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
cores at once. A compact encoder (orjson over a numpy array) is about 2.5x
slower per core and holds the GIL. The fixed text is larger (4 bytes per byte
against about 2.6 for CT pixel data), but the reference decoder's cost is
the creation of one Python int per byte, so Model APIs decode both at the
same speed.

The text holds only digits, spaces, commas and brackets: nothing inside the
surrounding JSON string needs escaping.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "OPENING",
    "SLICE_BYTES",
    "encode_instance",
    "encode_range",
    "encoded_size",
    "slice_ranges",
]

# Instances are encoded in slices of this many input bytes: a slice is one unit
# of work for a thread and one chunk of the request body (4 MiB of text).
SLICE_BYTES = 1 << 20

# Block of input bytes per numpy.take call: its intp index copy stays in cache.
_BLOCK_PAIRS = 1 << 14


# Explicit little-endian types: a pair of input bytes read as "<u2" has the
# first byte low, and a "<u8" token is written with its low half first.
_PAIR = np.dtype("<u2")
_PAIR_TOKEN = np.dtype("<u8")


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
    total = len(part10)
    if total == 0:
        return bytearray(b']"')
    source = np.frombuffer(part10, dtype=np.uint8)[start:stop]
    last = stop >= total
    # The buffer starts at the first token so that 8-byte tokens are aligned.
    out = bytearray(4 * len(source) + last)
    _write_tokens(source, np.frombuffer(out, dtype=np.uint8)[: 4 * len(source)])
    if last:
        out[-2:] = b']"'
    return out


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

    >>> encode_instance(bytes([0, 0, 1]))
    b'"[  0,  0,  1]"'
    """
    return OPENING + encode_range(part10, 0, len(part10))


def _write_tokens(source: npt.NDArray[np.uint8], out: npt.NDArray[np.uint8]) -> None:
    """Fill ``out`` (4 bytes per input byte) with the tokens of ``source``."""
    pairs = len(source) // 2
    if pairs:
        pair_values = source[: 2 * pairs].view(_PAIR)
        pair_out = out[: 8 * pairs].view(_PAIR_TOKEN)
        index = np.empty(min(pairs, _BLOCK_PAIRS), dtype=np.intp)
        for begin in range(0, pairs, _BLOCK_PAIRS):
            block = pair_values[begin : begin + _BLOCK_PAIRS]
            block_index = index[: len(block)]
            block_index[:] = block
            np.take(_PAIR_TOKENS, block_index, out=pair_out[begin : begin + len(block)])
    if len(source) % 2:
        odd = int(_PAIR_TOKENS[int(source[-1])])  # the pair (value, 0): its first half
        out[8 * pairs :] = np.frombuffer(odd.to_bytes(8, "little")[:4], dtype=np.uint8)
