"""engine/fetch/retry.py: exponential backoff with jitter, Retry-After, and the one retry policy."""

from __future__ import annotations

import asyncio
import email.utils
import random

import pytest

from engine.fetch.retry import FetchError, RetryPolicy, backoff_delay, parse_retry_after, retrying
from engine.spec.models import Retry


class EdgeRng:
    """uniform(a, b) always answers one edge: the bounds become exact values."""

    def __init__(self, edge: str):
        self.edge = edge

    def uniform(self, a: float, b: float) -> float:
        return b if self.edge == "high" else a


def test_exponential_growth_without_jitter_at_the_top():
    policy = Retry(backoff=0.5, max_backoff=30)
    delays = [backoff_delay(policy, n, EdgeRng("high")) for n in range(1, 7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]


def test_capped_at_max_backoff():
    policy = Retry(backoff=0.5, max_backoff=30)
    assert backoff_delay(policy, 7, EdgeRng("high")) == 30.0  # 32 capped
    assert backoff_delay(policy, 20, EdgeRng("high")) == 30.0
    assert backoff_delay(Retry(backoff=1, max_backoff=3), 3, EdgeRng("high")) == 3.0


def test_jitter_floor_is_half_the_base():
    policy = Retry(backoff=2, max_backoff=100)
    assert [backoff_delay(policy, n, EdgeRng("low")) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert backoff_delay(Retry(backoff=2, max_backoff=5), 10, EdgeRng("low")) == 2.5


@pytest.mark.parametrize("failures", [1, 2, 3, 5, 8, 12])
def test_jitter_bounds_with_a_seeded_rng(failures):
    policy = Retry(backoff=0.5, max_backoff=30)
    base = min(30.0, 0.5 * 2 ** (failures - 1))
    rng = random.Random(1234)
    delays = [backoff_delay(policy, failures, rng) for _ in range(500)]
    assert all(base / 2 <= d <= base for d in delays)
    # really jittered: spread over the range, not one value
    assert len(set(delays)) > 400
    assert min(delays) < base / 2 + base * 0.05 and max(delays) > base - base * 0.05


def test_same_seed_same_delays():
    policy = Retry()
    a = [backoff_delay(policy, n, random.Random(7)) for n in range(1, 6)]
    b = [backoff_delay(policy, n, random.Random(7)) for n in range(1, 6)]
    assert a == b


def test_zero_backoff_means_no_wait():
    assert backoff_delay(Retry(backoff=0), 5, random.Random(1)) == 0.0


def test_default_rng_is_used_when_none_given():
    delay = backoff_delay(Retry(backoff=1, max_backoff=10), 2)
    assert 1.0 <= delay <= 2.0


# ------------------------------------------------------------------ Retry-After


@pytest.mark.parametrize("value, seconds", [("3", 3.0), (" 120 ", 120.0), ("0", 0.0), ("1.5", 1.5), ("-4", 0.0)])
def test_retry_after_seconds(value, seconds):
    assert parse_retry_after(value) == seconds


def test_retry_after_http_date():
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 90, usegmt=True)
    assert header.endswith("GMT")
    assert parse_retry_after(header, now=now) == pytest.approx(90.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 30) == pytest.approx(30.0)


def test_retry_after_http_date_in_the_past_is_zero():
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "Wed, 99 Foo 2015", "12 seconds", "  "])
def test_retry_after_garbage_is_none(value):
    assert parse_retry_after(value) is None


# ------------------------------------------------------------------ RetryPolicy + retrying


def test_policy_gives_up_on_non_retryable_errors_and_after_the_last_attempt():
    policy = RetryPolicy(Retry(attempts=3, backoff=1, max_backoff=10), rng=EdgeRng("high"))
    assert policy.delay(1, FetchError("HTTP 503", True, 503)) == 1.0
    assert policy.delay(2, FetchError("HTTP 503", True, 503)) == 2.0
    assert policy.delay(3, FetchError("HTTP 503", True, 503)) is None  # attempts used up
    assert policy.delay(1, FetchError("HTTP 404", False, 404)) is None  # not retryable
    assert policy.delay(1, ValueError("not a FetchError")) is None


def test_policy_waits_at_least_retry_after_capped():
    policy = RetryPolicy(Retry(attempts=5, backoff=1, max_backoff=10), rng=EdgeRng("high"))
    assert policy.delay(1, FetchError("HTTP 429", True, 429, retry_after=7)) == 7.0
    assert policy.delay(3, FetchError("HTTP 429", True, 429, retry_after=0.5)) == 4.0  # backoff is longer
    assert policy.delay(1, FetchError("HTTP 429", True, 429, retry_after=86400)) == 600.0


def test_retrying_drives_attempts_sleeps_and_hooks():
    failures = [FetchError("HTTP 503", True, 503), FetchError("HTTP 429", True, 429, retry_after=3)]
    calls, slept, hooked = [], [], []

    async def attempt():
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return "page"

    async def sleep(seconds):
        slept.append(seconds)

    policy = RetryPolicy(Retry(attempts=3, backoff=0.5, max_backoff=1), rng=EdgeRng("high"))
    result = asyncio.run(retrying(policy, attempt, sleep, lambda error, wait: hooked.append((error.status, wait))))
    assert result == "page" and len(calls) == 3
    assert slept == [0.5, 3.0] and hooked == [(503, 0.5), (429, 3.0)]


def test_retrying_raises_the_last_error_and_stops_when_sleep_raises():
    async def attempt():
        raise FetchError("HTTP 502", True, 502)

    async def no_sleep(seconds):
        pass

    with pytest.raises(FetchError, match="HTTP 502"):
        asyncio.run(retrying(RetryPolicy(Retry(attempts=2)), attempt, no_sleep))

    class Stop(Exception):
        pass

    async def cancelled_sleep(seconds):
        raise Stop

    with pytest.raises(Stop):
        asyncio.run(retrying(RetryPolicy(Retry(attempts=5)), attempt, cancelled_sleep))
