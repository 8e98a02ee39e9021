"""Reading the model proxy's wire format: request bodies and instance strings.

Each DICOM instance arrives as a JSON *string* whose text is a JSON array of the
Part-10 file's byte values. The reference decoder is::

    pydicom.dcmread(io.BytesIO(bytes(json.loads(instance))))

:func:`decode_instance` does the same about 3x faster: ``orjson`` parses the
inner array and ``bytes()`` packs the list of small ints in one C loop (faster
than ``numpy.array(..., dtype=uint8)``). Both accept whitespace in the array.

Body shapes (contract sections 5.2 and 5.3)::

    "<instance>"                                          instance level
    ["<instance>", ...]                                   series level, or study (mixed)
    {"<series key>": {"data": ["<instance>", ...]}}       study model with data filters
    {"<series key>": {"data": {"<instance key>": {"data": "<instance>"}}}}
    {"<instance key>": {"data": "<instance>"}}            series model with data filters
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import orjson
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

__all__ = ["Entry", "Payload", "WireFormatError", "decode_instance", "parse_body"]


class WireFormatError(ValueError):
    """The request body does not follow the wire format; answered with 422."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Entry:
    """One instance string and the data filter keys it was filed under."""

    instance: str
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


def parse_body(body: bytes) -> Payload:
    """Split a request body into instance strings, keeping data filter keys."""
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


def decode_instance(instance: str, where: str = "instance") -> Dataset:
    """Turn one instance string into a pydicom dataset; ``where`` names it in errors."""
    try:
        values = orjson.loads(instance)
    except orjson.JSONDecodeError:
        raise WireFormatError(
            f"{where} is not a JSON array of byte values: starts with {instance[:20]!r}"
        ) from None
    if not isinstance(values, list):
        raise WireFormatError(f"{where} is a JSON {type(values).__name__}, not an array of bytes")
    try:
        data = bytes(values)
    except (TypeError, ValueError):
        raise WireFormatError(f"{where} holds values that are not integers 0-255") from None
    try:
        # force=False: a file without the DICM preamble is not what the proxy sends.
        return pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as exc:
        raise WireFormatError(f"{where} is not a DICOM Part-10 file: {exc}") from None
    except Exception as exc:  # a truncated or corrupt file fails in many ways
        raise WireFormatError(f"{where} is not a readable DICOM file: {exc!r}") from None


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
