"""Retry delays: exponential backoff with full jitter, Retry-After honoured and capped;
and the key that lets a resumed retrieval skip instances already sent."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

from model_proxy.errors import ModelError, PacsError
from model_proxy.pacs.instance_key import instance_key, media_storage_sop_instance_uid
from model_proxy.sample_data import make_study
from model_proxy.upstream.retry import (
    RETRYABLE_STATUSES,
    RetryBudget,
    RetryPolicy,
    parse_retry_after,
    send_with_retries,
)


def test_backoff_doubles_up_to_the_cap_with_full_jitter() -> None:
    policy = RetryPolicy(retries=6, base_delay=0.5, max_delay=3.0, jitter=lambda: 1.0)
    budget = policy.budget()
    assert [budget.next_delay() for _ in range(7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0, None]


def test_jitter_draws_from_zero_to_the_ceiling() -> None:
    draws = iter([0.0, 0.25])
    policy = RetryPolicy(retries=2, base_delay=1.0, jitter=lambda: next(draws))
    budget = policy.budget()
    assert budget.next_delay() == 0.0
    assert budget.next_delay() == 0.5  # a quarter of 2 s


def test_no_retries_means_none() -> None:
    assert RetryPolicy(retries=0).budget().next_delay() is None


def test_each_call_has_its_own_budget() -> None:
    policy = RetryPolicy(retries=1, jitter=lambda: 0.0)
    first = policy.budget()
    assert first.next_delay() == 0.0
    assert first.next_delay() is None
    assert policy.budget().next_delay() == 0.0


def test_retry_after_replaces_the_backoff() -> None:
    budget = RetryPolicy(retries=2, max_retry_after=10, jitter=lambda: 1.0).budget()
    assert budget.next_delay("7") == 7.0
    assert budget.used == 1


def test_retry_after_beyond_the_cap_gives_up_at_once() -> None:
    budget = RetryPolicy(retries=2, max_retry_after=10).budget()
    assert budget.next_delay("120") is None
    assert budget.used == 0


def test_retry_after_as_http_date() -> None:
    now = datetime(2026, 11, 27, 19, 0, 0, tzinfo=UTC)
    header = format_datetime(now.replace(second=4), usegmt=True)
    budget = RetryPolicy(retries=1).budget()
    assert budget.next_delay(header, now=now.timestamp()) == 4.0
    # A date in the past means "now".
    assert parse_retry_after(header, now=now.timestamp() + 60) == 0.0


@pytest.mark.parametrize("value", ["", "soon", "-5", "1.5", "Wed, 99 Foo 2015 07:28:10"])
def test_unreadable_retry_after_falls_back_to_backoff(value: str) -> None:
    assert parse_retry_after(value) is None
    budget = RetryPolicy(retries=1, base_delay=0.5, jitter=lambda: 1.0).budget()
    assert budget.next_delay(value) == 0.5


def test_instance_key_is_the_sop_instance_uid_of_a_part10_file() -> None:
    study = make_study(series_slices=(3,))
    for _series, sop_uid, part10 in study.iter_instances():
        assert media_storage_sop_instance_uid(part10) == sop_uid.encode()
        assert instance_key(part10) == sop_uid.encode()


def test_instance_key_of_anything_else_is_a_digest() -> None:
    assert media_storage_sop_instance_uid(b"not dicom") is None
    assert instance_key(b"not dicom") == instance_key(b"not dicom")
    assert instance_key(b"not dicom") != instance_key(b"not dicom either")
    truncated_meta = b"\0" * 128 + b"DICM" + b"\2\0\1\0OB\0\0"
    assert media_storage_sop_instance_uid(truncated_meta) is None


# --- send_with_retries, against a real server on loopback ------------------------------


@asynccontextmanager
async def answering(*statuses: int) -> AsyncIterator[tuple[str, list[int]]]:
    """A server answering each request with the next of ``statuses`` (then 200)."""
    seen: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                status = statuses[len(seen)] if len(seen) < len(statuses) else 200
                seen.append(status)
                writer.write(
                    f"HTTP/1.1 {status} X\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n".encode()
                )
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/", seen
    finally:
        server.close()
        await server.wait_closed()


def quick(retries: int) -> RetryBudget:
    return RetryPolicy(retries=retries, jitter=lambda: 0.0).budget()


@pytest.mark.anyio
async def test_retryable_answers_are_sent_again_within_the_budget() -> None:
    async with answering(503, 429) as (url, seen), httpx.AsyncClient() as client:
        response = await send_with_retries(
            client,
            lambda: client.build_request("GET", url),
            quick(2),
            label="PACS test",
            error_type=PacsError,
            retry_statuses=RETRYABLE_STATUSES,
        )
        await response.aclose()
    assert response.status_code == 200
    assert seen == [503, 429, 200]


@pytest.mark.anyio
async def test_the_last_retryable_answer_is_returned_when_the_budget_is_spent() -> None:
    async with answering(503, 503, 503) as (url, seen), httpx.AsyncClient() as client:
        response = await send_with_retries(
            client,
            lambda: client.build_request("GET", url),
            quick(1),
            label="PACS test",
            error_type=PacsError,
            retry_statuses=RETRYABLE_STATUSES,
        )
        await response.aclose()
    assert response.status_code == 503
    assert seen == [503, 503]


@pytest.mark.anyio
async def test_other_answers_are_not_retried() -> None:
    async with answering(503) as (url, seen), httpx.AsyncClient() as client:
        response = await send_with_retries(
            client,
            lambda: client.build_request("GET", url),
            quick(3),
            label="m",
            error_type=ModelError,
        )
        await response.aclose()
    assert response.status_code == 503 and seen == [503]


@pytest.mark.anyio
async def test_a_refused_connection_is_retried_then_raised_naming_the_upstream() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}/"
    attempts = 0

    def build() -> httpx.Request:
        nonlocal attempts
        attempts += 1
        return client.build_request("GET", url)

    async with httpx.AsyncClient() as client:
        with pytest.raises(PacsError, match=r"PACS test: unreachable .*\(tried 3 times\)"):
            await send_with_retries(
                client, build, quick(2), label="PACS test", error_type=PacsError
            )
    assert attempts == 3


@pytest.mark.anyio
async def test_a_failure_the_caller_may_not_retry_is_raised_at_once() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}/"
    async with httpx.AsyncClient() as client:
        with pytest.raises(ModelError, match="model m: unreachable") as raised:
            await send_with_retries(
                client,
                lambda: client.build_request("GET", url),
                quick(5),
                label="model m",
                error_type=ModelError,
                may_retry=lambda exc: False,
            )
    assert "tried" not in raised.value.message
