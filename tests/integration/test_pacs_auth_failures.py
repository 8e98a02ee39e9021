"""When a token cannot be had: every request gets a 502/504 naming the server and the
step, /status says the same, the token server is not hammered, and no secret leaks."""

from __future__ import annotations

from auth_setup import (
    AuthSetup,
    AuthSetupFactory,
    assert_no_secret,
    assert_segmentation,
    expect_error,
    use_up,
)
from token_gateway import Gateway
from token_server import TokenServer

from model_proxy.sample_data import SampleStudy

NO_FAILURE_MEMORY = ["--pacs-auth-failure-memory", "0"]


def _check_everywhere(setup: AuthSetup, code: str, *fragments: str, status: int = 502) -> str:
    """The same reason in two inference responses and on /status."""
    messages = [expect_error(setup.infer(), status, code) for _ in range(2)]
    assert messages[0] == messages[1]
    message = messages[0]
    assert message.startswith(f"PACS {setup.server_id[:8]}…: "), message
    for fragment in fragments:
        assert fragment in message, message
    entry = setup.status()
    assert entry["ok"] is False and entry["error"] == message
    return message


def test_wrong_password(
    auth_setup: AuthSetupFactory,
    token_pacs: Gateway,
    token_server: TokenServer,
) -> None:
    entry = token_pacs.server_entry("zhivaAuth", password="wr0ng-pa55word")
    setup = auth_setup(entry)
    _check_everywhere(
        setup,
        "pacs_auth_failed",
        "sign-in rejected (401)",
        '"invalid username or password"',
        'check "login" and "password"',
    )
    # Two requests and a /status probe: one sign-in, the refusal is remembered.
    assert token_server.calls["sign_in"] == 1 and token_server.calls["exchange"] == 0
    assert_no_secret([setup.proxy.log_text()], ["wr0ng-pa55word"])


def test_used_up_auth_token(
    auth_setup: AuthSetupFactory,
    token_pacs: Gateway,
    token_server: TokenServer,
) -> None:
    entry = token_pacs.server_entry("token")
    use_up(token_server, entry["authToken"])  # another proxy, a colleague with curl...
    setup = auth_setup(entry)
    _check_everywhere(
        setup,
        "pacs_auth_failed",
        "token exchange rejected (401)",
        "the auth token was already used or is invalid; put a new authToken in servers.json",
    )
    assert token_server.calls["exchange"] == 2  # the colleague's and the proxy's one
    assert_no_secret([setup.proxy.log_text()], [entry["authToken"]])


def test_revoked_refresh_token(
    auth_setup: AuthSetupFactory,
    sample_study: SampleStudy,
    token_pacs: Gateway,
    token_server: TokenServer,
) -> None:
    token = auth_setup(token_pacs.server_entry("token"))
    zhiva = auth_setup(token_pacs.server_entry("zhivaAuth"))
    for setup in (token, zhiva):
        assert_segmentation(setup.infer(), sample_study)
    token_server.expire_access_tokens()
    token_server.revoke_refresh_tokens()
    # zhivaAuth signs in again; token cannot, and says what to do.
    assert_segmentation(zhiva.infer(), sample_study)
    assert token_server.calls["sign_in"] == 2
    _check_everywhere(
        token,
        "pacs_auth_failed",
        "cannot be renewed (refresh rejected (401)",
        "the authToken was already exchanged and works only once: put a new authToken",
    )
    # token's once at the start, never again; zhivaAuth's after each sign-in.
    assert token_server.calls["exchange"] == 3
    assert token.stored()["refreshToken"] is None  # the rejected one is dropped


def test_token_server_down_then_back(
    auth_setup: AuthSetupFactory,
    sample_study: SampleStudy,
    token_pacs: Gateway,
    token_server: TokenServer,
) -> None:
    # No failure memory (5 s by default, tests/unit/test_auth_session.py): the first
    # request after the token server is back asks it again, no wait needed.
    setup = auth_setup(token_pacs.server_entry("token"), extra_args=NO_FAILURE_MEMORY)
    token_server.stop()
    _check_everywhere(
        setup,
        "pacs_auth_unavailable",
        f"token server unreachable at token exchange ({token_server.exchange_url}:",
    )
    assert not setup.token_file.exists()
    token_server.start()
    assert_segmentation(setup.infer(), sample_study)
    assert token_server.successes["exchange"] == 1


def test_token_server_failing_or_slow(
    auth_setup: AuthSetupFactory,
    sample_study: SampleStudy,
    token_pacs: Gateway,
    token_server: TokenServer,
) -> None:
    token_server.fail_next(1, 503)
    setup = auth_setup(
        token_pacs.server_entry("zhivaAuth"), extra_args=["--pacs-timeout", "1", *NO_FAILURE_MEMORY]
    )
    message = expect_error(setup.infer(), 502, "pacs_auth_unavailable")
    assert "token server failed at sign-in (503 Service Unavailable)" in message
    token_server.set_delay(2.0)
    message = expect_error(setup.infer(), 504, "gateway_timeout")
    assert f"token server timed out at sign-in ({token_server.sign_in_url})" in message
    token_server.set_delay(0.0)
    assert_segmentation(setup.infer(), sample_study)
