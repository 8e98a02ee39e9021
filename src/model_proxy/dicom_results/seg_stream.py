"""A segmentation result streamed into DICOM Segmentations (docs/dicom-outputs.md, "Memory").

The model's JSON is split instance by instance as it arrives (``json_split.py``),
each instance's masks are packed into a spool file (``seg_spool.py``), the
headers of the series are read, and each series' SEG is written from the spool
(``seg_writer.py``) into ``out_dir``. Held at once: one instance's JSON text and
masks, the headers, the frame offsets; never the whole result nor the whole SEG.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

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
    try:
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
            await asyncio.to_thread(_split_and_spool, splitter, spool, batch)
            splitter.close()
        except SplitError as exc:
            raise _split_error(exc, algorithm, max_entry_bytes) from None
        targets = (
            [instance_target]
            if instance_target is not None
            else [Target(study, series) for study, series in spool.series]
        )
        headers = await source_headers(source, targets, geometry_only=True)
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
        spool.close()


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
