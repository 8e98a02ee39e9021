"""Incremental decoder for `multipart/related` WADO-RS responses, and its encoder.

Fed with chunks as they arrive from the network, it yields each part's body as
soon as its closing delimiter has been seen. Every byte is scanned once: the
search for the delimiter resumes where the previous one stopped (dicomweb-client
rescans from offset 0 on each chunk, which is quadratic on large parts).

Real servers differ (docs/compatibility.md §4): Orthanc sends no part lengths
and closes the connection at the end, dcm4chee omits per-part lengths, some put
no CRLF before the first delimiter. None of that matters to a delimiter scanner.
"""

from __future__ import annotations

import asyncio
import enum
import secrets
from collections.abc import AsyncIterator, Sequence
from email.message import Message
from pathlib import Path


class MalformedMultipart(ValueError):
    """The stream does not follow RFC 2046 multipart syntax, or ended early."""


class TruncatedMultipart(MalformedMultipart):
    """The stream ended before its closing delimiter: the connection was cut."""


class _State(enum.Enum):
    PREAMBLE = enum.auto()
    HEADERS = enum.auto()
    BODY = enum.auto()
    AFTER_DELIMITER = enum.auto()
    DONE = enum.auto()


_HEADER_END = b"\r\n\r\n"
_MAX_HEADER_BYTES = 64 * 1024
_MAX_PREAMBLE_BYTES = 64 * 1024


def boundary_from_content_type(content_type: str) -> str | None:
    """The boundary parameter of a multipart Content-Type, or None.

    >>> boundary_from_content_type('multipart/related; type="application/dicom"; boundary=abc')
    'abc'
    """
    message = Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "multipart":
        return None
    boundary = message.get_param("boundary")
    return boundary if isinstance(boundary, str) and boundary else None


class MultipartDecoder:
    """Push-style decoder: ``feed`` chunks, collect finished parts, then ``close``.

    ``max_part_bytes`` bounds the memory one part may take; a larger part raises
    MalformedMultipart instead of growing without limit.

    A part's body is kept as the views of the chunks it arrived in and joined
    once, when its delimiter has been found: that join is the only copy of its
    bytes. (Accumulating the stream in a bytearray, as this decoder did before,
    cost three to four more: the append, the copy of the rest of the buffer each
    time a part was cut from its front, and the part's own; docs/performance.md,
    "The read and write paths at 10 Gbit/s".) Only what lies between two bodies, a
    delimiter line and a part's headers, is ever buffered, and only when a chunk
    ends inside it.
    """

    def __init__(self, boundary: str, *, max_part_bytes: int | None = None) -> None:
        self._dash_boundary = b"--" + boundary.encode("latin-1")
        self._delimiter = b"\r\n" + self._dash_boundary
        self._max_part_bytes = max_part_bytes
        # Outside a body: the start of a delimiter line or headers that a chunk cut.
        self._pending = b""
        # Inside a body: the pieces received so far, their size, and their last
        # bytes, where a delimiter split across two chunks would begin.
        self._pieces: list[memoryview] = []
        self._body_bytes = 0
        self._tail = b""
        self._state = _State.PREAMBLE
        self.part_headers: list[dict[str, str]] = []

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for the part being received (or the text before it)."""
        return self._body_bytes + len(self._pending)

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add bytes from the stream; return the parts completed by them."""
        if self._state is _State.DONE:
            return []  # the epilogue is ignored, as RFC 2046 says
        data = bytes(chunk)  # no copy of bytes; the views below need an immutable object
        if self._pending:
            # A chunk ended inside a delimiter line or headers: rare, and short.
            data, self._pending = self._pending + data, b""
        parts: list[bytes] = []
        at = 0
        while at >= 0:
            at = self._step(data, at, parts)
        return parts

    def close(self) -> None:
        """Declare the end of the stream; raise if it ended inside a part."""
        if self._state is not _State.DONE:
            where = {
                _State.PREAMBLE: "before the first part",
                _State.HEADERS: "inside a part's headers",
                _State.BODY: "inside a part (truncated)",
                _State.AFTER_DELIMITER: "after a delimiter",
            }[self._state]
            raise TruncatedMultipart(f"multipart stream ended {where}")

    def _step(self, data: bytes, at: int, parts: list[bytes]) -> int:
        """Advance one state from ``data[at:]``; where the next step starts, or -1
        once ``data`` is used up (what is left of it kept for the next chunk)."""
        if self._state is _State.BODY:
            return self._body(data, at, parts)
        if self._state is _State.PREAMBLE:
            # The first delimiter may open the stream without a leading CRLF.
            if data.startswith(self._dash_boundary, at):
                index = at
            else:
                found = data.find(self._delimiter, at)
                if found < 0:
                    if len(data) - at > _MAX_PREAMBLE_BYTES:
                        raise MalformedMultipart("no multipart boundary found in the stream")
                    return self._keep(data, at)
                index = found + 2
            self._state = _State.AFTER_DELIMITER
            return index + len(self._dash_boundary)
        if self._state is _State.AFTER_DELIMITER:
            if len(data) - at < 2:
                return self._keep(data, at)
            if data.startswith(b"--", at):
                self._state = _State.DONE
                return -1
            # RFC 2046 allows transport padding (spaces, tabs) before the CRLF.
            line_end = data.find(b"\r\n", at)
            if line_end < 0:
                if len(data) - at > 1024:
                    raise MalformedMultipart("garbage after a multipart delimiter")
                return self._keep(data, at)
            if data[at:line_end].strip(b" \t"):
                raise MalformedMultipart("garbage after a multipart delimiter")
            self._state = _State.HEADERS
            return line_end + 2
        if self._state is _State.HEADERS:
            if data.startswith(b"\r\n", at):  # a part with no headers at all
                header_end, skip = at, 2
            else:
                header_end = data.find(_HEADER_END, at)
                skip = 4
                if header_end < 0:
                    if len(data) - at > _MAX_HEADER_BYTES:
                        raise MalformedMultipart("a part's headers are too long")
                    return self._keep(data, at)
            self.part_headers.append(_parse_headers(data[at:header_end]))
            self._state = _State.BODY
            return header_end + skip
        return -1

    def _keep(self, data: bytes, at: int) -> int:
        self._pending = data[at:]
        return -1

    def _body(self, data: bytes, at: int, parts: list[bytes]) -> int:
        delimiter = self._delimiter
        # A delimiter that began in the previous chunk ends in this one.
        if self._tail:
            joint = self._tail + data[at : at + len(delimiter) - 1]
            found = joint.find(delimiter)
            if 0 <= found < len(self._tail):
                size = self._body_bytes - len(self._tail) + found
                self._check_part_size(size)
                parts.append(b"".join(self._pieces)[:size])
                return self._end_body(at + found + len(delimiter) - len(self._tail))
        found = data.find(delimiter, at)
        if found >= 0:
            self._check_part_size(self._body_bytes + found - at)
            with memoryview(data) as view:
                self._pieces.append(view[at:found])
                parts.append(b"".join(self._pieces))
            return self._end_body(found + len(delimiter))
        # All of it is the part's, but its last bytes may start a delimiter.
        self._pieces.append(memoryview(data)[at:])
        self._body_bytes += len(data) - at
        keep = len(delimiter) - 1
        self._tail = (self._tail + data[max(at, len(data) - keep) :])[-keep:]
        self._check_part_size(self._body_bytes - len(self._tail))
        return -1

    def _end_body(self, after: int) -> int:
        for piece in self._pieces:
            piece.release()
        self._pieces, self._body_bytes, self._tail = [], 0, b""
        self._state = _State.AFTER_DELIMITER
        return after

    def _check_part_size(self, size: int) -> None:
        if self._max_part_bytes is not None and size > self._max_part_bytes:
            raise MalformedMultipart(
                f"a part is larger than the limit of {self._max_part_bytes} bytes"
            )


def _parse_headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep:
            if line.strip():
                raise MalformedMultipart(f"malformed part header line {line[:80]!r}")
            continue
        headers[name.strip().lower()] = value.strip()
    return headers


DICOM_TYPE = "application/dicom"


def encode_dicom_multipart(objects: Sequence[bytes]) -> tuple[str, bytes]:
    """``(Content-Type, body)`` of a ``multipart/related; type="application/dicom"``
    message holding the Part-10 files ``objects``, framed as WADO-RS answers and
    STOW-RS requests are.

    >>> content_type, body = encode_dicom_multipart([b"DICM"])
    >>> content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    True
    """
    boundary = f"model-proxy-{secrets.token_hex(16)}"
    chunks: list[bytes] = []
    for data in objects:
        chunks.append(f"--{boundary}\r\nContent-Type: {DICOM_TYPE}\r\n\r\n".encode())
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return f'multipart/related; type="{DICOM_TYPE}"; boundary={boundary}', b"".join(chunks)


_FILE_CHUNK = 1 << 20


class DicomMultipartFiles:
    """A ``multipart/related; type="application/dicom"`` message of Part-10 files on
    disk, read 1 MiB at a time (in a thread) as it is sent, never held whole.

    Iterable more than once (each ``async for`` reads the files again), so an HTTP
    client may resend it, as an auth flow does after a 401.
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)
        self._boundary = f"model-proxy-{secrets.token_hex(16)}"
        self.content_type = f'multipart/related; type="{DICOM_TYPE}"; boundary={self._boundary}'
        self._part_head = f"--{self._boundary}\r\nContent-Type: {DICOM_TYPE}\r\n\r\n".encode()
        self._end = f"--{self._boundary}--\r\n".encode()

    @property
    def length(self) -> int:
        """The size of the whole message (for Content-Length)."""
        per_part = len(self._part_head) + 2
        return sum(p.stat().st_size + per_part for p in self._paths) + len(self._end)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        for path in self._paths:
            yield self._part_head
            file = await asyncio.to_thread(open, path, "rb")
            try:
                while chunk := await asyncio.to_thread(file.read, _FILE_CHUNK):
                    yield chunk
            finally:
                file.close()
            yield b"\r\n"
        yield self._end
