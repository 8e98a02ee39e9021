"""An identity provider double: signing keys, tokens minted in the test, and a real
JWKS endpoint over HTTP on loopback that counts how often the proxy fetches it.

    with identity_provider() as idp:
        key = rsa_key("k1")
        idp.publish(key)
        token = idp.mint(key, subject="alice", roles=["radiologist"])
        # access.json: "jwt": {"jwksUri": idp.jwks_url, "issuer": idp.issuer, ...}
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from harness import LOOPBACK

ISSUER = "https://login.hospital.test/realms/imaging"
AUDIENCE = "model-proxy"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: str
    private_key: PrivateKey

    def jwk(self) -> dict[str, Any]:
        """The public half as a JWK, the way an IdP publishes it."""
        public = self.private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            exported = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            exported = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
        return {**exported, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def claims(
    *,
    subject: str = "alice",
    roles: Sequence[str] = (),
    issuer: str = ISSUER,
    audience: str = AUDIENCE,
    expires_in: float = 300,
) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": now,
        "exp": now + int(expires_in),
        "realm_access": {"roles": list(roles)},
        # What a PACS-style token also carries; must never reach a log.
        "name": "Dr. Alice Example",
    }


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(payload: dict[str, Any]) -> str:
    """An ``alg: none`` token: no signature at all."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(payload).encode())}."


@dataclass
class IdentityProvider:
    issuer: str
    jwks_url: str
    published: list[SigningKey] = field(default_factory=list)
    fetches: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, *keys: SigningKey) -> None:
        """Replace the published key set (a key rotation when it changes)."""
        with self._lock:
            self.published = list(keys)

    def key_set(self) -> bytes:
        with self._lock:
            self.fetches += 1
            return json.dumps({"keys": [key.jwk() for key in self.published]}).encode()

    def mint(self, key: SigningKey, *, kid: str | None = None, **fields: Any) -> str:
        """A token signed by ``key``; ``fields`` go to :func:`claims`."""
        headers = {"kid": kid if kid is not None else key.kid}
        return jwt.encode(
            claims(**fields), key.private_key, algorithm=key.algorithm, headers=headers
        )


@contextmanager
def identity_provider(issuer: str = ISSUER) -> Iterator[IdentityProvider]:
    """Serves ``GET /realms/imaging/certs`` (the JWKS) on a free loopback port."""
    provider: IdentityProvider

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/realms/imaging/certs":
                self.send_error(404)
                return
            body = provider.key_set()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: pytest shows failures, not every GET

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    server.daemon_threads = True
    provider = IdentityProvider(
        issuer, f"http://{LOOPBACK}:{server.server_address[1]}/realms/imaging/certs"
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
