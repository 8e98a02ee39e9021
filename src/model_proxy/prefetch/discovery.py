"""Where the watcher learns which studies a server holds: QIDO-RS, or a folder's index.

Both give the studies of the lookback window with their instance counts, and the
series of one study with their counts and the attributes the rules name:

- a DICOMweb PACS: ``GET /studies?StudyDate=<lookback>-`` (paged, at most
  ``max_studies``), then ``GET /studies/{uid}/series`` for a study worth a look;
- a ``file://`` folder: its index (pacs/folder_index.py) after an incremental rescan;
  a study is in the window when its newest file was modified within it, and a
  series' attributes come from the header of one of its files.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Protocol

import pydicom
from pydicom.errors import InvalidDicomError

from model_proxy.pacs.dicomweb import DicomWebSource
from model_proxy.pacs.guarded import GuardedSource
from model_proxy.pacs.local_folder import LocalFolderSource
from model_proxy.pacs.qido import Found, SearchPage
from model_proxy.pacs.source import DicomSource

# Series of one study asked for at most: beyond any real study.
MAX_SERIES = 1000
# Headers remembered (one per series); past this the memory starts again.
_MAX_HEADERS = 10_000
_DAY_NS = 86_400 * 1_000_000_000


class Discovery(Protocol):
    async def studies(self, keywords: Sequence[str]) -> SearchPage: ...

    async def series(self, study: str, keywords: Sequence[str]) -> list[Found]: ...


def discovery_for(source: DicomSource, *, lookback_days: int, max_studies: int) -> Discovery | None:
    """How to search ``source``; None for a source that cannot be searched."""
    inner = source.inner if isinstance(source, GuardedSource) else source
    if isinstance(inner, DicomWebSource):
        return QidoDiscovery(inner, lookback_days, max_studies)
    if isinstance(inner, LocalFolderSource):
        return FolderDiscovery(inner, lookback_days, max_studies)
    return None


class QidoDiscovery:
    def __init__(self, source: DicomWebSource, lookback_days: int, max_studies: int) -> None:
        self._source = source
        self._lookback_days = lookback_days
        self._max_studies = max_studies

    async def studies(self, keywords: Sequence[str]) -> SearchPage:
        # StudyDate is the PACS's local date; so is ours, on the same site.
        since = date.today() - timedelta(days=self._lookback_days)
        return await self._source.find_studies(
            keywords, since=since.strftime("%Y%m%d"), max_rows=self._max_studies
        )

    async def series(self, study: str, keywords: Sequence[str]) -> list[Found]:
        return (await self._source.find_series(study, keywords, max_rows=MAX_SERIES)).found


class FolderDiscovery:
    def __init__(self, source: LocalFolderSource, lookback_days: int, max_studies: int) -> None:
        self._source = source
        self._lookback_days = lookback_days
        self._max_studies = max_studies
        # Header attributes by file (path, keywords): a file is read once.
        self._headers: dict[tuple[Path, tuple[str, ...]], dict[str, str | tuple[str, ...]]] = {}

    async def studies(self, keywords: Sequence[str]) -> SearchPage:
        index = await self._source.fresh_index()
        oldest = time.time_ns() - (self._lookback_days + 1) * _DAY_NS
        recent = [uid for uid, newest in index.newest_times().items() if newest >= oldest]
        found = [
            Found(uid, sum(len(instances) for instances in index.studies.get(uid, {}).values()))
            for uid in recent[: self._max_studies]
        ]
        return SearchPage(found, truncated=len(recent) > self._max_studies)

    async def series(self, study: str, keywords: Sequence[str]) -> list[Found]:
        index = await self._source.fresh_index()
        found = []
        for series_uid, instances in index.studies.get(study, {}).items():
            if not instances:
                continue
            path = min(instances.values())
            key = (path, tuple(keywords))
            if key not in self._headers:
                if len(self._headers) >= _MAX_HEADERS:
                    self._headers.clear()
                self._headers[key] = await asyncio.to_thread(_header_attributes, path, keywords)
            found.append(Found(series_uid, len(instances), self._headers[key]))
        return found


def _header_attributes(path: Path, keywords: Sequence[str]) -> dict[str, str | tuple[str, ...]]:
    """The ``keywords`` of one file's header as text; {} for an unreadable file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(keywords))
    except (InvalidDicomError, OSError, ValueError, KeyError, EOFError):
        return {}
    attributes: dict[str, str | tuple[str, ...]] = {}
    for keyword in keywords:
        value = dataset.get(keyword)
        if value is None or value == "":
            continue
        if isinstance(value, pydicom.multival.MultiValue):
            attributes[keyword] = tuple(str(one) for one in value)
        else:
            attributes[keyword] = str(value)
    return attributes
