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
import enum
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from model_proxy.config import ServerConfig
from model_proxy.dicom_results import (
    Algorithm,
    DicomObject,
    convert_result,
    result_series,
    source_headers,
)
from model_proxy.errors import ErrorCode, ModelError, NotAcceptable, ProxyError
from model_proxy.inference.request import InferenceRequest
from model_proxy.inference.runner import InferenceRunner, Outcome
from model_proxy.pacs.multipart import DICOM_TYPE, encode_dicom_multipart
from model_proxy.runtime.state import ProxyState

logger = logging.getLogger(__name__)


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
    """Run the inference, convert its result, store and/or return the objects."""
    model = request.model
    outcome = await runner.run()
    body = await read_whole(outcome, state.settings.dicom_max_result_bytes, model.id)
    try:
        result = await asyncio.to_thread(orjson.loads, body)
    except orjson.JSONDecodeError:
        raise ModelError(
            f"model {model.id}: the result is not JSON; it cannot be converted to DICOM",
            code=ErrorCode.MODEL_BAD_RESPONSE,
        ) from None
    source = state.source_for(request.server.id)[1]
    targets = result_series(result, model.id)
    if request.target.instance is not None:
        # An instance request: its headers only, not those of its whole series.
        targets = [request.target]
    headers = await source_headers(source, targets)
    algorithm = Algorithm(model.id, model.algorithm_name, model.algorithm_version)
    objects = await asyncio.to_thread(
        convert_result, model.task, result, headers, algorithm, state.settings.uid_root
    )
    del result, headers
    extra: dict[str, str] = {}
    store_in = outputs.store_in
    if store_in is not None and objects and await _store(state, store_in, outputs, objects):
        extra["DICOM-Stored"] = ", ".join(o.sop_instance_uid for o in objects)
    if outputs.media is None:
        return Outcome(outcome.status, {**outcome.headers, **extra}, body)
    return _dicom_answer(outputs.media, objects, extra, model.id)


async def _store(
    state: ProxyState, server: ServerConfig, outputs: DicomOutputs, objects: list[DicomObject]
) -> bool:
    """True when stored; a failure raises, or (store not required) is logged and kept
    for /status."""
    target = state.source_for(server.id)[1]
    try:
        await target.store([o.data for o in objects])
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
    media: DicomMedia, objects: list[DicomObject], extra: dict[str, str], model_id: str
) -> Outcome:
    # New UIDs on every call: nothing to validate or cache in the browser.
    headers = {**extra, "Vary": "Accept", "Cache-Control": "no-store"}
    if media is DicomMedia.SINGLE:
        if len(objects) != 1:
            raise NotAcceptable(
                f"the result of model {model_id} makes {len(objects)} DICOM objects;"
                ' ask for them with Accept: multipart/related; type="application/dicom"'
            )
        return Outcome(200, {**headers, "Content-Type": DICOM_TYPE}, objects[0].data)
    if not objects:
        return Outcome(204, headers)
    content_type, body = encode_dicom_multipart([o.data for o in objects])
    return Outcome(200, {**headers, "Content-Type": content_type}, body)


async def read_whole(outcome: Outcome, limit: int, model_id: str) -> bytes:
    """The whole body of an outcome, up to ``limit`` bytes (ModelError past it), its
    finalizer run however the reading ended."""
    too_large = ModelError(
        f"model {model_id}: the result is larger than {limit} bytes, the most converted"
        " to DICOM (--dicom-max-result); ask for JSON, or raise the limit",
        code=ErrorCode.MODEL_RESULT_TOO_LARGE,
    )
    if isinstance(outcome.body, bytes):
        if len(outcome.body) > limit:
            raise too_large
        return outcome.body
    chunks: list[bytes] = []
    size = 0
    error: BaseException | None = None
    try:
        async for chunk in outcome.body:
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except BaseException as exc:
        error = exc
        raise
    finally:
        aclose = getattr(outcome.body, "aclose", None)
        if aclose is not None:
            await aclose()
        if outcome.finalize is not None:
            await outcome.finalize(error)
    return b"".join(chunks)
