"""Client API keys: made by ``model-proxy gen-api-key``, stored only as SHA-256 digests.

A key is 256 random bits, so a plain SHA-256 is enough to make the stored digest
useless to whoever reads access.json (no dictionary to try), and cheap enough to
check on every request.

>>> key = new_api_key()
>>> key.startswith("mpk_") and len(key) == 47
True
>>> viewer = ApiKey("viewer", digest_of(key), frozenset())
>>> find_api_key(key, [viewer]) == viewer, find_api_key("mpk_guess", [viewer])
(True, None)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

from .loader import ApiKey

_PREFIX = "mpk_"  # recognisable in a leaked-secret scan


def new_api_key() -> str:
    return _PREFIX + secrets.token_urlsafe(32)


def digest_of(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def find_api_key(presented: str, keys: Iterable[ApiKey]) -> ApiKey | None:
    """The configured key equal to ``presented``, compared in constant time.

    Every digest is compared, match or not, so the time taken says nothing about
    which key (or how much of one) was right.
    """
    digest = digest_of(presented)
    found = None
    for key in keys:
        if hmac.compare_digest(digest, key.digest):
            found = key
    return found
