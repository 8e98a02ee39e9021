"""The one log line of each request, written from its audit record when it is over.

uvicorn's access log is off (cli/serve.py), so this is the only line a request
leaves, whatever route it took and however it ended; an error's message is on it
rather than on a line of its own. With ``--log-format json`` its fields are also
JSON keys (cli/logs.py puts ``extra["fields"]`` into the object).
"""

from __future__ import annotations

import logging
from typing import Any

from model_proxy.errors import ErrorCode

from .record import AuditRecord

logger = logging.getLogger("model_proxy.requests")


def log_request(record: AuditRecord) -> None:
    fields = request_fields(record)
    text = " ".join(f"{name}={_text(value)}" for name, value in fields.items() if value is not None)
    status = record.status or 0
    broken = status >= 500 or status == 0 or record.code == ErrorCode.RESPONSE_ABORTED
    level = logging.WARNING if broken else logging.INFO
    logger.log(level, "%s", text, extra={"fields": fields})


def request_fields(record: AuditRecord) -> dict[str, Any]:
    """What the line says, in order; None where the request never got that far."""
    figures = record.figures
    fields: dict[str, Any] = {
        "request_id": record.request_id,
        "method": record.method,
        "path": record.path,
        "status": record.status,
        "code": record.code,
        "seconds": round(record.duration_ms / 1000, 3),
        "client": record.client,
        "caller": record.caller,
        "model": record.model,
        "server": record.server,
    }
    if figures is not None:
        fields.update(
            cache=figures.cache,
            model_called=figures.model_called,
            instances=figures.instances_in,
            dicom_bytes=figures.dicom_bytes_in,
        )
    if record.result_bytes_out:
        fields["result_bytes"] = record.result_bytes_out
    if record.error is not None:
        fields["error"] = record.error
    return fields


def _text(value: object) -> str:
    # A message has spaces: quoted, so the key=value pairs stay parseable.
    return repr(value) if isinstance(value, str) and " " in value else str(value)
