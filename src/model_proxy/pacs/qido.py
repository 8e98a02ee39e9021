"""QIDO-RS searches for the prefetch watcher: which studies a PACS holds, and their series.

Answers are DICOM JSON (PS3.18 F.2): ``{"0020000D": {"vr": "UI", "Value": ["1.2"]}}``
per row. Each row becomes a :class:`Found`: its UID, its instance count and the
attributes the rules ask about, by keyword. Searches page with ``limit``/``offset``
and stop at ``max_rows``, so one poll of a big PACS stays a bounded amount of work.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from pydicom.datadict import tag_for_keyword

from model_proxy.errors import ErrorCode, PacsError
from model_proxy.upstream.clients import translate_errors

logger = logging.getLogger(__name__)

QIDO_ACCEPT = "application/dicom+json"
# Rows per QIDO page: what DICOMweb servers commonly allow without a complaint.
PAGE_SIZE = 100

STUDY_UID = "StudyInstanceUID"
SERIES_UID = "SeriesInstanceUID"
STUDY_INSTANCES = "NumberOfStudyRelatedInstances"
SERIES_INSTANCES = "NumberOfSeriesRelatedInstances"


@dataclass(frozen=True)
class Found:
    """A study or a series as the PACS describes it."""

    uid: str
    instances: int
    attributes: dict[str, str | tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchPage:
    found: list[Found]
    truncated: bool  # more rows than ``max_rows``: the rest were not asked for


def tag_of(keyword: str) -> str:
    """``"Modality"`` -> ``"00080060"`` (keywords are checked when rules.json loads)."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"{keyword!r} is not a DICOM keyword")
    return f"{tag:08X}"


async def search(
    client: httpx.AsyncClient,
    url: str,
    *,
    uid_keyword: str,
    count_keyword: str,
    keywords: Sequence[str],
    filters: dict[str, str],
    max_rows: int,
    limits: httpx.Timeout,
    label: str,
) -> SearchPage:
    """Every row of a QIDO search of ``url``, page by page, up to ``max_rows``.

    PacsError / UpstreamTimeout name the PACS when it cannot be asked."""
    wanted = list(dict.fromkeys([count_keyword, *keywords]))
    params: dict[str, Any] = {**filters, "includefield": [tag_of(k) for k in wanted]}
    found: list[Found] = []
    offset = 0
    while True:
        limit = min(PAGE_SIZE, max_rows - len(found))
        if limit <= 0:
            return SearchPage(found, truncated=True)
        rows = await _page(client, url, {**params, "limit": limit, "offset": offset}, limits, label)
        found += [
            row for row in (_row(raw, uid_keyword, count_keyword, keywords) for raw in rows) if row
        ]
        offset += len(rows)
        if len(rows) < limit:
            return SearchPage(found, truncated=False)


async def _page(
    client: httpx.AsyncClient,
    url: str,
    params: dict[str, Any],
    limits: httpx.Timeout,
    label: str,
) -> list[Any]:
    with translate_errors(label, PacsError):
        response = await client.get(
            url, params=params, headers={"Accept": QIDO_ACCEPT}, timeout=limits
        )
    if response.status_code == 204:
        return []  # QIDO-RS: no matches
    if response.status_code in (401, 403):
        raise PacsError(
            f"{label}: access refused ({response.status_code}) to a QIDO search; check the"
            " server's credentials",
            code=ErrorCode.PACS_AUTH_FAILED,
            upstream=label,
        )
    if response.status_code != 200:
        raise PacsError(
            f"{label}: answered {response.status_code} {response.reason_phrase} to a QIDO search",
            upstream=label,
        )
    try:
        rows = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        rows = None
    if not isinstance(rows, list):
        raise PacsError(
            f"{label}: a QIDO search was not answered with a DICOM JSON list",
            code=ErrorCode.PACS_BAD_RESPONSE,
            upstream=label,
        )
    return rows


def _row(
    raw: object, uid_keyword: str, count_keyword: str, keywords: Sequence[str]
) -> Found | None:
    if not isinstance(raw, dict):
        return None
    uid = value_of(raw, tag_of(uid_keyword))
    count = value_of(raw, tag_of(count_keyword))
    if not isinstance(uid, str) or not uid:
        return None
    try:
        instances = int(count) if isinstance(count, str) else 0
    except ValueError:
        instances = 0
    attributes = {}
    for keyword in keywords:
        value = value_of(raw, tag_of(keyword))
        if value is not None:
            attributes[keyword] = value
    return Found(uid, instances, attributes)


def value_of(row: dict[str, Any], tag: str) -> str | tuple[str, ...] | None:
    """A DICOM JSON attribute as text: one string, several, or None when absent.

    Person names are their alphabetic form; numbers their decimal text."""
    element = row.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    if not isinstance(values, list) or not values:
        return None
    texts = tuple(_text(value) for value in values)
    return texts[0] if len(texts) == 1 else texts


def _text(value: object) -> str:
    if isinstance(value, dict):
        return str(value.get("Alphabetic", ""))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
