"""The job's one rate limiter, shared by every process of the job through shared memory.

It enforces two limits at once: the spec's `rate_limit`, and what the API itself says.

**The spec's `rate_limit`.** APIs count requests in a sliding window as they *arrive*, so a
plain token bucket is not enough (it lets 2N requests through in the first second), and
neither is logging our own send times: on a busy machine a request can reach the server tens
of milliseconds after we decided to send it (GIL, scheduling), while the next one goes
straight through. So the limiter reasons about the latest moment each request can have
arrived:

- when a request is let go, its log entry is `now + cap` (cap = 10 % of `per`, at most 1 s);
  when its response headers come back the entry drops to that moment - the server had seen
  the request by then;
- a new request may go once `per` has passed since the latest possible arrival of every
  request `requests` sends back or earlier (a running maximum, so arrivals that overtake
  each other are covered too);
- GCRA with `burst`: at most `burst` back to back, then one every `per / requests` (with a
  quarter interval of slack, so one late wake-up doesn't delay every later send);
- `pause_until`: a 429's (or 503's) Retry-After pauses every process of the job.

For a fast API this costs the response time once per window; it never lets more than
`requests` arrive within `per` seconds.

**The API's own signals** (`RateLimit-Remaining`/`X-RateLimit-Remaining` and `…-Reset`), with
or without a `rate_limit`. Every send is counted in flight until it is settled (answered or
failed). The quota is `remaining - in flight`: the lowest `Remaining` heard (a lower figure is
always the later arrival, whatever order the answers come back in), minus every request that
may not have been counted in it yet. A higher figure is believed only from a request sent
after the figure it replaces was heard - an older answer may simply have reached the server
earlier. At zero nothing goes until the reset; then the quota is unknown and one request (a
probe) asks for it before the others go, because a sliding-window API frees its quota a
little at a time, and releasing every lane at once would overrun it. The job's very first
request is such a probe too, so a job with more lanes than the API's quota does not start
with a burst of 429s; an API that sends no such headers is never held back again. A probe
refused with a 429 shows that the API's resets come early (whole seconds rounded down, or a
clock ahead of ours): every later reset is waited for a second longer (at most three).
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from engine.fetch.retry import MAX_RETRY_AFTER, parse_retry_after

# Shared scalars, by index into `state`.
_HEAD, _TAT, _PAUSE, _FLOOR, _SEQ = 0, 1, 2, 3, 4
_INFLIGHT = 5  # sends not settled yet
_MODE = 6  # what the API has said about its quota: START, QUIET or SIGNALS
_REMAINING = 7  # the API's remaining quota as last believed; UNKNOWN: probe for it
_RESET = 8  # when that quota resets (this clock)
_MARK = 9  # an answer to a send numbered from here on may raise `_REMAINING`
_PROBE = 10  # the number of the send probing for the quota, or -1
_PROBE_AT = 11  # when the probe left
_SLACK = 12  # seconds added to every reset: learned when a probe after one was refused
STATE_SLOTS = 13
# The slots by name, in index order (engine/fetch/redis_limiter.py keeps them in a hash).
STATE_FIELDS = (
    "head",
    "tat",
    "pause",
    "floor",
    "seq",
    "inflight",
    "mode",
    "remaining",
    "reset",
    "mark",
    "probe",
    "probe_at",
    "slack",
)

START, QUIET, SIGNALS = 0.0, 1.0, 2.0  # `_MODE`: nothing heard yet / no signals / signals
UNKNOWN = -1.0
NEVER = -1e18
MARGIN = 0.002  # clock read-out granularity between processes
CATCH_UP = 0.25  # of an interval: a send that woke late does not slow every later one
POLL = 0.005  # seconds between looks while answers in flight may free the quota
PROBE_WAIT = 1.0  # a probe unanswered this long no longer holds the others back
DEFAULT_RESET = 1.0  # seconds, when an API says how much is left but not when it resets
SLACK_STEP = 1.0  # a reset said in whole seconds may be rounded down by up to one
MAX_SLACK = 3.0
# A new limiter's state slots that do not start at 0.
FRESH_STATE = {
    _TAT: NEVER,
    _PAUSE: NEVER,
    _FLOOR: NEVER,
    _MODE: START,
    _REMAINING: UNKNOWN,
    _RESET: NEVER,
    _PROBE: -1.0,
    _PROBE_AT: NEVER,
}

REMAINING_HEADERS = ("RateLimit-Remaining", "X-RateLimit-Remaining")
RESET_HEADERS = ("RateLimit-Reset", "X-RateLimit-Reset")
EPOCH_SECONDS = 1e9  # a Reset this large is a Unix time (2001 on), not a number of seconds
EPOCH_MILLISECONDS = 1e12
_NUMBER = re.compile(r"\s*(-?\d+(?:\.\d*)?)")


def arrival_cap(per: float) -> float:
    """The longest a request is assumed to take to reach the server, until it is answered."""
    return min(0.1 * per, 1.0)


class Ticket(NamedTuple):
    """One send: its log slot (-1 without a `rate_limit`) and its number."""

    slot: int
    seq: int


@dataclass(frozen=True, slots=True)
class Signal:
    """What one answer said about the API's quota."""

    remaining: int
    reset: float | None  # seconds from the answer until the quota resets; None: not said


def _leading_number(value: str | None) -> float | None:
    # "5", "5.0", or a list form such as "5, 100;w=3600": the first figure is the tightest.
    if value is None:
        return None
    match = _NUMBER.match(value)
    return float(match.group(1)) if match else None


def read_signal(headers: Mapping[str, str], wall: float | None = None) -> Signal | None:
    """The quota signal of one answer's headers, or None when it carries none. A Reset is
    seconds from now, a Unix time (seconds or milliseconds) or an HTTP date; it is honoured for
    at most MAX_RETRY_AFTER seconds at a time (then a probe asks again)."""
    remaining = next((n for n in map(_leading_number, map(headers.get, REMAINING_HEADERS)) if n is not None), None)
    if remaining is None:
        return None
    raw = next((v for v in map(headers.get, RESET_HEADERS) if v), None)
    reset = _leading_number(raw)
    if reset is not None and reset >= EPOCH_SECONDS:
        wall = time.time() if wall is None else wall
        reset = (reset / 1000.0 if reset >= EPOCH_MILLISECONDS else reset) - wall
    elif reset is None and raw is not None:
        reset = parse_retry_after(raw, wall)  # an HTTP date
    if reset is not None:
        reset = min(max(reset, 0.0), MAX_RETRY_AFTER)
    return Signal(max(0, int(remaining)), reset)


class LimiterState(ABC):
    """Where a job's limiter keeps its state: shared memory (`SharedLimiterState`), a budget's
    file (engine/fetch/budget.py) or Redis (engine/fetch/redis_limiter.py). Created by the
    coordinator and handed to every process of the job, which builds its limiter from it."""

    @abstractmethod
    def rate_limiter(self, requests: int | None, per: float = 1.0, burst: int | None = None) -> Limiter:
        """This process's limiter over the state, for a `rate_limit` of requests/per/burst."""

    def renewed(self, ctx, requests: int | None) -> LimiterState:
        """The state for a rebuilt pool (its processes were killed): by default the same one."""
        return self

    def close(self) -> None:  # noqa: B027 - most states hold nothing to let go of
        """The job is over: let go of what the state holds (a budget: this job no longer uses it)."""


class SharedLimiterState(LimiterState):
    """The shared-memory part; created by the coordinator, handed to pool processes at start."""

    def __init__(self, ctx, requests: int | None):
        size = max(requests or 1, 1)
        self.ring = ctx.RawArray("d", size)  # latest possible arrival of each of the last sends
        self.seqs = ctx.RawArray("q", size)  # which send each ring entry belongs to
        self.state = ctx.RawArray("d", STATE_SLOTS)
        self.lock = ctx.Lock()
        for i in range(size):
            self.ring[i] = NEVER
            self.seqs[i] = -1
        for i in range(STATE_SLOTS):
            self.state[i] = FRESH_STATE.get(i, 0.0)

    def copy_into(self, other: SharedLimiterState) -> None:
        """Carry the history over to fresh primitives (after a killed process, a lock may be lost)."""
        for i in range(min(len(self.ring), len(other.ring))):
            other.ring[i] = self.ring[i]
            other.seqs[i] = self.seqs[i]
        for i in range(min(len(self.state), len(other.state))):
            other.state[i] = self.state[i]
        # The processes that had requests in flight are gone: none of them will be settled.
        other.state[_INFLIGHT] = 0
        other.state[_PROBE] = -1

    def rate_limiter(self, requests: int | None, per: float = 1.0, burst: int | None = None) -> Limiter:
        return RateLimiter(self, requests, per, burst)

    def renewed(self, ctx, requests: int | None) -> LimiterState:
        """Fresh primitives with the history carried over (a killed process may have held the lock)."""
        fresh = SharedLimiterState(ctx, requests)
        self.copy_into(fresh)
        return fresh


class Limiter(ABC):
    """What the fetch code asks of a job's limiter, wherever its state lives. `try_take` lets a
    request go or says how long to wait; every ticket it hands out is settled once."""

    def __init__(self, requests: int | None, per: float = 1.0, burst: int | None = None):
        self.requests = requests
        self.per = per
        self.burst = burst or requests
        self.interval = per / requests if requests else 0.0
        self.cap = arrival_cap(per)

    @property
    def limited(self) -> bool:
        return self.requests is not None

    @abstractmethod
    def try_take(self) -> tuple[float, Ticket | None]: ...

    @abstractmethod
    def answered(self, ticket: Ticket | None) -> None: ...

    @abstractmethod
    def settle(
        self, ticket: Ticket | None, signal: Signal | None = None, heard: bool = False, refused: bool = False
    ) -> None: ...

    @abstractmethod
    def pause(self, seconds: float) -> None: ...

    @abstractmethod
    def paused_until(self) -> float:
        """Until when the job is paused, on this process's time.monotonic() (NEVER: not paused)."""

    def acquire(self, wait: Callable[[float], bool]) -> tuple[bool, Ticket | None]:
        """Block until this caller may send. `wait(seconds)` sleeps and returns True when the job
        was cancelled meanwhile. Returns (may_send, ticket for `answered` and `settle`)."""
        while True:
            delay, ticket = self.try_take()
            if delay <= 0:
                return True, ticket
            if wait(delay):
                return False, None

    async def acquire_async(self, wait: Callable[[float], Awaitable[bool]]) -> tuple[bool, Ticket | None]:
        """`acquire` on an event loop: `wait(seconds)` is awaited."""
        while True:
            delay, ticket = self.try_take()
            if delay <= 0:
                return True, ticket
            if await wait(delay):
                return False, None


class RateLimiter(Limiter):
    """`clock` is injectable for tests; it must be system-wide (time.monotonic is
    CLOCK_MONOTONIC on Linux, the same in every process)."""

    def __init__(
        self,
        shared: SharedLimiterState,
        requests: int | None,
        per: float = 1.0,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(requests, per, burst)
        self.shared = shared
        self.clock = clock

    def try_take(self) -> tuple[float, Ticket | None]:
        """Let one request go now if the limits allow: returns (0.0, ticket); the ticket must be
        settled (`settle`) once the request is answered or has failed. Otherwise returns
        (seconds to wait before asking again, None)."""
        now = self.clock()
        state = self.shared.state
        ring, seqs = self.shared.ring, self.shared.seqs
        with self.shared.lock:
            quota_wait, probe = self._quota(state, now)
            allowed = state[_PAUSE]
            if self.limited:
                burst = self.burst
                assert burst is not None  # limited: `burst` defaults to `requests`
                head = int(state[_HEAD])
                floor = max(state[_FLOOR], ring[head])  # the send `requests` back leaves the log now
                allowed = max(
                    allowed,
                    floor + self.per + MARGIN,  # sliding window
                    state[_TAT] - (burst - 1 + CATCH_UP) * self.interval,  # GCRA burst
                )
            wait = max(allowed - now, quota_wait)
            if wait > 0:
                return wait, None
            seq = int(state[_SEQ])
            state[_SEQ] = seq + 1
            state[_INFLIGHT] += 1
            if probe:
                state[_PROBE] = seq
                state[_PROBE_AT] = now
            slot = -1
            if self.limited:
                slot = head
                state[_FLOOR] = floor
                ring[head] = now + self.cap
                seqs[head] = seq
                state[_HEAD] = (head + 1) % len(ring)
                state[_TAT] = max(state[_TAT], now) + self.interval
        return 0.0, Ticket(slot, seq)

    @staticmethod
    def _quota(state, now: float) -> tuple[float, bool]:
        """What the API's quota allows now: (seconds to wait, whether the send is a probe).
        Called under the lock; moves on to probing once a spent quota has reset."""
        mode = state[_MODE]
        if mode == QUIET:
            return 0.0, False
        if state[_REMAINING] != UNKNOWN:
            in_flight = state[_INFLIGHT]
            if state[_REMAINING] - in_flight >= 1:
                return 0.0, False
            if in_flight > 0 and now < state[_RESET] + PROBE_WAIT:
                # Their answers tell what is left (some of them may have been counted already).
                # A probe sent now could reach the server before them and hear too much.
                return POLL, False
            if in_flight == 0 and now < state[_RESET]:
                return state[_RESET] - now, False
            state[_REMAINING] = UNKNOWN
            state[_MARK] = state[_SEQ]  # answers to earlier sends tell of the old window
            state[_PROBE] = -1
        if state[_PROBE] >= 0:
            waited = now - state[_PROBE_AT]
            if waited < PROBE_WAIT:
                return min(POLL, PROBE_WAIT - waited), False
            if mode == START:  # a slow first answer: it does not hold the job back any longer
                state[_MODE] = QUIET
                return 0.0, False
        return 0.0, True

    def answered(self, ticket: Ticket | None) -> None:
        """The response to `ticket`'s request has begun: the server saw it by now."""
        if ticket is None or ticket.slot < 0:
            return
        slot, seq = ticket
        now = self.clock()
        with self.shared.lock:
            if self.shared.seqs[slot] == seq and now < self.shared.ring[slot]:
                self.shared.ring[slot] = now

    def settle(
        self, ticket: Ticket | None, signal: Signal | None = None, heard: bool = False, refused: bool = False
    ) -> None:
        """`ticket`'s request is over. `heard`: its answer's headers were read (False: it failed
        without one, or was a redirect hop); `signal`: what they said about the API's quota;
        `refused`: the answer was a 429."""
        if ticket is None:
            return
        now = self.clock()
        state = self.shared.state
        with self.shared.lock:
            if state[_INFLIGHT] > 0:
                state[_INFLIGHT] -= 1
            probe = state[_PROBE] == ticket.seq
            if probe:
                state[_PROBE] = -1
            if not heard:
                return
            if signal is None:
                if state[_MODE] == START:
                    state[_MODE] = QUIET
                return
            if refused and probe and state[_MODE] == SIGNALS:
                # The probe after a reset found the quota still spent: the API's resets come
                # early (rounded down, or its clock is ahead of ours). Wait longer from now on.
                state[_SLACK] = min(MAX_SLACK, state[_SLACK] + SLACK_STEP)
            state[_MODE] = SIGNALS
            current = state[_REMAINING]
            stale = ticket.seq < state[_MARK]
            if stale and (current == UNKNOWN or signal.remaining > current):
                return  # counted before the figure we hold (or before the reset) was heard
            state[_REMAINING] = signal.remaining
            state[_RESET] = now + (signal.reset if signal.reset is not None else DEFAULT_RESET) + state[_SLACK]
            state[_MARK] = state[_SEQ]

    def pause(self, seconds: float) -> None:
        """Hold back every process of the job for `seconds` (a 429's or 503's Retry-After)."""
        until = self.clock() + max(0.0, seconds)
        with self.shared.lock:
            if until > self.shared.state[_PAUSE]:
                self.shared.state[_PAUSE] = until

    def paused_until(self) -> float:
        return self.shared.state[_PAUSE]
