"""One retry policy: which failures are tried again, and how long to wait first.

An I/O-free controller (tenacity's design: stop after n attempts, exponential backoff with
equal jitter, never shorter than the server's Retry-After) with one small async driver. Not
tenacity itself: its per-call bookkeeping costs more than the rest of a page's retry logic,
and every page goes through here. Fetch uses it; delivery and webhooks can reuse it.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from engine.spec.models import Retry

MAX_RETRY_AFTER = 600.0  # a Retry-After longer than this is waited for this long only

T = TypeVar("T")


class FetchError(Exception):
    """One attempt failed. `retryable`: might another attempt succeed?"""

    def __init__(self, message: str, retryable: bool, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message, self.retryable, self.status, self.retry_after = message, retryable, status, retry_after


def is_retryable(error: BaseException) -> bool:
    return isinstance(error, FetchError) and error.retryable


def backoff_delay(policy: Retry, failures: int, rng: random.Random | None = None) -> float:
    """Delay before the next try after `failures` failed tries (1-based): exponential, capped,
    with "equal jitter" (half fixed, half random) so processes that failed together spread out."""
    base = min(policy.max_backoff, policy.backoff * (2 ** (failures - 1)))
    return base / 2 + (rng or random).uniform(0, base / 2)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def wait_before_retry(
    policy: Retry,
    failures: int,
    retry_after: float | None = None,
    max_retry_after: float = MAX_RETRY_AFTER,
    rng: random.Random | None = None,
) -> float:
    """Seconds before the next try: the backoff, but never less than the server's Retry-After
    (itself capped). Pages, deliveries and webhooks all wait this way."""
    wait = backoff_delay(policy, failures, rng)
    if retry_after is not None:
        wait = max(wait, min(retry_after, max_retry_after))
    return wait


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try again: at most `retry.attempts` attempts, only after a retryable
    FetchError, waiting `backoff_delay` but never less than its Retry-After (capped)."""

    retry: Retry
    max_retry_after: float = MAX_RETRY_AFTER
    rng: random.Random | None = None

    def delay(self, failures: int, error: BaseException) -> float | None:
        """Seconds to wait after the `failures`-th failed attempt, or None: give up."""
        if not is_retryable(error) or failures >= self.retry.attempts:
            return None
        retry_after = error.retry_after  # type: ignore[attr-defined]  # a FetchError (is_retryable)
        return wait_before_retry(self.retry, failures, retry_after, self.max_retry_after, self.rng)


async def retrying(
    policy: RetryPolicy,
    attempt: Callable[[], Awaitable[T]],
    sleep: Callable[[float], Awaitable[None]],
    before_sleep: Callable[[FetchError, float], None] = lambda error, wait: None,
) -> T:
    """Await `attempt()` until it returns, or raises an error `policy` gives up on (raised
    as it is). `sleep` may raise to stop early (a cancelled job)."""
    failures = 0
    while True:
        try:
            return await attempt()
        except FetchError as error:
            failures += 1
            wait = policy.delay(failures, error)
            if wait is None:
                raise
            before_sleep(error, wait)
        await sleep(wait)
