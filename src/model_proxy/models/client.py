"""POSTs a body to a Model API and opens its result (docs/compatibility.md §5.4)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import httpx

from model_proxy.config import ModelConfig
from model_proxy.errors import ErrorCode, ModelError, short_id
from model_proxy.models.error_summary import MAX_ERROR_BODY, SENT_PREFIX_BYTES, summarize
from model_proxy.models.result_stream import ResultStream
from model_proxy.upstream import tracing
from model_proxy.upstream.breaker import BreakerPolicy, CallObserver, CircuitBreaker
from model_proxy.upstream.clients import (
    Timeouts,
    is_transient,
    make_client,
    translate_errors,
)
from model_proxy.upstream.probe import ProbeResult, answered_200, probe_get
from model_proxy.upstream.retry import RetryPolicy, send_with_retries

logger = logging.getLogger(__name__)


class ModelClient:
    """Talks to one Model API of models.json."""

    def __init__(
        self,
        model: ModelConfig,
        *,
        timeouts: Timeouts,
        max_result_bytes: int,
        breaker: BreakerPolicy | None = None,
        retry: RetryPolicy | None = None,
        observer: CallObserver | None = None,
    ) -> None:
        self.label = f"model {short_id(model.id)}"
        self._model = model
        self._max_result_bytes = max_result_bytes
        self._timeouts = timeouts
        self._client = make_client(tls_verify=model.tls_verify, timeouts=timeouts)
        self.breaker = CircuitBreaker(self.label, breaker or BreakerPolicy(), observer=observer)
        # Only a model that opts in ("retries" in models.json) is called again.
        self._retry = replace(retry or RetryPolicy(), retries=model.retries)

    @asynccontextmanager
    async def open_result(
        self, body: AsyncIterator[bytes], content_type: str = "application/json"
    ) -> AsyncIterator[ResultStream]:
        """POST ``body`` to the model's uri, exactly as written; give its answer as a
        ResultStream (``await start()`` it). A non-2xx answer raises ModelError.

        The circuit breaker sees the whole exchange: a result that breaks while
        it streams counts as a failure of the model."""
        with tracing.span("model.call", upstream=self.label):
            async with self.breaker.guard():
                response = await self._post(body, content_type)
                try:
                    yield ResultStream(
                        self._chunks(response), label=self.label, max_bytes=self._max_result_bytes
                    )
                finally:
                    await response.aclose()

    async def _post(self, body: AsyncIterator[bytes], content_type: str) -> httpx.Response:
        """The model's 2xx answer, its body not read yet."""
        tracked = _TrackedBody(body)
        budget = self._retry.budget()
        response = await send_with_retries(
            self._client,
            lambda: self._client.build_request(
                "POST", self._model.uri, content=tracked, headers={"Content-Type": content_type}
            ),
            budget,
            label=self.label,
            error_type=ModelError,
            # Only before the first byte of the body left: the model cannot have
            # seen the request, and the body can still be sent whole.
            may_retry=lambda exc: is_transient(exc) and not tracked.started,
        )
        if response.is_success:
            return response
        try:
            with translate_errors(self.label, ModelError):
                detail = await _error_detail(response, tracked.prefix)
            raise ModelError(
                f"{self.label}: answered {response.status_code} {response.reason_phrase}{detail}",
                code=ErrorCode.MODEL_FAILED,
                upstream=self.label if response.status_code >= 500 else None,
            )
        finally:
            await response.aclose()

    async def _chunks(self, response: httpx.Response) -> AsyncIterator[bytes]:
        with translate_errors(self.label, ModelError):
            async for chunk in response.aiter_bytes():
                yield chunk

    async def probe(self) -> ProbeResult:
        """GET statusUri, redirects followed; without one, GET the inference uri:
        a POST-only endpoint answers 405, which still shows the model is up."""
        return await probe_get(
            self._client,
            self._model.status_uri or self._model.uri,
            label=self.label,
            error_type=ModelError,
            limits=self._timeouts.for_probe(),
            is_up=answered_200 if self._model.status_uri else _below_500,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


async def _error_detail(response: httpx.Response, sent_prefix: bytes) -> str:
    """ ": <summary>" of an error answer (models/error_summary.py), "" without one."""
    raw = b""
    truncated = False
    async for chunk in response.aiter_bytes():
        raw += chunk
        if len(raw) > MAX_ERROR_BODY:
            truncated = True
            break
    content_type = response.headers.get("content-type", "")
    summary = summarize(raw, content_type, sent_prefix, truncated=truncated)
    return f": {summary}" if summary else ""


class _TrackedBody:
    """An async iterator that remembers whether anything was read from it."""

    def __init__(self, body: AsyncIterator[bytes]) -> None:
        self._body = body
        self.started = False
        # The body's first bytes, to keep them out of a quoted error answer.
        self.prefix = b""

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        self.started = True
        chunk = await anext(self._body)
        if len(self.prefix) < SENT_PREFIX_BYTES:
            self.prefix += chunk[: SENT_PREFIX_BYTES - len(self.prefix)]
        return chunk


def _below_500(status: int) -> bool:
    return status < 500
