"""The job's rate limiter with its state in Redis (`REDIS_URL`): one limiter for every process
of the job on any machine and, for a `rate_limit.budget`, for every job of every service
instance and CLI run pointed at the same Redis.

The rules are `engine.fetch.ratelimit`'s, written again in Lua step by step (the constants come
from there): one script per operation (take, answered, settle, pause), each atomic on the
server, so there is no lock to lose when a process dies. Times are the Redis server's clock
(`TIME`), so processes on different hosts agree; tests may pass their own `now`.
tests/integration/test_redis_limiter.py runs this limiter and the shared-memory one on the
same events and compares every decision.

Keys, under one prefix per job (`pageferry:limit:job:<job_id>`) or per budget
(`pageferry:limit:budget:<name>`), each expiring IDLE_TTL (plus `per`) after its last use:

- `<prefix>`: a hash of the state slots (`STATE_FIELDS` but `inflight`), plus `version`,
  `requests` and `per` (the limit the ring is laid out for: a budget's limit);
- `<prefix>:ring`, `<prefix>:seqs`: hashes slot -> latest possible arrival / send number (an
  absent slot was never used);
- `<prefix>:flight`: the sends not settled yet, a sorted set scored by when each is forgotten
  (twice the request timeout after it left): the sends of a killed process stop counting then;
- `<prefix>:users` (budgets): the jobs using the budget, scored by when their lease runs out;
  the job's coordinator renews its lease while it runs. Nobody there: the budget is idle.

Budgets follow engine/fetch/budget.py's rules: an idle budget takes the limit of the job that
opens it (the recent sends and a pending pause carried over); one in use is joined under its
limit when that is the same or stricter, and refused with `BudgetConflict` otherwise.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from engine.errors import JobFailed
from engine.fetch.budget import BudgetConflict, in_use_message, under_budget
from engine.fetch.ratelimit import (
    CATCH_UP,
    DEFAULT_RESET,
    FRESH_STATE,
    MARGIN,
    MAX_SLACK,
    NEVER,
    POLL,
    PROBE_WAIT,
    QUIET,
    SIGNALS,
    SLACK_STEP,
    START,
    STATE_FIELDS,
    UNKNOWN,
    Limiter,
    LimiterState,
    Signal,
    Ticket,
)
from engine.fetch.retry import MAX_RETRY_AFTER
from engine.spec.models import RateLimit

if TYPE_CHECKING:  # redis-py is imported when a job uses REDIS_URL: no start-up cost otherwise
    import redis

log = logging.getLogger("pageferry.engine")

KEY_PREFIX = "pageferry:limit:"
VERSION = "1"  # of the keys' layout: a budget in use under another one is not joined
IDLE_TTL = 3600.0  # seconds the keys outlive their last use (plus `per` and the longest pause)
LEASE = 30.0  # seconds a budget counts as used by a job whose coordinator stopped renewing
RENEW_EVERY = 5.0
TICKET_TTL_FACTOR = 2.0  # a send is forgotten this many request timeouts after it left...
TICKET_TTL_EXTRA = 5.0  # ...plus this many seconds
SOCKET_TIMEOUT = 2.0
# Mid-run, a lost connection is retried for a few seconds (~3 s of back-off) before the job fails.
RETRIES = 5

_FIELDS = [name for name in STATE_FIELDS if name != "inflight"]  # in flight: the `flight` set
_KEY_PARTS = ("state", "ring", "seqs", "flight", "users")  # the scripts' KEYS are in this order


def _lua_constants() -> str:
    fresh = [FRESH_STATE.get(STATE_FIELDS.index(name), 0.0) for name in _FIELDS]
    values = {
        "NEVER": NEVER,
        "UNKNOWN": UNKNOWN,
        "START": START,
        "QUIET": QUIET,
        "SIGNALS": SIGNALS,
        "MARGIN": MARGIN,
        "CATCH_UP": CATCH_UP,
        "POLL": POLL,
        "PROBE_WAIT": PROBE_WAIT,
        "DEFAULT_RESET": DEFAULT_RESET,
        "SLACK_STEP": SLACK_STEP,
        "MAX_SLACK": MAX_SLACK,
    }
    lines = [f"local {name} = {value!r}" for name, value in values.items()]
    lines.append(f"local VERSION = '{VERSION}'")
    lines.append("local FIELDS = {" + ", ".join(f"'{name}'" for name in _FIELDS) + "}")
    lines.append("local FRESH = {" + ", ".join(repr(value) for value in fresh) + "}")
    return "\n".join(lines) + "\n"


# Shared by every script. Numbers go to Redis as %.17g: Lua's own conversion keeps 14 digits.
_PRELUDE = r"""
local function fmt(x) return string.format('%.17g', x) end

local function clock(given)
  if given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function load(key)
  local raw = redis.call('HMGET', key, unpack(FIELDS))
  local s = {}
  for i, name in ipairs(FIELDS) do s[name] = tonumber(raw[i]) or FRESH[i] end
  return s
end

local function save(key, s)
  local args = {}
  for _, name in ipairs(FIELDS) do
    args[#args + 1] = name
    args[#args + 1] = fmt(s[name])
  end
  redis.call('HSET', key, unpack(args))
end

local function touch(ttl, ...)
  for _, key in ipairs({...}) do redis.call('PEXPIRE', key, ttl) end
end

-- RateLimiter._quota: (seconds to wait, whether the send is a probe).
local function quota(s, now, in_flight)
  local mode = s.mode
  if mode == QUIET then return 0, false end
  if s.remaining ~= UNKNOWN then
    if s.remaining - in_flight >= 1 then return 0, false end
    if in_flight > 0 and now < s.reset + PROBE_WAIT then return POLL, false end
    if in_flight == 0 and now < s.reset then return s.reset - now, false end
    s.remaining = UNKNOWN
    s.mark = s.seq
    s.probe = -1
  end
  if s.probe >= 0 then
    local waited = now - s.probe_at
    if waited < PROBE_WAIT then return math.min(POLL, PROBE_WAIT - waited), false end
    if mode == START then
      s.mode = QUIET
      return 0, false
    end
  end
  return 0, true
end

-- budget.allows
local function allows(held_requests, held_per, requests, per)
  local windows = math.max(1, math.ceil(per / held_per - 1e-9))
  return held_requests * windows <= requests
end
"""

# RateLimiter.try_take. KEYS: state, ring, seqs, flight. ARGV: requests (0: no rate_limit),
# per, burst, interval, cap, ticket ttl, idle ttl (ms), now ('': the server's clock).
_TAKE = r"""
local requests, per, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local interval, cap, ticket_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local now = clock(ARGV[8])
local s = load(KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', fmt(now))
local quota_wait, probe = quota(s, now, redis.call('ZCARD', KEYS[4]))
local allowed = s.pause
local head, floor
if requests > 0 then
  head = s.head
  -- the send `requests` back leaves the log now
  floor = math.max(s.floor, tonumber(redis.call('HGET', KEYS[2], fmt(head))) or NEVER)
  allowed = math.max(allowed, floor + per + MARGIN, s.tat - (burst - 1 + CATCH_UP) * interval)
end
local wait = math.max(allowed - now, quota_wait)
if wait > 0 then
  save(KEYS[1], s)
  touch(ARGV[7], KEYS[1])
  return {fmt(wait)}
end
local seq = s.seq
s.seq = seq + 1
redis.call('ZADD', KEYS[4], fmt(now + ticket_ttl), fmt(seq))
if probe then
  s.probe = seq
  s.probe_at = now
end
local slot = -1
if requests > 0 then
  slot = head
  s.floor = floor
  redis.call('HSET', KEYS[2], fmt(head), fmt(now + cap))
  redis.call('HSET', KEYS[3], fmt(head), fmt(seq))
  s.head = (head + 1) % requests
  s.tat = math.max(s.tat, now) + interval
end
save(KEYS[1], s)
touch(ARGV[7], KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return {'0', fmt(slot), fmt(seq)}
"""

# RateLimiter.answered. KEYS: ring, seqs. ARGV: slot, seq, now.
_ANSWERED = r"""
local now = clock(ARGV[3])
if tonumber(redis.call('HGET', KEYS[2], ARGV[1])) == tonumber(ARGV[2]) then
  if now < (tonumber(redis.call('HGET', KEYS[1], ARGV[1])) or NEVER) then
    redis.call('HSET', KEYS[1], ARGV[1], fmt(now))
  end
end
return 0
"""

# RateLimiter.settle. KEYS: state, flight. ARGV: seq, heard (1/0), remaining ('': no signal),
# reset ('': not said), refused (1/0), now, idle ttl (ms).
_SETTLE = r"""
local now = clock(ARGV[6])
local seq = tonumber(ARGV[1])
local s = load(KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local probe = s.probe == seq
if probe then s.probe = -1 end
local function done()
  save(KEYS[1], s)
  touch(ARGV[7], KEYS[1], KEYS[2])
  return 0
end
if ARGV[2] ~= '1' then return done() end
if ARGV[3] == '' then
  if s.mode == START then s.mode = QUIET end
  return done()
end
local remaining = tonumber(ARGV[3])
if ARGV[5] == '1' and probe and s.mode == SIGNALS then
  -- the probe after a reset found the quota still spent: the API's resets come early
  s.slack = math.min(MAX_SLACK, s.slack + SLACK_STEP)
end
s.mode = SIGNALS
local current = s.remaining
if seq < s.mark and (current == UNKNOWN or remaining > current) then return done() end
s.remaining = remaining
local reset = DEFAULT_RESET
if ARGV[4] ~= '' then reset = tonumber(ARGV[4]) end
s.reset = now + reset + s.slack
s.mark = s.seq
return done()
"""

# RateLimiter.pause. KEYS: state. ARGV: seconds, now, idle ttl (ms).
_PAUSE = r"""
local untl = clock(ARGV[2]) + math.max(0, tonumber(ARGV[1]))
if untl > (tonumber(redis.call('HGET', KEYS[1], 'pause')) or NEVER) then
  redis.call('HSET', KEYS[1], 'pause', fmt(untl))
  touch(ARGV[3], KEYS[1])
end
return 0
"""

# RateLimiter.paused_until, with the server's time to convert it. KEYS: state. ARGV: now.
_PAUSED = r"""
return {fmt(tonumber(redis.call('HGET', KEYS[1], 'pause')) or NEVER), fmt(clock(ARGV[1]))}
"""

# budget.open_budget. KEYS: state, ring, seqs, flight, users. ARGV: requests (0: no rate_limit),
# per, user ('': a job's own key, nobody else's: idle), lease, idle ttl (ms), now.
_OPEN = r"""
local requests, per, user = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local now = clock(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', fmt(now))
local idle = user == '' or redis.call('ZCARD', KEYS[5]) == 0
local meta = redis.call('HMGET', KEYS[1], 'version', 'requests', 'per', 'pause')
local held_requests, held_per = tonumber(meta[2]), tonumber(meta[3])
local usable = meta[1] == VERSION and held_requests ~= nil and held_per ~= nil
if idle then
  if usable and held_requests == requests and held_per == per then
    -- nobody has it open: the sends of killed processes will never be settled
    redis.call('DEL', KEYS[4])
    redis.call('HSET', KEYS[1], 'probe', '-1')
  else
    local carried = {}
    local paused = NEVER
    if usable then
      for _, value in ipairs(redis.call('HVALS', KEYS[2])) do carried[#carried + 1] = tonumber(value) end
      table.sort(carried)
      paused = tonumber(meta[4]) or NEVER
    end
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
    -- the newest sends, oldest first, in the slots a fresh limiter (head 0) reuses last
    local keep = math.min(#carried, requests)
    for i = 1, keep do
      redis.call('HSET', KEYS[2], fmt(requests - keep + i - 1), fmt(carried[#carried - keep + i]))
    end
    redis.call('HSET', KEYS[1], 'version', VERSION, 'requests', fmt(requests), 'per', fmt(per))
    if paused > now then redis.call('HSET', KEYS[1], 'pause', fmt(paused)) end
  end
  held_requests, held_per = requests, per
elseif not usable then
  return {'other-version'}
elseif not allows(held_requests, held_per, requests, per) then
  return {'conflict', fmt(held_requests), fmt(held_per)}
end
touch(ARGV[5], KEYS[1], KEYS[2], KEYS[3], KEYS[4])
if user ~= '' then
  redis.call('ZADD', KEYS[5], fmt(now + tonumber(ARGV[4])), user)
  touch(fmt(2000 * tonumber(ARGV[4])), KEYS[5])
end
return {'ok', fmt(held_requests), fmt(held_per)}
"""

# A budget user's lease, renewed. KEYS: users. ARGV: user, lease, now.
_LEASE = r"""
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], fmt(clock(ARGV[3]) + lease), ARGV[1])
touch(fmt(2000 * lease), KEYS[1])
return 0
"""

# SharedLimiterState.copy_into for a job's own key, after its pool was rebuilt. KEYS: state, flight.
_FORGET = r"""
redis.call('DEL', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'probe', '-1') end
return 0
"""

_SCRIPTS = {
    "take": _TAKE,
    "answered": _ANSWERED,
    "settle": _SETTLE,
    "pause": _PAUSE,
    "paused": _PAUSED,
    "open": _OPEN,
    "lease": _LEASE,
    "forget": _FORGET,
}
_SOURCES = {name: _lua_constants() + _PRELUDE + body for name, body in _SCRIPTS.items()}


class LimiterUnavailable(JobFailed):
    """Redis cannot be reached (or refuses the limiter's scripts): the job fails rather than
    send without its rate limit."""


def where(url: str) -> str:
    """`host:port` (or the socket's path) of a Redis URL: never its password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def _reason(exc: BaseException, url: str) -> str:
    """The error's text without the URL's credentials (fail closed: redis-py's texts do not carry
    them, but a future one might)."""
    text = str(exc).strip().rstrip(".") or type(exc).__name__
    parts = urlsplit(url)
    for secret in (parts.password, parts.username):
        if secret:
            text = text.replace(secret, "***").replace(unquote(secret), "***")
    return text[:200]


class RedisLimiterState(LimiterState):
    """The limiter's state in Redis under `key`. Pickles as its URL, key and limits: every
    process connects on first use (one client, and its connection pool, per process).
    `requests`/`per`: the limit the keys are laid out for (a budget's). `own`: the job's own key,
    nobody else's. The coordinator's copy holds the budget's lease (`join`) until `close`."""

    def __init__(self, url: str, key: str, requests: int | None, per: float, ticket_ttl: float, own: bool):
        self.url = url
        self.key = key
        self.requests = requests
        self.per = per
        self.ticket_ttl = ticket_ttl
        self.own = own
        self.idle_ms = str(int(1000 * (IDLE_TTL + per + MAX_RETRY_AFTER)))
        self._client: redis.Redis | None = None
        self._pid = 0
        self._scripts: dict[str, Any] = {}
        self._user: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __repr__(self) -> str:  # never the URL: it may hold a password
        return f"RedisLimiterState({self.key!r} at {where(self.url)})"

    def __getstate__(self) -> dict:
        return {
            "url": self.url,
            "key": self.key,
            "requests": self.requests,
            "per": self.per,
            "ticket_ttl": self.ticket_ttl,
            "own": self.own,
        }

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)  # type: ignore[misc]

    @property
    def keys(self) -> dict[str, str]:
        return {part: self.key if part == "state" else f"{self.key}:{part}" for part in _KEY_PARTS}

    def rate_limiter(self, requests: int | None, per: float = 1.0, burst: int | None = None) -> Limiter:
        return RedisRateLimiter(self, requests, per, burst)

    def renewed(self, ctx, requests: int | None) -> LimiterState:
        """The same keys; a job's own key forgets its sends in flight, like `copy_into`: the
        processes that sent them are gone. A budget keeps them: others may be sending, and a
        dead process's sends run out by themselves."""
        if self.own:
            keys = self.keys
            self.run("forget", [keys["state"], keys["flight"]], [])
        return self

    def client(self) -> redis.Redis:
        if self._client is None or self._pid != os.getpid():
            import redis
            from redis.backoff import ExponentialBackoff
            from redis.retry import Retry

            self._client = redis.Redis.from_url(
                self.url,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=SOCKET_TIMEOUT,
                retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), RETRIES),
            )
            self._pid = os.getpid()
            self._scripts = {}
        return self._client

    def run(self, name: str, keys: list[str], args: list[Any], starting: bool = False) -> Any:
        """Run script `name`. A connection lost is retried briefly (redis-py's Retry), then
        raises LimiterUnavailable, worded without the URL's password."""
        import redis

        try:
            script = self._scripts.get(name)
            if script is None:
                script = self._scripts[name] = self.client().register_script(_SOURCES[name])
            return script(keys=keys, args=args)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            reason = _reason(exc, self.url)
            if starting:
                raise LimiterUnavailable(f"REDIS_URL: cannot connect to {where(self.url)} ({reason})") from None
            raise LimiterUnavailable(
                f"REDIS_URL: lost the connection to {where(self.url)} ({reason}); the job stops rather "
                f"than send without its rate limit"
            ) from None
        except redis.RedisError as exc:
            raise LimiterUnavailable(
                f"REDIS_URL: {where(self.url)} refused the rate limiter ({_reason(exc, self.url)})"
            ) from None

    def join(self, user: str | None, name: str) -> tuple[int, float]:
        """Open the keys for a job whose limit is `self.requests`/`self.per` (`user`: its name in
        the budget's users; None: its own key). Returns the limit to send under."""
        keys = self.keys
        reply = self.run(
            "open",
            list(keys.values()),
            [self.requests or 0, repr(self.per), user or "", repr(LEASE), self.idle_ms, ""],
            starting=True,
        )
        verdict = reply[0].decode()
        if verdict == "other-version":
            raise BudgetConflict(
                f"rate-limit budget {name!r} is in use by another version of pageferry (in Redis at "
                f"{where(self.url)}); wait until its jobs have finished"
            )
        held = int(float(reply[1])), float(reply[2])
        if verdict == "conflict":
            raise BudgetConflict(in_use_message(name, *held, self.requests or 0, self.per))
        if user is not None:
            self.requests, self.per = held
            self._user = user
            self._renewer = threading.Thread(target=self._renew_lease, name=f"lease-{name}", daemon=True)
            self._renewer.start()
        return held

    def _renew_lease(self) -> None:
        while not self._stop.wait(RENEW_EVERY):
            try:
                self.run("lease", [self.keys["users"]], [self._user, repr(LEASE), ""])
            except LimiterUnavailable as exc:  # the job's processes fail on their own
                log.warning("rate-limit budget lease not renewed: %s", exc)

    def close(self) -> None:
        """Let go of the budget (this job no longer counts as using it)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(SOCKET_TIMEOUT * 2)
            self._renewer = None
        if self._user is not None:
            import redis

            try:
                self.client().zrem(self.keys["users"], self._user)
            except redis.RedisError as exc:  # its lease runs out by itself
                log.warning("REDIS_URL: could not leave the budget: %s", _reason(exc, self.url))
            self._user = None


class RedisRateLimiter(Limiter):
    """`RateLimiter` over a `RedisLimiterState`. `clock`: None for the Redis server's time (the
    same for every host); tests inject one to replay the shared-memory limiter's events."""

    def __init__(
        self,
        state: RedisLimiterState,
        requests: int | None,
        per: float = 1.0,
        burst: int | None = None,
        clock: Callable[[], float] | None = None,
    ):
        super().__init__(requests, per, burst)
        self.state = state
        self.clock = clock
        self._paused = NEVER  # the last pause read: shown while Redis does not answer
        keys = state.keys
        self._take_keys = [keys["state"], keys["ring"], keys["seqs"], keys["flight"]]
        self._ring_keys = [keys["ring"], keys["seqs"]]
        self._settle_keys = [keys["state"], keys["flight"]]
        self._take_args = [
            self.requests or 0,
            repr(float(per)),
            self.burst or 0,
            repr(self.interval),
            repr(self.cap),
            repr(float(state.ticket_ttl)),
            state.idle_ms,
        ]

    def _now(self) -> str:
        return "" if self.clock is None else repr(float(self.clock()))

    def try_take(self) -> tuple[float, Ticket | None]:
        reply = self.state.run("take", self._take_keys, [*self._take_args, self._now()])
        wait = float(reply[0])
        if wait > 0:
            return wait, None
        return 0.0, Ticket(int(reply[1]), int(reply[2]))

    def answered(self, ticket: Ticket | None) -> None:
        if ticket is None or ticket.slot < 0:
            return
        self.state.run("answered", self._ring_keys, [ticket.slot, ticket.seq, self._now()])

    def settle(
        self, ticket: Ticket | None, signal: Signal | None = None, heard: bool = False, refused: bool = False
    ) -> None:
        if ticket is None:
            return
        remaining = "" if signal is None else str(signal.remaining)
        reset = "" if signal is None or signal.reset is None else repr(float(signal.reset))
        args = [ticket.seq, int(heard), remaining, reset, int(refused), self._now(), self.state.idle_ms]
        self.state.run("settle", self._settle_keys, args)

    def pause(self, seconds: float) -> None:
        self.state.run("pause", [self._settle_keys[0]], [repr(float(seconds)), self._now(), self.state.idle_ms])

    def paused_until(self) -> float:
        """On this process's time.monotonic() (the injected clock's time, with one)."""
        try:
            reply = self.state.run("paused", [self._settle_keys[0]], [self._now()])
        except LimiterUnavailable:
            return self._paused
        until, server_now = float(reply[0]), float(reply[1])
        if self.clock is None and until > NEVER:
            until = time.monotonic() + (until - server_now)
        self._paused = until
        return until


def open_in_redis(
    url: str, job_id: str, rate_limit: RateLimit | None, timeout: float
) -> tuple[RedisLimiterState, RateLimit | None]:
    """The Redis state of a job's limiter: its budget's, when its `rate_limit` names one, else
    its own. Returns it with the `rate_limit` the job must send under (a budget's may be
    stricter). `timeout`: the spec's request timeout (a send is forgotten twice that later).
    Raises LimiterUnavailable when Redis cannot be reached, BudgetConflict like open_for_job."""
    budget = rate_limit.budget if rate_limit is not None else None
    key = KEY_PREFIX + (f"budget:{budget}" if budget else f"job:{job_id}")
    state = RedisLimiterState(
        url,
        key,
        rate_limit.requests if rate_limit is not None else None,
        rate_limit.per if rate_limit is not None else 1.0,
        TICKET_TTL_FACTOR * timeout + TICKET_TTL_EXTRA,
        own=budget is None,
    )
    user = f"{job_id}:{uuid.uuid4().hex[:8]}" if budget else None
    requests, per = state.join(user, budget or job_id)
    if rate_limit is None or budget is None:
        return state, rate_limit
    return state, under_budget(rate_limit, requests, per)
