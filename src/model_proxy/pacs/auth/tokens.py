"""Tokens obtained from a PACS token server, kept on disk between runs.

One JSON file per server in ``<data dir>/tokens/<server id>.json``, readable only
by the proxy's user (file 0600, folder 0700), replaced atomically (temporary file,
fsync, rename) so that a crash never leaves half a file::

    {"format": 1, "authType": "token", "credential": "<sha256>",
     "accessToken": "...", "refreshToken": "...",
     "exchangedAuthTokens": ["<sha256 of each auth token ever exchanged>"],
     "updatedAt": "2026-11-27T18:35:00Z"}

``credential`` fingerprints what the tokens were obtained with (the auth token, or
the sign-in server and login), so that tokens of a replaced credential are not
used. ``exchangedAuthTokens`` is why a single-use auth token is never exchanged
twice, even after the tokens it gave were lost or rejected. A file that cannot be
read or parsed is reported and treated as empty: the proxy never fails to start
because of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeGuard

import jwt

logger = logging.getLogger("model_proxy.auth")

FORMAT = 1
# Enough history for any realistic number of auth token replacements.
MAX_EXCHANGED_HISTORY = 50
_SERVER_ID = re.compile(r"[0-9A-Za-z-]{1,64}")


def fingerprint(*parts: str) -> str:
    """A one-way digest of credentials: comparable, never reversible to the secret.

    >>> fingerprint("a") == fingerprint("a") != fingerprint("b")
    True
    """
    digest = hashlib.sha256(b"model-proxy credential")
    for part in parts:
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class StoredTokens:
    """What the token file of one server holds."""

    auth_type: str = ""
    credential: str = ""
    access_token: str | None = None
    refresh_token: str | None = None
    exchanged_auth_tokens: tuple[str, ...] = ()
    updated_at: str = field(default="", compare=False)

    def tokens_for(self, auth_type: str, credential: str) -> StoredTokens:
        """These tokens if they came from this credential, else none (history kept)."""
        if self.auth_type == auth_type and self.credential == credential:
            return self
        return StoredTokens(exchanged_auth_tokens=self.exchanged_auth_tokens)

    def with_exchanged(self, auth_token_fingerprint: str) -> StoredTokens:
        history = [h for h in self.exchanged_auth_tokens if h != auth_token_fingerprint]
        history.append(auth_token_fingerprint)
        return replace(self, exchanged_auth_tokens=tuple(history[-MAX_EXCHANGED_HISTORY:]))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "authType": self.auth_type,
            "credential": self.credential,
            "accessToken": self.access_token,
            "refreshToken": self.refresh_token,
            "exchangedAuthTokens": list(self.exchanged_auth_tokens),
            "updatedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    @classmethod
    def from_json(cls, data: object) -> StoredTokens:
        """Parse a token file's content; ValueError says what is wrong (never a value)."""
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown format {data.get('format')!r}, expected {FORMAT}")
        strings = ("authType", "credential", "updatedAt")
        optional = ("accessToken", "refreshToken")
        for key in strings:
            if not isinstance(data.get(key, ""), str):
                raise ValueError(f'"{key}" is not a string')
        for key in optional:
            if data.get(key) is not None and not isinstance(data[key], str):
                raise ValueError(f'"{key}" is not a string or null')
        history = data.get("exchangedAuthTokens", [])
        if not isinstance(history, list) or not all(isinstance(h, str) for h in history):
            raise ValueError('"exchangedAuthTokens" is not an array of strings')
        return cls(
            auth_type=data.get("authType", ""),
            credential=data.get("credential", ""),
            access_token=data.get("accessToken") or None,
            refresh_token=data.get("refreshToken") or None,
            exchanged_auth_tokens=tuple(history),
            updated_at=data.get("updatedAt", ""),
        )


class TokenStore:
    """The token files of all servers, in ``folder`` (``<data dir>/tokens``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path_for(self, server_id: str) -> Path:
        if not _SERVER_ID.fullmatch(server_id):  # config keys are UUIDs; never a path
            raise ValueError(f"not a server id: {server_id!r}")
        return self.folder / f"{server_id}.json"

    def load(self, server_id: str) -> StoredTokens:
        """The stored tokens of a server; empty if there are none or the file is bad."""
        path = self.path_for(server_id)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return StoredTokens()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            logger.warning("token file %s cannot be read (%s); treating it as empty", path, reason)
            return StoredTokens()
        try:
            return StoredTokens.from_json(json.loads(text))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            reason = (
                f"invalid JSON at line {exc.lineno}"
                if isinstance(exc, json.JSONDecodeError)
                else str(exc)
            )
            logger.warning(
                "token file %s is corrupt (%s); treating it as empty, it will be replaced",
                path,
                reason,
            )
            return StoredTokens()

    def save(self, server_id: str, tokens: StoredTokens) -> None:
        """Replace the server's token file atomically; raises OSError if that fails."""
        path = self.path_for(server_id)
        self._ensure_folder()
        data = json.dumps(tokens.to_json(), indent=2).encode()
        descriptor, temporary = tempfile.mkstemp(prefix=f".{server_id}.", dir=self.folder)
        try:
            with os.fdopen(descriptor, "wb") as file:
                os.fchmod(file.fileno(), 0o600)
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _fsync_folder(self.folder)

    def _ensure_folder(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = self.folder.stat().st_mode & 0o777
        if mode != 0o700:
            try:
                self.folder.chmod(0o700)
            except OSError as exc:
                logger.warning(
                    "token folder %s is mode %o and cannot be made 0700 (%s)",
                    self.folder,
                    mode,
                    exc.strerror,
                )


def _fsync_folder(folder: Path) -> None:
    # The rename itself is durable only once the folder's entry is on disk.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@dataclass(frozen=True)
class AccessToken:
    """An access token and when to stop using it (None: unknown, use until a 401)."""

    value: str
    expires_at: float | None = None
    refresh_at: float | None = None

    def is_fresh(self, now: float) -> bool:
        """Usable without renewing first."""
        return self.refresh_at is None or now < self.refresh_at

    def is_expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


# Renew this long before expiry, at most; a tenth of the lifetime for short-lived tokens.
EARLY_REFRESH_SECONDS = 60.0


def access_token(
    value: str,
    *,
    expires_in: float | None = None,
    now: float | None = None,
    just_issued: bool = True,
) -> AccessToken:
    """``value`` with its expiry: from ``expires_in`` (OAuth2) or the JWT's ``exp``.

    The JWT is read, not verified: the PACS verifies it; the proxy only needs to
    know when to renew. A token that is no JWT, or has no ``exp``, has no known
    expiry and is used until the PACS answers 401. ``just_issued=False`` is for a
    token read back from disk, which may simply be old.
    """
    now = time.time() if now is None else now
    issued_at = now
    expires_at: float | None = None
    if expires_in is not None and expires_in > 0:
        expires_at = now + expires_in
    else:
        claims = jwt_claims(value)
        exp, iat = claims.get("exp"), claims.get("iat")
        if _is_number(exp):
            expires_at = float(exp)
            if _is_number(iat) and iat < exp:
                issued_at = min(float(iat), now)
    if expires_at is None:
        return AccessToken(value)
    lifetime = max(expires_at - issued_at, 0.0)
    refresh_at = expires_at - min(EARLY_REFRESH_SECONDS, lifetime / 10)
    if refresh_at <= now and just_issued:
        # Stale on arrival: this clock is ahead of the token server's. Renewing at
        # every request would hammer the token server; rely on the PACS's 401 instead.
        logger.warning(
            "a new access token already looks expired (exp %s); is this machine's clock"
            " right? Using it until the PACS refuses it",
            _utc(expires_at),
        )
        return AccessToken(value)
    return AccessToken(value, expires_at, refresh_at)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified; {} for anything that is not a JWT."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims if isinstance(claims, dict) else {}


def describe_expiry(token: AccessToken, now: float | None = None) -> str:
    """``"valid until 2026-11-28 18:35:00Z"`` for messages and check-auth."""
    if token.expires_at is None:
        return "no expiry known"
    when = _utc(token.expires_at)
    now = time.time() if now is None else now
    return f"expired at {when}" if token.is_expired(now) else f"valid until {when}"
