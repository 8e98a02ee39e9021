"""The request id of the viewer's request being served, sent on with every upstream call.

The audit middleware (audit/record.py) takes it from the caller's ``X-Request-ID`` or
makes one, and sets it here for the request's task; tasks started while serving the
request (the body pipeline, a coalesced model call) inherit it. The transport
(transport.py) adds it to every PACS, token server and model call, so one id
finds the request in the proxy's log, the PACS's and the model's.
"""

from __future__ import annotations

from contextvars import ContextVar

REQUEST_ID_HEADER = "X-Request-ID"

current_request_id: ContextVar[str | None] = ContextVar("model_proxy_request_id", default=None)
