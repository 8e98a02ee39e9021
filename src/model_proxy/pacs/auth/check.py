"""``model-proxy check-auth``: each server's authentication, step by step, live.

For an administrator setting up a PACS: every step of the flow is performed against
the real token server and PACS and reported with OK, FAILED or skipped and why.
Tokens obtained are stored in the token files, exactly as ``serve`` would, so a
check never burns a single-use auth token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx

from model_proxy.config import AuthType, ServerConfig
from model_proxy.errors import PacsError, redact_urls, short_id
from model_proxy.pacs.auth.calls import TokenCallFailed, TokenServerClient, TokenStep
from model_proxy.pacs.auth.flows import BearerAuth, PacsAuth
from model_proxy.pacs.auth.oauth2 import ClientCredentialsRenewal
from model_proxy.pacs.auth.token_server import TokenServerRenewal
from model_proxy.pacs.auth.tokens import AccessToken, StoredTokens, access_token, describe_expiry
from model_proxy.upstream.clients import Timeouts, make_client
from model_proxy.upstream.probe import probe_get

OK, FAILED, SKIPPED = "OK", "FAILED", "skipped"


@dataclass(frozen=True)
class Step:
    name: str
    outcome: str
    detail: str


async def check_servers(
    servers: Iterable[ServerConfig],
    auth: PacsAuth,
    timeouts: Timeouts,
    report: Callable[[str], None] = print,
) -> bool:
    """Check each server, printing as it goes; True when no step failed."""
    all_ok = True
    for server in servers:
        report(
            f"PACS {server.id} ({server.auth_type.value or 'no auth'}) {redact_urls(server.uri)}"
        )
        steps = await check_server(server, auth, timeouts)
        for step in steps:
            report(f"  {step.name:<21} {step.outcome:<7} {step.detail}")
        all_ok = all_ok and all(step.outcome != FAILED for step in steps)
    return all_ok


async def check_server(server: ServerConfig, auth: PacsAuth, timeouts: Timeouts) -> list[Step]:
    if server.is_local_folder:
        folder = server.local_path
        if folder.is_dir():
            return [Step("local folder", OK, f"{folder} exists; no authentication")]
        return [Step("local folder", FAILED, f"{folder} is not a folder")]
    calls = TokenServerClient(tls_verify=server.tls_verify, timeouts=timeouts)
    try:
        if server.auth_type in (AuthType.TOKEN, AuthType.ZHIVA):
            renewal = TokenServerRenewal(server, calls, auth.store)
            steps, token = await _token_server_steps(server, renewal)
        elif server.auth_type is AuthType.OAUTH2:
            steps, token = await _oauth2_steps(ClientCredentialsRenewal(server, calls))
        else:
            return [await _pacs_request(server, timeouts, auth.for_server(server))]
    finally:
        await calls.aclose()
    if token is None:
        steps.append(Step("PACS request", SKIPPED, "no access token to try"))
    else:
        steps.append(await _pacs_request(server, timeouts, BearerAuth(token.value)))
    return steps


async def _token_server_steps(
    server: ServerConfig, renewal: TokenServerRenewal
) -> tuple[list[Step], AccessToken | None]:
    steps: list[Step] = []
    stored = await renewal.load()
    token: AccessToken | None = None
    try:
        if server.auth_type is AuthType.ZHIVA:
            auth_token = await renewal.sign_in()
            steps.append(Step("sign-in", OK, "auth token received"))
        else:
            found = OK if stored.access_token else "none"
            steps.append(Step("stored tokens", found, _describe_stored(stored, renewal)))
            if renewal.already_exchanged(stored):
                steps.append(
                    Step(
                        "token exchange",
                        SKIPPED,
                        "this authToken was exchanged before and works only once; using the"
                        " stored tokens",
                    )
                )
                auth_token = None
            else:
                assert server.auth_token is not None
                auth_token = server.auth_token.get_secret_value()
        if auth_token is not None:
            token = await renewal.exchange(auth_token, stored)
            stored = await renewal.load()
            received = "refresh token received" if stored.refresh_token else "no refresh token"
            steps.append(Step("token exchange", OK, f"access token {_expiry(token)}; {received}"))
    except TokenCallFailed as failure:
        steps.append(Step(str(failure.step), FAILED, failure.reason + renewal.advice(failure)))
        stored = await renewal.load()
    if token is None and stored.access_token:
        token = access_token(stored.access_token, just_issued=False)
    if not server.refresh_server:
        steps.append(Step("refresh", SKIPPED, 'no "refreshServer" configured'))
    elif not stored.refresh_token:
        steps.append(Step("refresh", SKIPPED, "no refresh token stored"))
    else:
        try:
            token = await renewal.refresh(stored)
            steps.append(Step("refresh", OK, f"access token {_expiry(token)}"))
        except TokenCallFailed as failure:
            steps.append(Step("refresh", FAILED, failure.reason))
    return steps, token


async def _oauth2_steps(
    renewal: ClientCredentialsRenewal,
) -> tuple[list[Step], AccessToken | None]:
    try:
        token = await renewal.request_token()
    except TokenCallFailed as failure:
        return [Step(str(failure.step), FAILED, failure.reason + renewal.advice(failure))], None
    return [Step(str(TokenStep.CLIENT_CREDENTIALS), OK, f"access token {_expiry(token)}")], token


async def _pacs_request(server: ServerConfig, timeouts: Timeouts, auth: httpx.Auth | None) -> Step:
    url = server.status_uri or f"{server.uri}/studies?limit=1"
    async with make_client(tls_verify=server.tls_verify, timeouts=timeouts, auth=auth) as client:
        result = await probe_get(
            client,
            url,
            label=f"PACS {short_id(server.id)}",
            error_type=PacsError,
            limits=timeouts.for_probe(),
        )
    detail = result.detail if result.http_status is None else f"GET {result.detail}"
    return Step("PACS request", OK if result.ok else FAILED, detail)


def _describe_stored(stored: StoredTokens, renewal: TokenServerRenewal) -> str:
    if not stored.access_token:
        return f"none in {renewal.token_file}"
    token = access_token(stored.access_token, just_issued=False)
    refresh = "a refresh token" if stored.refresh_token else "no refresh token"
    return f"access token {_expiry(token)}, {refresh} ({renewal.token_file})"


def _expiry(token: AccessToken) -> str:
    return describe_expiry(token, time.time())
