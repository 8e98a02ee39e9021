"""The upstreams of the in-process tests, served by uvicorn in a thread of the test
process: the real example Model API, a small DICOMweb PACS (WADO-RS retrieve and a
QIDO answer) over the sample study, an identity provider's JWKS, and a Model API that
breaks off in the middle of its answer.

The proxy's model and PACS clients reach them over HTTP on loopback, so their real code
path (connection pool, streaming, timeouts) runs; only the proxy itself is in-process.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import jwt
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from model_proxy.sample_data import SampleStudy

BOUNDARY = "fake-pacs-boundary"
PACS_USER, PACS_PASSWORD = "proxy", "pacs-password"


@contextmanager
def serve_in_thread(app: ASGIApp) -> Iterator[str]:
    """``app`` on a free loopback port; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "the in-thread server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def dicomweb_app(study: SampleStudy, *, basic_auth: bool = True) -> Starlette:
    """WADO-RS retrieve of ``study`` at every level; basic auth ``PACS_USER``."""
    files = {sop: (series.series_uid, data) for series, sop, data in study.iter_instances()}
    expected = "Basic " + base64.b64encode(f"{PACS_USER}:{PACS_PASSWORD}".encode()).decode()

    def refused(request: Request) -> Response | None:
        if basic_auth and request.headers.get("authorization") != expected:
            return Response(status_code=401, headers={"WWW-Authenticate": 'Basic realm="pacs"'})
        return None

    async def qido(request: Request) -> Response:
        return refused(request) or JSONResponse([{"0020000D": {"vr": "UI"}}])

    async def retrieve(request: Request) -> Response:
        if (answer := refused(request)) is not None:
            return answer
        params = request.path_params
        if params["study"] != study.study_uid:
            return Response(status_code=404)
        chosen = [
            data
            for sop, (series_uid, data) in files.items()
            if params.get("series", series_uid) == series_uid and params.get("instance", sop) == sop
        ]
        if not chosen:
            return Response(status_code=404)
        body = b"".join(
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
            for data in chosen
        )
        media = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
        return Response(body + f"--{BOUNDARY}--\r\n".encode(), media_type=media)

    base = "/dicom-web/studies"
    return Starlette(
        routes=[
            Route(base, qido),
            Route(f"{base}/{{study}}", retrieve),
            Route(f"{base}/{{study}}/series/{{series}}", retrieve),
            Route(f"{base}/{{study}}/series/{{series}}/instances/{{instance}}", retrieve),
        ]
    )


class IdentityProvider:
    """Signs RS256 JWTs with its key ``kid`` and publishes the key as a JWKS."""

    issuer = "https://idp.test/realms/imaging"
    audience = "model-proxy"

    def __init__(self, kid: str = "key-1") -> None:
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwks_fetches = 0  # GETs of the key set: a reload must not cause one

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwks_app(self) -> Starlette:
        jwk = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        keys = [jwk | {"kid": self.kid, "alg": "RS256", "use": "sig"}]

        async def jwks(request: Request) -> Response:
            self.jwks_fetches += 1
            return JSONResponse({"keys": keys})

        return Starlette(routes=[Route("/certs", jwks)])

    def mint(self, *, lifetime: float = 300, kid: str | None = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "bob",
            "iat": now,
            "exp": now + int(lifetime),
        } | claims
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"kid": kid or self.kid})


class ModelBrokeOff(Exception):
    """Raised inside the cutting model's body: uvicorn drops the connection mid-answer."""


def cutting_model_app(prefix: bytes) -> Starlette:
    """A Model API that answers 200, sends ``prefix`` and breaks the connection."""

    async def predict(request: Request) -> Response:
        await request.body()

        async def body() -> AsyncIterator[bytes]:
            yield prefix
            raise ModelBrokeOff

        return StreamingResponse(body(), media_type="application/json")

    return Starlette(routes=[Route("/predict", predict, methods=["POST"])])
