"""How instances are framed in a model's request body: the two input formats.

``"input": "json"`` (the default) is the original's format (docs/compatibility.md
§5.1 to §5.3): the planned JSON text, each instance a JSON string of its
byte values. ``"input": "dicom-multipart"`` sends the Part-10 files as they are,
as ``multipart/related; type="application/dicom"`` parts (the STOW-RS layout);
a part of a named input carries the input's dataKey in a ``Series-Data-Key``
or ``Instance-Data-Key`` header, or both (docs/model-api.md)::

    --model-proxy-7f3a...
    Content-Type: application/dicom
    Content-Length: 525600
    Series-Data-Key: series-one

    <DICM file>
    --model-proxy-7f3a...--

A format is stateful (it knows how many instances it has framed) and serves
one request body.
"""

from __future__ import annotations

import secrets
from typing import Protocol

from model_proxy.config import InputFormat
from model_proxy.models.body import Retrieval
from model_proxy.models.encoder import OPENING, SLICE_BYTES
from model_proxy.models.slice_buffers import buffer_bytes

__all__ = ["BodyFormat", "DicomMultipartBody", "JsonBody", "body_format"]


class BodyFormat(Protocol):
    content_type: str
    # Whether instances go through the wire-format encoder (in worker threads).
    encodes: bool

    def literal(self, text: bytes) -> bytes:
        """What a planned literal becomes (JSON punctuation and data keys)."""
        ...

    def before_instance(self, retrieval: Retrieval, index: int, size: int) -> bytes:
        """Framing written before instance ``index`` of ``retrieval``."""
        ...

    def after_retrieval(self, retrieval: Retrieval, count: int) -> bytes:
        """Framing written once ``retrieval`` gave all its ``count`` instances."""
        ...

    def end(self) -> bytes:
        """The last bytes of the body."""
        ...

    def accounted_bytes(self, size: int) -> int:
        """Memory an instance of ``size`` bytes holds until it has been sent."""
        ...


class JsonBody:
    """The original's format: literals as planned, instances encoded as JSON strings."""

    content_type = "application/json"
    encodes = True

    def __init__(self, slices_in_flight: int) -> None:
        # Encoded slices of one instance alive at once: queued, being sent, being
        # encoded; each in a buffer of at most a full slice's size.
        self._text_bytes = buffer_bytes(SLICE_BYTES) * slices_in_flight

    def literal(self, text: bytes) -> bytes:
        return text

    def before_instance(self, retrieval: Retrieval, index: int, size: int) -> bytes:
        if not retrieval.as_array:
            return OPENING
        return (b"," if index else b"[") + OPENING

    def after_retrieval(self, retrieval: Retrieval, count: int) -> bytes:
        if not retrieval.as_array:
            return b""
        return b"]" if count else b"[]"

    def end(self) -> bytes:
        return b""

    def accounted_bytes(self, size: int) -> int:
        return size + min(buffer_bytes(size), self._text_bytes)


class DicomMultipartBody:
    """Part-10 files as multipart/related parts; literals are dropped."""

    encodes = False

    def __init__(self) -> None:
        self._boundary = f"model-proxy-{secrets.token_hex(16)}".encode()
        self.content_type = (
            f'multipart/related; type="application/dicom"; boundary={self._boundary.decode()}'
        )
        self._parts = 0

    def literal(self, text: bytes) -> bytes:
        return b""

    def before_instance(self, retrieval: Retrieval, index: int, size: int) -> bytes:
        lines = [
            (b"\r\n--" if self._parts else b"--") + self._boundary,
            b"Content-Type: application/dicom",
            b"Content-Length: %d" % size,
        ]
        if retrieval.series_key is not None:
            lines.append(b"Series-Data-Key: " + retrieval.series_key.encode())
        if retrieval.instance_key is not None:
            lines.append(b"Instance-Data-Key: " + retrieval.instance_key.encode())
        self._parts += 1
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def after_retrieval(self, retrieval: Retrieval, count: int) -> bytes:
        return b""

    def end(self) -> bytes:
        return (b"\r\n--" if self._parts else b"--") + self._boundary + b"--\r\n"

    def accounted_bytes(self, size: int) -> int:
        return size


def body_format(input_format: InputFormat, *, slices_in_flight: int) -> BodyFormat:
    if input_format is InputFormat.DICOM_MULTIPART:
        return DicomMultipartBody()
    return JsonBody(slices_in_flight)
