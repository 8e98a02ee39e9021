"""The example Model API with ``"input": "dicom-multipart"`` bodies: the same results as
the JSON form, and a clear 422 for a malformed one."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from example_model_bodies import SHAPES, Shape, post

BOUNDARY = "test-boundary-1234"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def as_parts(body: Any) -> list[tuple[bytes, str | None, str | None]]:
    """The (Part-10 bytes, series key, instance key) of each instance of a JSON body shape."""

    def raw(instance: str) -> bytes:
        return bytes(orjson.loads(instance))

    if isinstance(body, str):
        return [(raw(body), None, None)]
    if isinstance(body, list):
        return [(raw(item), None, None) for item in body]
    parts: list[tuple[bytes, str | None, str | None]] = []
    for key, value in body.items():
        data = value["data"]
        if isinstance(data, str):
            parts.append((raw(data), None, key))
        elif isinstance(data, list):
            parts.extend((raw(item), key, None) for item in data)
        else:
            parts.extend((raw(inner["data"]), key, name) for name, inner in data.items())
    return parts


def multipart_body(parts: list[tuple[bytes, str | None, str | None]]) -> bytes:
    chunks: list[str | bytes] = []
    for data, series_key, instance_key in parts:
        headers = ["Content-Type: application/dicom", f"Content-Length: {len(data)}"]
        if series_key:
            headers.append(f"Series-Data-Key: {series_key}")
        if instance_key:
            headers.append(f"Instance-Data-Key: {instance_key}")
        chunks.append(f"--{BOUNDARY}\r\n" + "\r\n".join(headers) + "\r\n\r\n")
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{BOUNDARY}--\r\n")
    return b"".join(c.encode() if isinstance(c, str) else c for c in chunks)


@pytest.mark.parametrize("shape_name", SHAPES)
@pytest.mark.parametrize("task", ["segmentation", "prediction", "multiple-series-endpoint/predict"])
def test_multipart_body_gives_the_same_result_as_json(
    client: httpx.Client, shapes: dict[str, Shape], task: str, shape_name: str
) -> None:
    body = shapes[shape_name].body
    as_json = post(client, f"/{task}", body)
    as_multipart = client.post(
        f"/{task}", content=multipart_body(as_parts(body)), headers={"Content-Type": MULTIPART}
    )
    assert as_multipart.status_code == as_json.status_code, as_multipart.text
    assert as_multipart.json() == as_json.json()


@pytest.mark.parametrize(
    ("content", "content_type", "fragment"),
    [
        (b"--test-boundary-1234\r\n\r\nabc", MULTIPART, "malformed"),
        (b"no parts at all", MULTIPART, "malformed"),
        (b"--test-boundary-1234--\r\n", MULTIPART, "no instances"),
        (
            b"--test-boundary-1234\r\nContent-Type: text/plain\r\n\r\nhi\r\n--test-boundary-1234--",
            MULTIPART,
            "expected application/dicom",
        ),
        (
            b"--test-boundary-1234\r\nContent-Type: application/dicom\r\n\r\nnot dicom\r\n"
            b"--test-boundary-1234--",
            MULTIPART,
            "not a DICOM",
        ),
        (b"", 'multipart/related; type="application/dicom"', "no multipart boundary"),
    ],
)
def test_malformed_multipart_bodies_are_422(
    client: httpx.Client, content: bytes, content_type: str, fragment: str
) -> None:
    response = client.post("/segmentation", content=content, headers={"Content-Type": content_type})
    assert response.status_code == 422
    assert fragment in response.json()["message"]
