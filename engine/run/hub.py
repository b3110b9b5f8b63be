"""A job's shared state for pieces that run on other machines (a Dask cluster's workers).

A local pool shares its primitives by inheritance (shared memory, semaphores); a Dask worker
is a process somebody else started, maybe on another host. So the coordinator's Manager listens
on TCP (random authkey per Engine) and hosts one `JobHub` per job: the rate limiter (one call
per take / answer / settle - not one per shared-array item), the concurrency slots, the cancel
flag, each unit's known last page, the OAuth2 token lock; the progress board stays the
Manager's dict. `HubLink` (small, picklable) travels with every task; `remote_state` turns it
into the `SharedState` the worker code expects, backed by proxies.

The hub also keeps an *epoch*. A worker that dies mid-piece may have written some of the
piece's shards; Dask then re-runs the task elsewhere. The re-run is refused (`claim`: a piece
runs once per epoch) and the coordinator handles the loss like a killed pool process: it stops
the epoch, waits until every task of it has returned, re-reads the ledger of finished shards
and re-plans the missing pages in a new epoch - so no page is fetched into two shards.

This module is imported by the Manager's server process: it imports nothing heavy.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing import managers
from multiprocessing.managers import BaseProxy, DictProxy, SyncManager, Token
from typing import Any

from engine.fetch.ratelimit import Limiter, LimiterState, SharedLimiterState, Signal, Ticket
from engine.run.messages import UNKNOWN_END, SharedState, WorkerJob

CANCEL_TTL = 0.1  # seconds a worker trusts its last look at the cancel flag
SLOT_RETRY = 0.02  # seconds before a worker asks the hub again for a slot it was refused
ENDS_TTL = 0.02  # seconds a worker trusts a unit's end it read (it only ever goes down)


@dataclass(frozen=True)
class HostedLimiter:
    """The limiter the hub runs for the job's workers: over `state` (a budget's file) or, when
    None, a shared-memory state of its own; requests/per/burst are the job's `rate_limit`."""

    state: LimiterState | None
    requests: int | None
    per: float = 1.0
    burst: int | None = None

    def open(self) -> LimiterState:
        return self.state or SharedLimiterState(multiprocessing.get_context(), self.requests)


class JobHub:
    """One job's shared state, in the Manager's process; every method is one round trip. The
    Manager serves each connection on its own thread: one lock guards the hub's fields."""

    def __init__(self, job: WorkerJob, concurrency: int, units: int, hosted: HostedLimiter | None):
        self._lock = threading.Lock()
        self._job = job
        self._epoch = 0
        self._stopped = False
        self._claimed: set[int] = set()
        self._capacity = concurrency
        self._taken = 0
        self._token_held = False
        self._ends = [UNKNOWN_END] * max(units, 1)
        self._hosted = hosted
        self._state: LimiterState | None = hosted.open() if hosted else None
        self._limiter: Limiter | None = self._make_limiter()

    def _make_limiter(self) -> Limiter | None:
        if self._hosted is None or self._state is None:
            return None  # the workers share the job's own limiter state (Redis)
        return self._state.rate_limiter(self._hosted.requests, self._hosted.per, self._hosted.burst)

    # ------------------------------------------------------------ epochs
    def job(self, epoch: int) -> WorkerJob | None:
        """What a worker needs to know about the job (None: `epoch` is over)."""
        with self._lock:
            return self._job if epoch == self._epoch else None

    def claim(self, epoch: int, piece: int) -> str:
        """May this task run `piece`? "run"; "over": its epoch is over or stopping; "again":
        Dask re-runs the piece of a lost worker, which may have written some of its shards - the
        coordinator re-plans from the ledger instead, so the epoch stops here."""
        with self._lock:
            if epoch != self._epoch or self._stopped:
                return "over"
            if piece in self._claimed:
                self._stopped = True
                return "again"
            self._claimed.add(piece)
            return "run"

    def cancelled(self, epoch: int) -> bool:
        with self._lock:
            return epoch != self._epoch or self._stopped

    def stop(self) -> None:
        """The epoch's pieces stop at their next look (the job is cancelled, done, or a worker
        was lost)."""
        with self._lock:
            self._stopped = True

    def renew(self, job: WorkerJob, units: int) -> int:
        """A new epoch, once every task of the old one has returned: fresh slots and token lock
        (a lost worker may have held some), the limiter's history kept (its in-flight count
        forgets the lost sends), more unit slots when a dependent source's units are known."""
        with self._lock:
            self._epoch += 1
            self._stopped = False
            self._claimed.clear()
            self._job = job
            self._taken = 0
            self._token_held = False
            self._ends.extend([UNKNOWN_END] * max(0, units - len(self._ends)))
            if self._state is not None and self._hosted is not None:
                self._state = self._state.renewed(multiprocessing.get_context(), self._hosted.requests)
                self._limiter = self._make_limiter()
            return self._epoch

    def close(self) -> None:
        """The job is over: a budget's file is let go (this job no longer counts as using it)."""
        with self._lock:
            self._stopped = True
            if self._hosted is not None and self._hosted.state is not None:
                self._hosted.state.close()

    # ------------------------------------------------------------ concurrency and tokens
    def acquire_slot(self, epoch: int) -> bool:
        with self._lock:
            if epoch != self._epoch or self._taken >= self._capacity:
                return False
            self._taken += 1
            return True

    def release_slots(self, epoch: int, count: int) -> None:
        with self._lock:
            if epoch == self._epoch:
                self._taken = max(0, self._taken - count)

    def acquire_token_lock(self, epoch: int) -> bool:
        with self._lock:
            if epoch != self._epoch or self._token_held:
                return False
            self._token_held = True
            return True

    def release_token_lock(self, epoch: int) -> None:
        with self._lock:
            if epoch == self._epoch:
                self._token_held = False

    # ------------------------------------------------------------ ends of units
    def end_of(self, index: int) -> int:
        with self._lock:
            return self._ends[index]

    def lower_end(self, index: int, page: int) -> None:
        with self._lock:
            self._ends[index] = min(self._ends[index], page)

    # ------------------------------------------------------------ the rate limiter
    def _hosted_limiter(self) -> Limiter:
        assert self._limiter is not None, "the job's workers use their own limiter state"
        return self._limiter

    def take(self) -> tuple[float, Ticket | None]:
        return self._hosted_limiter().try_take()

    def answered(self, ticket: Ticket | None) -> None:
        self._hosted_limiter().answered(ticket)

    def settle(self, ticket: Ticket | None, signal: Signal | None, heard: bool, refused: bool) -> None:
        self._hosted_limiter().settle(ticket, signal, heard, refused)

    def pause(self, seconds: float) -> None:
        self._hosted_limiter().pause(seconds)

    def paused_until(self) -> float:
        return self._hosted_limiter().paused_until()


# A `JobHub` seen from another process: one forwarding method per exposed one.
HubProxy = managers.MakeProxyType(  # type: ignore[attr-defined]  # not in typeshed
    "HubProxy",
    (
        "job",
        "claim",
        "cancelled",
        "stop",
        "renew",
        "close",
        "acquire_slot",
        "release_slots",
        "acquire_token_lock",
        "release_token_lock",
        "end_of",
        "lower_end",
        "take",
        "answered",
        "settle",
        "pause",
        "paused_until",
    ),
)
HubProxy.__module__ = __name__  # pickled by reference into the Manager's process


class HubManager(SyncManager):
    """The Engine's Manager when pieces run on a Dask cluster: on TCP, with a random authkey
    (never logged: `HubLink` keeps it out of its repr)."""

    def __init__(self, address: tuple[str, int], ctx: Any = None):
        self.hub_authkey = os.urandom(32)
        super().__init__(address=address, authkey=self.hub_authkey, ctx=ctx)


HubManager.register("JobHub", JobHub, HubProxy)


@dataclass(frozen=True)
class HubLink:
    """How a task reaches its job's hub and board; proxies are rebuilt from it on the worker
    with the authkey given explicitly (a pickled proxy does not carry it)."""

    address: tuple[str, int]
    hub_id: str
    board_id: str
    epoch: int
    authkey: bytes = field(repr=False)
    limiter: LimiterState | None = field(default=None, repr=False)  # the job's own (Redis); None: the hub's

    @classmethod
    def of(cls, manager: HubManager, hub: BaseProxy, board: BaseProxy, epoch: int, limiter: LimiterState | None):
        address = manager.address
        assert isinstance(address, tuple), "the hub's Manager listens on TCP"
        return cls(address, hub._token.id, board._token.id, epoch, manager.hub_authkey, limiter)  # type: ignore[attr-defined]

    def hub(self) -> Any:
        # Not counted as a reference: the coordinator's own proxy decides how long the hub lives.
        return HubProxy(Token("JobHub", self.address, self.hub_id), "pickle", authkey=self.authkey, incref=False)

    def board(self) -> Any:
        return DictProxy(Token("dict", self.address, self.board_id), "pickle", authkey=self.authkey, incref=False)


# ---------------------------------------------------------------- the worker's side


class _Cancel:
    """The job's cancel flag as `Event.is_set` (looked at a few times per page: cached briefly)."""

    def __init__(self, hub: Any, epoch: int):
        self._hub, self._epoch = hub, epoch
        self._value, self._at = False, -1.0

    def is_set(self) -> bool:
        now = time.monotonic()
        if not self._value and now - self._at >= CANCEL_TTL:
            self._value, self._at = self._hub.cancelled(self._epoch), now
        return self._value


class _Slots:
    """The job's concurrency slots as a non-blocking semaphore. A slot is taken per request;
    a round trip each would hold up every page, so this thread leases slots from the hub and
    keeps them until its piece ends (`give_back`): never more in flight than leased."""

    def __init__(self, hub: Any, epoch: int):
        self._hub, self._epoch = hub, epoch
        self._leased = self._used = 0
        self._refused_at = -1.0  # the hub had none free then: the fetch code polls every 2 ms

    def acquire(self, blocking: bool = True) -> bool:
        assert not blocking, "the fetch code polls for a slot"
        if self._used < self._leased:
            self._used += 1
            return True
        now = time.monotonic()
        if now - self._refused_at < SLOT_RETRY:
            return False
        if not self._hub.acquire_slot(self._epoch):
            self._refused_at = now
            return False
        self._leased += 1
        self._used += 1
        return True

    def release(self) -> None:
        self._used -= 1

    def give_back(self) -> None:
        """The piece is over: its slots go back for every worker's next pieces."""
        leased, self._leased = self._leased, 0
        if leased:
            self._hub.release_slots(self._epoch, leased)


class _TokenLock:
    """The job's OAuth2 token lock (polled with acquire(False), like the local one)."""

    def __init__(self, hub: Any, epoch: int):
        self._hub, self._epoch = hub, epoch

    def acquire(self, blocking: bool = True) -> bool:
        assert not blocking, "the token store polls for its lock"
        return self._hub.acquire_token_lock(self._epoch)

    def release(self) -> None:
        self._hub.release_token_lock(self._epoch)


class _Ends:
    """Each unit's known last page, as the local RawArray is used: read, and lowered under the
    ends lock (here the hub's `lower_end` is atomic by itself)."""

    def __init__(self, hub: Any):
        self._hub = hub
        self._seen: dict[int, tuple[int, float]] = {}

    def __getitem__(self, index: int) -> int:
        now = time.monotonic()
        seen = self._seen.get(index)
        if seen is None or now - seen[1] >= ENDS_TTL:
            seen = self._seen[index] = (self._hub.end_of(index), now)
        return seen[0]

    def __setitem__(self, index: int, page: int) -> None:
        self._hub.lower_end(index, page)
        self._seen[index] = (page, time.monotonic())


class HubLimiterState(LimiterState):
    """The job's limiter as the hub runs it (worker side; never pickled)."""

    def __init__(self, hub: Any):
        self.hub = hub

    def rate_limiter(self, requests: int | None, per: float = 1.0, burst: int | None = None) -> Limiter:
        return HubLimiter(self.hub, requests)


class HubLimiter(Limiter):
    """Every decision is the hub's (its clock decides, so hosts need not agree on time). The
    event loop never waits for a round trip: a ticket is asked for on a helper thread while the
    other lanes go on, and what needs no answer (answered, settle, pause) goes in order through
    a sender thread - flushed before the piece reports, so its sends are all settled by then."""

    def __init__(self, hub: Any, requests: int | None):
        self.hub = hub
        self.requests = requests
        self._calls: queue.Queue = queue.Queue()
        self._sender: threading.Thread | None = None

    def try_take(self) -> tuple[float, Ticket | None]:
        return self.hub.take()

    async def acquire_async(self, wait: Callable[[float], Awaitable[bool]]) -> tuple[bool, Ticket | None]:
        while True:
            delay, ticket = await asyncio.to_thread(self.hub.take)
            if delay <= 0:
                return True, ticket
            if await wait(delay):
                return False, None

    def answered(self, ticket: Ticket | None) -> None:
        if ticket is not None and ticket.slot >= 0:  # only a rate-limited send's slot changes
            self._send("answered", ticket)

    def settle(
        self, ticket: Ticket | None, signal: Signal | None = None, heard: bool = False, refused: bool = False
    ) -> None:
        if ticket is not None:
            self._send("settle", ticket, signal, heard, refused)

    def pause(self, seconds: float) -> None:
        self._send("pause", seconds)

    def paused_until(self) -> float:
        return self.hub.paused_until()

    def _send(self, method: str, *args: Any) -> None:
        if self._sender is None:
            self._sender = threading.Thread(target=self._run_sender, name="hub-sender", daemon=True)
            self._sender.start()
        self._calls.put((method, args))

    def _run_sender(self) -> None:
        while True:
            method, args = self._calls.get()
            try:
                if method == "":
                    return
                getattr(self.hub, method)(*args)
            except Exception:  # the hub is gone: so is the job
                pass
            finally:
                self._calls.task_done()

    def flush(self) -> None:
        """Wait until the hub has had every call sent so far."""
        self._calls.join()

    def close(self) -> None:
        if self._sender is not None:
            self._calls.put(("", ()))


def piece_done(limiter: Limiter, shared: SharedState) -> None:
    """After each piece on a worker thread: the hub has had every settle, the slots go back."""
    if isinstance(limiter, HubLimiter):
        limiter.flush()
    if isinstance(shared.semaphore, _Slots):
        shared.semaphore.give_back()


def state_closed(limiter: Limiter) -> None:
    """The worker thread is done with the job's state: its sender thread ends."""
    if isinstance(limiter, HubLimiter):
        limiter.close()


def remote_state(link: HubLink, hub: Any) -> SharedState:
    """The job's `SharedState` for a worker thread, every primitive behind the hub."""
    return SharedState(
        limiter=link.limiter or HubLimiterState(hub),
        semaphore=_Slots(hub, link.epoch),
        cancel=_Cancel(hub, link.epoch),
        ends=_Ends(hub),
        ends_lock=contextlib.nullcontext(),
        token_lock=_TokenLock(hub, link.epoch),
        board=link.board(),
    )
