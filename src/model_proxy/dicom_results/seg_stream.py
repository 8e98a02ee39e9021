"""A segmentation result streamed into DICOM Segmentations (docs/dicom-outputs.md, "Memory").

The model's JSON is split instance by instance as it arrives (``json_split.py``),
each instance's masks are packed into a spool file (``seg_spool.py``), the
headers of each series are read as soon as the result names it (alongside the
rest of the result), and each series' SEG is written from the spool
(``seg_writer.py``) into ``out_dir``. Held at once: one instance's JSON text and
masks, the headers, the frame offsets; never the whole result nor the whole SEG.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from pydicom import Dataset

from model_proxy.dicom_results.convert import DicomObject
from model_proxy.dicom_results.headers import source_headers
from model_proxy.dicom_results.json_split import EntryTooLarge, InstanceSplitter, SplitError
from model_proxy.dicom_results.seg import Algorithm
from model_proxy.dicom_results.seg_spool import MaskSpool
from model_proxy.dicom_results.seg_writer import write_segmentation
from model_proxy.errors import ErrorCode, ModelError
from model_proxy.pacs.source import DicomSource, Target

# Result text split and spooled per hop to a worker thread (about two 512x512 masks).
_BYTES_PER_HOP = 1 << 20


async def stream_segmentations(
    chunks: AsyncIterator[bytes],
    source: DicomSource,
    algorithm: Algorithm,
    *,
    uid_root: str,
    out_dir: Path,
    max_entry_bytes: int,
    instance_target: Target | None = None,
) -> list[DicomObject]:
    """The SEGs of a segmentation result read from ``chunks``, written into ``out_dir``.

    ``instance_target``: an instance request's target, whose headers alone are read.
    """
    splitter = InstanceSplitter(max_value_bytes=max_entry_bytes)
    spool = MaskSpool(out_dir / "masks.spool", algorithm.model_id)
    reads = _HeaderReads(source)
    try:
        if instance_target is not None:
            reads.start(instance_target)
        try:
            # Split and spooled in a thread, about a megabyte of the result per hop:
            # the event loop only collects the chunks.
            batch: list[bytes] = []
            size = 0
            async for chunk in chunks:
                batch.append(chunk)
                size += len(chunk)
                if size >= _BYTES_PER_HOP:
                    await asyncio.to_thread(_split_and_spool, splitter, spool, batch)
                    batch, size = [], 0
                    if instance_target is None:
                        reads.start_all(spool)
            await asyncio.to_thread(_split_and_spool, splitter, spool, batch)
            splitter.close()
        except SplitError as exc:
            raise _split_error(exc, algorithm, max_entry_bytes) from None
        if instance_target is None:
            reads.start_all(spool)
        headers = await reads.headers()
        objects: list[DicomObject] = []
        for index, masks in enumerate(spool.series.values()):
            path = out_dir / f"seg-{index}.dcm"
            written = await asyncio.to_thread(
                write_segmentation, masks, spool, headers, algorithm, uid_root, path
            )
            if written is not None:
                objects.append(DicomObject.at(written, path))
        return objects
    finally:
        await reads.cancel()
        spool.close()


class _HeaderReads:
    """The headers of each series read as soon as the result names it, while the rest
    of the result still arrives (the model writes it, the PACS sends the headers)."""

    def __init__(self, source: DicomSource) -> None:
        self._source = source
        self._tasks: dict[Target, asyncio.Task[dict[str, Dataset]]] = {}

    def start(self, target: Target) -> None:
        if target not in self._tasks:
            read = source_headers(self._source, [target], geometry_only=True)
            self._tasks[target] = asyncio.create_task(read)

    def start_all(self, spool: MaskSpool) -> None:
        for study, series in list(spool.series):
            self.start(Target(study, series))

    async def headers(self) -> dict[str, Dataset]:
        headers: dict[str, Dataset] = {}
        for task in self._tasks.values():
            headers.update(await task)
        return headers

    async def cancel(self) -> None:
        """Stops the reads still running (the result was refused, the request ended)."""
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


def _split_and_spool(splitter: InstanceSplitter, spool: MaskSpool, chunks: list[bytes]) -> None:
    for chunk in chunks:
        for study, series, key, value in splitter.feed(chunk):
            if key != "metadata":
                spool.add_instance(study, series, key, value)


def _split_error(exc: SplitError, algorithm: Algorithm, limit: int) -> ModelError:
    if isinstance(exc, EntryTooLarge):
        return ModelError(
            f"model {algorithm.model_id}: one instance of the result is larger than {limit}"
            " bytes, the most converted to DICOM at once (--dicom-max-result); ask for JSON,"
            " or raise the limit",
            code=ErrorCode.MODEL_RESULT_TOO_LARGE,
        )
    return ModelError(
        f"model {algorithm.model_id}: the result is not a JSON object nested study, series,"
        f" instance ({exc}); it cannot be converted to DICOM",
        code=ErrorCode.MODEL_BAD_RESPONSE,
    )
