"""A DICOMweb PACS as a source of instances (WADO-RS retrieval, docs/compatibility.md §4)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from contextlib import aclosing, asynccontextmanager, contextmanager
from pathlib import Path

import httpx

from model_proxy.config import ServerConfig
from model_proxy.errors import (
    ErrorCode,
    NotFound,
    PacsError,
    ProxyError,
    UpstreamTimeout,
    short_id,
)
from model_proxy.pacs.fingerprint import qido_fingerprint
from model_proxy.pacs.instance_key import instance_key
from model_proxy.pacs.multipart import (
    MalformedMultipart,
    MultipartDecoder,
    TruncatedMultipart,
    boundary_from_content_type,
)
from model_proxy.pacs.qido import (
    SERIES_INSTANCES,
    SERIES_UID,
    STUDY_INSTANCES,
    STUDY_UID,
    SearchPage,
    search,
)
from model_proxy.pacs.source import Target
from model_proxy.pacs.stow import stow
from model_proxy.upstream.clients import Timeouts, is_transient, make_client, translated
from model_proxy.upstream.probe import ProbeResult, probe_get
from model_proxy.upstream.retry import (
    RETRYABLE_STATUSES,
    RetryBudget,
    RetryPolicy,
    send_with_retries,
)

logger = logging.getLogger(__name__)

# How long a retrieval may wait for the PACS to start answering, retries included.
DEFAULT_ANSWER_DEADLINE = 60.0

# transfer-syntax=* asks for the instances as stored: no server-side transcoding,
# which is slow and may fail for compressed syntaxes the model can read anyway.
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


class DicomWebSource:
    """Retrieves Part-10 instances from a DICOMweb server with WADO-RS."""

    def __init__(
        self,
        server: ServerConfig,
        *,
        timeouts: Timeouts,
        max_instance_bytes: int,
        retry: RetryPolicy | None = None,
        auth: httpx.Auth | None = None,
        max_connections: int = 32,
        answer_deadline: float = DEFAULT_ANSWER_DEADLINE,
    ) -> None:
        self.label = f"PACS {short_id(server.id)}"
        self._answer_deadline = answer_deadline
        self._server = server
        self._max_instance_bytes = max_instance_bytes
        self._timeouts = timeouts
        self._retry = retry or RetryPolicy()
        self._client = make_client(
            tls_verify=server.tls_verify,
            timeouts=timeouts,
            auth=auth,
            max_connections=max_connections,
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
        budget = self._retry.budget()
        # Every response opened for this retrieval (resuming opens more), closed here:
        # a generator that was never started does not run its own cleanup.
        responses = [await self._open(target, budget)]
        instances = self._resumable_instances(responses, target, budget)
        try:
            yield instances
        finally:
            try:
                await instances.aclose()
            finally:
                for response in responses:
                    await response.aclose()

    async def _open(self, target: Target, budget: RetryBudget) -> httpx.Response:
        """Send the WADO-RS request until it is answered with data, retrying what
        may be transient (timeouts, broken connections, 429/502/503/504).

        The attempts, their waits and backoffs share one deadline for the answer's
        head (``answer_deadline``): a PACS that never answers is reported within it,
        not after an idle timeout per attempt. Once the head is in, the body streams
        under the idle timeout alone: a PACS sending slowly is never cut."""
        url = self.url_for(target)
        deadline = asyncio.timeout(self._answer_deadline)
        try:
            async with deadline:
                response = await send_with_retries(
                    self._client,
                    lambda: self._client.build_request("GET", url, headers={"Accept": WADO_ACCEPT}),
                    budget,
                    label=self.label,
                    error_type=PacsError,
                    retry_statuses=RETRYABLE_STATUSES,
                    context=f" for {target.describe()}",
                )
        except TimeoutError:
            if not deadline.expired():
                raise
            raise UpstreamTimeout(
                f"{self.label}: no answer for {target.describe()} within"
                f" {self._answer_deadline:g} s (--pacs-answer-deadline){budget.tries()}",
                upstream=self.label,
            ) from None
        try:
            self._check_status(response, target, budget)
        except BaseException:
            await response.aclose()
            raise
        return response

    async def _resumable_instances(
        self, responses: list[httpx.Response], target: Target, budget: RetryBudget
    ) -> AsyncGenerator[bytes, None]:
        """The instances of the last of ``responses``; when the transfer breaks, ask
        again (appending the new response) and skip the instances already given (the
        model has them), within ``budget``."""
        given: set[bytes] = set()
        while True:
            try:
                async with aclosing(self._iter_instances(responses[-1], target)) as parts:
                    async for part in parts:
                        key = instance_key(part)
                        if key not in given:
                            given.add(key)
                            yield part
                break
            except _BrokenTransfer as broken:
                await responses[-1].aclose()
                delay = budget.next_delay()
                if delay is None:
                    broken.error.message += budget.tries()
                    raise broken.error from broken.__cause__
                logger.warning(
                    "%s after %d instances; resuming (retry %d in %.1f s)",
                    broken.error.message,
                    len(given),
                    budget.used,
                    delay,
                )
                await asyncio.sleep(delay)
                responses.append(await self._open(target, budget))
        if not given:
            raise NotFound(
                f"{target.describe()} has no instances on {self.label}", code=ErrorCode.NOT_ON_PACS
            )

    def _check_status(self, response: httpx.Response, target: Target, budget: RetryBudget) -> None:
        status = response.status_code
        if status in (200, 206):
            return
        if status in (204, 404):
            raise NotFound(
                f"{target.describe()} was not found on {self.label}", code=ErrorCode.NOT_ON_PACS
            )
        if status in (401, 403):
            raise PacsError(
                f"{self.label}: access refused ({status}); check the server's credentials",
                code=ErrorCode.PACS_AUTH_FAILED,
            )
        raise PacsError(
            f"{self.label}: answered {status} {response.reason_phrase} for {target.describe()}"
            + budget.tries(),
            # A 4xx other than those is a request the PACS does not understand,
            # not a PACS that is down.
            upstream=self.label if status >= 500 or status == 429 else None,
        )

    async def _iter_instances(
        self, response: httpx.Response, target: Target
    ) -> AsyncGenerator[bytes, None]:
        """The Part-10 files of one response; raises _BrokenTransfer when the
        connection breaks, PacsError when the response is not what was asked."""
        content_type = response.headers.get("content-type", "")
        if content_type.split(";", 1)[0].strip().lower() == "application/dicom":
            # Some servers answer a single instance without the multipart envelope.
            with _transfer(self.label):
                data = await response.aread()
            yield data
            return
        boundary = boundary_from_content_type(content_type)
        if boundary is None:
            raise PacsError(
                f"{self.label}: answered with Content-Type {content_type[:100]!r} for"
                f" {target.describe()}, expected multipart/related",
                code=ErrorCode.PACS_BAD_RESPONSE,
                upstream=self.label,
            )
        decoder = MultipartDecoder(boundary, max_part_bytes=self._max_instance_bytes)
        try:
            with _transfer(self.label):
                async for chunk in response.aiter_bytes():
                    for part in decoder.feed(chunk):
                        yield part
                    if decoder.done:
                        break
            decoder.close()
        except TruncatedMultipart as exc:
            error = PacsError(
                f"{self.label}: the response for {target.describe()} was cut short: {exc}",
                code=ErrorCode.PACS_BAD_RESPONSE,
                upstream=self.label,
            )
            raise _BrokenTransfer(error) from exc
        except MalformedMultipart as exc:
            raise PacsError(
                f"{self.label}: sent a malformed response for {target.describe()}: {exc}",
                code=ErrorCode.PACS_BAD_RESPONSE,
                upstream=self.label,
            ) from exc

    async def fingerprint(self, target: Target) -> str | None:
        """See pacs/fingerprint.py: a QIDO query, by the server's cacheValidation."""
        return await qido_fingerprint(
            self._client,
            self._server.uri,
            target,
            self._server.cache_validation,
            limits=self._timeouts.for_probe(),
            label=self.label,
        )

    async def find_studies(
        self, keywords: Sequence[str], *, since: str | None, max_rows: int
    ) -> SearchPage:
        """The studies of the PACS (StudyDate ``since`` YYYYMMDD or later), with their
        instance counts and ``keywords``: QIDO-RS, for the prefetch watcher."""
        return await search(
            self._client,
            f"{self._server.uri}/studies",
            uid_keyword=STUDY_UID,
            count_keyword=STUDY_INSTANCES,
            keywords=keywords,
            filters={"StudyDate": f"{since}-"} if since else {},
            max_rows=max_rows,
            limits=self._timeouts.for_probe(),
            label=self.label,
        )

    async def find_series(
        self, study: str, keywords: Sequence[str], *, max_rows: int
    ) -> SearchPage:
        """The series of ``study`` with their instance counts and ``keywords``."""
        return await search(
            self._client,
            f"{self._server.uri}/studies/{study}/series",
            uid_keyword=SERIES_UID,
            count_keyword=SERIES_INSTANCES,
            keywords=keywords,
            filters={},
            max_rows=max_rows,
            limits=self._timeouts.for_probe(),
            label=self.label,
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

    async def store(self, objects: Sequence[Path]) -> None:
        """STOW-RS through the same client, so the same auth, as the reads."""
        await stow(self._client, self._server.uri, self.label, objects)

    async def aclose(self) -> None:
        await self._client.aclose()


class _BrokenTransfer(Exception):
    """The response broke off in a way another request may not: worth resuming."""

    def __init__(self, error: ProxyError) -> None:
        super().__init__(error.message)
        self.error = error


@contextmanager
def _transfer(label: str) -> Iterator[None]:
    """Translate httpx failures while reading a response body; transient ones
    (cut connection, idle timeout) become _BrokenTransfer."""
    try:
        yield
    except httpx.HTTPError as exc:
        error = translated(exc, label, PacsError)
        if is_transient(exc):
            raise _BrokenTransfer(error) from exc
        raise error from exc
