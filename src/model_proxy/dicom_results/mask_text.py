"""A mask's JSON text (``[[0,1,...],...]``) read straight into an array.

Parsed by orjson, a 512x512 mask becomes 512 lists of Python ints that
``np.asarray`` then walks: most of the time a streamed SEG takes. Here the text
is checked and read with array operations instead: whitespace dropped, the
brackets and commas compared with those of a rows x columns array of one-digit
numbers, the digits required to be 0 or 1. Text of any other shape (other
numbers, nested objects, ragged rows) is left to orjson, which then reports it.

:func:`lift_masks` takes an instance's text and hands back the text with every
``"points"`` array it could read replaced by a marker string, and the arrays.
"""

from __future__ import annotations

import functools
import re
import secrets
from typing import Any

import numpy as np

_POINTS_KEY = b'"points"'
_TO_ARRAY = re.compile(rb"\s*:\s*\[")  # what follows the key when its value is an array
# The end of an array of arrays of numbers: a row's bracket, then the array's.
_ARRAY_END = re.compile(rb"\]\s*\]")
_WHITESPACE = b" \t\r\n"
# "1" read as "0": a mask's text then equals its shape's template of zeros.
_ONE_AS_ZERO = bytes.maketrans(b"1", b"0")
_ONE = ord("1")

Mask = np.ndarray[Any, np.dtype[np.bool_]]


def read_mask(text: bytes) -> Mask | None:
    """The 0/1 array ``text`` writes, or None when it is not exactly such an array.

    >>> read_mask(b"[[0, 1, 1], [1, 0, 0]]").astype(int).tolist()
    [[0, 1, 1], [1, 0, 0]]
    >>> read_mask(b"[[0, 2]]") is None, read_mask(b"[[0, 1], [1]]") is None
    (True, True)
    """
    # bytes.translate and one comparison of bytes run at memory speed; a 512x512
    # mask is half a megabyte of text, read this way in about a millisecond.
    compact = text.translate(None, _WHITESPACE)
    first_close = compact.find(b"]")
    columns = (first_close - 1) // 2
    if columns < 1:
        return None
    row_size = 2 * columns + 1  # "[" + digits and commas + "]"
    rows = (len(compact) - 1) // (row_size + 1)
    if rows < 1 or compact.translate(_ONE_AS_ZERO) != _zeros_text(rows, columns):
        return None
    # Each row with the comma after it; the last row gets the closing bracket's place.
    grid = np.frombuffer(compact, dtype=np.uint8, count=rows * (row_size + 1), offset=1)
    digits = grid.reshape(rows, row_size + 1)[:, 1:-2:2]
    mask: Mask = digits == _ONE
    return mask


@functools.lru_cache(maxsize=8)
def _zeros_text(rows: int, columns: int) -> bytes:
    """``[[0,0,...],...]``: the compact text of a rows x columns mask of zeros."""
    row = b"[" + b",".join([b"0"] * columns) + b"]"
    return b"[" + b",".join([row] * rows) + b"]"


def lift_masks(value: bytes) -> tuple[bytes, str, list[Mask]]:
    """``(text, marker, masks)``: ``value`` with each ``"points"`` array that
    :func:`read_mask` reads replaced by the JSON string ``"<marker><n>"``, n its index
    in ``masks``. Arrays it cannot read stay in the text as they were."""
    marker = f"mask-{secrets.token_hex(8)}-"
    masks: list[Mask] = []
    pieces: list[bytes] = []
    kept = 0  # value[:kept] is in pieces
    pos = 0
    # bytes.find, not a regular expression: it skips the megabyte of digits at C speed.
    while (key := value.find(_POINTS_KEY, pos)) >= 0:
        found = _TO_ARRAY.match(value, key + len(_POINTS_KEY))
        pos = key + 1
        if found is None or _escaped(value, key):
            continue  # not an array, or a quote inside a string
        start = found.end() - 1  # the array's opening bracket
        read = _read_array(value, start)
        if read is None:
            continue
        end, mask = read
        pieces += [value[kept:start], b'"', f"{marker}{len(masks)}".encode(), b'"']
        masks.append(mask)
        kept = pos = end
    pieces.append(value[kept:])
    return b"".join(pieces), marker, masks


def _escaped(text: bytes, quote: int) -> bool:
    """The quote at ``quote`` follows an odd number of backslashes: inside a string."""
    index = quote - 1
    while index >= 0 and text[index] == 0x5C:
        index -= 1
    return (quote - 1 - index) % 2 == 1


def _read_array(value: bytes, start: int) -> tuple[int, Mask] | None:
    """``(end, mask)`` of the array of arrays opening at ``start`` when it is a mask."""
    # A mask's text has one "]]", at its end: the last one before the next string,
    # found from the end in microseconds where a forward search over the megabyte
    # of digits takes a millisecond. Anything else goes the long way.
    quote = value.find(b'"', start)
    quick = value.rfind(b"]]", start, len(value) if quote < 0 else quote) + 2
    if quick > 1 and (mask := read_mask(value[start:quick])) is not None:
        return quick, mask
    end = _array_end(value, start)
    if end is None or end == quick or (mask := read_mask(value[start:end])) is None:
        return None
    return end, mask


def _array_end(text: bytes, start: int) -> int | None:
    """The index after the array of arrays opening at ``start`` (the first ``]]``,
    whitespace allowed between); None when a string or an object comes first."""
    closing = _ARRAY_END.search(text, start)
    if closing is None:
        return None
    region = text[start : closing.end()]
    if b'"' in region or b"{" in region:
        return None
    return closing.end()
