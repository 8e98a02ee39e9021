"""What a viewer is told about a model's error answer: a bounded summary, the same
shape whatever the body's size or format, and never bytes of the input we sent.

A model that rejects its input often quotes it back (FastAPI's 422 puts the start of
the body in ``"input"``): those are pixel values or DICOM headers of a patient, and
must not reach the viewer or the log. So only fields meant as messages are quoted,
runs that look like the wire format are cut, and any stretch of the body's first
bytes that appears in the answer is removed.

    >>> summarize(b'{"detail": "no lungs found"}', "application/json", b"")
    'no lungs found'
"""

from __future__ import annotations

import re

import orjson

# Enough for any message a model means to give; a larger body is described, not parsed.
MAX_ERROR_BODY = 64 * 1024
MAX_SUMMARY = 300
# The part of the request body kept to recognise it in an answer.
SENT_PREFIX_BYTES = 512
_ECHO_WINDOW = 12

_MESSAGE_FIELDS = ("message", "detail", "error", "title", "reason")
# "[  0,  0,  1, ..." (the JSON wire format) or long runs of numbers of any kind.
_NUMBER_RUN = re.compile(r"[\[\]\d\s,.+-]{24,}")
# A long unbroken token: base64 or hex of binary data.
_BLOB = re.compile(r"[A-Za-z0-9+/=_-]{48,}")
_MESSAGE_IN_TEXT = re.compile(
    rb'"(?P<name>msg|message|detail|error|title|reason)"\s*:\s*(?P<value>"(?:[^"\\]|\\.){0,2000}")'
)
_LOC_BEFORE = re.compile(rb'"loc"\s*:\s*\[([^\[\]]{0,200})\]')
_WORDS = re.compile(r"[A-Za-z /:;=-]*")
# Binary written out as escapes: \x00\x01\r\n...
_ESCAPED_BYTES = re.compile(r"(?:\\x[0-9a-fA-F]{2}|\\[rnt0]|\\u[0-9a-fA-F]{4}){3,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def summarize(raw: bytes, content_type: str, sent_prefix: bytes, *, truncated: bool = False) -> str:
    """A one-line summary of an error body (up to MAX_SUMMARY characters), "" if none."""
    if not raw.strip():
        return ""
    # A body cut at MAX_ERROR_BODY is not JSON any more: its first message field
    # is looked for in the text, so a big answer says what a small one would.
    text = _first_message_field(raw) if truncated else _message_of(raw, content_type)
    if text is not None:
        text = _without_input(text, sent_prefix)
        text = _NUMBER_RUN.sub(" … ", text)
        text = _BLOB.sub("…", text)
        text = _ESCAPED_BYTES.sub("…", text)
        text = " ".join(_CONTROL.sub(" ", text).split())
    if text is None or not any(char.isalpha() for char in text):  # nothing left to read
        if truncated:
            return f"(an error body over {MAX_ERROR_BODY // 1024} KiB, not quoted)"
        kind = content_type.split(";")[0].strip() or "data"
        return f"({len(raw)} bytes of {kind}, not quoted)"
    if len(text) > MAX_SUMMARY:
        text = text[: MAX_SUMMARY - 1] + "…"
    return text


def _message_of(raw: bytes, content_type: str) -> str | None:
    """The text meant for people: a message field of a JSON object, FastAPI's
    validation messages, or a short plain-text body; None for anything else."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        document = None
    else:
        if isinstance(document, dict):
            for name in _MESSAGE_FIELDS:
                value = document.get(name)
                if isinstance(value, str) and value.strip():
                    return value
                if isinstance(value, list):
                    found = _validation_messages(value)
                    if found:
                        return found
                if isinstance(value, dict):  # FastAPI: {"detail": {"message": ...}}
                    inner = value.get("message")
                    if isinstance(inner, str) and inner.strip():
                        return inner
            return None
        if isinstance(document, str):
            return document
        return None
    if content_type.startswith("text/plain") or not content_type:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None  # HTML pages, binary: described, not quoted


def _first_message_field(raw: bytes) -> str | None:
    """The first ``"msg"``/``"message"``/``"detail"``... string in a JSON text that may
    be cut short, with its ``"loc"`` when FastAPI put one just before it."""
    found = _MESSAGE_IN_TEXT.search(raw)
    if found is None:
        return None
    try:
        message = orjson.loads(found.group("value"))
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, str):
        return None
    loc = _LOC_BEFORE.search(raw, max(found.start() - 300, 0), found.start())
    if found.group("name") == b"msg" and loc is not None:
        parts = [p.strip().strip('"') for p in loc.group(1).decode("utf-8", "replace").split(",")]
        return f"{'.'.join(parts)}: {message}"
    return message


def _validation_messages(items: list[object]) -> str:
    """FastAPI / pydantic errors: ``[{"loc": [...], "msg": ..., "input": ...}]`` ->
    "body.x: field required"; the ``input`` (our bytes) is never read."""
    parts = []
    for item in items[:5]:
        if not isinstance(item, dict) or not isinstance(item.get("msg"), str):
            continue
        loc = item.get("loc")
        where = (
            ".".join(str(p) for p in loc if isinstance(p, str | int))
            if isinstance(loc, list)
            else ""
        )
        parts.append(f"{where}: {item['msg']}" if where else item["msg"])
    return "; ".join(parts)


def _without_input(text: str, sent_prefix: bytes) -> str:
    """``text`` with every stretch of the request's first bytes cut out.

    Stretches of plain words (multipart header names like "Content-Type:
    application/dicom") carry no patient data and are left, so a message naming
    them stays readable."""
    covered = [False] * len(text)
    # As sent, and as Python's repr() of bytes would print it (b'\x00DICM...').
    for sent in (sent_prefix.decode("latin-1"), repr(sent_prefix)[2:-1]):
        for start in range(len(sent) - _ECHO_WINDOW + 1):
            window = sent[start : start + _ECHO_WINDOW]
            if _WORDS.fullmatch(window):
                continue
            found = text.find(window)
            while found >= 0:
                covered[found : found + _ECHO_WINDOW] = [True] * _ECHO_WINDOW
                found = text.find(window, found + 1)
    if not any(covered):
        return text
    kept: list[str] = []
    for char, cut in zip(text, covered, strict=True):
        if not cut:
            kept.append(char)
        elif not kept or kept[-1] != "…":
            kept.append("…")
    return "".join(kept)
