"""Storing DICOM objects: STOW-RS to a DICOMweb PACS, or files into a local folder."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import httpx
import pydicom

from model_proxy.errors import ErrorCode, PacsError
from model_proxy.pacs.multipart import DicomMultipartFiles
from model_proxy.upstream.clients import translated

# PS3.18 10.5.3: a 200 may still list failures; this is the attribute naming them.
_FAILED_SOP_SEQUENCE = "00081198"


async def stow(
    client: httpx.AsyncClient, base_uri: str, label: str, objects: Sequence[Path]
) -> None:
    """POST the Part-10 files ``objects`` to ``{base_uri}/studies`` with the client's
    auth and timeouts, streamed from disk with a Content-Length; PacsError naming the
    PACS unless every object was stored."""
    body = DicomMultipartFiles(objects)
    count = f"{len(objects)} DICOM object{'s' * (len(objects) != 1)}"
    try:
        response = await client.post(
            f"{base_uri}/studies",
            content=body,
            headers={
                "Content-Type": body.content_type,
                "Content-Length": str(body.length),
                "Accept": "application/dicom+json",
            },
        )
    except httpx.HTTPError as exc:
        raise translated(exc, label, PacsError, note=f" storing {count}") from exc
    status = response.status_code
    if status in (401, 403):
        raise PacsError(
            f"{label}: refused to store {count} ({status}); check the server's credentials",
            code=ErrorCode.PACS_AUTH_FAILED,
        )
    if status != 200 or _lists_failures(response):
        raise PacsError(
            f"{label}: did not store {count}: answered {status} {response.reason_phrase}",
            code=ErrorCode.PACS_STORE_FAILED,
            upstream=label if status >= 500 else None,
        )


def _lists_failures(response: httpx.Response) -> bool:
    try:
        answer = response.json()
    except ValueError:
        return False
    return isinstance(answer, dict) and bool(answer.get(_FAILED_SOP_SEQUENCE, {}).get("Value"))


async def store_in_folder(root: Path, label: str, objects: Sequence[Path]) -> None:
    """Write each object to ``root/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` (the
    layout of the demo data), atomically: the folder index never sees half a file."""
    try:
        await asyncio.to_thread(_write_all, root, objects)
    except OSError as exc:
        raise PacsError(
            f"{label}: could not store DICOM objects in {root} ({exc.strerror or exc})",
            code=ErrorCode.PACS_STORE_FAILED,
        ) from exc


def _write_all(root: Path, objects: Sequence[Path]) -> None:
    for source in objects:
        header = pydicom.dcmread(source, stop_before_pixels=True)
        folder = root / str(header.SeriesInstanceUID)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{header.SOPInstanceUID}.dcm"
        partial = path.with_suffix(".dcm.part")
        # A copy, not a move: the spool may be on another file system.
        shutil.copyfile(source, partial)
        os.replace(partial, path)
