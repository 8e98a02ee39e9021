"""Every error the proxy turns into an HTTP answer.

Exception tree::

    ProxyError                      (status, code, message): rendered as
    |                               {"message": ..., "code": ...} by app.py
    +-- BadRequest                  400  the caller's request is malformed
    +-- Unauthorized                401  client auth is on; credentials missing or wrong
    +-- Forbidden                   403  the original's "You have no access to this model"
    +-- NotFound                    404  unknown model, server, study, series, instance
    +-- UpstreamError               502  the PACS or the model failed
    |   +-- PacsError               502  names the PACS server
    |   +-- ModelError              502  names the model
    +-- UpstreamTimeout             504  the PACS or the model did not answer in time
    +-- UpstreamUnavailable         503  an upstream's circuit breaker is open: failing fast
    +-- Overloaded                  503  no room for another inference now (Retry-After)

An error caused by an upstream's own failure (unreachable, timed out, broke the
exchange, answered 5xx or garbage) carries that upstream's label in ``upstream``:
the circuit breakers count only those (upstream/breaker.py), never a caller's mistake.

Foreign exceptions (httpx, pydicom, OSError) are translated into these at the
boundary where they happen (pacs/, models/), never in the routes.
"""

from __future__ import annotations

import re


class ProxyError(Exception):
    """An error with an HTTP status, a stable machine code and a human message."""

    status_code = 500
    default_code = "internal_error"

    def __init__(
        self, message: str, code: str | None = None, *, upstream: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        # The label ("PACS b1407f18…") of the upstream whose failure this is, if any.
        self.upstream = upstream

    def to_json(self) -> dict[str, str]:
        return {"message": self.message, "code": self.code}

    def headers(self) -> dict[str, str]:
        """Extra response headers."""
        return {}


class BadRequest(ProxyError):
    status_code = 400
    default_code = "bad_request"


class Unauthorized(ProxyError):
    """401 with a ``WWW-Authenticate`` challenge (``headers``) naming what to send."""

    status_code = 401
    default_code = "unauthenticated"

    def __init__(self, message: str, code: str | None = None, *, challenge: str) -> None:
        super().__init__(message, code)
        self.challenge = challenge

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.challenge}


class Forbidden(ProxyError):
    status_code = 403
    default_code = "forbidden"


class NotFound(ProxyError):
    status_code = 404
    default_code = "not_found"


class UpstreamError(ProxyError):
    status_code = 502
    default_code = "bad_gateway"


class PacsError(UpstreamError):
    default_code = "pacs_error"


class ModelError(UpstreamError):
    default_code = "model_error"


class UpstreamTimeout(ProxyError):
    status_code = 504
    default_code = "gateway_timeout"


class UpstreamUnavailable(ProxyError):
    """An upstream failed repeatedly; calls fail fast until ``retry_after`` seconds pass."""

    status_code = 503
    default_code = "upstream_unavailable"

    def __init__(self, message: str, *, retry_after: int, upstream: str) -> None:
        super().__init__(message, upstream=upstream)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class Overloaded(ProxyError):
    """Admission control refused the request; ``retry_after`` seconds is a hint."""

    status_code = 503
    default_code = "overloaded"

    def __init__(self, message: str, code: str | None = None, *, retry_after: int) -> None:
        super().__init__(message, code)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


def short_id(uuid: str) -> str:
    """The first block of a config key, enough to name an entry in a message.

    >>> short_id("b1407f18-575d-487c-bc0c-640c6da651bc")
    'b1407f18…'
    """
    head = uuid.split("-", 1)[0]
    return f"{head}…" if head != uuid else uuid


def shorten(value: str, limit: int = 80) -> str:
    """A caller's value cut short enough to echo in a message."""
    return value if len(value) <= limit else value[: limit - 3] + "..."


# "https://user:secret@pacs" -> "https://user:***@pacs"
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^/@\s]*@")


def redact_urls(text: str) -> str:
    """``text`` with any password written inside a URL replaced by ``***``.

    >>> redact_urls("https://proxy:s3cret@pacs.local/dicom-web")
    'https://proxy:***@pacs.local/dicom-web'
    """
    return _URL_PASSWORD.sub(r"\1***@", text)
