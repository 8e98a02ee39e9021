"""When and how long to wait before calling an upstream again.

Exponential backoff with full jitter (a delay drawn uniformly from 0 to
``base * 2**attempt``, capped): concurrent requests that failed together do not
come back together. A ``Retry-After`` from the upstream (seconds or an HTTP
date) replaces the drawn delay when it is within ``max_retry_after``; an
upstream that asks for longer is not retried at all, since the caller (a viewer
waiting for a result) is better told now.

    policy = RetryPolicy(retries=2)
    budget = policy.budget()
    delay = budget.next_delay(retry_after=response.headers.get("retry-after"))
    if delay is None:
        ...  # give up

``send_with_retries`` is the one loop that uses them: the PACS client (WADO-RS)
and the model client (the POST) differ only in what they may retry.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import httpx

from model_proxy.errors import UpstreamError
from model_proxy.upstream.clients import is_transient, translated

logger = logging.getLogger(__name__)

# Answers that say "not now" rather than "never": worth another try.
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` further attempts after the first; delays in seconds."""

    retries: int = 2
    base_delay: float = 0.5
    max_delay: float = 5.0
    max_retry_after: float = 10.0
    jitter: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def budget(self) -> RetryBudget:
        """The attempts of one call; each call gets its own."""
        return RetryBudget(self)

    def backoff(self, retry_index: int) -> float:
        """Full jitter: uniform in [0, min(max_delay, base_delay * 2**retry_index)]."""
        ceiling = min(self.max_delay, self.base_delay * 2.0**retry_index)
        return ceiling * self.jitter()


class RetryBudget:
    """Counts the retries of one call against its policy."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.used = 0

    def tries(self) -> str:
        """The end of a message after retries: " (tried 3 times)"; "" before any."""
        return f" (tried {self.used + 1} times)" if self.used else ""

    def next_delay(
        self, retry_after: str | None = None, *, now: float | None = None
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up.

        >>> budget = RetryPolicy(retries=1, jitter=lambda: 1.0).budget()
        >>> budget.next_delay("3"), budget.next_delay()
        (3.0, None)
        """
        if self.used >= self.policy.retries:
            return None
        asked = parse_retry_after(retry_after, now=now) if retry_after else None
        if asked is not None and asked > self.policy.max_retry_after:
            return None
        delay = asked if asked is not None else self.policy.backoff(self.used)
        self.used += 1
        return delay


def parse_retry_after(value: str, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date); None if invalid.

    >>> parse_retry_after("120")
    120.0
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0)
    10.0
    >>> parse_retry_after("soon") is None
    True
    """
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


async def send_with_retries(
    client: httpx.AsyncClient,
    build: Callable[[], httpx.Request],
    budget: RetryBudget,
    *,
    label: str,
    error_type: type[UpstreamError],
    may_retry: Callable[[httpx.HTTPError], bool] = is_transient,
    retry_statuses: frozenset[int] = frozenset(),
    context: str = "",
) -> httpx.Response:
    """Send ``build()`` (streamed) until an answer that is not to be retried.

    A failure ``may_retry`` accepts, or an answer in ``retry_statuses``, is tried
    again within ``budget`` after its delay; anything else is returned (an answer,
    whatever its status) or raised as ``error_type`` naming ``label``. ``context``
    ends the warning logged before each retry (" for study 1.2.3").
    """
    while True:
        try:
            response = await client.send(build(), stream=True)
        except httpx.HTTPError as exc:
            delay = budget.next_delay() if may_retry(exc) else None
            if delay is None:
                raise translated(exc, label, error_type, note=budget.tries()) from exc
            reason = translated(exc, label, error_type).message
        else:
            if response.status_code not in retry_statuses:
                return response
            delay = budget.next_delay(response.headers.get("retry-after"))
            if delay is None:
                return response
            reason = f"{label}: answered {response.status_code}"
            await response.aclose()
        logger.warning("%s%s; retry %d in %.1f s", reason, context, budget.used, delay)
        await asyncio.sleep(delay)
