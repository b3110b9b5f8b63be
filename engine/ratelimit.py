"""The job's one rate limiter, shared by every process of the job through shared memory.

APIs count requests in a sliding window, so a plain token bucket is not enough: it lets 2N
requests through in the first second. Each send reserves a time slot under one lock:

- the sliding log: the slot is at least `per` (+ a small margin for scheduling jitter)
  after the send `requests` slots earlier - so no window of `per` seconds ever holds more
  than `requests` sends;
- GCRA with `burst`: at most `burst` back to back, then one every `per / requests`;
- `pause_until`: a 429's Retry-After pauses every process of the job.

Slots are handed out in increasing order, so the ring's oldest entry is the send that is
`requests` sends back. A caller then sleeps until its slot (cancellably) and sends.
"""
from __future__ import annotations

import time
from typing import Callable

# Shared scalars, by index into `state`.
_HEAD, _TAT, _PAUSE, _LAST = 0, 1, 2, 3
NEVER = -1e18


def window_margin(per: float) -> float:
    """Slack added to every window: absorbs the jitter between a slot and the real send."""
    return min(0.015, per * 0.05)


class SharedLimiterState:
    """The shared-memory part; created by the coordinator, handed to pool processes at start."""

    def __init__(self, ctx, requests: int | None):
        self.ring = ctx.RawArray("d", max(requests or 1, 1))
        self.state = ctx.RawArray("d", 4)
        self.lock = ctx.Lock()
        for i in range(len(self.ring)):
            self.ring[i] = NEVER
        self.state[_HEAD] = 0
        self.state[_TAT] = NEVER
        self.state[_PAUSE] = NEVER
        self.state[_LAST] = NEVER

    def copy_into(self, other: "SharedLimiterState") -> None:
        """Carry the history over to fresh primitives (after a killed process, a lock may be lost)."""
        for i in range(min(len(self.ring), len(other.ring))):
            other.ring[i] = self.ring[i]
        for i in range(4):
            other.state[i] = self.state[i]


class RateLimiter:
    """Reserve-then-sleep limiter. `clock` is injectable for tests; it must be system-wide
    (time.monotonic is CLOCK_MONOTONIC on Linux, the same in every process)."""

    def __init__(self, shared: SharedLimiterState, requests: int | None, per: float = 1.0,
                 burst: int | None = None, clock: Callable[[], float] = time.monotonic):
        self.shared = shared
        self.requests = requests
        self.per = per
        self.burst = burst or requests
        self.interval = per / requests if requests else 0.0
        self.margin = window_margin(per)
        self.clock = clock

    @property
    def limited(self) -> bool:
        return self.requests is not None

    def reserve(self) -> float:
        """Take the next free slot and return its time (may be now or in the future)."""
        now = self.clock()
        state = self.shared.state
        if not self.limited:
            return max(now, state[_PAUSE])
        ring = self.shared.ring
        with self.shared.lock:
            head = int(state[_HEAD])
            slot = max(now, state[_PAUSE], state[_LAST],
                       ring[head] + self.per + self.margin,            # sliding window
                       state[_TAT] - (self.burst - 1) * self.interval)  # GCRA burst
            ring[head] = slot
            state[_HEAD] = (head + 1) % len(ring)
            state[_TAT] = max(state[_TAT], slot) + self.interval
            state[_LAST] = slot
        return slot

    def pause(self, seconds: float) -> None:
        """Hold back every process of the job for `seconds` (a 429's Retry-After)."""
        until = self.clock() + max(0.0, seconds)
        with self.shared.lock:
            if until > self.shared.state[_PAUSE]:
                self.shared.state[_PAUSE] = until

    def paused_until(self) -> float:
        return self.shared.state[_PAUSE]

    def acquire(self, wait: Callable[[float], bool]) -> bool:
        """Block until this caller may send. `wait(seconds)` sleeps and returns True when the job
        was cancelled meanwhile; then acquire returns False and nothing may be sent."""
        while True:
            slot = self.reserve()
            delay = slot - self.clock()
            if delay > 0 and wait(delay):
                return False
            # A 429 seen while we slept moves everyone behind the pause.
            if self.shared.state[_PAUSE] <= self.clock():
                return True
