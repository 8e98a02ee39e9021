"""STOW-RS answers a real Orthanc does not give (partial failures, refusals), through
httpx.MockTransport; the stores that succeed run against Orthanc in
tests/integration/test_dicom_outputs.py."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from model_proxy.errors import PacsError
from model_proxy.pacs.multipart import MultipartDecoder, boundary_from_content_type
from model_proxy.pacs.stow import stow

pytestmark = pytest.mark.anyio

FAILED = {"00081198": {"vr": "SQ", "Value": [{"00081197": {"vr": "US", "Value": [272]}}]}}


async def _stow(
    answer: httpx.Response, folder: Path, seen: list[httpx.Request] | None = None
) -> None:
    files = [folder / "1.dcm", folder / "2.dcm"]
    for path, data in zip(files, (b"DICM-1", b"DICM-2"), strict=True):
        path.write_bytes(data)

    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return answer

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        await stow(client, "http://pacs.local/dicom-web", "PACS 1a2b3c4d…", files)


async def test_a_stored_pair_is_one_multipart_post_to_studies(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    await _stow(httpx.Response(200, json={"00081199": {"vr": "SQ", "Value": []}}), tmp_path, seen)
    (request,) = seen
    assert (request.method, str(request.url)) == ("POST", "http://pacs.local/dicom-web/studies")
    boundary = boundary_from_content_type(request.headers["content-type"])
    assert boundary is not None
    decoder = MultipartDecoder(boundary)
    assert decoder.feed(request.content) == [b"DICM-1", b"DICM-2"]
    # Streamed from the files, with its length announced (no chunked upload).
    assert request.headers["content-length"] == str(len(request.content))
    assert "transfer-encoding" not in request.headers


@pytest.mark.parametrize(
    ("answer", "code", "fragment"),
    [
        (httpx.Response(200, json=FAILED), "pacs_store_failed", "did not store 2 DICOM objects"),
        (httpx.Response(202, json=FAILED), "pacs_store_failed", "answered 202"),
        (httpx.Response(409, json=FAILED), "pacs_store_failed", "answered 409"),
        (httpx.Response(401), "pacs_auth_failed", "check the server's credentials"),
        (httpx.Response(503), "pacs_store_failed", "answered 503"),
    ],
)
async def test_a_store_not_done_names_the_pacs(
    answer: httpx.Response, code: str, fragment: str, tmp_path: Path
) -> None:
    with pytest.raises(PacsError) as raised:
        await _stow(answer, tmp_path)
    assert raised.value.code == code
    assert raised.value.message.startswith("PACS 1a2b3c4d…")
    assert fragment in raised.value.message
    # Only the PACS's own failures count for its circuit breaker.
    assert (raised.value.upstream is not None) == (answer.status_code >= 500)
