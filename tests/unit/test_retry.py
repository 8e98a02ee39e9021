"""Retry delays: exponential backoff with full jitter, Retry-After honoured and capped;
and the key that lets a resumed retrieval skip instances already sent."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from model_proxy.pacs.instance_key import instance_key, media_storage_sop_instance_uid
from model_proxy.sample_data import make_study
from model_proxy.upstream.retry import RetryPolicy, parse_retry_after


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
