"""A model's answer streamed on to the viewer as it arrives (docs/compatibility.md §5.4).

The first window of the answer (1 MiB) is read before anything is sent. An
answer that fits in it is validated whole, exactly as before streaming: it
must be JSON, and a JSON string holding JSON is unwrapped once. A longer answer
is classified from its first bytes and then passed on chunk by chunk:

- it starts with ``{`` or ``[``: passed through untouched;
- it starts with ``"`` and the string's text starts with ``{`` or ``[``: the
  double-encoded form of the reference Model APIs, unescaped incrementally by
  :class:`JsonStringUnescaper` (the inner text is never built twice);
- any other JSON string: read whole (within the size limit) and unwrapped as
  before; anything else is not JSON: 502.

Once bytes are on their way to the viewer, a full JSON parse is no longer
possible without holding the whole result. What is still checked: the size
limit, that an unwrapped string is well formed and closes once (escapes,
surrogate pairs, no raw control characters, only whitespace after it), and
that the document ends with the bracket it opened with. A failure then raises
:class:`ModelError` from the iterator; the response layer aborts the
connection so that the viewer never sees a truncated 200 as complete.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator

from model_proxy.errors import ErrorCode, ModelError
from model_proxy.models.result import unwrap_result

# Answers up to this size are validated whole before the first byte is sent.
FIRST_WINDOW_BYTES = 1 << 20

_WHITESPACE = b" \t\r\n"
_CLOSING = {ord("{"): ord("}"), ord("["): ord("]")}
# Inside a JSON string, only these bytes need attention; everything else,
# UTF-8 sequences included, is copied as is.
_STRING_SPECIAL = re.compile(rb'[\\"\x00-\x1f]')
_HEX4 = re.compile(rb"[0-9A-Fa-f]{4}")
_SIMPLE_ESCAPES = {
    ord('"'): b'"',
    ord("\\"): b"\\",
    ord("/"): b"/",
    ord("b"): b"\b",
    ord("f"): b"\f",
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
}
# The longest escape: a surrogate pair, \uD83D\uDE00.
_LONGEST_ESCAPE = 12


class BadJsonString(ValueError):
    """The text is not the content of a well-formed JSON string."""


class JsonStringUnescaper:
    r"""Decodes the text of a JSON string fed in arbitrary chunks, after its opening quote.

    Escape sequences and surrogate pairs may be split across chunks; the
    output is the string's UTF-8 bytes. After the closing quote only
    whitespace may follow.

    >>> unescaper = JsonStringUnescaper()
    >>> b"".join(unescaper.feed(part) for part in (rb'{\"a\": \u00', rb'e9\nx\uD83D', rb'\uDE00" '))
    b'{"a": \xc3\xa9\nx\xf0\x9f\x98\x80'
    >>> unescaper.finish()
    """

    def __init__(self) -> None:
        self._pending = b""
        self.closed = False

    def feed(self, data: bytes) -> bytes:
        if self.closed:
            _check_whitespace(data)
            return b""
        if self._pending:
            data, self._pending = self._pending + data, b""
        out: list[bytes] = []
        pos = 0
        end = len(data)
        while True:
            found = _STRING_SPECIAL.search(data, pos)
            if found is None:
                out.append(data[pos:])
                break
            index = found.start()
            if index > pos:
                out.append(data[pos:index])
            byte = data[index]
            if byte == 0x22:  # the closing quote
                self.closed = True
                _check_whitespace(data[index + 1 :])
                break
            if byte != 0x5C:
                raise BadJsonString(f"raw control character 0x{byte:02x} inside the string")
            decoded, used = _decode_escape(data, index, end)
            if used == 0:  # an escape split across chunks: wait for the rest
                self._pending = data[index:]
                break
            out.append(decoded)
            pos = index + used
        return b"".join(out)

    def finish(self) -> None:
        """Raises BadJsonString unless the string was closed."""
        if not self.closed:
            raise BadJsonString("the string is not closed: the answer was cut short")


def _decode_escape(data: bytes, index: int, end: int) -> tuple[bytes, int]:
    """The bytes of the escape at ``data[index]`` and its length; (b"", 0) if incomplete."""
    if index + 1 >= end:
        return b"", 0
    kind = data[index + 1]
    if kind != ord("u"):
        simple = _SIMPLE_ESCAPES.get(kind)
        if simple is None:
            raise BadJsonString(f"invalid escape \\{chr(kind)!r}")
        return simple, 2
    if index + 6 > end:
        return b"", 0
    code = _hex4(data, index + 2)
    if 0xDC00 <= code <= 0xDFFF:
        raise BadJsonString(f"lone low surrogate \\u{code:04x}")
    if not 0xD800 <= code <= 0xDBFF:
        return chr(code).encode(), 6
    if index + _LONGEST_ESCAPE > end:
        if data[index + 6 : index + 8] not in (b"", b"\\", b"\\u"):
            raise BadJsonString(f"lone high surrogate \\u{code:04x}")
        return b"", 0
    if data[index + 6 : index + 8] != b"\\u":
        raise BadJsonString(f"lone high surrogate \\u{code:04x}")
    low = _hex4(data, index + 8)
    if not 0xDC00 <= low <= 0xDFFF:
        raise BadJsonString(f"high surrogate \\u{code:04x} followed by \\u{low:04x}")
    return chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)).encode(), _LONGEST_ESCAPE


def _hex4(data: bytes, start: int) -> int:
    digits = data[start : start + 4]
    if not _HEX4.fullmatch(digits):
        raise BadJsonString(f"invalid \\u escape {digits[:4]!r}")
    return int(digits, 16)


def _check_whitespace(data: bytes) -> None:
    if data.strip(_WHITESPACE):
        raise BadJsonString("text follows the closing quote of the string")


class _EndCheck:
    """Remembers the last non-whitespace byte, to check the closing bracket."""

    def __init__(self, opening: int) -> None:
        self.expected = _CLOSING[opening]
        self.last = -1

    def see(self, chunk: bytes) -> None:
        stripped = chunk.rstrip(_WHITESPACE)
        if stripped:
            self.last = stripped[-1]

    @property
    def ok(self) -> bool:
        return self.last == self.expected


class ResultStream:
    """The viewer's JSON, from a model's raw answer chunks.

    ``await start()`` reads the first window and returns the first bytes to
    send, or raises ModelError while nothing has been sent; ``chunks()`` then
    gives the rest and raises ModelError if the answer turns out
    to be broken.
    """

    def __init__(self, raw: AsyncIterator[bytes], *, label: str, max_bytes: int) -> None:
        self._raw = raw
        self._label = label
        self._max_bytes = max_bytes
        self.raw_bytes = 0
        self.bytes_out = 0
        self.double_encoded = False
        self._unescaper: JsonStringUnescaper | None = None
        self._end_check: _EndCheck | None = None
        self._inner_end_check: _EndCheck | None = None
        self._finished = False

    async def _next_raw(self) -> bytes | None:
        async for chunk in self._raw:
            if not chunk:
                continue
            self.raw_bytes += len(chunk)
            if self.raw_bytes > self._max_bytes:
                raise ModelError(
                    f"{self._label}: result is larger than the limit of {self._max_bytes} bytes",
                    code=ErrorCode.MODEL_RESULT_TOO_LARGE,
                )
            return chunk
        return None

    async def start(self) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while size < FIRST_WINDOW_BYTES:
            chunk = await self._next_raw()
            if chunk is None:
                return self._whole(b"".join(chunks))
            chunks.append(chunk)
            size += len(chunk)
        prefix = b"".join(chunks)
        head = prefix.lstrip(_WHITESPACE)
        first = head[0]
        if first in _CLOSING:
            self._end_check = _EndCheck(first)
            self._end_check.see(prefix)
            return self._emit(prefix)
        if first != ord('"'):
            raise self._error(
                f"answered with a body that is not JSON (it starts with {head[:20]!r})"
            )
        unescaper = JsonStringUnescaper()
        inner = self._unescape(unescaper, head[1:])
        inner_head = inner.lstrip(_WHITESPACE)
        if not inner_head or inner_head[0] not in _CLOSING:
            # A JSON string that does not hold an object or array: rare and
            # unusual for a result, so it takes the old, buffered road.
            rest = [prefix]
            while (chunk := await self._next_raw()) is not None:
                rest.append(chunk)
            return self._whole(b"".join(rest))
        self.double_encoded = True
        self._unescaper = unescaper
        self._inner_end_check = _EndCheck(inner_head[0])
        self._inner_end_check.see(inner)
        return self._emit(inner)

    def _whole(self, body: bytes) -> bytes:
        result = unwrap_result(body, self._label)
        self.double_encoded = result is not body
        self._finished = True
        return self._emit(result)

    def _emit(self, data: bytes) -> bytes:
        self.bytes_out += len(data)
        return data

    def _unescape(self, unescaper: JsonStringUnescaper, data: bytes) -> bytes:
        try:
            return unescaper.feed(data)
        except BadJsonString as exc:
            raise self._error(
                f"answered a double-encoded result that is not valid ({exc})"
            ) from exc

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The bytes after the first ones ``start`` returned."""
        if self._finished:
            return
        while (chunk := await self._next_raw()) is not None:
            if self._unescaper is not None:
                chunk = self._unescape(self._unescaper, chunk)
                if not chunk:
                    continue
                assert self._inner_end_check is not None
                self._inner_end_check.see(chunk)
            else:
                assert self._end_check is not None
                self._end_check.see(chunk)
            yield self._emit(chunk)
        self._finished = True
        self._check_end()

    def _check_end(self) -> None:
        if self._unescaper is not None:
            try:
                self._unescaper.finish()
            except BadJsonString as exc:
                raise self._error(
                    f"answered a double-encoded result that is not valid ({exc})"
                ) from exc
        check = self._inner_end_check if self._unescaper is not None else self._end_check
        if check is not None and not check.ok:
            raise self._error(
                f"answered a result that does not end with {chr(check.expected)!r}:"
                " the answer was cut short or is not JSON"
            )

    def _bad_string(self, exc: BadJsonString) -> ModelError:
        return self._error(f"answered a double-encoded result that is not valid ({exc})")

    def _error(self, message: str) -> ModelError:
        return ModelError(
            f"{self._label}: {message}", code=ErrorCode.MODEL_BAD_RESPONSE, upstream=self._label
        )
