"""The job's rate limiter, simulated with a fake clock: concurrent callers, random latencies,
arrivals anywhere between the send and the response - no window of `per` seconds may ever
see more than `requests` arrivals, and the limit must still be nearly reached."""

from __future__ import annotations

import bisect
import heapq
import multiprocessing
import random

import pytest

from engine.fetch.ratelimit import RateLimiter, SharedLimiterState, arrival_cap

CTX = multiprocessing.get_context("fork")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(requests, per=1.0, burst=None, clock=None):
    return RateLimiter(SharedLimiterState(CTX, requests), requests, per, burst, clock or Clock())


def simulate(lim: RateLimiter, clock: Clock, callers: int, sends: int, latency, seed: int = 1, answer: bool = True):
    """Discrete-event run: each caller asks for a slot, sends, waits `latency()` for the answer,
    repeats. Returns (send times, arrival times); an arrival lies anywhere in [send, answer]."""
    rng = random.Random(seed)
    events = [(clock.now, i) for i in range(callers)]
    heapq.heapify(events)
    sent, arrived = [], []
    while len(sent) < sends:
        t, caller = heapq.heappop(events)
        clock.now = t
        delay, ticket = lim.try_take()
        if delay > 0:
            heapq.heappush(events, (t + delay, caller))
            continue
        took = latency(rng)
        sent.append(t)
        arrived.append(t + rng.random() * took)
        clock.now = t + took
        if answer:
            lim.answered(ticket)
        clock.now = t
        heapq.heappush(events, (t + took, caller))
    return sorted(sent), sorted(arrived)


def max_in_window(times: list[float], per: float) -> int:
    return max(bisect.bisect_left(times, t + per) - i for i, t in enumerate(times))


@pytest.mark.parametrize("requests,per,callers", [(10, 1.0, 4), (50, 1.0, 8), (100, 1.0, 32), (5, 2.0, 3)])
def test_no_window_holds_more_arrivals_than_the_limit(requests, per, callers):
    clock = Clock()
    lim = limiter(requests, per, clock=clock)
    cap = arrival_cap(per)
    # latencies up to the cap: arrivals overtake each other and land late in their interval
    sent, arrived = simulate(lim, clock, callers, 20 * requests, lambda r: r.random() * cap)
    assert max_in_window(arrived, per) <= requests
    assert max_in_window(sent, per) <= requests


def test_the_limit_is_nearly_reached_with_fast_answers():
    clock = Clock()
    lim = limiter(50, 1.0, clock=clock)
    sent, _ = simulate(lim, clock, callers=8, sends=500, latency=lambda r: 0.002 + r.random() * 0.003)
    # Sends come in bursts of 50, one burst per window: the rate is what follows the first burst.
    assert (len(sent) - 50) / (sent[-1] - sent[0]) >= 0.98 * 50


def test_first_second_is_not_doubled_like_a_token_bucket():
    clock = Clock()
    lim = limiter(10, 1.0, clock=clock)
    sent, _ = simulate(lim, clock, callers=10, sends=40, latency=lambda r: 0.001)
    assert max_in_window(sent, 1.0) == 10
    assert bisect.bisect_left(sent, sent[0] + 1.0) == 10  # a token bucket would allow 20


def test_unanswered_requests_hold_their_window_for_the_cap():
    clock = Clock()
    lim = limiter(10, 1.0, clock=clock)
    sent, _ = simulate(lim, clock, callers=10, sends=20, latency=lambda r: 5.0, answer=False)
    # the 11th send waits for the 1st one's latest possible arrival (send + cap) + per
    assert sent[10] - sent[0] >= 1.0 + arrival_cap(1.0) - 1e-9


def test_burst_one_spaces_sends_evenly():
    clock = Clock()
    lim = limiter(20, 1.0, burst=1, clock=clock)
    sent, _ = simulate(lim, clock, callers=8, sends=100, latency=lambda r: 0.001)
    gaps = [b - a for a, b in zip(sent, sent[1:])]
    assert min(gaps) >= 0.75 * (1.0 / 20) - 1e-9  # a quarter interval of catch-up at most
    assert max_in_window(sent, 1.0) <= 20


def test_burst_caps_back_to_back_sends():
    clock = Clock()
    lim = limiter(20, 1.0, burst=5, clock=clock)
    sent, _ = simulate(lim, clock, callers=20, sends=40, latency=lambda r: 0.0001)
    assert sum(1 for t in sent if t - sent[0] < 1e-6) == 5


def test_pause_holds_every_caller_back():
    clock = Clock()
    lim = limiter(100, 1.0, clock=clock)
    lim.pause(2.5)
    delay, ticket = lim.try_take()
    assert ticket is None and delay == pytest.approx(2.5)
    clock.now += 2.5
    assert lim.try_take()[0] == 0.0


def test_unlimited_only_honours_pauses():
    clock = Clock()
    lim = RateLimiter(SharedLimiterState(CTX, None), None, clock=clock)
    assert all(lim.try_take() == (0.0, None) for _ in range(1000))
    lim.pause(1.0)
    assert lim.try_take()[0] == pytest.approx(1.0)


def test_acquire_stops_when_the_wait_is_cancelled():
    clock = Clock()
    lim = limiter(1, 10.0, clock=clock)
    assert lim.acquire(lambda s: False)[0] is True
    waits = []
    may_send, ticket = lim.acquire(lambda s: waits.append(s) or True)
    assert may_send is False and ticket is None and waits and waits[0] > 9


def test_state_survives_a_renewal_of_the_primitives():
    clock = Clock()
    lim = limiter(3, 1.0, clock=clock)
    for _ in range(3):
        assert lim.try_take()[0] == 0.0
    fresh = SharedLimiterState(CTX, 3)
    lim.shared.copy_into(fresh)
    renewed = RateLimiter(fresh, 3, 1.0, None, clock)
    assert renewed.try_take()[0] > 0.9  # the history came along: the 4th send must still wait
