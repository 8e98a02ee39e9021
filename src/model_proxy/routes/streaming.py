"""A result streamed to the viewer: pure ASGI, aborted rather than cut short.

Once the 200 and its headers are out, a failure can no longer become an error
answer. The response then stops without its final (empty) chunk: uvicorn
closes the connection, and the viewer's HTTP client reports an incomplete
body instead of taking a truncated result for a complete one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from model_proxy.audit.record import record_of
from model_proxy.errors import ProxyError
from model_proxy.inference.runner import Finalizer

logger = logging.getLogger(__name__)


class ClientGone(Exception):
    """The viewer closed the connection before the end of the result."""


class ResultResponse(Response):
    """A 200 whose body comes from ``body``; ``finalize`` always runs at the end."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        *,
        headers: Mapping[str, str],
        finalize: Finalizer | None = None,
    ) -> None:
        self.status_code = 200
        self.media_type = "application/json"
        self.background = None
        self._body = body
        self._finalize = finalize
        self._last_chunk_sent = False
        self._aborted: str | None = None  # why the result stopped short, for the log line
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        outcome: BaseException | None = ClientGone()
        path = scope.get("path", "")
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    nonlocal outcome
                    outcome = await self._stream(send, path)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await _wait_for_disconnect(receive)
                # uvicorn also says "disconnect" once the last chunk is sent: not a loss.
                if not self._last_chunk_sent:
                    self._aborted = "the client went away before the end of the result"
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                aclose = getattr(self._body, "aclose", None)
                if aclose is not None:
                    await aclose()
                if self._finalize is not None:
                    await self._finalize(outcome)
                record = record_of(scope)
                if self._aborted is not None and record is not None:
                    record.error = self._aborted  # on the request's one log line

    async def _stream(self, send: Send, path: str) -> BaseException | None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        sent = 0
        try:
            async for chunk in self._body:
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    sent += len(chunk)
        except ProxyError as exc:
            self._aborted = f"connection aborted after {sent} bytes of the result: {exc.message}"
            return exc
        except Exception as exc:
            self._aborted = f"connection aborted after {sent} bytes of the result (a bug)"
            logger.error(  # the traceback, for a bug report
                "GET %s -> connection aborted after %d bytes of the result",
                path,
                sent,
                exc_info=exc,
            )
            return exc
        self._last_chunk_sent = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return None


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
