"""Authentication towards a PACS, as httpx auth flows.

Each ``authType`` of servers.json maps to an ``httpx.Auth``: a generator flow
that can add headers, and retry once after a 401, without the DICOMweb client
knowing which scheme is in use (the shape of httpx's own DigestAuth).
"""

from __future__ import annotations

from collections.abc import Generator

import httpx

from model_proxy.config import AuthType, ServerConfig
from model_proxy.errors import PacsError, short_id


class NotYetSupportedAuth(httpx.Auth):
    """Stands for an auth type this release accepts in config but cannot perform.

    Every request through it fails with a 502 that says so, rather than reaching
    the PACS unauthenticated.
    """

    def __init__(self, server: ServerConfig) -> None:
        self._message = (
            f"PACS {short_id(server.id)}: authType {server.auth_type.value!r} is not"
            " supported by this release of model-proxy"
        )

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise PacsError(self._message, code="pacs_auth_unsupported")
        yield request  # pragma: no cover - makes this a generator


def build_auth(server: ServerConfig) -> httpx.Auth | None:
    """The auth flow for ``server``'s authType (None for no auth)."""
    if server.auth_type is AuthType.NONE:
        return None
    if server.auth_type is AuthType.BASIC:
        assert server.login is not None and server.password is not None  # config validated
        return httpx.BasicAuth(server.login, server.password.get_secret_value())
    return NotYetSupportedAuth(server)
