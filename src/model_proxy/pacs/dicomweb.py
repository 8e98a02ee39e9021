"""A DICOMweb PACS as a source of instances (WADO-RS retrieval, contract section 4)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager

import httpx

from model_proxy.config import ServerConfig
from model_proxy.errors import NotFound, PacsError, short_id
from model_proxy.pacs.auth import build_auth
from model_proxy.pacs.multipart import (
    MalformedMultipart,
    MultipartDecoder,
    boundary_from_content_type,
)
from model_proxy.pacs.source import Target
from model_proxy.probe import ProbeResult, probe_get
from model_proxy.upstream import Timeouts, make_client, translate_errors

# transfer-syntax=* asks for the instances as stored: no server-side transcoding,
# which is slow and may fail for compressed syntaxes the model can read anyway.
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


class DicomWebSource:
    """Retrieves Part-10 instances from a DICOMweb server with WADO-RS."""

    def __init__(
        self, server: ServerConfig, *, timeouts: Timeouts, max_instance_bytes: int
    ) -> None:
        self.label = f"PACS {short_id(server.id)}"
        self._server = server
        self._max_instance_bytes = max_instance_bytes
        self._timeouts = timeouts
        self._client = make_client(
            tls_verify=server.tls_verify, timeouts=timeouts, auth=build_auth(server)
        )

    def url_for(self, target: Target) -> str:
        url = f"{self._server.uri}/studies/{target.study}"
        if target.series is not None:
            url += f"/series/{target.series}"
            if target.instance is not None:
                url += f"/instances/{target.instance}"
        return url

    @asynccontextmanager
    async def retrieve(self, target: Target) -> AsyncIterator[AsyncIterator[bytes]]:
        request = self._client.build_request(
            "GET", self.url_for(target), headers={"Accept": WADO_ACCEPT}
        )
        with translate_errors(self.label, PacsError):
            response = await self._client.send(request, stream=True)
        try:
            self._check_status(response, target)
            instances = self._iter_instances(response, target)
            try:
                yield instances
            finally:
                await instances.aclose()
        finally:
            await response.aclose()

    def _check_status(self, response: httpx.Response, target: Target) -> None:
        status = response.status_code
        if status in (200, 206):
            return
        if status in (204, 404):
            raise NotFound(f"{target.describe()} was not found on {self.label}", code="not_on_pacs")
        if status in (401, 403):
            raise PacsError(
                f"{self.label}: access refused ({status}); check the server's credentials",
                code="pacs_auth_failed",
            )
        raise PacsError(
            f"{self.label}: answered {status} {response.reason_phrase} for {target.describe()}"
        )

    async def _iter_instances(
        self, response: httpx.Response, target: Target
    ) -> AsyncGenerator[bytes, None]:
        content_type = response.headers.get("content-type", "")
        if content_type.split(";", 1)[0].strip().lower() == "application/dicom":
            # Some servers answer a single instance without the multipart envelope.
            with translate_errors(self.label, PacsError):
                yield await response.aread()
            return
        boundary = boundary_from_content_type(content_type)
        if boundary is None:
            raise PacsError(
                f"{self.label}: answered with Content-Type {content_type[:100]!r} for"
                f" {target.describe()}, expected multipart/related"
            )
        decoder = MultipartDecoder(boundary, max_part_bytes=self._max_instance_bytes)
        count = 0
        try:
            with translate_errors(self.label, PacsError):
                async for chunk in response.aiter_bytes():
                    for part in decoder.feed(chunk):
                        count += 1
                        yield part
                    if decoder.done:
                        break
            decoder.close()
        except MalformedMultipart as exc:
            raise PacsError(
                f"{self.label}: sent a malformed response for {target.describe()}: {exc}",
                code="pacs_bad_response",
            ) from exc
        if count == 0:
            raise NotFound(
                f"{target.describe()} has no instances on {self.label}", code="not_on_pacs"
            )

    async def probe(self) -> ProbeResult:
        """GET statusUri (a QIDO query without one) with the server's auth."""
        url = self._server.status_uri or f"{self._server.uri}/studies?limit=1"
        return await probe_get(
            self._client,
            url,
            label=self.label,
            error_type=PacsError,
            limits=self._timeouts.for_probe(),
        )

    async def aclose(self) -> None:
        await self._client.aclose()
