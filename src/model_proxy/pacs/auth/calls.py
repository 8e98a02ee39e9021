"""The calls to a PACS token server (docs/compatibility.md §7) and to an OAuth 2.0 token endpoint.

Each call either returns tokens or raises :class:`TokenCallFailed` naming the step
and what went wrong, in words an administrator can act on. Secrets never reach a
message: the server's own explanation is quoted only with every secret of the
call blanked out.

The calls go through their own client: explicit timeouts, no environment proxy,
no redirects (a credential must not travel to another host), and no ``Origin``
header (the token server checks a token's ``aud`` against it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote_plus

import httpx

from model_proxy.config.schema import ClientAuthMethod
from model_proxy.errors import redact_urls
from model_proxy.upstream.clients import Timeouts, describe_connect_error, make_client

# A token response is a few kilobytes; anything much larger is not one.
MAX_RESPONSE_BYTES = 64 * 1024
# A token server answers in milliseconds; waiting as long as for a PACS helps nobody.
MAX_CALL_SECONDS = 30.0


class TokenStep(StrEnum):
    """A step of obtaining an access token, as messages and check-auth name it."""

    SIGN_IN = "sign-in"
    EXCHANGE = "token exchange"
    REFRESH = "refresh"
    CLIENT_CREDENTIALS = "OAuth2 token request"


# The servers.json field holding each step's URL, for "check the URL" advice.
STEP_URL_FIELD = {
    TokenStep.SIGN_IN: "signInServer",
    TokenStep.EXCHANGE: "signInTokenServer",
    TokenStep.REFRESH: "refreshServer",
    TokenStep.CLIENT_CREDENTIALS: "tokenUrl",
}


class TokenCallFailed(Exception):
    """A step failed. ``rejected``: the server refused the credential (retrying the
    same one cannot help); otherwise the server was down or broken."""

    def __init__(
        self,
        step: TokenStep,
        reason: str,
        *,
        rejected: bool,
        status: int | None = None,
        timed_out: bool = False,
    ) -> None:
        self.step = step
        self.reason = reason
        self.rejected = rejected
        self.status = status
        self.timed_out = timed_out
        super().__init__(reason)


@dataclass(frozen=True)
class Answer:
    """A token server's answer, its body read (and bounded)."""

    status: int
    reason: str
    headers: httpx.Headers
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> object:
        try:
            return json.loads(self.body)
        except ValueError:  # also UnicodeDecodeError
            return None


@dataclass(frozen=True)
class ExchangedTokens:
    access_token: str
    refresh_token: str | None


@dataclass(frozen=True)
class ClientCredentialsToken:
    access_token: str
    expires_in: float | None


class TokenServerClient:
    """Calls token servers; one per PACS server, its client made on first use."""

    def __init__(self, *, tls_verify: bool | str, timeouts: Timeouts) -> None:
        self._tls_verify = tls_verify
        self._timeouts = Timeouts(
            connect=timeouts.connect, idle=min(timeouts.idle, MAX_CALL_SECONDS)
        )
        self._client: httpx.AsyncClient | None = None

    async def sign_in(self, url: str, login: str, password: str) -> str:
        """``POST signInServer {"username", "password"}`` -> the auth token."""
        step = TokenStep.SIGN_IN
        response = await self._post(
            step, url, json_body={"username": login, "password": password}, secrets=(password,)
        )
        token = _json_field(response, "token")
        if token is None:
            raise TokenCallFailed(
                step, f"{step} answered 200 without a token", rejected=False, status=200
            )
        return token

    async def exchange(self, url: str, auth_token: str) -> ExchangedTokens:
        """``POST signInTokenServer`` with the auth token -> access and refresh tokens."""
        step = TokenStep.EXCHANGE
        response = await self._post(step, url, bearer=auth_token, secrets=(auth_token,))
        access = _bearer_header(response)
        if access is None:
            raise TokenCallFailed(
                step,
                f"{step} answered 200 without an access token in its Authorization header",
                rejected=False,
                status=200,
            )
        body = response.text.strip()
        # The refresh token is the whole body; text with spaces in it is not a token.
        refresh = body if body and not any(c.isspace() for c in body) else None
        return ExchangedTokens(access, refresh)

    async def refresh(self, url: str, refresh_token: str) -> str:
        """``POST refreshServer`` with the refresh token -> a new access token.

        The refresh token is not rotated (docs/compatibility.md §7); a body is ignored.
        """
        step = TokenStep.REFRESH
        response = await self._post(step, url, bearer=refresh_token, secrets=(refresh_token,))
        access = _bearer_header(response)
        if access is None:
            raise TokenCallFailed(
                step,
                f"{step} answered 200 without an access token in its Authorization header",
                rejected=False,
                status=200,
            )
        return access

    async def client_credentials(
        self,
        url: str,
        *,
        client_id: str,
        client_secret: str,
        method: ClientAuthMethod,
        scope: str | None,
        audience: str | None,
    ) -> ClientCredentialsToken:
        """An OAuth 2.0 client-credentials grant (RFC 6749 section 4.4)."""
        step = TokenStep.CLIENT_CREDENTIALS
        form = {"grant_type": "client_credentials"}
        if scope:
            form["scope"] = scope
        if audience:
            form["audience"] = audience  # Auth0 and others name the API this way
        basic: httpx.BasicAuth | None = None
        if method is ClientAuthMethod.POST:
            form |= {"client_id": client_id, "client_secret": client_secret}
        else:
            # RFC 6749 2.3.1: both are form-encoded before they become Basic credentials.
            basic = httpx.BasicAuth(quote_plus(client_id), quote_plus(client_secret))
        response = await self._post(step, url, data=form, basic=basic, secrets=(client_secret,))
        token = _json_field(response, "access_token")
        if token is None:
            raise TokenCallFailed(
                step, f"{step} answered 200 without an access_token", rejected=False, status=200
            )
        expires_in = _json_field(response, "expires_in", number=True)
        return ClientCredentialsToken(token, float(expires_in) if expires_in else None)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _post(
        self,
        step: TokenStep,
        url: str,
        *,
        secrets: Iterable[str],
        bearer: str | None = None,
        basic: httpx.BasicAuth | None = None,
        json_body: object = None,
        data: dict[str, str] | None = None,
    ) -> Answer:
        if self._client is None:
            self._client = make_client(tls_verify=self._tls_verify, timeouts=self._timeouts)
        headers = {"Accept": "application/json, text/plain, */*"}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        where = redact_urls(url)
        request = self._client.build_request(
            "POST", url, headers=headers, json=json_body, data=data
        )
        try:
            response = await self._client.send(request, auth=basic, stream=True)
            try:
                answer = Answer(
                    response.status_code,
                    response.reason_phrase,
                    response.headers,
                    await _read_limited(response),
                )
            finally:
                await response.aclose()
        except _TooLarge:
            raise TokenCallFailed(
                step,
                f"{step} answered more than {MAX_RESPONSE_BYTES // 1024} KiB ({where});"
                " that is no token response",
                rejected=False,
            ) from None
        except httpx.TimeoutException as exc:
            raise TokenCallFailed(
                step, f"token server timed out at {step} ({where})", rejected=False, timed_out=True
            ) from exc
        except httpx.ConnectError as exc:
            raise TokenCallFailed(
                step,
                f"token server unreachable at {step} ({where}: {describe_connect_error(exc)})",
                rejected=False,
            ) from exc
        except httpx.HTTPError as exc:
            raise TokenCallFailed(
                step,
                f"token server broke the HTTP exchange at {step} ({where}: {type(exc).__name__})",
                rejected=False,
            ) from exc
        _check_status(step, answer, where, secrets)
        return answer


class _TooLarge(Exception):
    pass


async def _read_limited(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_RESPONSE_BYTES:
            raise _TooLarge
    return bytes(body)


def _check_status(step: TokenStep, response: Answer, where: str, secrets: Iterable[str]) -> None:
    status = response.status
    if 200 <= status < 300:
        return
    said = _server_says(response, secrets)
    field = STEP_URL_FIELD[step]
    if 300 <= status < 400:
        target = redact_urls(response.headers.get("location", "elsewhere"))
        raise TokenCallFailed(
            step,
            f"{step} answered {status} (a redirect to {target}); put the final URL in"
            f' "{field}" (credentials are not sent on redirects)',
            rejected=True,
            status=status,
        )
    if status in (404, 405):
        raise TokenCallFailed(
            step,
            f'{step} answered {status} at {where}; check the URL in "{field}"{said}',
            rejected=True,
            status=status,
        )
    if 400 <= status < 500 and status not in (408, 429):
        raise TokenCallFailed(
            step, f"{step} rejected ({status}){said}", rejected=True, status=status
        )
    raise TokenCallFailed(
        step,
        f"token server failed at {step} ({status} {response.reason}){said}",
        rejected=False,
        status=status,
    )


def _server_says(response: Answer, secrets: Iterable[str]) -> str:
    """The server's own explanation, quoted for the administrator, secrets blanked."""
    data = response.json()
    if not isinstance(data, dict):
        return ""
    parts = [
        data.get(key)
        for key in ("error", "error_description", "message")
        if isinstance(data.get(key), str)
    ]
    text = ": ".join(part for part in parts if part)
    if not text:
        return ""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = text if len(text) <= 200 else text[:197] + "..."
    return f': the server says "{text}"'


def _json_field(response: Answer, key: str, *, number: bool = False) -> str | None:
    data = response.json()
    value = data.get(key) if isinstance(data, dict) else None
    if number:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        return str(value) if ok else None
    return value if isinstance(value, str) and value else None


def _bearer_header(response: Answer) -> str | None:
    # The original's docs call the header "Authentication"; the server sends "Authorization".
    header = response.headers.get("authorization") or response.headers.get("authentication")
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    token = value.strip() if scheme.lower() == "bearer" else header.strip()
    return token or None
