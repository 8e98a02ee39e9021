"""The access token of one PACS server: cached, renewed one call at a time.

A :class:`TokenSession` hands out the current access token and renews it when it
is about to expire or when the PACS refused it. However many requests need a
renewal at once, one renewal runs and they all wait for its outcome (a request
that gives up waiting does not cancel it for the others).

A failed renewal is remembered for a short while, so that a wrong password or an
unreachable token server is reported to every request without being hammered by
each of them: 30 seconds for a refused credential, 5 seconds for a token server
that is down or broken (:class:`FailureMemory`, from ``--pacs-auth-failure-memory``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from model_proxy.errors import ErrorCode, PacsError, ProxyError, UpstreamTimeout
from model_proxy.pacs.auth.calls import TokenCallFailed
from model_proxy.pacs.auth.tokens import AccessToken

logger = logging.getLogger("model_proxy.auth")


@dataclass(frozen=True)
class FailureMemory:
    """Seconds a failed renewal is reported to every request without trying again."""

    rejected: float = 30.0  # a refused credential: an administrator must act anyway
    unavailable: float = 5.0  # a token server down or broken: may pass on its own


class PacsAuthRejected(PacsError):
    """The token server refused the configured credential; an administrator must act."""

    default_code = ErrorCode.PACS_AUTH_FAILED


class PacsAuthUnavailable(PacsError):
    """The token server is unreachable or broken; may pass on its own."""

    default_code = ErrorCode.PACS_AUTH_UNAVAILABLE


def auth_error(label: str, failure: TokenCallFailed, advice: str = "") -> ProxyError:
    """The 502/504 a request gets when ``failure`` stopped it from getting a token."""
    message = f"{label}: {failure.reason}{advice}"
    if failure.timed_out:
        return UpstreamTimeout(message)
    if failure.rejected:
        return PacsAuthRejected(message)
    return PacsAuthUnavailable(message)


class Renewal(Protocol):
    """How a server's access token is obtained again (token server, OAuth2...)."""

    async def renew(self, current: AccessToken | None, *, rejected: bool) -> AccessToken:
        """A usable access token; ``current`` is the one in use (None at first use),
        ``rejected`` says the PACS refused it. Raises ProxyError when it cannot."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class _Failure:
    error_type: type[ProxyError]
    message: str
    code: ErrorCode
    until: float

    def error(self) -> ProxyError:
        # A fresh exception each time: re-raising one object grows its traceback.
        return self.error_type(self.message, code=self.code)


class TokenSession:
    """Hands out a server's access token, renewing it through ``renewal`` when needed."""

    def __init__(
        self,
        label: str,
        renewal: Renewal,
        *,
        clock: Callable[[], float] = time.time,
        memory: FailureMemory = FailureMemory(),
        on_renewal: Callable[[bool], None] | None = None,
    ) -> None:
        self.label = label
        # Told whether each renewal worked (the metrics count them).
        self._on_renewal = on_renewal
        self._renewal = renewal
        self._clock = clock
        self._memory = memory
        self._current: AccessToken | None = None
        self._renewing: asyncio.Future[AccessToken] | None = None
        self._failure: _Failure | None = None
        # When renewals started failing in a row, and the last reason (for /status).
        self.failing_since: float | None = None
        self.last_failure: str | None = None

    @property
    def current(self) -> AccessToken | None:
        return self._current

    async def token(self) -> str:
        """The access token to send now."""
        current = self._current
        if current is not None and current.is_fresh(self._clock()):
            return current.value
        try:
            return (await self._renewed(rejected=False)).value
        except ProxyError as exc:
            if current is not None and not current.is_expired(self._clock()):
                # The early renewal failed, but the token has not expired: keep using it.
                logger.warning("%s; the current access token is still valid", exc.message)
                return current.value
            raise

    async def replace_rejected(self, rejected: str) -> str:
        """A new access token after the PACS refused ``rejected`` with a 401."""
        current = self._current
        if current is not None and current.value != rejected and current.is_fresh(self._clock()):
            return current.value  # another request renewed it meanwhile
        logger.info("%s: the PACS refused the access token (401); renewing it", self.label)
        return (await self._renewed(rejected=True)).value

    async def aclose(self) -> None:
        await self._renewal.aclose()

    async def _renewed(self, *, rejected: bool) -> AccessToken:
        failure = self._failure
        if failure is not None and self._clock() < failure.until:
            raise failure.error()
        if self._renewing is None:
            self._renewing = asyncio.ensure_future(self._renew(rejected=rejected))
            # Mark the outcome as seen even if every waiter has gone away.
            self._renewing.add_done_callback(_consume)
        return await asyncio.shield(self._renewing)

    async def _renew(self, *, rejected: bool) -> AccessToken:
        try:
            token = await self._renewal.renew(self._current, rejected=rejected)
        except ProxyError as exc:
            memory = (
                self._memory.rejected
                if isinstance(exc, PacsAuthRejected)
                else self._memory.unavailable
            )
            self._failure = _Failure(type(exc), exc.message, exc.code, self._clock() + memory)
            self.last_failure = exc.message
            if self.failing_since is None:
                self.failing_since = self._clock()
            logger.warning("%s", exc.message)
            if self._on_renewal is not None:
                self._on_renewal(False)
            raise
        finally:
            self._renewing = None
        self._current = token
        self._failure = None
        self.failing_since = None
        if self._on_renewal is not None:
            self._on_renewal(True)
        return token


def _consume(future: asyncio.Future[AccessToken]) -> None:
    if not future.cancelled():
        future.exception()
