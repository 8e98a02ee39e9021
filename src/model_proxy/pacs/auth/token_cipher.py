"""PACS tokens encrypted at rest in the shared Redis (``--redis-key-file``).

AES-256-GCM from ``cryptography``; the key is derived (HKDF-SHA256) from the secret in
the key file, so any long random text works (``openssl rand -base64 32 > key``). Each
value is bound to its Redis key name (GCM associated data): a value copied to another
server's key, or another deployment's, does not decrypt::

    b"mpt1" + nonce (12 bytes) + ciphertext and tag
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"mpt1"
NONCE_BYTES = 12
# Shorter secrets are too easy to guess; 32 characters of base64 are 192 random bits.
MIN_SECRET_CHARACTERS = 32


class TokenCipher:
    """Encrypts and decrypts the token records of one deployment."""

    def __init__(self, secret: bytes) -> None:
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"model-proxy PACS tokens v1"
        ).derive(secret)
        self._aead = AESGCM(key)

    @classmethod
    def from_file(cls, path: Path) -> TokenCipher:
        """The cipher of the secret in ``path``; ValueError naming the file, never the secret."""
        try:
            secret = path.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read the key file {path}: {exc.strerror}") from None
        if len(secret) < MIN_SECRET_CHARACTERS:
            raise ValueError(
                f"the key file {path} holds {len(secret)} characters; at least"
                f" {MIN_SECRET_CHARACTERS} are needed (openssl rand -base64 32)"
            )
        return cls(secret)

    def encrypt(self, plaintext: bytes, key_name: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + nonce + self._aead.encrypt(nonce, plaintext, key_name.encode())

    def decrypt(self, value: bytes, key_name: str) -> bytes:
        """The plaintext; ValueError if ``value`` was not made by this key for this name."""
        if not value.startswith(MAGIC) or len(value) < len(MAGIC) + NONCE_BYTES + 16:
            raise ValueError("not a token record of model-proxy")
        nonce = value[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, value[len(MAGIC) + NONCE_BYTES :], key_name.encode())
        except InvalidTag:
            raise ValueError("it was encrypted with another key") from None
