"""The rate limiter in Redis (engine/fetch/redis_limiter.py) against a real redis-server: on
the same events as the shared-memory limiter it takes the same decisions (its Lua mirrors the
Python), so it keeps the same promises on simulated APIs; budgets join, conflict and pause as
the file budgets do; a dead process's sends stop counting; a lost Redis fails loudly, never
with the password."""

from __future__ import annotations

import multiprocessing
import pickle
import shutil
import time
import uuid

import pytest
import redis

from engine.fetch.budget import BudgetConflict
from engine.fetch.ratelimit import RateLimiter, SharedLimiterState, Signal, Ticket
from engine.fetch.redis_limiter import (
    LimiterUnavailable,
    RedisLimiterState,
    RedisRateLimiter,
    open_in_redis,
)
from engine.run.messages import SharedState
from engine.spec.models import RateLimit
from tests.support.net import free_port
from tests.support.redis_server import PASSWORD, RedisServer
from tests.unit.test_ratelimit import Clock, QuotaApi, max_in_window, simulate, simulate_api

CTX = multiprocessing.get_context("fork")


def job_state(url: str, requests: int | None, per: float = 1.0, timeout: float = 30.0) -> RedisLimiterState:
    """A job's own limiter state under a fresh key."""
    limit = RateLimit(requests=requests, per=per) if requests else None
    state, _ = open_in_redis(url, f"test_{uuid.uuid4().hex[:8]}", limit, timeout)
    return state


class Budgets:
    """open_in_redis for one budget (a fresh name per test); `close_all` ends every job of it."""

    def __init__(self, url: str):
        self.url = url
        self.name = f"b{uuid.uuid4().hex[:8]}"
        self.opened: list[RedisLimiterState] = []

    def __call__(
        self, requests: int, per: float = 1.0, burst: int | None = None
    ) -> tuple[RedisLimiterState, RateLimit]:
        limit = RateLimit(requests=requests, per=per, burst=burst, budget=self.name)
        state, under = open_in_redis(self.url, f"job{len(self.opened)}", limit, 30.0)
        self.opened.append(state)
        assert under is not None
        return state, under

    def close_all(self) -> None:
        for state in self.opened:
            state.close()


@pytest.fixture
def budgets(redis_url):
    opened = Budgets(redis_url)
    yield opened
    opened.close_all()


class Twin:
    """The shared-memory limiter and the Redis one, driven by the same calls on the same clock:
    every decision (wait, ticket, pause) must be the same."""

    def __init__(self, url: str, requests: int | None, per: float, burst: int | None, clock: Clock):
        self.memory = RateLimiter(SharedLimiterState(CTX, requests), requests, per, burst, clock)
        self.redis = RedisRateLimiter(job_state(url, requests, per), requests, per, burst, clock)
        self.calls = 0

    def try_take(self):
        expected, got = self.memory.try_take(), self.redis.try_take()
        self.calls += 1
        assert got == expected, f"call {self.calls}: memory {expected}, redis {got}"
        assert self.redis.paused_until() == self.memory.paused_until()
        return expected

    def answered(self, ticket):
        self.memory.answered(ticket)
        self.redis.answered(ticket)

    def settle(self, ticket, signal=None, heard=False, refused=False):
        self.memory.settle(ticket, signal, heard, refused)
        self.redis.settle(ticket, signal, heard, refused)

    def pause(self, seconds):
        self.memory.pause(seconds)
        self.redis.pause(seconds)


@pytest.mark.parametrize(
    "requests,per,burst,callers,answer", [(10, 1.0, None, 4, True), (5, 2.0, None, 3, True), (20, 1.0, 1, 8, True)]
)
def test_the_same_decisions_as_shared_memory_on_a_sliding_window(redis_url, requests, per, burst, callers, answer):
    clock = Clock()
    twin = Twin(redis_url, requests, per, burst, clock)
    sent, arrived = simulate(twin, clock, callers, 8 * requests, lambda r: r.random() * 0.1 * per, answer=answer)
    assert twin.calls > len(sent)  # some callers had to wait: the waits were compared too
    assert max_in_window(arrived, per) <= requests and max_in_window(sent, per) <= requests


def test_the_same_decisions_with_unanswered_sends_and_a_pause(redis_url):
    clock = Clock()
    twin = Twin(redis_url, 10, 1.0, None, clock)
    simulate(twin, clock, 10, 20, lambda r: 5.0, answer=False)
    twin.pause(2.5)
    clock.now += 0.5
    assert twin.try_take() == (pytest.approx(2.0), None)


@pytest.mark.parametrize("kind,reset", [("fixed", "delta"), ("sliding", "ceil"), ("sliding", "floor")])
def test_the_same_decisions_on_an_api_announcing_its_quota(redis_url, kind, reset):
    """No `rate_limit`: the API's signals alone (probe, in-flight counting, reset, slack)."""
    clock = Clock()
    twin = Twin(redis_url, None, 1.0, None, clock)
    api = QuotaApi(20, 2.0, kind, reset)
    arrived = simulate_api(twin, clock, api, 8, 120, lambda r: 0.02 * (0.5 + r.random()))
    assert api.rejected == (1 if reset == "floor" else 0)
    if kind == "sliding":
        assert max_in_window(arrived, 2.0) <= 20 + api.rejected
    assert (len(arrived) - 20) / (arrived[-1] - arrived[0]) >= 0.7 * 10


def test_the_servers_clock_is_used_without_an_injected_one(redis_url):
    state = job_state(redis_url, 3, 1.0)
    lim = state.rate_limiter(3, 1.0)
    for _ in range(3):
        delay, ticket = lim.try_take()
        assert delay == 0.0 and ticket is not None
        lim.answered(ticket)
        lim.settle(ticket, None, heard=True)
    delay, ticket = lim.try_take()
    assert ticket is None and 0.9 < delay <= 1.0 + 0.01
    lim.pause(5.0)
    assert lim.paused_until() - time.monotonic() == pytest.approx(5.0, abs=0.2)  # on this process's clock


def test_a_looser_job_joins_under_the_budget_and_a_stricter_one_is_refused_until_idle(budgets):
    running, limit = budgets(10, 1.0)
    assert (running.requests, running.per, limit.requests) == (10, 1.0, 10)
    _, joined = budgets(30, 1.0, burst=15)  # stricter budget: the job sends under it
    assert (joined.requests, joined.per, joined.burst, joined.budget) == (10, 1.0, 10, budgets.name)
    lim = RedisRateLimiter(running, 10, 1.0)
    for _ in range(6):
        _, ticket = lim.try_take()
        lim.answered(ticket)
        lim.settle(ticket, None, heard=True)
    with pytest.raises(BudgetConflict, match=f"budget '{budgets.name}' is in use by other jobs at 10 requests per 1 s"):
        budgets(5, 1.0)
    budgets.close_all()  # every job of the budget ends
    state, limit = budgets(5, 1.0)  # idle: the stricter limit is the budget's now...
    assert (state.requests, limit.requests) == (5, 5)
    delay, ticket = RedisRateLimiter(state, 5, 1.0).try_take()
    assert ticket is None and delay > 0.5  # ...and the 6 sends of the last second still count


def test_a_pause_holds_back_every_job_of_the_budget(budgets):
    clock = Clock()
    first = RedisRateLimiter(budgets(10)[0], 10, 1.0, clock=clock)
    second = RedisRateLimiter(budgets(10)[0], 10, 1.0, clock=clock)
    _, ticket = second.try_take()
    second.settle(ticket, None, heard=True)
    first.pause(2.0)  # a 429 with Retry-After: 2 for the first job
    delay, ticket = second.try_take()
    assert ticket is None and delay == pytest.approx(2.0)
    clock.now += 2.0
    assert second.try_take()[1] is not None


def test_a_budget_whose_jobs_stopped_renewing_their_lease_is_idle(budgets, redis_url):
    state, _ = budgets(10)
    state._stop.set()  # the coordinator died: nobody renews its lease
    client = redis.Redis.from_url(redis_url)
    client.zadd(state.keys["users"], {state._user: 0})  # ...which has run out
    fresh, limit = budgets(4)  # idle: it takes this job's stricter limit
    assert limit.requests == 4 and fresh.requests == 4


def test_sends_of_a_dead_process_stop_counting_after_the_ticket_ttl(redis_url):
    clock = Clock()
    state = job_state(redis_url, None, timeout=10.0)
    lim = RedisRateLimiter(state, None, clock=clock)
    lim.settle(lim.try_take()[1], Signal(3, 600.0), heard=True)  # 3 left of the API's quota
    assert all(lim.try_take()[1] for _ in range(3))  # sent by a process that is then killed
    assert lim.try_take()[1] is None  # they may still count against the quota
    clock.now += state.ticket_ttl + 0.1
    assert lim.try_take()[1] is not None  # forgotten: the API's figure is believed again


def test_a_renewed_job_state_forgets_its_sends_in_flight_and_a_budget_keeps_them(redis_url, budgets):
    clock = Clock()
    state = job_state(redis_url, None)
    lim = RedisRateLimiter(state, None, clock=clock)
    lim.settle(lim.try_take()[1], Signal(3, 600.0), heard=True)
    assert all(lim.try_take()[1] for _ in range(3)) and lim.try_take()[1] is None
    shared = SharedState.create(CTX, None, 2, 1, {}, state)
    renewed = shared.renew(CTX, None, 2)
    assert renewed.limiter is state
    assert sum(lim.try_take()[1] is not None for _ in range(5)) == 3  # the pool's processes are gone
    budget, _ = budgets(10)
    shared = SharedState.create(CTX, 10, 2, 1, {}, budget)
    assert shared.renew(CTX, 10, 2).limiter is budget


def test_the_state_pickles_small_and_shows_no_password(redis_url):
    state = job_state(redis_url, 5)
    assert PASSWORD not in repr(state) and "127.0.0.1" in repr(state)
    assert PASSWORD not in repr(SharedState.create(CTX, 5, 2, 1, {}, state))
    assert len(pickle.dumps(state)) < 400  # the URL, the key and the limits: no client, no lease
    copy = pickle.loads(pickle.dumps(state))
    assert (copy.key, copy._client, copy._user) == (state.key, None, None)  # connects on first use
    lim = copy.rate_limiter(5, 1.0)
    assert lim.try_take()[1] == Ticket(0, 0)
    copy.close()  # a process's copy: holds no lease, lets go of nothing


def test_redis_down_at_start_is_a_clear_failure_without_the_password():
    port = free_port()
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    with pytest.raises(LimiterUnavailable) as failed:
        open_in_redis(url, "job", RateLimit(requests=5, per=1.0, budget="crm"), 30.0)
    assert failed.value.message.startswith(f"REDIS_URL: cannot connect to 127.0.0.1:{port}")
    assert PASSWORD not in failed.value.message


def test_redis_lost_mid_run_fails_loudly_after_a_brief_retry(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        lim = job_state(server.url, 5).rate_limiter(5, 1.0)
        assert lim.try_take()[1] is not None
    finally:
        server.stop()
    started = time.monotonic()
    with pytest.raises(LimiterUnavailable, match=f"lost the connection to 127.0.0.1:{server.port}") as failed:
        lim.try_take()
    assert 1.0 < time.monotonic() - started < 20  # retried for a moment, then gave up
    assert PASSWORD not in failed.value.message
    shutil.rmtree(tmp_path / "redis", ignore_errors=True)


def test_overhead_per_send(redis_url):
    """µs per send (take + answered + settle), one process: shared memory vs Redis."""
    figures = {}
    for name, lim in (
        ("shared memory", RateLimiter(SharedLimiterState(CTX, 100_000), 100_000, 1.0)),
        ("redis", RedisRateLimiter(job_state(redis_url, 100_000, 1.0), 100_000, 1.0)),
    ):
        lim.settle(lim.try_take()[1], None, heard=True)  # an API without quota headers
        sends = 0
        started = time.perf_counter()
        while sends < 2000:
            delay, ticket = lim.try_take()
            if ticket is None:
                continue
            lim.answered(ticket)
            lim.settle(ticket, None, heard=True)
            sends += 1
        figures[name] = (time.perf_counter() - started) / sends * 1e6
    print(f"\nµs per take+answered+settle: {figures}")
    assert figures["redis"] < 3000
