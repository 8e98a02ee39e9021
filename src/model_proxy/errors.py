"""Every error the proxy turns into an HTTP answer.

Exception tree::

    ProxyError                      (status, code, message): rendered as
    |                               {"message": ..., "code": ...} by app.py
    +-- BadRequest                  400  the caller's request is malformed
    +-- NotAcceptable               406  the result cannot be given in the media type asked for
    +-- Unauthorized                401  client auth is on; credentials missing or wrong
    +-- Forbidden                   403  the original's "You have no access to this model"
    +-- NotFound                    404  unknown model, server, study, series, instance, job
    +-- Conflict                    409  a job's result asked for before it succeeded
    +-- Gone                        410  a job's result no longer in the result cache
    +-- UpstreamError               502  the PACS or the model failed
    |   +-- PacsError               502  names the PACS server
    |   +-- ModelError              502  names the model
    +-- UpstreamTimeout             504  the PACS or the model did not answer in time
    +-- UpstreamUnavailable         503  an upstream's circuit breaker is open: failing fast
    +-- Overloaded                  503  no room for another inference now (Retry-After)
    +-- SharedStateUnavailable      503  the shared Redis (--redis) is needed and cannot serve

An error caused by an upstream's own failure (unreachable, timed out, broke the
exchange, answered 5xx or garbage) carries that upstream's label in ``upstream``:
the circuit breakers count only those (upstream/breaker.py), never a caller's mistake.

Foreign exceptions (httpx, pydicom, OSError) are translated into these at the
boundary where they happen (pacs/, models/), never in the routes.
"""

from __future__ import annotations

import re
from enum import StrEnum


class ErrorCode(StrEnum):
    """The ``code`` of every error answer: a public contract, stable across releases.

    Programs match on it (the ``message`` is for people); the audit log records it.
    """

    # the caller's request (400, 404, 405, 408, 414, 431)
    BAD_REQUEST = "bad_request"
    INVALID_UID = "invalid_uid"
    WRONG_TASK = "wrong_task"
    UNSUPPORTED_LEVEL = "unsupported_level"
    UNKNOWN_MODEL = "unknown_model"
    UNKNOWN_SERVER = "unknown_server"
    NO_DEFAULT_SERVER = "no_default_server"
    DATA_FILTERS_NOT_ACCEPTED = "data_filters_not_accepted"
    DATA_FILTERS_REQUIRED = "data_filters_required"
    INVALID_DATA_FILTERS = "invalid_data_filters"
    INVALID_HTTP = "invalid_http"
    URI_TOO_LONG = "uri_too_long"
    HEADERS_TOO_LARGE = "headers_too_large"
    REQUEST_HEAD_TIMEOUT = "request_head_timeout"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_FOUND = "not_found"
    HTTP_ERROR = "http_error"
    NOT_ON_PACS = "not_on_pacs"
    NOT_ACCEPTABLE = "not_acceptable"

    # jobs (docs/jobs.md: 400, 404, 409, 410)
    INVALID_JOB = "invalid_job"
    UNKNOWN_JOB = "unknown_job"
    JOB_NOT_FINISHED = "job_not_finished"
    JOB_FAILED = "job_failed"
    RESULT_GONE = "result_gone"
    JOBS_UNAVAILABLE = "jobs_unavailable"
    RESULT_NOT_KEPT = "result_not_kept"
    HTTPS_REQUIRED = "https_required"  # plain HTTP sent to the TLS port (web/tls.py)

    # client authentication (401, 403; docs/security.md)
    UNAUTHENTICATED = "unauthenticated"
    INVALID_API_KEY = "invalid_api_key"
    INVALID_TOKEN = "invalid_token"  # noqa: S105  (a code, not a secret)
    UNSUPPORTED_CREDENTIALS = "unsupported_credentials"
    AMBIGUOUS_CREDENTIALS = "ambiguous_credentials"
    JWKS_UNAVAILABLE = "jwks_unavailable"
    FORBIDDEN = "forbidden"
    NO_ACCESS = "no_access"
    NO_SERVER_ACCESS = "no_server_access"
    NO_MONITORING_ACCESS = "no_monitoring_access"

    # the PACS (502)
    BAD_GATEWAY = "bad_gateway"
    PACS_ERROR = "pacs_error"
    PACS_BAD_RESPONSE = "pacs_bad_response"
    PACS_AUTH_FAILED = "pacs_auth_failed"
    PACS_AUTH_UNAVAILABLE = "pacs_auth_unavailable"
    PACS_STORE_FAILED = "pacs_store_failed"

    # the model (502)
    MODEL_ERROR = "model_error"
    MODEL_FAILED = "model_failed"
    MODEL_BAD_RESPONSE = "model_bad_response"
    MODEL_RESULT_TOO_LARGE = "model_result_too_large"

    # the Redis replicas share (502; docs/replicas.md)
    REDIS_ERROR = "redis_error"

    # time and capacity (503, 504)
    GATEWAY_TIMEOUT = "gateway_timeout"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    OVERLOADED = "overloaded"
    PACS_CONNECTIONS_BUSY = "pacs_connections_busy"
    MODEL_CONNECTIONS_BUSY = "model_connections_busy"
    TOO_MANY_INFERENCES = "too_many_inferences"
    MEMORY_BUDGET_EXHAUSTED = "memory_budget_exhausted"

    # the shared Redis of several replicas (503; docs/replicas.md)
    REDIS_UNAVAILABLE = "redis_unavailable"
    REDIS_TOKENS_UNREADABLE = "redis_tokens_unreadable"

    # the proxy itself, and the audit log's word for a response cut short
    INTERNAL_ERROR = "internal_error"
    RESPONSE_ABORTED = "response_aborted"


class ProxyError(Exception):
    """An error with an HTTP status, a stable machine code and a human message."""

    status_code = 500
    default_code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(
        self, message: str, code: ErrorCode | None = None, *, upstream: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code: ErrorCode = code or self.default_code
        # The label ("PACS b1407f18…") of the upstream whose failure this is, if any.
        self.upstream = upstream

    def to_json(self) -> dict[str, str]:
        return {"message": self.message, "code": self.code}

    def headers(self) -> dict[str, str]:
        """Extra response headers."""
        return {}


class BadRequest(ProxyError):
    status_code = 400
    default_code = ErrorCode.BAD_REQUEST


class NotAcceptable(ProxyError):
    status_code = 406
    default_code = ErrorCode.NOT_ACCEPTABLE


class Unauthorized(ProxyError):
    """401 with a ``WWW-Authenticate`` challenge (``headers``) naming what to send."""

    status_code = 401
    default_code = ErrorCode.UNAUTHENTICATED

    def __init__(self, message: str, code: ErrorCode | None = None, *, challenge: str) -> None:
        super().__init__(message, code)
        self.challenge = challenge

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.challenge}


class Forbidden(ProxyError):
    status_code = 403
    default_code = ErrorCode.FORBIDDEN


class NotFound(ProxyError):
    status_code = 404
    default_code = ErrorCode.NOT_FOUND


class Conflict(ProxyError):
    status_code = 409
    default_code = ErrorCode.JOB_NOT_FINISHED


class Gone(ProxyError):
    status_code = 410
    default_code = ErrorCode.RESULT_GONE


class UpstreamError(ProxyError):
    status_code = 502
    default_code = ErrorCode.BAD_GATEWAY


class PacsError(UpstreamError):
    default_code = ErrorCode.PACS_ERROR


class ModelError(UpstreamError):
    default_code = ErrorCode.MODEL_ERROR


class UpstreamTimeout(ProxyError):
    status_code = 504
    default_code = ErrorCode.GATEWAY_TIMEOUT


class UpstreamUnavailable(ProxyError):
    """An upstream failed repeatedly; calls fail fast until ``retry_after`` seconds pass."""

    status_code = 503
    default_code = ErrorCode.UPSTREAM_UNAVAILABLE

    def __init__(self, message: str, *, retry_after: int, upstream: str) -> None:
        super().__init__(message, upstream=upstream)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class Overloaded(ProxyError):
    """Admission control refused the request; ``retry_after`` seconds is a hint."""

    status_code = 503
    default_code = ErrorCode.OVERLOADED

    def __init__(self, message: str, code: ErrorCode | None = None, *, retry_after: int) -> None:
        super().__init__(message, code)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class SharedStateUnavailable(ProxyError):
    """Something only the shared Redis may decide (a PACS token exchange) while Redis
    does not answer; ``retry_after`` seconds is a hint."""

    status_code = 503
    default_code = ErrorCode.REDIS_UNAVAILABLE

    def __init__(self, message: str, code: ErrorCode | None = None, *, retry_after: int = 5):
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
