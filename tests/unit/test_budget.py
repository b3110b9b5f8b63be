"""Rate-limit budgets (engine/fetch/budget.py): the limiter's state in a file that every job
naming the budget opens - one window, one pause, one lock across unrelated processes."""

from __future__ import annotations

import bisect
import heapq
import multiprocessing
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.errors import JobFailed
from engine.fetch import ratelimit
from engine.fetch.budget import (
    HEADER_SIZE,
    BudgetConflict,
    BudgetLimiterState,
    FileLock,
    allows,
    budget_files,
    open_budget,
    open_for_job,
)
from engine.fetch.ratelimit import NEVER, RateLimiter, SharedLimiterState
from engine.run.messages import SharedState
from engine.spec.models import RateLimit

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def take(lim: RateLimiter) -> ratelimit.Ticket:
    """One send that must be allowed now, answered and settled at once (an API without quota
    headers)."""
    delay, ticket = lim.try_take()
    assert delay == 0.0 and ticket is not None
    lim.answered(ticket)
    lim.settle(ticket, None, heard=True)
    return ticket


def max_in_window(times: list[float], per: float) -> int:
    return max(bisect.bisect_left(times, t + per) - i for i, t in enumerate(times))


@pytest.fixture
def opened():
    """open_budget, closing every state the test opened at its end."""
    states: list[BudgetLimiterState] = []

    def open_(folder: Path, name: str, requests: int, per: float = 1.0) -> BudgetLimiterState:
        state = open_budget(folder, name, requests, per)
        states.append(state)
        return state

    yield open_
    for state in states:
        state.close()


def test_two_jobs_share_one_sliding_window(tmp_path, opened):
    """Callers of two jobs (two opens, two limiters) with random latencies: together they never
    put more than `requests` in a window, and together they nearly reach it."""
    clock = Clock()
    jobs = [RateLimiter(opened(tmp_path, "api", 20), 20, 1.0, clock=clock) for _ in range(2)]
    rng = random.Random(3)
    events = [(clock.now, i) for i in range(8)]  # callers 0-3: job 0, callers 4-7: job 1
    heapq.heapify(events)
    sent: list[list[float]] = [[], []]
    while sum(map(len, sent)) < 400:
        t, caller = heapq.heappop(events)
        clock.now = t
        lim = jobs[caller // 4]
        delay, ticket = lim.try_take()
        if delay > 0:
            heapq.heappush(events, (t + delay, caller))
            continue
        took = rng.uniform(0.001, 0.05)
        sent[caller // 4].append(t)
        clock.now = t + took
        lim.answered(ticket)
        lim.settle(ticket, None, heard=True)
        heapq.heappush(events, (t + took, caller))
    both = sorted(sent[0] + sent[1])
    assert min(len(sent[0]), len(sent[1])) > 150  # both jobs sent all along
    assert max_in_window(both, 1.0) == 20
    assert (len(both) - 20) / (both[-1] - both[0]) >= 0.9 * 20


def test_a_pause_holds_back_every_job_of_the_budget(tmp_path, opened):
    clock = Clock()
    first = RateLimiter(opened(tmp_path, "api", 10), 10, 1.0, clock=clock)
    second = RateLimiter(opened(tmp_path, "api", 10), 10, 1.0, clock=clock)
    take(second)
    first.pause(2.0)  # a 429 with Retry-After: 2 for the first job
    delay, ticket = second.try_take()
    assert ticket is None and delay == pytest.approx(2.0)
    clock.now += 2.0
    take(second)


def test_the_file_holds_the_limiter_as_the_job_would_have_it(tmp_path, opened):
    state = opened(tmp_path, "api", 7, 2.0)
    blank = SharedLimiterState(multiprocessing.get_context(), 7)
    assert len(state.state) == ratelimit.STATE_SLOTS
    assert list(state.state) == list(blank.state)
    assert list(state.ring) == [NEVER] * 7 and list(state.seqs) == [-1] * 7
    path, users = budget_files(tmp_path, "api")
    assert path.stat().st_size == HEADER_SIZE + 16 * 7 + 8 * ratelimit.STATE_SLOTS and users.exists()
    assert (state.requests, state.per) == (7, 2.0)


def _take_in_child(state: BudgetLimiterState, results) -> None:
    lim = RateLimiter(state, state.requests, state.per)
    delay, ticket = lim.try_take()
    results.put((delay, tuple(ticket) if ticket else None, os.getpid()))


def test_a_state_pickles_as_its_path_and_another_process_maps_the_same_file(tmp_path, opened):
    state = opened(tmp_path, "api", 5)
    assert len(pickle.dumps(state)) < 300  # the path and the limit, not the arrays
    ctx = multiprocessing.get_context("spawn")  # nothing inherited: only the pickle crosses
    results = ctx.Queue()
    child = ctx.Process(target=_take_in_child, args=(state, results))
    child.start()
    delay, ticket, pid = results.get(timeout=30)
    child.join(10)
    assert pid != os.getpid() and delay == 0.0
    slot, seq = ticket
    assert state.seqs[slot] == seq and state.ring[slot] > NEVER  # its send is in our window


def test_lock_excludes_another_process_and_is_released_when_its_holder_is_killed(tmp_path):
    path = tmp_path / "api.limiter"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from engine.fetch.budget import FileLock\n"
            f"lock = FileLock({str(path)!r}); lock.acquire(); print('held', flush=True); time.sleep(60)",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        lock = FileLock(path)
        assert lock.acquire(timeout=0.2) is False
        holder.send_signal(signal.SIGKILL)  # dies holding it
        holder.wait(10)
        started = time.monotonic()
        assert lock.acquire(timeout=5) is True
        assert time.monotonic() - started < 1.0
        lock.release()
        lock.close()
    finally:
        holder.kill()
        holder.wait(10)


def test_lock_excludes_the_other_threads_of_its_process(tmp_path):
    lock = FileLock(tmp_path / "api.limiter")
    clone = pickle.loads(pickle.dumps(lock))  # the same file opened anew
    held, done = threading.Event(), threading.Event()

    def hold():
        with lock:
            held.set()
            done.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)
    assert lock.acquire(timeout=0.1) is False  # same object, another thread
    assert clone.acquire(block=False) is False  # another open file of this process
    done.set()
    thread.join(5)
    with clone:
        pass
    assert lock.acquire(block=False) is True
    lock.release()
    lock.close()
    clone.close()


def test_a_looser_job_joins_under_the_budgets_limit(tmp_path, opened):
    running = opened(tmp_path, "api", 10, 1.0)
    joined = opened(tmp_path, "api", 25, 2.0)  # 10 per second lets at most 20 through in 2 s
    assert (joined.requests, joined.per) == (10, 1.0)
    state, limit = open_for_job(RateLimit(requests=30, per=1.0, burst=15, budget="api"), tmp_path)
    try:
        assert (limit.requests, limit.per, limit.burst, limit.budget) == (10, 1.0, 10, "api")
        same = RateLimit(requests=10, per=1.0, budget="api")
        other, unchanged = open_for_job(same, tmp_path)
        assert unchanged is same
        other.close()
    finally:
        state.close()
    assert running.requests == 10


def test_a_stricter_job_is_refused_while_the_budget_is_in_use_and_rewrites_it_once_idle(tmp_path, opened):
    running = opened(tmp_path, "api", 10, 1.0)
    lim = RateLimiter(running, 10, 1.0)
    for _ in range(6):
        take(lim)
    with pytest.raises(BudgetConflict, match="budget 'api' is in use by other jobs at 10 requests per 1 s") as err:
        opened(tmp_path, "api", 5, 1.0)
    assert isinstance(err.value, JobFailed)  # the job fails with that message
    running.close()
    # Idle now: the stricter limit replaces the budget's; the 6 sends of the last second are kept.
    state = opened(tmp_path, "api", 5, 1.0)
    assert (state.requests, len(state.ring)) == (5, 5)
    assert sum(1 for value in state.ring if value > NEVER) == 5
    delay, ticket = RateLimiter(state, 5, 1.0).try_take()
    assert ticket is None and delay > 0.5  # 5 went out within the window already


def test_allows_compares_any_window_of_the_jobs_per():
    assert allows(10, 1.0, 10, 1.0)
    assert allows(10, 1.0, 20, 2.0)  # two windows of a second
    assert allows(10, 2.0, 10, 1.0)
    assert not allows(10, 1.0, 15, 2.0)
    assert not allows(10, 1.0, 10, 1.5)  # 1.5 s can hold two of the budget's windows
    assert not allows(11, 1.0, 10, 1.0)


def test_closing_a_state_lets_go_of_the_budget(tmp_path, opened):
    state = open_budget(tmp_path, "api", 10, 1.0)
    state.close()
    assert opened(tmp_path, "api", 3, 1.0).requests == 3  # nobody uses it: rewritten


def _rewrite_header(path: Path, offset: int, fmt: str, *values) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


def test_a_file_of_another_layout_is_recreated_when_idle_and_refused_in_use(tmp_path, opened):
    path, _ = budget_files(tmp_path, "api")
    path.write_bytes(b"PFBUDGET" + b"\x07" * 200)  # an older version's file, say
    state = opened(tmp_path, "api", 4, 1.0)
    assert list(state.ring) == [NEVER] * 4 and len(state.state) == ratelimit.STATE_SLOTS
    _rewrite_header(path, 12, "<I", ratelimit.STATE_SLOTS + 3)  # now it looks like another layout
    with pytest.raises(BudgetConflict, match="another version of pageferry"):
        opened(tmp_path, "api", 4, 1.0)


def test_a_file_from_before_a_reboot_starts_afresh(tmp_path, opened):
    path, _ = budget_files(tmp_path, "api")
    state = open_budget(tmp_path, "api", 4, 1.0)
    take(RateLimiter(state, 4, 1.0))
    state.close()
    _rewrite_header(path, 32, "16s", b"another-boot-id!")  # times of another boot mean nothing
    state = opened(tmp_path, "api", 4, 1.0)
    assert list(state.ring) == [NEVER] * 4


def test_opening_an_idle_budget_forgets_sends_that_can_never_settle(tmp_path, opened):
    state = open_budget(tmp_path, "api", 4, 1.0)
    delay, ticket = RateLimiter(state, 4, 1.0).try_take()  # its process is killed mid-request
    assert delay == 0 and state.state[ratelimit._INFLIGHT] == 1
    state.close()
    again = opened(tmp_path, "api", 4, 1.0)
    assert again.state[ratelimit._INFLIGHT] == 0
    assert sum(1 for value in again.ring if value > NEVER) == 1  # the send itself still counts


def test_renewed_shared_state_keeps_the_budget_and_close_lets_go(tmp_path):
    ctx = multiprocessing.get_context("fork")
    budget = open_budget(tmp_path, "api", 4, 1.0)
    shared = SharedState.create(ctx, 4, 2, 1, {}, budget)
    renewed = shared.renew(ctx, 4, 2)
    assert renewed.limiter is budget and renewed.semaphore is not shared.semaphore
    own = SharedState.create(ctx, 4, 2, 1, {})
    take(RateLimiter(own.limiter, 4, 1.0))
    fresh = own.renew(ctx, 4, 2)
    assert fresh.limiter is not own.limiter and list(fresh.limiter.ring) == list(own.limiter.ring)
    renewed.close()
    state = open_budget(tmp_path, "api", 2, 1.0)  # idle: a new limit is taken
    assert state.requests == 2
    state.close()
