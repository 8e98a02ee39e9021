"""POSTs a body to a Model API and reads its result (compat-contract section 5.4)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import orjson

from model_proxy.config import ModelConfig
from model_proxy.errors import ModelError, short_id
from model_proxy.models.result import unwrap_result
from model_proxy.probe import ProbeResult, answered_200, probe_get
from model_proxy.upstream import Timeouts, make_client, translate_errors

# Past this size, JSON validation runs in a thread so the event loop keeps serving.
_PARSE_IN_THREAD_BYTES = 1 << 20


class ModelClient:
    """Talks to one Model API of models.json."""

    def __init__(self, model: ModelConfig, *, timeouts: Timeouts, max_result_bytes: int) -> None:
        self.label = f"model {short_id(model.id)}"
        self._model = model
        self._max_result_bytes = max_result_bytes
        self._timeouts = timeouts
        self._client = make_client(tls_verify=model.tls_verify, timeouts=timeouts)

    async def infer(self, body: AsyncIterator[bytes]) -> bytes:
        """POST ``body`` to the model's uri, exactly as written; return the result JSON."""
        request = self._client.build_request(
            "POST", self._model.uri, content=body, headers={"Content-Type": "application/json"}
        )
        with translate_errors(self.label, ModelError):
            response = await self._client.send(request, stream=True)
            try:
                if not response.is_success:
                    raise ModelError(
                        f"{self.label}: answered {response.status_code}"
                        f" {response.reason_phrase}{await _error_detail(response)}",
                        code="model_failed",
                    )
                data = await self._read_limited(response)
            finally:
                await response.aclose()
        if len(data) > _PARSE_IN_THREAD_BYTES:
            return await asyncio.to_thread(unwrap_result, data, self.label)
        return unwrap_result(data, self.label)

    async def _read_limited(self, response: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self._max_result_bytes:
                raise ModelError(
                    f"{self.label}: result is larger than the limit of"
                    f" {self._max_result_bytes} bytes",
                    code="model_result_too_large",
                )
            chunks.append(chunk)
        return b"".join(chunks)

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


async def _error_detail(response: httpx.Response) -> str:
    """A short excerpt of an error answer: its "message"/"detail" field, else its text."""
    raw = b""
    async for chunk in response.aiter_bytes():
        raw += chunk
        if len(raw) >= 4096:
            break
    if not raw:
        return ""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace")
    else:
        if isinstance(document, dict):
            found = document.get("message", document.get("detail", document))
            text = found if isinstance(found, str) else orjson.dumps(found).decode()
        else:
            text = raw.decode("utf-8", "replace")
    text = " ".join(text.split())
    return f": {text[:300]}"


def _below_500(status: int) -> bool:
    return status < 500
