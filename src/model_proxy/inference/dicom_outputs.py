"""DICOM results of one inference (docs/dicom-outputs.md): returned, stored, or both.

The model's JSON result is read whole, the headers of the instances it describes
are read through the same source, and the result is converted (dicom_results/)
in a thread. Then, as the request asked:

- stored (``?store=true`` or the model's ``"store"``): STOW-RS to the PACS, or
  files into a local folder; ``DICOM-Stored`` names the stored SOP Instance UIDs;
- returned: ``Accept: multipart/related; type="application/dicom"`` gets every
  object, DICOMweb-framed; ``Accept: application/dicom`` the one object;
- otherwise the JSON result itself, byte for byte what the model answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import shutil
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from model_proxy.config import ServerConfig, Task
from model_proxy.dicom_results import (
    Algorithm,
    DicomObject,
    convert_result,
    result_series,
    source_headers,
    stream_segmentations,
)
from model_proxy.errors import ErrorCode, ModelError, NotAcceptable, ProxyError
from model_proxy.inference.output_folders import folders_for
from model_proxy.inference.request import InferenceRequest
from model_proxy.inference.runner import Finalizer, InferenceRunner, Outcome
from model_proxy.pacs.multipart import DICOM_TYPE, DicomMultipartFiles
from model_proxy.pacs.source import DicomSource
from model_proxy.runtime.state import ProxyState

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


class DicomMedia(enum.Enum):
    """The DICOM media type a viewer's ``Accept`` asks for."""

    MULTIPART = "multipart/related"
    SINGLE = DICOM_TYPE


def dicom_media(accept: str | None) -> DicomMedia | None:
    """The DICOM form ``accept`` names first, if any (JSON and ``*/*`` are not DICOM).

    >>> dicom_media('multipart/related; type="application/dicom"')
    <DicomMedia.MULTIPART: 'multipart/related'>
    >>> dicom_media("application/json, */*") is None
    True
    """
    for media_range in (accept or "").split(","):
        kind, _, params = media_range.partition(";")
        kind = kind.strip().lower()
        if kind == DICOM_TYPE:
            return DicomMedia.SINGLE
        if kind == "multipart/related" and _type_param(params) == DICOM_TYPE:
            return DicomMedia.MULTIPART
    return None


def _type_param(params: str) -> str | None:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "type":
            return value.strip().strip('"').lower()
    return None


@dataclass(frozen=True)
class DicomOutputs:
    """What the request wants besides JSON: a media type, a server to store in."""

    media: DicomMedia | None = None
    store_in: ServerConfig | None = None
    store_required: bool = True

    @property
    def wanted(self) -> bool:
        return self.media is not None or self.store_in is not None


async def run_with_dicom_outputs(
    runner: InferenceRunner, request: InferenceRequest, state: ProxyState, outputs: DicomOutputs
) -> Outcome:
    """Run the inference, convert its result, store and/or return the objects.

    The objects (and the JSON, when it is the answer) are spooled in a folder of
    their own under ``<data-dir>/dicom-outputs`` (inference/output_folders.py), removed
    once the answer is sent.
    """
    spool = await asyncio.to_thread(_spool_dir, state.settings.data_dir)
    try:
        return await _run(runner, request, state, outputs, spool)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, spool, True)
        raise


async def _run(
    runner: InferenceRunner,
    request: InferenceRequest,
    state: ProxyState,
    outputs: DicomOutputs,
    spool: Path,
) -> Outcome:
    model = request.model
    algorithm = Algorithm(model.id, model.algorithm_name, model.algorithm_version)
    source = state.source_for(request.server.id)[1]
    limit = state.settings.dicom_max_result_bytes
    outcome = await runner.run()
    # The JSON answer, when it is the answer, is kept on disk while the result streams.
    json_copy = spool / "result.json" if outputs.media is None else None
    async with contextlib.aclosing(body_chunks(outcome, json_copy)) as chunks:
        if model.task is Task.SEGMENTATION:
            objects = await stream_segmentations(
                chunks,
                source,
                algorithm,
                uid_root=state.settings.uid_root,
                out_dir=spool,
                max_entry_bytes=limit,
                instance_target=request.target if request.target.instance is not None else None,
            )
        else:
            objects = await _converted_whole(chunks, request, source, algorithm, state, spool)
    extra: dict[str, str] = {}
    store_in = outputs.store_in
    if store_in is not None and objects and await _store(state, store_in, outputs, objects):
        extra["DICOM-Stored"] = ", ".join(o.sop_instance_uid for o in objects)
    if json_copy is not None:
        return _streamed(outcome.status, {**outcome.headers, **extra}, [json_copy], spool)
    assert outputs.media is not None
    return _dicom_answer(outputs.media, objects, extra, model.id, spool)


async def _converted_whole(
    chunks: AsyncIterator[bytes],
    request: InferenceRequest,
    source: DicomSource,
    algorithm: Algorithm,
    state: ProxyState,
    spool: Path,
) -> list[DicomObject]:
    """Annotation and prediction results (a few KiB per instance): parsed whole."""
    body = await read_whole(chunks, state.settings.dicom_max_result_bytes, algorithm.model_id)
    try:
        result = await asyncio.to_thread(orjson.loads, body)
    except orjson.JSONDecodeError:
        raise ModelError(
            f"model {algorithm.model_id}: the result is not JSON; it cannot be converted to DICOM",
            code=ErrorCode.MODEL_BAD_RESPONSE,
        ) from None
    del body
    targets = result_series(result, algorithm.model_id)
    if request.target.instance is not None:
        # An instance request: its headers only, not those of its whole series.
        targets = [request.target]
    headers = await source_headers(source, targets)
    return await asyncio.to_thread(
        convert_result,
        request.model.task,
        result,
        headers,
        algorithm,
        state.settings.uid_root,
        spool,
    )


def _spool_dir(data_dir: Path) -> Path:
    return folders_for(data_dir).new_folder()


async def _store(
    state: ProxyState, server: ServerConfig, outputs: DicomOutputs, objects: list[DicomObject]
) -> bool:
    """True when stored; a failure raises, or (store not required) is logged and kept
    for /status."""
    target = state.source_for(server.id)[1]
    try:
        await target.store([o.path for o in objects])
    except ProxyError as exc:
        if outputs.store_required:
            raise
        logger.warning("DICOM results not stored (not required): %s", exc.message)
        state.store_failures[server.id] = {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "message": exc.message,
        }
        return False
    logger.info(
        "stored %s in %s",
        ", ".join(f"{o.modality} {o.sop_instance_uid}" for o in objects),
        target.label,
    )
    return True


def _dicom_answer(
    media: DicomMedia,
    objects: list[DicomObject],
    extra: dict[str, str],
    model_id: str,
    spool: Path,
) -> Outcome:
    # New UIDs on every call: nothing to validate or cache in the browser.
    headers = {**extra, "Vary": "Accept", "Cache-Control": "no-store"}
    if media is DicomMedia.SINGLE:
        if len(objects) != 1:
            raise NotAcceptable(
                f"the result of model {model_id} makes {len(objects)} DICOM objects;"
                ' ask for them with Accept: multipart/related; type="application/dicom"'
            )
        return _streamed(200, {**headers, "Content-Type": DICOM_TYPE}, [objects[0].path], spool)
    if not objects:
        shutil.rmtree(spool, ignore_errors=True)
        return Outcome(204, headers)
    message = DicomMultipartFiles([o.path for o in objects])
    return Outcome(
        200,
        {**headers, "Content-Type": message.content_type},
        aiter(message),
        _remover(spool),
    )


def _streamed(status: int, headers: Mapping[str, str], paths: list[Path], spool: Path) -> Outcome:
    """An answer read from spooled files as it is sent; the spool removed after."""

    async def chunks() -> AsyncIterator[bytes]:
        for path in paths:
            file = await asyncio.to_thread(open, path, "rb")
            try:
                while chunk := await asyncio.to_thread(file.read, _CHUNK):
                    yield chunk
            finally:
                file.close()

    return Outcome(status, headers, chunks(), _remover(spool))


def _remover(spool: Path) -> Finalizer:
    async def remove(error: BaseException | None) -> None:
        await asyncio.to_thread(shutil.rmtree, spool, True)

    return remove


async def body_chunks(outcome: Outcome, copy_to: Path | None = None) -> AsyncGenerator[bytes, None]:
    """The outcome's body (copied to ``copy_to`` as it passes), its finalizer run however
    the reading ended (close the generator: ``contextlib.aclosing``)."""
    copy = await asyncio.to_thread(open, copy_to, "wb") if copy_to is not None else None
    error: BaseException | None = None
    try:
        if isinstance(outcome.body, bytes):
            if copy is not None:
                await asyncio.to_thread(copy.write, outcome.body)
            yield outcome.body
        else:
            async for chunk in outcome.body:
                if copy is not None:
                    await asyncio.to_thread(copy.write, chunk)
                yield chunk
    except BaseException as exc:
        error = exc
        raise
    finally:
        if copy is not None:
            copy.close()
        aclose = getattr(outcome.body, "aclose", None)
        if aclose is not None:
            await aclose()
        if outcome.finalize is not None:
            await outcome.finalize(error)


async def read_whole(chunks: AsyncIterator[bytes], limit: int, model_id: str) -> bytes:
    """The whole of ``chunks``, up to ``limit`` bytes (ModelError past it)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise ModelError(
                f"model {model_id}: the result is larger than {limit} bytes, the most"
                " converted to DICOM (--dicom-max-result); ask for JSON, or raise the limit",
                code=ErrorCode.MODEL_RESULT_TOO_LARGE,
            )
        parts.append(chunk)
    return b"".join(parts)
