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

import enum
import secrets
from collections.abc import Sequence
from email.message import Message


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
    """

    def __init__(self, boundary: str, *, max_part_bytes: int | None = None) -> None:
        self._dash_boundary = b"--" + boundary.encode("latin-1")
        self._delimiter = b"\r\n" + self._dash_boundary
        self._max_part_bytes = max_part_bytes
        self._buffer = bytearray()
        self._scan_from = 0
        self._state = _State.PREAMBLE
        self.part_headers: list[dict[str, str]] = []

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add bytes from the stream; return the parts completed by them."""
        if self._state is _State.DONE:
            return []  # the epilogue is ignored, as RFC 2046 says
        self._buffer += chunk
        parts: list[bytes] = []
        while self._step(parts):
            pass
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

    def _step(self, parts: list[bytes]) -> bool:
        """Advance one state if the buffer allows it; False when more input is needed."""
        buffer = self._buffer
        if self._state is _State.PREAMBLE:
            # The first delimiter may open the stream without a leading CRLF.
            if buffer.startswith(self._dash_boundary):
                index = 0
            else:
                found = buffer.find(self._delimiter)
                if found < 0:
                    if len(buffer) > _MAX_PREAMBLE_BYTES:
                        raise MalformedMultipart("no multipart boundary found in the stream")
                    return False
                index = found + 2
            del buffer[: index + len(self._dash_boundary)]
            self._state = _State.AFTER_DELIMITER
            return True
        if self._state is _State.AFTER_DELIMITER:
            if len(buffer) < 2:
                return False
            if buffer.startswith(b"--"):
                self._state = _State.DONE
                buffer.clear()
                return False
            # RFC 2046 allows transport padding (spaces, tabs) before the CRLF.
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                if len(buffer) > 1024:
                    raise MalformedMultipart("garbage after a multipart delimiter")
                return False
            if buffer[:line_end].strip(b" \t"):
                raise MalformedMultipart("garbage after a multipart delimiter")
            del buffer[: line_end + 2]
            self._state = _State.HEADERS
            return True
        if self._state is _State.HEADERS:
            if buffer.startswith(b"\r\n"):  # a part with no headers at all
                header_end, skip = 0, 2
            else:
                header_end = buffer.find(_HEADER_END)
                skip = 4
                if header_end < 0:
                    if len(buffer) > _MAX_HEADER_BYTES:
                        raise MalformedMultipart("a part's headers are too long")
                    return False
            self.part_headers.append(_parse_headers(bytes(buffer[:header_end])))
            del buffer[: header_end + skip]
            self._state = _State.BODY
            self._scan_from = 0
            return True
        if self._state is _State.BODY:
            found = buffer.find(self._delimiter, self._scan_from)
            if found < 0:
                # Resume the next search just before the tail that could hold
                # the start of a delimiter split across chunks; everything before
                # that tail is certainly part content.
                self._scan_from = max(0, len(buffer) - len(self._delimiter) + 1)
                self._check_part_size(self._scan_from)
                return False
            self._check_part_size(found)
            # One copy: slicing the bytearray first would make two.
            with memoryview(buffer) as view:
                parts.append(bytes(view[:found]))
            del buffer[: found + len(self._delimiter)]
            self._state = _State.AFTER_DELIMITER
            return True
        return False

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
