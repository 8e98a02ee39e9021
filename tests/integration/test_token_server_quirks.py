"""The token server calls against servers that misbehave in ways the double does not:
the header spelled as the original's docs spell it, redirects, wrong URLs, missing
tokens, oversized answers, and an explanation that quotes a secret back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from threaded_server import ThreadedServer

from model_proxy.pacs.auth.calls import (
    ExchangedTokens,
    TokenCallFailed,
    TokenServerClient,
    TokenStep,
)
from model_proxy.upstream.clients import Timeouts

T = TypeVar("T")


async def _authentication_header(request: Request) -> Response:
    # The original's docs call the header "Authentication"; a server might follow them.
    return Response("refresh-t0ken\n", headers={"Authentication": "Bearer acc3ss"})


async def _bare_header(request: Request) -> Response:
    return Response("", headers={"Authorization": "acc3ss-without-scheme"})


async def _html_body(request: Request) -> Response:
    body = "<html><body>Token issued</body></html>"
    return Response(body, media_type="text/html", headers={"Authorization": "Bearer a"})


async def _redirect(request: Request) -> Response:
    return Response(status_code=302, headers={"Location": "https://sso.example/login"})


async def _no_token(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _huge(request: Request) -> Response:
    return Response(b"x" * 200_000, headers={"Authorization": "Bearer a"})


async def _echo_password(request: Request) -> Response:
    body = await request.json()
    return JSONResponse({"message": f"user locked; password {body['password']} blocked"}, 423)


async def _server_error(request: Request) -> Response:
    return Response("<html>Bad Gateway</html>", 502, media_type="text/html")


@pytest.fixture(scope="module")
def quirky() -> Iterator[str]:
    routes = [
        Route("/authentication-header", _authentication_header, methods=["POST"]),
        Route("/bare-header", _bare_header, methods=["POST"]),
        Route("/html-body", _html_body, methods=["POST"]),
        Route("/redirect", _redirect, methods=["POST"]),
        Route("/no-token", _no_token, methods=["POST"]),
        Route("/huge", _huge, methods=["POST"]),
        Route("/echo-password", _echo_password, methods=["POST"]),
        Route("/server-error", _server_error, methods=["POST"]),
    ]
    server = ThreadedServer(Starlette(routes=routes), "quirky token server")
    server.start()
    yield server.url
    server.stop()


def call(action: Callable[[TokenServerClient], Awaitable[T]]) -> T:
    async def run() -> T:
        client = TokenServerClient(tls_verify=True, timeouts=Timeouts(connect=2, idle=5))
        try:
            return await action(client)
        finally:
            await client.aclose()

    return asyncio.run(run())


def failure(action: Callable[[TokenServerClient], Awaitable[object]]) -> TokenCallFailed:
    with pytest.raises(TokenCallFailed) as info:
        call(action)
    return info.value


def test_tolerated_answers(quirky: str) -> None:
    exchanged = call(lambda c: c.exchange(f"{quirky}/authentication-header", "auth"))
    assert exchanged == ExchangedTokens("acc3ss", "refresh-t0ken")
    assert call(lambda c: c.refresh(f"{quirky}/bare-header", "r")) == "acc3ss-without-scheme"
    # A body that is no token gives no refresh token rather than a wrong one.
    html = call(lambda c: c.exchange(f"{quirky}/html-body", "auth"))
    assert html == ExchangedTokens("a", None)


def test_refused_answers_say_what_to_fix(quirky: str) -> None:
    redirected = failure(lambda c: c.exchange(f"{quirky}/redirect", "auth"))
    assert redirected.rejected and redirected.step is TokenStep.EXCHANGE
    assert redirected.reason == (
        "token exchange answered 302 (a redirect to https://sso.example/login); put the"
        ' final URL in "signInTokenServer" (credentials are not sent on redirects)'
    )
    wrong_url = failure(lambda c: c.sign_in(f"{quirky}/nowhere", "doctor", "pw"))
    assert wrong_url.rejected and wrong_url.status == 404
    assert f'sign-in answered 404 at {quirky}/nowhere; check the URL in "signInServer"' in (
        wrong_url.reason
    )
    echoed = failure(lambda c: c.sign_in(f"{quirky}/echo-password", "doctor", "hunter2!"))
    assert echoed.reason == (
        'sign-in rejected (423): the server says "user locked; password *** blocked"'
    )


def test_broken_answers_are_not_taken_for_refusals(quirky: str) -> None:
    no_token = failure(lambda c: c.sign_in(f"{quirky}/no-token", "doctor", "pw"))
    assert not no_token.rejected and no_token.reason == "sign-in answered 200 without a token"
    missing = failure(lambda c: c.refresh(f"{quirky}/no-token", "r"))
    assert "without an access token in its Authorization header" in missing.reason
    huge = failure(lambda c: c.exchange(f"{quirky}/huge", "auth"))
    assert not huge.rejected and "answered more than 64 KiB" in huge.reason
    failing = failure(lambda c: c.refresh(f"{quirky}/server-error", "r"))
    assert not failing.rejected and failing.status == 502
    assert failing.reason == "token server failed at refresh (502 Bad Gateway)"
