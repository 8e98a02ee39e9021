"""``oauth2``: access tokens from an OAuth 2.0 client-credentials grant.

For PACS behind Keycloak, Azure AD (Entra ID), Okta, Auth0 and the like. The token
lives in memory only: a new one costs one call with the client secret, and no
single-use credential is at stake, so nothing is written to disk.
"""

from __future__ import annotations

import logging

from model_proxy.config import AuthType, ServerConfig
from model_proxy.errors import short_id
from model_proxy.pacs.auth.calls import TokenCallFailed, TokenServerClient
from model_proxy.pacs.auth.session import auth_error
from model_proxy.pacs.auth.tokens import AccessToken, access_token, describe_expiry

logger = logging.getLogger("model_proxy.auth")


class ClientCredentialsRenewal:
    """Obtains access tokens for one ``oauth2`` server."""

    def __init__(self, server: ServerConfig, calls: TokenServerClient) -> None:
        assert server.auth_type is AuthType.OAUTH2
        self.server = server
        self.label = f"PACS {short_id(server.id)}"
        self._calls = calls

    async def renew(self, current: AccessToken | None, *, rejected: bool) -> AccessToken:
        try:
            return await self.request_token()
        except TokenCallFailed as failure:
            raise auth_error(self.label, failure, self.advice(failure)) from None

    def advice(self, failure: TokenCallFailed) -> str:
        """What to check after ``failure``, to append to its reason."""
        status = failure.status or 0
        # 404 and 405 point at the URL already.
        if failure.rejected and 400 <= status < 500 and status not in (404, 405):
            return '; check "clientId", "clientSecret", "scope" and "audience"'
        return ""

    async def request_token(self) -> AccessToken:
        server = self.server
        assert server.token_url and server.client_id and server.client_secret
        answer = await self._calls.client_credentials(
            server.token_url,
            client_id=server.client_id,
            client_secret=server.client_secret.get_secret_value(),
            method=server.client_auth_method,
            scope=server.scope,
            audience=server.audience,
        )
        token = access_token(answer.access_token, expires_in=answer.expires_in)
        logger.info("%s: obtained an OAuth2 access token, %s", self.label, describe_expiry(token))
        return token

    async def aclose(self) -> None:
        await self._calls.aclose()
