"""The job's rate limiter, simulated with a fake clock: concurrent callers, random latencies,
arrivals anywhere between the send and the response - no window of `per` seconds may ever
see more than `requests` arrivals, and the limit must still be nearly reached. Then the API's
own signals: a simulated API with a fixed or sliding quota announced in its answers' headers
is never (or once) overrun and still used nearly in full; the header forms are read."""

from __future__ import annotations

import bisect
import email.utils
import heapq
import itertools
import math
import multiprocessing
import random
from collections import deque

import pytest

from engine.fetch.ratelimit import (
    MAX_RETRY_AFTER,
    PROBE_WAIT,
    STATE_SLOTS,
    RateLimiter,
    SharedLimiterState,
    Signal,
    arrival_cap,
    read_signal,
)

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
        lim.settle(ticket, None, heard=answer)  # an API without quota headers
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


def test_unlimited_only_honours_pauses_and_signals():
    clock = Clock()
    lim = RateLimiter(SharedLimiterState(CTX, None), None, clock=clock)
    first = lim.try_take()[1]
    lim.settle(first, None, heard=True)  # the API sends no quota headers
    tickets = [lim.try_take() for _ in range(1000)]
    assert all(delay == 0.0 and ticket is not None and ticket.slot == -1 for delay, ticket in tickets)
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
        delay, ticket = lim.try_take()
        assert delay == 0.0
        lim.settle(ticket, None, heard=True)
    fresh = SharedLimiterState(CTX, 3)
    lim.shared.copy_into(fresh)
    renewed = RateLimiter(fresh, 3, 1.0, None, clock)
    assert renewed.try_take()[0] > 0.9  # the history came along: the 4th send must still wait


# ---------------------------------------------------------------- the API's own signals


def signals_limiter(clock: Clock) -> RateLimiter:
    return RateLimiter(SharedLimiterState(CTX, None), None, clock=clock)


class QuotaApi:
    """A simulated API counting arrivals against `limit` per `window` (fixed windows on its
    clock, or sliding), answering Remaining and Reset like tests/testapi/ratelimit_api.py:
    `reset` "delta" (exact seconds), "ceil" (whole seconds, rounded up), "floor" (rounded
    down: the reset comes early). `rejected` counts the 429s."""

    def __init__(self, limit: int, window: float, kind: str, reset: str):
        self.limit, self.window, self.kind, self.reset = limit, window, kind, reset
        self.index, self.count = -1, 0
        self.arrivals: deque = deque()
        self.rejected = 0

    def arrive(self, now: float) -> Signal:
        if self.kind == "fixed":
            index = math.floor(now / self.window)
            if index != self.index:
                self.index, self.count = index, 0
            allowed = self.count < self.limit
            self.count += allowed
            remaining, reset_at = self.limit - self.count, (index + 1) * self.window
        else:
            while self.arrivals and self.arrivals[0] <= now - self.window:
                self.arrivals.popleft()
            allowed = len(self.arrivals) < self.limit
            if allowed:
                self.arrivals.append(now)
            remaining = self.limit - len(self.arrivals)
            reset_at = self.arrivals[0] + self.window if self.arrivals else now
        self.rejected += not allowed
        seconds = reset_at - now
        rounded = {"ceil": math.ceil, "floor": math.floor}.get(self.reset)
        return Signal(remaining, rounded(seconds) if rounded else seconds)


def simulate_api(lim: RateLimiter, clock: Clock, api: QuotaApi, callers: int, sends: int, latency, seed: int = 1):
    """Discrete-event run against `api`: each caller takes a ticket, its request arrives after
    an up-latency, the answer (with the API's signal) comes back after a down-latency and is
    settled; answers overtake each other. Returns the arrival times."""
    rng = random.Random(seed)
    order = itertools.count()
    events = [(clock.now, next(order), "ask", i, None) for i in range(callers)]
    heapq.heapify(events)
    arrivals: list[float] = []
    asked = 0
    while events:
        t, _, kind, caller, payload = heapq.heappop(events)
        clock.now = t
        if kind == "ask":
            if asked >= sends:
                continue
            delay, ticket = lim.try_take()
            if delay > 0:
                heapq.heappush(events, (t + delay, next(order), "ask", caller, None))
                continue
            asked += 1
            heapq.heappush(events, (t + latency(rng), next(order), "arrive", caller, ticket))
        elif kind == "arrive":
            arrivals.append(t)
            before = api.rejected
            signal = api.arrive(t)
            refused = api.rejected > before
            heapq.heappush(events, (t + latency(rng), next(order), "answer", caller, (payload, signal, refused)))
        else:
            ticket, signal, refused = payload
            lim.answered(ticket)
            lim.settle(ticket, signal, heard=True, refused=refused)
            heapq.heappush(events, (t, next(order), "ask", caller, None))
    return sorted(arrivals)


@pytest.mark.parametrize("kind", ["fixed", "sliding"])
@pytest.mark.parametrize("reset", ["delta", "ceil", "floor"])
@pytest.mark.parametrize("callers,latency", [(8, 0.003), (8, 0.08), (32, 0.02), (12, 0.25)])
def test_an_announced_quota_is_not_overrun_and_nearly_used(kind, reset, callers, latency):
    """Latencies vary by 3x, so answers overtake each other and requests reach the API out of
    the order they were sent in."""
    clock = Clock()
    api = QuotaApi(20, 2.0, kind, reset)
    lim = signals_limiter(clock)
    arrived = simulate_api(lim, clock, api, callers, 200, lambda r: latency * (0.5 + r.random()))
    # resets rounded down come early: the one probe that finds out makes the wait longer
    assert api.rejected == (1 if reset == "floor" else 0)
    if kind == "sliding":
        assert max_in_window(arrived, 2.0) <= 20 + api.rejected
    # The long-run rate after the first quota. A sliding window gives its quota back a request
    # at a time, each found by a round trip: slow answers cost it more.
    rate = (len(arrived) - 20) / (arrived[-1] - arrived[0])
    floor = {"fixed": 0.85, "sliding": 0.7}[kind] - (0.05 if latency > 0.1 else 0)
    assert rate >= floor * 10


def test_the_first_send_probes_alone_until_it_is_answered():
    clock = Clock()
    lim = signals_limiter(clock)
    delay, probe = lim.try_take()
    assert delay == 0.0 and probe is not None
    assert lim.try_take()[1] is None  # the others wait for what the API says
    lim.settle(probe, Signal(remaining=2, reset=5.0), heard=True)
    assert [lim.try_take()[1] is not None for _ in range(3)] == [True, True, False]


def test_a_slow_first_answer_stops_holding_the_job_back():
    clock = Clock()
    lim = signals_limiter(clock)
    lim.try_take()
    clock.now += PROBE_WAIT
    assert all(lim.try_take()[1] is not None for _ in range(10))


def test_requests_in_flight_count_against_the_remaining_quota():
    clock = Clock()
    lim = signals_limiter(clock)
    probe = lim.try_take()[1]
    lim.settle(probe, Signal(10, 5.0), heard=True)
    out = [lim.try_take()[1] for _ in range(4)]
    assert all(out)
    lim.settle(out[0], Signal(5, 5.0), heard=True)  # 3 more in flight: 2 may still go
    assert [lim.try_take()[1] is not None for _ in range(3)] == [True, True, False]


def test_an_older_answer_does_not_raise_the_quota_but_a_later_send_does():
    clock = Clock()
    lim = signals_limiter(clock)
    probe = lim.try_take()[1]
    lim.settle(probe, Signal(10, 5.0), heard=True)
    a, b = lim.try_take()[1], lim.try_take()[1]
    lim.settle(b, Signal(3, 5.0), heard=True)  # b reached the server after a...
    lim.settle(a, Signal(4, 5.0), heard=True)  # ...whose answer comes back last: not believed
    assert [lim.try_take()[1] is not None for _ in range(4)] == [True, True, True, False]
    clock.now += 1
    later = lim.try_take()
    assert later[1] is None
    # a send after the figure was heard may raise it (a sliding window freed some)
    lim2 = signals_limiter(Clock())
    first = lim2.try_take()[1]
    lim2.settle(first, Signal(0, 0.5), heard=True)
    lim2.clock.now += 0.5
    probe = lim2.try_take()[1]
    assert probe is not None and lim2.try_take()[1] is None  # one probe after the reset
    lim2.settle(probe, Signal(6, 1.0), heard=True)
    assert sum(lim2.try_take()[1] is not None for _ in range(10)) == 6


def test_a_spent_quota_waits_for_its_reset_then_one_probe_goes():
    clock = Clock()
    lim = signals_limiter(clock)
    lim.settle(lim.try_take()[1], Signal(0, 1.5), heard=True)
    delay, ticket = lim.try_take()
    assert ticket is None and delay == pytest.approx(1.5)
    clock.now += 1.5
    assert lim.try_take()[1] is not None
    assert lim.try_take()[1] is None  # the others wait for the probe's answer


def test_an_api_without_signals_is_not_held_back_after_its_first_answer():
    clock = Clock()
    lim = signals_limiter(clock)
    lim.settle(lim.try_take()[1], None, heard=True)
    assert all(lim.try_take()[1] is not None for _ in range(100))


def test_a_failed_probe_lets_another_probe_go():
    clock = Clock()
    lim = signals_limiter(clock)
    probe = lim.try_take()[1]
    assert lim.try_take()[1] is None
    lim.settle(probe)  # no answer (a connection error): nothing learned
    assert lim.try_take()[1] is not None and lim.try_take()[1] is None


def test_a_renewal_forgets_requests_in_flight():
    clock = Clock()
    lim = signals_limiter(clock)
    lim.settle(lim.try_take()[1], Signal(3, 10.0), heard=True)
    assert all(lim.try_take()[1] for _ in range(3))
    assert lim.try_take()[1] is None  # three in flight use the quota up
    fresh = SharedLimiterState(CTX, None)
    lim.shared.copy_into(fresh)
    assert len(fresh.state) == STATE_SLOTS
    renewed = RateLimiter(fresh, None, clock=clock)
    # the processes that sent them are gone: they will never be settled
    assert sum(renewed.try_take()[1] is not None for _ in range(5)) == 3


@pytest.mark.parametrize(
    "headers,remaining,reset",
    [
        ({"X-RateLimit-Remaining": "7", "X-RateLimit-Reset": "12"}, 7, 12.0),
        ({"RateLimit-Remaining": "0", "RateLimit-Reset": "1.25"}, 0, 1.25),
        ({"RateLimit-Remaining": "5, 100;w=3600", "RateLimit-Reset": "30"}, 5, 30.0),
        ({"X-RateLimit-Remaining": "3"}, 3, None),
        ({"X-RateLimit-Remaining": "-2", "X-RateLimit-Reset": "-4"}, 0, 0.0),
        ({"X-RateLimit-Remaining": "1", "X-RateLimit-Reset": "999999"}, 1, MAX_RETRY_AFTER),
        ({"X-RateLimit-Remaining": "4", "X-RateLimit-Reset": "1700000030"}, 4, 30.0),  # Unix time
        ({"X-RateLimit-Remaining": "4", "X-RateLimit-Reset": "1700000030500"}, 4, 30.5),  # in ms
    ],
)
def test_signal_headers_are_read(headers, remaining, reset):
    signal = read_signal(headers, wall=1_700_000_000.0)
    assert signal is not None and signal.remaining == remaining
    assert signal.reset == (pytest.approx(reset) if reset is not None else None)


def test_a_reset_may_be_an_http_date_and_absent_signals_are_none():
    when = email.utils.formatdate(1_700_000_042, usegmt=True)
    signal = read_signal({"RateLimit-Remaining": "2", "RateLimit-Reset": when}, wall=1_700_000_000.0)
    assert signal == Signal(2, pytest.approx(42.0))
    assert read_signal({"X-RateLimit-Reset": "10"}) is None
    assert read_signal({"X-RateLimit-Remaining": "many"}) is None
