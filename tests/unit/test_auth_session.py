"""TokenSession: one renewal at a time, failures remembered briefly, early renewal optional.

The renewal here is a plain object counting its calls: what is tested is the
session's bookkeeping, not the token server (the integration tests do that).
"""

from __future__ import annotations

import asyncio

import pytest

from model_proxy.errors import ProxyError, UpstreamTimeout
from model_proxy.pacs.auth.calls import TokenCallFailed, TokenStep
from model_proxy.pacs.auth.session import (
    FailureMemory,
    PacsAuthRejected,
    PacsAuthUnavailable,
    TokenSession,
    auth_error,
)
from model_proxy.pacs.auth.tokens import AccessToken

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class CountingRenewal:
    """Hands out token-1, token-2, ... after ``delay``; or raises ``error``."""

    def __init__(self, clock: Clock, lifetime: float = 100.0, delay: float = 0.05) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.delay = delay
        self.calls: list[bool] = []
        self.error: ProxyError | None = None
        self.closed = False

    async def renew(self, current: AccessToken | None, *, rejected: bool) -> AccessToken:
        self.calls.append(rejected)
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        now = self.clock.now
        expires = now + self.lifetime
        return AccessToken(f"token-{len(self.calls)}", expires, expires - 10)

    async def aclose(self) -> None:
        self.closed = True


def make_session() -> tuple[TokenSession, CountingRenewal, Clock]:
    clock = Clock()
    renewal = CountingRenewal(clock)
    return TokenSession("PACS b1407f18…", renewal, clock=clock), renewal, clock


async def test_fifty_requests_with_an_expired_token_cause_one_renewal() -> None:
    session, renewal, clock = make_session()
    assert await session.token() == "token-1"
    clock.now += 95  # past the early-renewal point
    tokens = await asyncio.gather(*(session.token() for _ in range(50)))
    assert set(tokens) == {"token-2"} and len(renewal.calls) == 2
    assert await session.token() == "token-2" and len(renewal.calls) == 2


async def test_fifty_rejected_requests_cause_one_renewal() -> None:
    session, renewal, _ = make_session()
    first = await session.token()
    tokens = await asyncio.gather(*(session.replace_rejected(first) for _ in range(50)))
    assert set(tokens) == {"token-2"} and renewal.calls == [False, True]
    # A late request refused with the old token gets the new one without a renewal.
    assert await session.replace_rejected(first) == "token-2" and len(renewal.calls) == 2


async def test_a_waiter_that_gives_up_does_not_cancel_the_renewal() -> None:
    session, renewal, _ = make_session()
    first = asyncio.ensure_future(session.token())
    await asyncio.sleep(0.01)
    first.cancel()
    assert await session.token() == "token-1"
    assert len(renewal.calls) == 1


async def test_a_refused_credential_is_remembered_for_a_while() -> None:
    session, renewal, clock = make_session()
    renewal.error = PacsAuthRejected("PACS b1407f18…: sign-in rejected (401)")
    for _ in range(3):
        with pytest.raises(PacsAuthRejected, match=r"sign-in rejected \(401\)"):
            await session.token()
    assert len(renewal.calls) == 1
    clock.now += FailureMemory().rejected
    renewal.error = None
    assert await session.token() == "token-2"


async def test_an_unavailable_token_server_is_remembered_briefly() -> None:
    session, renewal, clock = make_session()
    renewal.error = PacsAuthUnavailable("PACS b1407f18…: token server unreachable")
    results = await asyncio.gather(*(session.token() for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, PacsAuthUnavailable) for r in results)
    assert len(renewal.calls) == 1
    clock.now += FailureMemory().unavailable - 1
    with pytest.raises(PacsAuthUnavailable):
        await session.token()
    clock.now += 1
    renewal.error = None
    assert await session.token() == "token-2" and len(renewal.calls) == 2


async def test_a_failed_early_renewal_keeps_the_still_valid_token() -> None:
    session, renewal, clock = make_session()
    assert await session.token() == "token-1"
    clock.now += 95  # early-renewal window: refresh_at passed, not yet expired
    renewal.error = PacsAuthUnavailable("PACS b1407f18…: token server unreachable")
    assert await session.token() == "token-1"
    clock.now += 10  # now expired: the failure reaches the request
    with pytest.raises(PacsAuthUnavailable):
        await session.token()


async def test_close_closes_the_renewal() -> None:
    session, renewal, _ = make_session()
    await session.aclose()
    assert renewal.closed


def test_auth_errors_by_kind() -> None:
    label = "PACS b1407f18…"
    rejected = TokenCallFailed(TokenStep.SIGN_IN, "sign-in rejected (401)", rejected=True)
    error = auth_error(label, rejected, '; check "login" and "password"')
    assert isinstance(error, PacsAuthRejected) and error.status_code == 502
    assert error.message == f'{label}: sign-in rejected (401); check "login" and "password"'
    assert error.code == "pacs_auth_failed"
    down = TokenCallFailed(TokenStep.REFRESH, "token server unreachable", rejected=False)
    assert auth_error(label, down).code == "pacs_auth_unavailable"
    slow = TokenCallFailed(TokenStep.REFRESH, "timed out", rejected=False, timed_out=True)
    assert isinstance(auth_error(label, slow), UpstreamTimeout)


async def test_failing_since_is_the_first_failure_in_a_row_until_a_renewal_works() -> None:
    session, renewal, clock = make_session()
    assert (session.failing_since, session.last_failure) == (None, None)
    renewal.error = PacsAuthUnavailable("PACS b1407f18…: token server unreachable")
    started = clock.now
    for _ in range(2):
        with pytest.raises(PacsAuthUnavailable):
            await session.token()
        clock.now += FailureMemory().unavailable  # the next call tries again
    renewal.error = PacsAuthRejected("PACS b1407f18…: refresh rejected (401)")
    with pytest.raises(PacsAuthRejected):
        await session.token()
    assert len(renewal.calls) == 3
    assert session.failing_since == started  # the first of the three
    assert session.last_failure == "PACS b1407f18…: refresh rejected (401)"
    clock.now += FailureMemory().rejected
    renewal.error = None
    assert await session.token() == "token-4"
    assert session.failing_since is None
