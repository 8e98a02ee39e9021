"""The UID index of a ``file://`` folder, kept up to date without rescanning every file.

A rescan stats each known directory; only a directory whose modification time changed
(a file or folder was added, removed or renamed in it) is listed again, and in it only
files whose size or modification time changed are parsed again. A folder of 50,000
files in 500 series folders costs 500 ``stat`` calls when nothing changed, not 50,000.

What this does not see: a file rewritten in place under the same name in a folder
that did not change otherwise keeps the UIDs it was indexed with (the cache key still
sees the new size and time: ``cache/keys.py`` stats the files it serves). A folder is
listed again while its modification time is within ``RACY_NS`` of when it was last
listed, because a change in the same clock tick would not move the time (git's
"racy" rule).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from model_proxy.pacs.source import Target

logger = logging.getLogger(__name__)

_UID_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class _IndexedFile:
    study: str
    series: str
    instance: str


@dataclass(frozen=True)
class _Listing:
    """One directory as last listed: its time then, its subdirectories and files."""

    mtime_ns: int
    listed_at_ns: int
    subdirs: tuple[Path, ...]
    files: tuple[Path, ...]

    def still_valid(self, mtime_ns: int) -> bool:
        return mtime_ns == self.mtime_ns and self.listed_at_ns - mtime_ns > RACY_NS


_FileEntry = tuple[tuple[int, int], _IndexedFile | None]


class FolderIndex:
    """UID -> path index of one folder tree; ``scan`` is blocking (run it in a thread)."""

    def __init__(self, root: Path, *, allow_outside_links: bool = False) -> None:
        self.root = root
        # A file symlink to a target outside root is skipped unless this is set.
        self.allow_outside_links = allow_outside_links
        self._refused: set[Path] = set()  # outside links already warned about
        self._files: dict[Path, _FileEntry] = {}
        self._dirs: dict[Path, _Listing] = {}
        self.studies: dict[str, dict[str, dict[str, Path]]] = {}
        self.root_missing = False
        self.listings = 0  # directories listed, over all scans (tests and benchmarks)

    def scan(self) -> None:
        """Bring the index up to date; the new maps replace the old ones at the end, so
        lookups from the event loop meanwhile see the previous index whole."""
        if not self.root.is_dir():
            self.root_missing = True
            return
        dirs: dict[Path, _Listing] = {}
        files: dict[Path, _FileEntry] = {}
        pending = [self.root]
        while pending:
            directory = pending.pop()
            try:
                mtime_ns = os.stat(directory).st_mtime_ns
            except OSError:
                continue
            listing = self._dirs.get(directory)
            if listing is not None and listing.still_valid(mtime_ns):
                for path in listing.files:
                    known = self._files.get(path)
                    if known is not None:
                        files[path] = known
            else:
                listing = self._list(directory, mtime_ns, files)
            dirs[directory] = listing
            pending.extend(listing.subdirs)
        studies: dict[str, dict[str, dict[str, Path]]] = {}
        for path, (_signature, entry) in files.items():
            if entry is not None:
                studies.setdefault(entry.study, {}).setdefault(entry.series, {})[entry.instance] = (
                    path
                )
        self._files, self._dirs, self.studies = files, dirs, studies
        self.root_missing = False

    def _list(self, directory: Path, mtime_ns: int, files: dict[Path, _FileEntry]) -> _Listing:
        self.listings += 1
        listed_at_ns = time.time_ns()
        subdirs: list[Path] = []
        names: list[Path] = []
        try:
            with os.scandir(directory) as found:
                entries = list(found)
        except OSError:
            entries = []
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(path)
                    continue
                if entry.is_dir():
                    continue  # a link to a folder: not followed, as os.walk does
                if entry.is_symlink() and not self.allow_outside_links and not self.contains(path):
                    self._warn_refused(path)
                    continue
                stat = entry.stat()
            except OSError:
                continue
            # Keyed by (size, mtime): unchanged files, DICOM or not, are not parsed again.
            signature = (stat.st_size, stat.st_mtime_ns)
            known = self._files.get(path)
            files[path] = (
                known
                if known is not None and known[0] == signature
                else (
                    signature,
                    _read_uids(path),
                )
            )
            names.append(path)
        return _Listing(mtime_ns, listed_at_ns, tuple(subdirs), tuple(names))

    def contains(self, path: Path) -> bool:
        """Whether ``path``, symlinks resolved, is inside the folder."""
        real_root = os.path.realpath(self.root)
        return os.path.realpath(path).startswith(real_root.rstrip(os.sep) + os.sep)

    def _warn_refused(self, path: Path) -> None:
        if path not in self._refused:
            self._refused.add(path)
            logger.warning(
                "skipping %s: a symlink to a file outside %s"
                " (--allow-symlinks-outside-folder serves those)",
                path,
                self.root,
            )

    def lookup(self, target: Target) -> list[Path]:
        series_map = self.studies.get(target.study, {})
        if target.series is None:
            return [path for instances in series_map.values() for path in instances.values()]
        instances = series_map.get(target.series, {})
        if target.instance is None:
            return list(instances.values())
        path = instances.get(target.instance)
        return [path] if path is not None else []

    def newest_times(self) -> dict[str, int]:
        """Each study's newest file modification time (ns) as of the last scan: when a
        study arrived, for the prefetch watcher's lookback window."""
        newest: dict[str, int] = {}
        for (_size, mtime_ns), entry in self._files.values():
            if entry is not None and mtime_ns > newest.get(entry.study, -1):
                newest[entry.study] = mtime_ns
        return newest

    @property
    def instance_count(self) -> int:
        return sum(len(i) for series in self.studies.values() for i in series.values())


def _read_uids(path: Path) -> _IndexedFile | None:
    try:
        # pydicom warns, rather than raises, on some corrupt files: skip those too.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_UID_TAGS)
            uids = [str(dataset.get(tag, "")) for tag in _UID_TAGS]
    except (InvalidDicomError, OSError, ValueError, KeyError, EOFError, Warning) as exc:
        logger.debug("skipping %s: not a readable DICOM file (%s)", path, exc)
        return None
    if not all(uids):
        logger.debug("skipping %s: it lacks one of %s", path, ", ".join(_UID_TAGS))
        return None
    return _IndexedFile(*uids)
