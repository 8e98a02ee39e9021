"""A model's answer, checked and unwrapped (docs/compatibility.md §5.4)."""

from __future__ import annotations

import orjson

from model_proxy.errors import ErrorCode, ModelError


def unwrap_result(body: bytes, label: str) -> bytes:
    """The JSON document to return to the viewer.

    The reference Model APIs return ``orjson.dumps(result)`` from an endpoint
    declared with ORJSONResponse, so their body is a JSON *string* holding the
    real document; that is unwrapped once. The inner text is returned as is,
    not parsed and serialized again.

    >>> unwrap_result(b'"{\\\\"a\\\\": 1}"', "model x")
    b'{"a": 1}'
    """
    if not body.strip():
        raise ModelError(
            f"{label}: answered 200 with an empty body",
            code=ErrorCode.MODEL_BAD_RESPONSE,
            upstream=label,
        )
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ModelError(
            f"{label}: answered with a body that is not JSON ({exc.msg})",
            code=ErrorCode.MODEL_BAD_RESPONSE,
            upstream=label,
        ) from exc
    if not isinstance(document, str):
        return body
    inner = document.encode()
    try:
        orjson.loads(inner)
    except orjson.JSONDecodeError:
        return body  # a plain JSON string: pass it on unchanged
    return inner
