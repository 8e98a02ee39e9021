"""The token files: atomic, private, tolerant of damage; and when a token expires."""

from __future__ import annotations

import json
import logging
import stat
import time
from pathlib import Path

import jwt
import pytest

from model_proxy.pacs.auth.tokens import (
    MAX_EXCHANGED_HISTORY,
    StoredTokens,
    TokenStore,
    access_token,
    describe_expiry,
    fingerprint,
    jwt_claims,
)

SERVER = "b1407f18-575d-487c-bc0c-640c6da651bc"
TOKENS = StoredTokens(
    auth_type="token",
    credential=fingerprint("token", "abc"),
    access_token="acc3ss",
    refresh_token="r3fresh",
    exchanged_auth_tokens=(fingerprint("authToken", "abc"),),
)


def make_jwt(**claims: object) -> str:
    return jwt.encode(dict(claims), "a-test-key-of-at-least-32-bytes!", algorithm="HS256")


def test_save_then_load(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "data" / "tokens")
    store.save(SERVER, TOKENS)
    assert store.load(SERVER) == TOKENS
    assert store.load("63140137-a63d-4ad1-b489-3479bc43387c") == StoredTokens()
    content = json.loads(store.path_for(SERVER).read_text())
    assert content["format"] == 1 and content["accessToken"] == "acc3ss"
    assert content["updatedAt"].endswith("Z")


def test_files_are_private_and_replaced_atomically(tmp_path: Path) -> None:
    folder = tmp_path / "tokens"
    folder.mkdir(mode=0o755)
    store = TokenStore(folder)
    store.save(SERVER, TOKENS)
    store.save(SERVER, StoredTokens(auth_type="zhivaAuth", access_token="second"))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.path_for(SERVER).stat().st_mode) == 0o600
    assert [p.name for p in folder.iterdir()] == [f"{SERVER}.json"]  # no temporary left
    assert store.load(SERVER).access_token == "second"


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    store.save(SERVER, TOKENS)

    class Unwritable(StoredTokens):
        def to_json(self) -> dict[str, object]:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        store.save(SERVER, Unwritable())
    assert store.load(SERVER) == TOKENS
    assert [p.name for p in tmp_path.iterdir()] == [f"{SERVER}.json"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "invalid JSON at line 1"),
        ("[1, 2]", "expected a JSON object"),
        ('{"format": 7}', "unknown format 7"),
        ('{"format": 1, "accessToken": 5}', '"accessToken" is not a string or null'),
        ('{"format": 1, "exchangedAuthTokens": "x"}', '"exchangedAuthTokens" is not an array'),
    ],
)
def test_corrupt_file_is_reported_and_treated_as_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str, reason: str
) -> None:
    store = TokenStore(tmp_path)
    store.path_for(SERVER).write_text(content)
    with caplog.at_level(logging.WARNING, logger="model_proxy.auth"):
        assert store.load(SERVER) == StoredTokens()
    assert "is corrupt" in caplog.text and reason in caplog.text
    store.save(SERVER, TOKENS)  # and it is replaced by the next save
    assert store.load(SERVER) == TOKENS


def test_unreadable_file_is_reported_and_treated_as_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = TokenStore(tmp_path)
    store.path_for(SERVER).mkdir()  # EISDIR: unreadable even for root
    with caplog.at_level(logging.WARNING, logger="model_proxy.auth"):
        assert store.load(SERVER) == StoredTokens()
    assert "cannot be read" in caplog.text
    store.path_for(SERVER).rmdir()
    store.path_for(SERVER).write_bytes(b"\xff\xfe\x00")
    assert store.load(SERVER) == StoredTokens()


def test_server_ids_never_make_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a server id"):
        TokenStore(tmp_path).path_for("../../etc/passwd")


def test_tokens_of_another_credential_are_not_used_but_history_is_kept() -> None:
    other = TOKENS.tokens_for("token", fingerprint("token", "new"))
    assert other.access_token is None and other.refresh_token is None
    assert other.exchanged_auth_tokens == TOKENS.exchanged_auth_tokens
    assert TOKENS.tokens_for("token", TOKENS.credential) is TOKENS
    assert TOKENS.tokens_for("zhivaAuth", TOKENS.credential).access_token is None


def test_exchanged_history_is_deduplicated_and_bounded() -> None:
    tokens = StoredTokens()
    for index in range(MAX_EXCHANGED_HISTORY + 5):
        tokens = tokens.with_exchanged(str(index))
    tokens = tokens.with_exchanged("7")
    history = tokens.exchanged_auth_tokens
    assert len(history) == MAX_EXCHANGED_HISTORY and history[-1] == "7"
    assert len(set(history)) == len(history)


def test_fingerprints_never_contain_the_secret() -> None:
    assert "s3cret" not in fingerprint("authToken", "s3cret")
    assert fingerprint("a", "bc") != fingerprint("ab", "c")


# --- expiry ---------------------------------------------------------------------------


def test_expiry_from_the_jwt_without_verifying_it() -> None:
    now = 1_800_000_000.0
    token = access_token(make_jwt(iat=int(now), exp=int(now) + 3600, name="x"), now=now)
    assert token.expires_at == now + 3600
    assert token.refresh_at == now + 3600 - 60  # a minute early for long-lived tokens
    assert token.is_fresh(now + 3539) and not token.is_fresh(now + 3540)
    assert not token.is_expired(now + 3599) and token.is_expired(now + 3600)


def test_short_lived_tokens_renew_a_tenth_of_their_lifetime_early() -> None:
    now = 1_800_000_000.0
    token = access_token(make_jwt(iat=int(now), exp=int(now) + 10), now=now)
    assert token.refresh_at == now + 9


def test_tokens_without_a_known_expiry() -> None:
    for value in ("not-a-jwt", make_jwt(name="no exp"), make_jwt(exp="soon"), "a.b.c"):
        token = access_token(value)
        assert token.expires_at is None and token.is_fresh(time.time() + 10**9)
    assert jwt_claims("a.b.c") == {}
    assert describe_expiry(access_token("opaque")) == "no expiry known"


def test_oauth2_expires_in_wins_over_the_jwt() -> None:
    now = 1_800_000_000.0
    token = access_token(make_jwt(exp=int(now) + 99999), expires_in=300, now=now)
    assert token.expires_at == now + 300 and token.refresh_at == now + 270


def test_stale_on_arrival_means_a_wrong_clock(caplog: pytest.LogCaptureFixture) -> None:
    now = 1_800_000_000.0
    value = make_jwt(iat=int(now) - 7200, exp=int(now) - 3600)
    with caplog.at_level(logging.WARNING, logger="model_proxy.auth"):
        fresh = access_token(value, now=now)
    # Renewing at every request would not help: use it until the PACS refuses it.
    assert fresh.expires_at is None and "clock" in caplog.text
    stored = access_token(value, now=now, just_issued=False)
    assert not stored.is_fresh(now) and stored.is_expired(now)
    assert describe_expiry(stored, now).startswith("expired at ")
