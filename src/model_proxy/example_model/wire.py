"""Reading the model proxy's wire format: request bodies and instance strings.

Each DICOM instance arrives as a JSON *string* whose text is a JSON array of the
Part-10 file's byte values. The reference decoder is::

    pydicom.dcmread(io.BytesIO(bytes(json.loads(instance))))

:func:`decode_instance` does the same about 3x faster: ``orjson`` parses the
inner array and ``bytes()`` packs the list of small ints in one C loop (faster
than ``numpy.array(..., dtype=uint8)``). Both accept whitespace in the array.

Body shapes (docs/compatibility.md §5.2 and §5.3)::

    "<instance>"                                          instance level
    ["<instance>", ...]                                   series level, or study (mixed)
    {"<series key>": {"data": ["<instance>", ...]}}       study model with data filters
    {"<series key>": {"data": {"<instance key>": {"data": "<instance>"}}}}
    {"<instance key>": {"data": "<instance>"}}            series model with data filters

A model entry with ``"input": "dicom-multipart"`` gets the Part-10 files
instead, as ``multipart/related; type="application/dicom"`` parts whose
``Series-Data-Key`` / ``Instance-Data-Key`` headers name the data filter keys
(:func:`parse_multipart`; docs/model-api.md).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import orjson
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from model_proxy.pacs.multipart import (
    MalformedMultipart,
    MultipartDecoder,
    boundary_from_content_type,
)

__all__ = [
    "Entry",
    "Payload",
    "WireFormatError",
    "decode_instance",
    "parse_body",
    "parse_multipart",
]


class WireFormatError(ValueError):
    """The request body does not follow the wire format; answered with 422."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Entry:
    """One instance and the data filter keys it was filed under.

    ``instance`` is the wire-format string, or the Part-10 bytes themselves
    from a dicom-multipart body.
    """

    instance: str | bytes
    series_key: str | None = None  # study model: the series dataKey
    instance_key: str | None = None  # the instance dataKey, when one named it


@dataclass(frozen=True)
class Payload:
    entries: list[Entry]
    # The body was one bare instance string: an instance-level request.
    single: bool
    # The body was a dict of data filter keys.
    filtered: bool

    def by_series_key(self) -> dict[str | None, list[Entry]]:
        groups: dict[str | None, list[Entry]] = {}
        for entry in self.entries:
            groups.setdefault(entry.series_key, []).append(entry)
        return groups


def parse_body(body: bytes, content_type: str = "application/json") -> Payload:
    """Split a request body into instances, keeping data filter keys."""
    if content_type.split(";", 1)[0].strip().lower() == "multipart/related":
        return parse_multipart(body, content_type)
    if not body:
        raise WireFormatError("the request body is empty: expected JSON instance data")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise WireFormatError(f"the request body is not JSON: {exc}") from None
    if isinstance(document, str):
        return Payload([Entry(document)], single=True, filtered=False)
    if isinstance(document, list):
        entries = [Entry(_instance_string(item, f"body[{i}]")) for i, item in enumerate(document)]
        return Payload(_non_empty(entries), single=False, filtered=False)
    if isinstance(document, dict):
        entries = []
        for key, value in document.items():
            entries.extend(_filtered_entries(key, value))
        return Payload(_non_empty(entries), single=False, filtered=True)
    raise WireFormatError(
        f"the request body is a JSON {type(document).__name__}: expected an instance string, "
        "a list of instance strings or an object of data filter keys"
    )


def parse_multipart(body: bytes, content_type: str) -> Payload:
    """Split a dicom-multipart body into Part-10 files, keeping data filter keys.

    One part without keys is an instance-level request, as a bare string is in
    the JSON format.
    """
    boundary = boundary_from_content_type(content_type)
    if boundary is None:
        raise WireFormatError(f"Content-Type {content_type!r} has no multipart boundary")
    decoder = MultipartDecoder(boundary)
    try:
        parts = decoder.feed(body)
        decoder.close()
    except MalformedMultipart as exc:
        raise WireFormatError(f"the multipart body is malformed: {exc}") from None
    entries = []
    for index, (headers, data) in enumerate(zip(decoder.part_headers, parts, strict=True)):
        part_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if part_type != "application/dicom":
            raise WireFormatError(
                f"part {index} is {part_type or 'untyped'!r}, expected application/dicom"
            )
        entries.append(
            Entry(data, headers.get("series-data-key"), headers.get("instance-data-key"))
        )
    entries = _non_empty(entries)
    single = len(entries) == 1 and entries[0].series_key is entries[0].instance_key is None
    filtered = any(e.series_key or e.instance_key for e in entries)
    return Payload(entries, single=single, filtered=filtered)


def decode_instance(instance: str | bytes, where: str = "instance") -> Dataset:
    """Turn one instance into a pydicom dataset; ``where`` names it in errors."""
    data = instance if isinstance(instance, bytes) else _instance_bytes(instance, where)
    try:
        # force=False: a file without the DICM preamble is not what the proxy sends.
        return pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as exc:
        raise WireFormatError(f"{where} is not a DICOM Part-10 file: {exc}") from None
    except Exception as exc:  # a truncated or corrupt file fails in many ways
        raise WireFormatError(f"{where} is not a readable DICOM file: {exc!r}") from None


def _instance_bytes(instance: str, where: str) -> bytes:
    """The file carried by one instance string of the JSON format."""
    try:
        values = orjson.loads(instance)
    except orjson.JSONDecodeError:
        raise WireFormatError(
            f"{where} is not a JSON array of byte values: starts with {instance[:20]!r}"
        ) from None
    if not isinstance(values, list):
        raise WireFormatError(f"{where} is a JSON {type(values).__name__}, not an array of bytes")
    try:
        return bytes(values)
    except (TypeError, ValueError):
        raise WireFormatError(f"{where} holds values that are not integers 0-255") from None


def _filtered_entries(key: str, value: Any) -> list[Entry]:
    data = _data_of(value, f"body[{key!r}]")
    if isinstance(data, str):
        return [Entry(data, instance_key=key)]
    if isinstance(data, list):
        return [
            Entry(_instance_string(item, f"body[{key!r}].data[{i}]"), series_key=key)
            for i, item in enumerate(data)
        ]
    if isinstance(data, dict):
        return [
            Entry(
                _instance_string(
                    _data_of(nested, f"body[{key!r}].data[{inner!r}]"),
                    f"body[{key!r}].data[{inner!r}].data",
                ),
                series_key=key,
                instance_key=inner,
            )
            for inner, nested in data.items()
        ]
    raise WireFormatError(
        f"body[{key!r}].data is a JSON {type(data).__name__}: expected an instance string, "
        "a list of them or an object of instance data filter keys"
    )


def _data_of(value: Any, where: str) -> Any:
    if not isinstance(value, dict) or "data" not in value:
        raise WireFormatError(f'{where} must be an object with a "data" member')
    return value["data"]


def _instance_string(item: Any, where: str) -> str:
    if not isinstance(item, str):
        raise WireFormatError(
            f"{where} is a JSON {type(item).__name__}: an instance must be a JSON string "
            'holding the array of its bytes, e.g. "[0,0,1]"'
        )
    return item


def _non_empty(entries: list[Entry]) -> list[Entry]:
    if not entries:
        raise WireFormatError("the request carries no instances")
    return entries
