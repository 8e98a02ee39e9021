"""The choices of the connection cap (web/connection_guard.py) on stand-in connections;
the real thing, 1,100 slow TLS clients against a proxy process, is
tests/integration/test_slow_clients.py."""

from __future__ import annotations

import logging

import pytest

from model_proxy.web.connection_guard import ConnectionGuard, connection_cap


class Connection:
    def __init__(self, name: str) -> None:
        self.name = name
        self.shed_count = 0

    def shed(self) -> None:
        self.shed_count += 1


def test_at_the_cap_the_connection_waiting_longest_for_a_head_makes_room(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = ConnectionGuard(max_connections=3)
    busy, first, second = Connection("busy"), Connection("first"), Connection("second")
    for connection in (busy, first, second):
        assert guard.admit(connection)
        guard.awaiting_head(connection)
    guard.head_received(busy)  # its request is being answered: never shed

    newcomer = Connection("new")
    with caplog.at_level(logging.WARNING):
        assert guard.admit(newcomer)
    assert (first.shed_count, second.shed_count, busy.shed_count) == (1, 0, 0)
    assert guard.open_connections == 3
    assert "at the limit of 3 (--max-connections)" in caplog.text

    guard.awaiting_head(newcomer)
    assert guard.admit(Connection("newer"))
    assert second.shed_count == 1  # then the next oldest, not the newcomer
    assert newcomer.shed_count == 0


def test_when_every_connection_is_busy_a_new_one_is_refused() -> None:
    guard = ConnectionGuard(max_connections=1)
    busy = Connection("busy")
    assert guard.admit(busy)
    assert not guard.admit(Connection("new"))
    assert busy.shed_count == 0
    guard.release(busy)
    assert guard.admit(Connection("later"))


def test_a_released_connection_is_no_longer_shed() -> None:
    guard = ConnectionGuard(max_connections=1)
    gone = Connection("gone")
    guard.admit(gone)
    guard.awaiting_head(gone)
    guard.release(gone)
    guard.awaiting_head(gone)  # a late call for a connection already lost
    assert guard.admit(Connection("new"))
    assert gone.shed_count == 0


def test_the_cap_keeps_files_for_upstreams() -> None:
    assert connection_cap(None, 1024) == 768
    assert connection_cap(None, 256) == 128
    assert connection_cap(5000, 1024) == 768
    assert connection_cap(10, 1024) == 10
