"""Parsing and checking what the viewer sends: UIDs and ``?data-filters=``.

Everything here is validated once, at the edge, with a message that says what
was wrong; the rest of the proxy trusts the typed result.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from model_proxy.config import DataFilterEntry, Level, ModelConfig
from model_proxy.errors import BadRequest, ErrorCode, shorten
from model_proxy.models.body import InstanceInput, SeriesInput

# DICOM PS3.5 section 9.1: dot-separated numbers without leading zeros, 64 chars at most.
UID_PATTERN = r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*"
UID_MAX_LENGTH = 64
MAX_FILTERS = 256
_UID = re.compile(UID_PATTERN)
_PARAM = "data-filters"
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_INDEX = re.compile(r"0|[1-9][0-9]{0,3}")  # ASCII only, no leading zeros: "01" is not 1
_MAX_INDEX = 1023
# data-filters[0][dataFilter][1][uuid] is the deepest name a valid request has.
_MAX_BRACKETS = 4


def validate_uid(value: str, what: str) -> str:
    """``value`` if it is a valid DICOM UID, else a 400 naming ``what``."""
    if len(value) > UID_MAX_LENGTH or not _UID.fullmatch(value):
        raise BadRequest(
            f"{what} {shorten(value)!r} is not a valid DICOM UID (digits and dots, no leading"
            f" zeros, at most {UID_MAX_LENGTH} characters)",
            code=ErrorCode.INVALID_UID,
        )
    return value


@dataclass(frozen=True)
class RequestedFilter:
    """One entry of ``?data-filters``: a dataKey and the DICOM UID behind it."""

    data_key: str
    uid: str
    children: tuple[RequestedFilter, ...] = field(default=())


def filters_json(filters: Sequence[RequestedFilter]) -> list[dict[str, object]]:
    """``filters`` back as the JSON ``?data-filters=`` takes (a job keeps them so)."""
    out: list[dict[str, object]] = []
    for found in filters:
        entry: dict[str, object] = {"dataKey": found.data_key, "uuid": found.uid}
        if found.children:
            entry["dataFilter"] = filters_json(found.children)
        out.append(entry)
    return out


def parse_data_filters(items: Sequence[tuple[str, str]]) -> list[RequestedFilter] | None:
    """The ``data-filters`` of a query string, in bracket notation or as JSON, as an
    array of ``{dataKey, uuid}`` or as a map from dataKey to UID.

    ``data-filters[0][dataKey]=a&data-filters[0][uuid]=1.2`` (how Express's qs
    serializes arrays), ``data-filters=[{"dataKey":"a","uuid":"1.2"}]``,
    ``data-filters[a]=1.2`` and ``data-filters={"a":"1.2"}`` all give
    ``[RequestedFilter("a", "1.2")]``. None when the parameter is absent.
    """
    plain = [value for key, value in items if key == _PARAM]
    bracketed = [(key, value) for key, value in items if key.startswith(_PARAM + "[")]
    if not plain and not bracketed:
        return None
    if plain and bracketed:
        raise _filter_error("give data-filters either as JSON or in bracket notation, not both")
    if len(plain) > 1:
        raise _filter_error("data-filters is given more than once")
    if plain:
        try:
            document = orjson.loads(plain[0])
        except orjson.JSONDecodeError as exc:
            raise _filter_error(f"data-filters is not valid JSON ({exc.msg})") from exc
    else:
        document = _from_brackets(bracketed)
    if isinstance(document, dict):
        document = _from_keyed_map(document)
    return _to_filters(document, "data-filters", depth=1)


def _from_keyed_map(document: dict[str, object]) -> list[dict[str, object]]:
    """``{"series-one": "1.2"}`` -> ``[{"dataKey": "series-one", "uuid": "1.2"}]``: the
    short form a viewer may send when no input nests instances."""
    if "dataKey" in document or "uuid" in document:
        raise _filter_error(
            "data-filters must be an array of {dataKey, uuid} objects (one object was given)"
        )
    entries: list[dict[str, object]] = []
    for data_key, uid in document.items():
        if not isinstance(uid, str):
            raise _filter_error(
                f"data-filters[{shorten(data_key, 40)}] must be a UID string: a map from"
                " dataKey to UID cannot nest; use the array form for nested inputs"
            )
        validate_uid(uid, f"data-filters[{shorten(data_key, 40)}]")
        entries.append({"dataKey": data_key, "uuid": uid})
    return entries


def _from_brackets(items: list[tuple[str, str]]) -> object:
    root: dict[str, object] = {}
    for key, value in items:
        rest = key[len(_PARAM) :]
        segments = _BRACKETS.findall(rest)
        if not segments or "".join(f"[{s}]" for s in segments) != rest:
            raise _filter_error(f"cannot read the parameter name {key[:100]!r}")
        if len(segments) > _MAX_BRACKETS:
            raise _filter_error(
                f"{key[:100]!r} nests deeper than data-filters[i][dataFilter][j][field]"
            )
        node: dict[str, object] = root
        for segment in segments[:-1]:
            child = node.setdefault(segment, {})
            if not isinstance(child, dict):
                raise _filter_error(f"{key[:100]!r} conflicts with another parameter")
            node = child
        if segments[-1] in node:
            raise _filter_error(f"{key[:100]!r} is given more than once")
        node[segments[-1]] = value
    return _lists_from_indexes(root)


def _lists_from_indexes(node: object) -> object:
    """Turn ``{"0": a, "1": b}`` (numeric keys) into ``[a, b]``, recursively."""
    if not isinstance(node, dict):
        return node
    converted = {key: _lists_from_indexes(value) for key, value in node.items()}
    if converted and all(_INDEX.fullmatch(key) for key in converted):
        indexes = sorted(int(key) for key in converted)
        if indexes[-1] > _MAX_INDEX or indexes != list(range(len(indexes))):
            raise _filter_error("data-filters indexes must count up from 0 without gaps")
        return [converted[str(index)] for index in indexes]
    return converted


def _to_filters(document: object, where: str, depth: int) -> list[RequestedFilter]:
    if not isinstance(document, list):
        raise _filter_error(
            f"{where} must be an array of {{dataKey, uuid}} objects or a map from dataKey to UID"
        )
    if len(document) > MAX_FILTERS:
        raise _filter_error(f"{where} has more than {MAX_FILTERS} entries")
    filters: list[RequestedFilter] = []
    for index, entry in enumerate(document):
        here = f"{where}[{index}]"
        if not isinstance(entry, dict):
            raise _filter_error(f"{here} must be an object with dataKey and uuid")
        unknown = set(entry) - {"dataKey", "uuid", "dataFilter"}
        if unknown:
            raise _filter_error(f"{here} has unknown fields: {', '.join(sorted(unknown))}")
        data_key, uid = entry.get("dataKey"), entry.get("uuid")
        if not isinstance(data_key, str) or not data_key:
            raise _filter_error(f"{here}.dataKey is missing or not a string")
        if not isinstance(uid, str) or not uid:
            raise _filter_error(f"{here}.uuid is missing or not a string (the DICOM UID)")
        validate_uid(uid, f"{here}.uuid")
        children: list[RequestedFilter] = []
        if "dataFilter" in entry:
            if depth >= 2:
                raise _filter_error(f"{here}.dataFilter: data filters nest at most two levels")
            children = _to_filters(entry["dataFilter"], f"{here}.dataFilter", depth + 1)
        filters.append(RequestedFilter(data_key, uid, tuple(children)))
    return filters


def resolve_inputs(
    model: ModelConfig, level: Level, requested: list[RequestedFilter] | None
) -> list[SeriesInput] | list[InstanceInput]:
    """Match the request's filters to the model's declared dataFilter entries.

    At study level the declared entries are series inputs (nested ones name
    instances of that series); at series level they are instance inputs.
    """
    declared = model.data_filter
    if level is Level.INSTANCE or not declared:
        if requested is not None:
            reason = (
                "data-filters apply to study and series requests only"
                if level is Level.INSTANCE
                else "this model declares no dataFilter inputs"
            )
            raise BadRequest(reason, code=ErrorCode.DATA_FILTERS_NOT_ACCEPTED)
        return []
    if requested is None:
        raise BadRequest(
            f"this model needs data-filters naming its inputs: {_keys(declared)}",
            code=ErrorCode.DATA_FILTERS_REQUIRED,
        )
    if level is Level.STUDY:
        return [
            SeriesInput(entry.data_key, found.uid, _instance_inputs(entry, found))
            for entry, found in _match(declared, requested, "data-filters")
        ]
    return [
        InstanceInput(entry.data_key, found.uid)
        for entry, found in _match(declared, requested, "data-filters", leaf=True)
    ]


def _instance_inputs(entry: DataFilterEntry, found: RequestedFilter) -> tuple[InstanceInput, ...]:
    if not entry.data_filter:
        if found.children:
            raise BadRequest(
                f"data-filters: input {entry.data_key!r} takes a whole series, not instances",
                code=ErrorCode.INVALID_DATA_FILTERS,
            )
        return ()
    where = f"data-filters for {entry.data_key!r}"
    return tuple(
        InstanceInput(inner.data_key, inner_found.uid)
        for inner, inner_found in _match(entry.data_filter, list(found.children), where, leaf=True)
    )


def _match(
    declared: Sequence[DataFilterEntry],
    requested: list[RequestedFilter],
    where: str,
    *,
    leaf: bool = False,
) -> list[tuple[DataFilterEntry, RequestedFilter]]:
    by_key: dict[str, RequestedFilter] = {}
    for item in requested:
        if item.data_key in by_key:
            raise _filter_error(f"{where}: dataKey {item.data_key!r} is given more than once")
        by_key[item.data_key] = item
    known = {entry.data_key for entry in declared}
    unknown = [key for key in by_key if key not in known]
    if unknown:
        raise _filter_error(
            f"{where}: unknown dataKey {', '.join(map(repr, unknown))}; the model declares"
            f" {_keys(declared)}"
        )
    missing = [entry.data_key for entry in declared if entry.data_key not in by_key]
    if missing:
        raise _filter_error(f"{where}: no UID given for {', '.join(map(repr, missing))}")
    if leaf:
        nested = [key for key, item in by_key.items() if item.children]
        if nested:
            raise _filter_error(f"{where}: {nested[0]!r} names an instance; it cannot nest filters")
    return [(entry, by_key[entry.data_key]) for entry in declared]


def _keys(entries: Sequence[DataFilterEntry]) -> str:
    return ", ".join(repr(entry.data_key) for entry in entries)


def _filter_error(message: str) -> BadRequest:
    return BadRequest(message, code=ErrorCode.INVALID_DATA_FILTERS)
