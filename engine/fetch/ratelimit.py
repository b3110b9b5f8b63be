"""The job's one rate limiter, shared by every process of the job through shared memory.

APIs count requests in a sliding window as they *arrive*, so a plain token bucket is not
enough (it lets 2N requests through in the first second), and neither is logging our own
send times: on a busy machine a request can reach the server tens of milliseconds after we
decided to send it (GIL, scheduling), while the next one goes straight through. So the
limiter reasons about the latest moment each request can have arrived:

- when a request is let go, its log entry is `now + cap` (cap = 10 % of `per`, at most 1 s);
  when its response headers come back the entry drops to that moment - the server had seen
  the request by then;
- a new request may go once `per` has passed since the latest possible arrival of every
  request `requests` sends back or earlier (a running maximum, so arrivals that overtake
  each other are covered too);
- GCRA with `burst`: at most `burst` back to back, then one every `per / requests` (with a
  quarter interval of slack, so one late wake-up doesn't delay every later send);
- `pause_until`: a 429's Retry-After pauses every process of the job.

For a fast API this costs the response time once per window; it never lets more than
`requests` arrive within `per` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

# Shared scalars, by index into `state`.
_HEAD, _TAT, _PAUSE, _FLOOR, _SEQ = 0, 1, 2, 3, 4
NEVER = -1e18
MARGIN = 0.002  # clock read-out granularity between processes
CATCH_UP = 0.25  # of an interval: a send that woke late does not slow every later one


def arrival_cap(per: float) -> float:
    """The longest a request is assumed to take to reach the server, until it is answered."""
    return min(0.1 * per, 1.0)


class SharedLimiterState:
    """The shared-memory part; created by the coordinator, handed to pool processes at start."""

    def __init__(self, ctx, requests: int | None):
        size = max(requests or 1, 1)
        self.ring = ctx.RawArray("d", size)  # latest possible arrival of each of the last sends
        self.seqs = ctx.RawArray("q", size)  # which send each ring entry belongs to
        self.state = ctx.RawArray("d", 5)
        self.lock = ctx.Lock()
        for i in range(size):
            self.ring[i] = NEVER
            self.seqs[i] = -1
        self.state[_HEAD] = 0
        self.state[_TAT] = NEVER
        self.state[_PAUSE] = NEVER
        self.state[_FLOOR] = NEVER
        self.state[_SEQ] = 0

    def copy_into(self, other: SharedLimiterState) -> None:
        """Carry the history over to fresh primitives (after a killed process, a lock may be lost)."""
        for i in range(min(len(self.ring), len(other.ring))):
            other.ring[i] = self.ring[i]
            other.seqs[i] = self.seqs[i]
        for i in range(len(self.state)):
            other.state[i] = self.state[i]


class RateLimiter:
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
        self.shared = shared
        self.requests = requests
        self.per = per
        self.burst = burst or requests
        self.interval = per / requests if requests else 0.0
        self.cap = arrival_cap(per)
        self.clock = clock

    @property
    def limited(self) -> bool:
        return self.requests is not None

    def try_take(self) -> tuple[float, tuple[int, int] | None]:
        """Let one request go now if the limits allow: returns (0.0, ticket). Otherwise returns
        (seconds to wait before asking again, None)."""
        now = self.clock()
        state = self.shared.state
        if not self.limited:
            return max(0.0, state[_PAUSE] - now), None
        burst = self.burst
        assert burst is not None  # limited: `burst` defaults to `requests`
        ring, seqs = self.shared.ring, self.shared.seqs
        with self.shared.lock:
            head = int(state[_HEAD])
            floor = max(state[_FLOOR], ring[head])  # the send `requests` back leaves the log now
            allowed = max(
                state[_PAUSE],
                floor + self.per + MARGIN,  # sliding window
                state[_TAT] - (burst - 1 + CATCH_UP) * self.interval,
            )  # GCRA burst
            if now < allowed:
                return allowed - now, None
            seq = int(state[_SEQ])
            state[_FLOOR] = floor
            ring[head] = now + self.cap
            seqs[head] = seq
            state[_SEQ] = seq + 1
            state[_HEAD] = (head + 1) % len(ring)
            state[_TAT] = max(state[_TAT], now) + self.interval
        return 0.0, (head, seq)

    def answered(self, ticket: tuple[int, int] | None) -> None:
        """The response to `ticket`'s request has begun: the server saw it by now."""
        if ticket is None:
            return
        slot, seq = ticket
        now = self.clock()
        with self.shared.lock:
            if self.shared.seqs[slot] == seq and now < self.shared.ring[slot]:
                self.shared.ring[slot] = now

    def pause(self, seconds: float) -> None:
        """Hold back every process of the job for `seconds` (a 429's Retry-After)."""
        until = self.clock() + max(0.0, seconds)
        with self.shared.lock:
            if until > self.shared.state[_PAUSE]:
                self.shared.state[_PAUSE] = until

    def paused_until(self) -> float:
        return self.shared.state[_PAUSE]

    def acquire(self, wait: Callable[[float], bool]) -> tuple[bool, tuple[int, int] | None]:
        """Block until this caller may send. `wait(seconds)` sleeps and returns True when the job
        was cancelled meanwhile. Returns (may_send, ticket for `answered`)."""
        while True:
            delay, ticket = self.try_take()
            if delay <= 0:
                return True, ticket
            if wait(delay):
                return False, None

    async def acquire_async(self, wait: Callable[[float], Awaitable[bool]]) -> tuple[bool, tuple[int, int] | None]:
        """`acquire` on an event loop: `wait(seconds)` is awaited."""
        while True:
            delay, ticket = self.try_take()
            if delay <= 0:
                return True, ticket
            if await wait(delay):
                return False, None
