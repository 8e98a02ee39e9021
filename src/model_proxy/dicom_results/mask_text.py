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

import re
import secrets
from typing import Any

import numpy as np

_POINTS_KEY = re.compile(rb'"points"\s*:\s*\[')
# The end of an array of arrays of numbers: a row's bracket, then the array's.
_ARRAY_END = re.compile(rb"\]\s*\]")
# A lookup table: True for the bytes that are not JSON whitespace.
_KEPT = np.ones(256, dtype=np.bool_)
_KEPT[list(b" \t\r\n")] = False
_OPEN, _CLOSE, _COMMA, _ZERO = (ord(c) for c in "[],0")

Mask = np.ndarray[Any, np.dtype[np.bool_]]


def read_mask(text: bytes) -> Mask | None:
    """The 0/1 array ``text`` writes, or None when it is not exactly such an array.

    >>> read_mask(b"[[0, 1, 1], [1, 0, 0]]").astype(int).tolist()
    [[0, 1, 1], [1, 0, 0]]
    >>> read_mask(b"[[0, 2]]") is None, read_mask(b"[[0, 1], [1]]") is None
    (True, True)
    """
    compact = np.frombuffer(text, dtype=np.uint8)
    compact = compact[_KEPT[compact]]
    size = len(compact)
    if size < 5 or compact[0] != _OPEN or compact[1] != _OPEN or compact[-1] != _CLOSE:
        return None
    first_close = int(np.argmax(compact == _CLOSE))
    columns = (first_close - 1) // 2
    row_size = 2 * columns + 1  # "[" + digits and commas + "]"
    rows = (size - 1) // (row_size + 1)
    if columns < 1 or 2 + rows * row_size + (rows - 1) != size:
        return None
    # Each row with the comma after it; the last row gets the closing bracket's place.
    grid = compact[1:].reshape(rows, row_size + 1)
    inner = grid[:, 1:-2]
    digits = inner[:, 0::2]
    if not (
        (grid[:, 0] == _OPEN).all()
        and (grid[:, -2] == _CLOSE).all()
        and (grid[:-1, -1] == _COMMA).all()
        and (inner[:, 1::2] == _COMMA).all()
        and ((digits == _ZERO) | (digits == _ZERO + 1)).all()
    ):
        return None
    mask: Mask = digits == _ZERO + 1
    return mask


def lift_masks(value: bytes) -> tuple[bytes, str, list[Mask]]:
    """``(text, marker, masks)``: ``value`` with each ``"points"`` array that
    :func:`read_mask` reads replaced by the JSON string ``"<marker><n>"``, n its index
    in ``masks``. Arrays it cannot read stay in the text as they were."""
    marker = f"mask-{secrets.token_hex(8)}-"
    masks: list[Mask] = []
    pieces: list[bytes] = []
    pos = 0
    for found in _POINTS_KEY.finditer(value):
        start = found.end() - 1  # the array's opening bracket
        if start < pos or _escaped(value, found.start()):
            continue  # inside an array already lifted, or a quote inside a string
        end = _array_end(value, start)
        if end is None:
            continue
        mask = read_mask(value[start:end])
        if mask is None:
            continue
        pieces += [value[pos:start], b'"', f"{marker}{len(masks)}".encode(), b'"']
        masks.append(mask)
        pos = end
    pieces.append(value[pos:])
    return b"".join(pieces), marker, masks


def _escaped(text: bytes, quote: int) -> bool:
    """The quote at ``quote`` follows an odd number of backslashes: inside a string."""
    index = quote - 1
    while index >= 0 and text[index] == 0x5C:
        index -= 1
    return (quote - 1 - index) % 2 == 1


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
