"""``model-proxy check-auth``: each server's authentication, step by step, live.

For an administrator setting up a PACS: every step of the flow is performed against
the real token server and PACS and reported with OK, FAILED or skipped and why.
Tokens obtained are stored in the token files, exactly as ``serve`` would, so a
check never burns a single-use auth token. With ``--redis`` they are read from and
written to the replicas' shared record instead, and every renewal takes the server's
shared lock, as a replica's does (docs/replicas.md, "PACS tokens").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx

from model_proxy.config import AuthType, ServerConfig
from model_proxy.errors import PacsError, ProxyError, redact_urls, short_id
from model_proxy.pacs.auth.calls import TokenCallFailed, TokenServerClient, TokenStep
from model_proxy.pacs.auth.flows import BearerAuth, PacsAuth
from model_proxy.pacs.auth.oauth2 import ClientCredentialsRenewal
from model_proxy.pacs.auth.token_server import TokenServerRenewal
from model_proxy.pacs.auth.tokens import AccessToken, StoredTokens, access_token, describe_expiry
from model_proxy.upstream.clients import Timeouts, make_client
from model_proxy.upstream.probe import probe_get

OK, FAILED, SKIPPED = "OK", "FAILED", "skipped"
ALREADY_EXCHANGED = (
    "this authToken was exchanged before and works only once; using the stored tokens"
)
EXCHANGED_MEANWHILE = (
    "another replica exchanged this authToken while this check waited for the shared"
    " lock; it works only once: using the tokens it stored"
)


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
            renewal = TokenServerRenewal(server, calls, auth.store, auth.shared)
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
    try:
        token = await _obtain(server, renewal, steps)
        stored = await renewal.load()
        if token is None and stored.access_token:
            token = access_token(stored.access_token, just_issued=False)
        if not server.refresh_server:
            steps.append(Step("refresh", SKIPPED, 'no "refreshServer" configured'))
        elif not stored.refresh_token:
            steps.append(Step("refresh", SKIPPED, "no refresh token stored"))
        else:
            step, refreshed = await _refresh(renewal)
            steps.append(step)
            token = refreshed or token
    except ProxyError as exc:
        # With --redis: Redis stopped answering, the record cannot be decrypted, or
        # another replica held the lock too long.
        steps.append(Step("shared tokens", FAILED, exc.message))
        return steps, None
    return steps, token


async def _obtain(
    server: ServerConfig, renewal: TokenServerRenewal, steps: list[Step]
) -> AccessToken | None:
    """Sign-in and exchange as the auth type needs, appending their steps; the new
    access token, or None (exchanged before, or a step failed)."""
    try:
        if server.auth_type is AuthType.ZHIVA:
            async with renewal.renewing() as (stored, save):
                auth_token = await renewal.sign_in()
                steps.append(Step("sign-in", OK, "auth token received"))
                token = await renewal.exchange(auth_token, stored, save)
            steps.append(await _exchanged(token, renewal))
            return token
        stored = await renewal.load()
        found = OK if stored.access_token else "none"
        steps.append(Step("stored tokens", found, _describe_stored(stored, renewal)))
        if renewal.already_exchanged(stored):
            steps.append(Step("token exchange", SKIPPED, ALREADY_EXCHANGED))
            return None
        exchanged = await _exchange_once(server, renewal)
        if exchanged is None:
            steps.append(Step("token exchange", SKIPPED, EXCHANGED_MEANWHILE))
        else:
            steps.append(await _exchanged(exchanged, renewal))
        return exchanged
    except TokenCallFailed as failure:
        steps.append(Step(str(failure.step), FAILED, failure.reason + renewal.advice(failure)))
        return None


async def _exchange_once(server: ServerConfig, renewal: TokenServerRenewal) -> AccessToken | None:
    """The configured auth token exchanged, or None when, with --redis, a replica
    exchanged it while this check waited for the lock (it works only once)."""
    assert server.auth_token is not None
    async with renewal.renewing() as (current, save):
        if renewal.already_exchanged(current):
            return None
        return await renewal.exchange(server.auth_token.get_secret_value(), current, save)


async def _exchanged(token: AccessToken, renewal: TokenServerRenewal) -> Step:
    stored = await renewal.load()
    received = "refresh token received" if stored.refresh_token else "no refresh token"
    return Step("token exchange", OK, f"access token {_expiry(token)}; {received}")


async def _refresh(renewal: TokenServerRenewal) -> tuple[Step, AccessToken | None]:
    try:
        async with renewal.renewing() as (current, save):
            if not current.refresh_token:  # dropped by a replica since it was read
                return Step("refresh", SKIPPED, "no refresh token stored"), None
            token = await renewal.refresh(current, save)
    except TokenCallFailed as failure:
        return Step("refresh", FAILED, failure.reason), None
    return Step("refresh", OK, f"access token {_expiry(token)}"), token


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
        return f"none in {renewal.where_stored}"
    token = access_token(stored.access_token, just_issued=False)
    refresh = "a refresh token" if stored.refresh_token else "no refresh token"
    return f"access token {_expiry(token)}, {refresh} ({renewal.where_stored})"


def _expiry(token: AccessToken) -> str:
    return describe_expiry(token, time.time())
