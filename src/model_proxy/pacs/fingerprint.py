"""What a DICOMweb server holds for a target, in one cheap QIDO-RS query.

A fingerprint is a short string that changes when the instances behind a
target change; the result cache reuses a result only while it is the same
(docs/performance.md). Two strengths, per server (``cacheValidation``):

- ``count``: the number of instances of the study or series
  (NumberOfStudyRelatedInstances / NumberOfSeriesRelatedInstances): a few
  milliseconds on Orthanc; catches added and removed instances, not an
  instance replaced by another under the same count.
- ``strict``: the sorted SOP Instance UIDs of the study or series: one
  row per instance, slower on big studies; catches any change of the list.

An instance target is fingerprinted by whether it exists: DICOM UIDs name
immutable content.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import httpx
import orjson

from model_proxy.config import CacheValidation
from model_proxy.pacs.source import Target

logger = logging.getLogger(__name__)

_SOP_INSTANCE_UID = "00080018"
_STUDY_INSTANCES = "00201208"  # NumberOfStudyRelatedInstances
_SERIES_INSTANCES = "00201209"  # NumberOfSeriesRelatedInstances
_QIDO_ACCEPT = "application/dicom+json"


async def qido_fingerprint(
    client: httpx.AsyncClient,
    base_uri: str,
    target: Target,
    mode: CacheValidation,
    *,
    limits: httpx.Timeout,
    label: str,
) -> str | None:
    """The fingerprint of ``target``, or None when the server cannot tell (then the
    result is not cached): QIDO failed, the data is not there, a count is missing."""
    if mode is CacheValidation.OFF:
        return None
    study = f"{base_uri}/studies/{target.study}"
    if target.instance is not None:
        url = f"{study}/series/{target.series}/instances"
        params = {"SOPInstanceUID": target.instance, "includefield": _SOP_INSTANCE_UID}
    elif mode is CacheValidation.STRICT:
        url = f"{study}/series/{target.series}/instances" if target.series else f"{study}/instances"
        params = {"includefield": _SOP_INSTANCE_UID}
    elif target.series is not None:
        url = f"{study}/series"
        params = {"SeriesInstanceUID": target.series, "includefield": _SERIES_INSTANCES}
    else:
        url = f"{base_uri}/studies"
        params = {"StudyInstanceUID": target.study, "includefield": _STUDY_INSTANCES}
    try:
        response = await client.get(
            url, params=params, headers={"Accept": _QIDO_ACCEPT}, timeout=limits
        )
        rows = orjson.loads(response.content) if response.status_code == 200 else []
    except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
        logger.info("%s: no cache validation for %s (%s)", label, target.describe(), exc)
        return None
    if not isinstance(rows, list) or not rows:
        return None
    if target.instance is not None or mode is CacheValidation.STRICT:
        uids = sorted(str(_first_value(row, _SOP_INSTANCE_UID)) for row in rows)
        return "uids:" + hashlib.sha256("\n".join(uids).encode()).hexdigest()
    tag = _SERIES_INSTANCES if target.series is not None else _STUDY_INSTANCES
    count = _first_value(rows[0], tag)
    if not isinstance(count, int | str) or not str(count).isdigit():
        logger.info(
            "%s: its QIDO answer has no instance count for %s; results are not cached",
            label,
            target.describe(),
        )
        return None
    return f"count:{int(count)}"


def _first_value(row: Any, tag: str) -> object:
    try:
        value: object = row[tag]["Value"][0]
    except (KeyError, IndexError, TypeError):
        return None
    return value
