"""`rate_limit.budget`: one rate limit shared by every job that names it, through a file.

Home-made because no library offers a cross-process sliding-window limiter over shared memory
that unrelated processes open by name: this is the job's own limiter (`engine.fetch.ratelimit`)
with its shared arrays in an mmap'ed file instead of anonymous shared memory, so every job of a
service (any gunicorn worker, any task) and every CLI run on the machine that names the budget
uses the same sliding window and the same Retry-After pause.

Files, in the budget folder (the service's `DATA_DIR/budgets`, the CLI's `.pageferry/budgets`):

- `<name>.limiter`: a header (magic, format version, number of state slots, `requests`, `per`,
  boot id), then `ring` (`requests` doubles), `seqs` (`requests` int64) and `state`
  (`STATE_SLOTS` doubles), each a memoryview cast over the mapping. Its lock is `flock` on the
  same file: the kernel drops a dead process's flock with its last descriptor, so a process
  killed while holding the lock blocks nobody (a semaphore would stay taken).
- `<name>.users`: every process that has the budget open holds a shared flock on it, so
  "nobody uses the budget" is an exclusive flock that succeeds.

A budget's limit is the one in its file. While no process uses the budget, a job naming it
with another limit (or a file of another layout, or one written before a reboot: its times are
CLOCK_MONOTONIC, which restarts at boot) rewrites it, carrying the recent sends and a pending
pause over when it can. While it is in use, a job joins it under the budget's limit when that
is the same or stricter (it lets no more through in any window of the job's `per`): the
stricter wins. A job whose own limit is stricter fails at once with `BudgetConflict`:
honouring it would mean slowing the jobs already running, which keep their limit.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import math
import mmap
import multiprocessing
import os
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import JobFailed
from engine.fetch.ratelimit import NEVER, STATE_SLOTS, RateLimiter, SharedLimiterState
from engine.spec.models import RateLimit

MAGIC = b"PFBUDGET"
VERSION = 1
_HEADER = struct.Struct("<8sIIqd16s")  # magic, version, state slots, requests, per, boot id
HEADER_SIZE = 64  # the arrays start 8-byte aligned after it
LOCK_POLL = 0.001  # seconds between tries of a lock acquire with a timeout


class BudgetConflict(JobFailed):
    """The budget cannot be used by this job (it is in use under a looser limit, or by another
    version or machine), or cannot be opened."""


def budget_files(budget_dir: Path, name: str) -> tuple[Path, Path]:
    """(`<name>.limiter`, `<name>.users`) in `budget_dir`."""
    return Path(budget_dir) / f"{name}.limiter", Path(budget_dir) / f"{name}.users"


@functools.cache
def _boot_id() -> bytes:
    try:
        return uuid.UUID(Path("/proc/sys/kernel/random/boot_id").read_text().strip()).bytes
    except (OSError, ValueError):
        return bytes(16)


@functools.cache
def _fresh() -> tuple[float, int, tuple[float, ...]]:
    """A new limiter's values (a ring entry, a seqs entry, every state slot), taken from the
    limiter itself so slots it adds are initialised as it wants them."""
    blank = SharedLimiterState(multiprocessing.get_context(), 1)
    return blank.ring[0], blank.seqs[0], tuple(blank.state[i] for i in range(STATE_SLOTS))


def file_size(requests: int, slots: int) -> int:
    return HEADER_SIZE + 16 * requests + 8 * slots


@dataclass(frozen=True)
class Header:
    version: int
    slots: int
    requests: int
    per: float
    boot: bytes

    def layout_ok(self, size: int) -> bool:
        """Readable by this code, on this boot, and as long as the header says."""
        return (
            self.version == VERSION
            and self.slots == STATE_SLOTS
            and self.boot == _boot_id()
            and self.requests >= 1
            and size == file_size(self.requests, self.slots)
        )


def _read_header(fd: int) -> Header | None:
    raw = os.pread(fd, _HEADER.size, 0)
    if len(raw) < _HEADER.size:
        return None
    magic, version, slots, requests, per, boot = _HEADER.unpack(raw)
    if magic != MAGIC:
        return None
    return Header(version, slots, requests, per, boot)


class FileLock:
    """A cross-process mutex like multiprocessing's Lock (`with lock:`, `acquire`, `release`):
    flock(LOCK_EX) on a file, plus a thread lock, because a flock belongs to an open file that
    all threads of a process share. Pickles as its path; the receiving process opens the file
    anew. A process killed while holding it releases it (the kernel drops its flock)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._threads = threading.Lock()

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        if not block:
            timeout = 0.0
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        if not self._threads.acquire(True, -1 if timeout is None else max(0.0, timeout)):
            return False
        try:
            if deadline is None:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                return True
            while True:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        self._threads.release()
                        return False
                    time.sleep(LOCK_POLL)
        except BaseException:
            self._threads.release()
            raise

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])  # type: ignore[misc]


class BudgetLimiterState(SharedLimiterState):
    """The limiter's shared state in a budget's file (`open_budget` makes or checks the file).
    `requests` and `per` are the budget's limit, which the job's limiter must use. Holds a
    shared flock on `<name>.users` while open. Pickles as its path and limit: a pool process
    maps the same file."""

    def __init__(self, path: str | Path, requests: int, per: float):  # not super(): no RawArrays
        self.path = str(path)
        self.requests = requests
        self.per = per
        self._users = os.open(Path(self.path).with_suffix(".users"), os.O_RDWR | os.O_CREAT, 0o600)
        self._map: mmap.mmap | None = None
        self._views: list[memoryview] = []
        try:
            # Held before the header is read: nobody rewrites a file someone holds this on.
            fcntl.flock(self._users, fcntl.LOCK_SH)
            self.lock = FileLock(self.path)
            size = os.fstat(self.lock.fileno()).st_size
            header = _read_header(self.lock.fileno())
            if header is None or not header.layout_ok(size) or (header.requests, header.per) != (requests, per):
                raise BudgetConflict(f"rate-limit budget file {self.path} changed while in use")
            self._map = mmap.mmap(self.lock.fileno(), size)
            whole = memoryview(self._map)
            ring_end = HEADER_SIZE + 8 * requests
            seqs_end = ring_end + 8 * requests
            self._views = [whole]
            self.ring = self._view(whole[HEADER_SIZE:ring_end], "d")
            self.seqs = self._view(whole[ring_end:seqs_end], "q")
            self.state = self._view(whole[seqs_end:size], "d")
        except BaseException:
            self.close()
            raise

    def _view(self, part: memoryview, fmt: str) -> memoryview[Any]:
        view: memoryview[Any] = part.cast("q") if fmt == "q" else part.cast("d")
        self._views += [part, view]
        return view

    def renewed(self, ctx, requests: int | None) -> SharedLimiterState:
        """The same file: its flocks died with the killed processes, and others may be sending under it."""
        return self

    def close(self) -> None:
        """Unmap and let go of the budget (this process no longer counts as using it)."""
        for view in reversed(self._views):
            view.release()
        self._views = []
        if self._map is not None:
            self._map.close()
            self._map = None
        lock = getattr(self, "lock", None)
        if isinstance(lock, FileLock):
            lock.close()
        if self._users >= 0:
            os.close(self._users)
            self._users = -1

    def __getstate__(self) -> dict:
        return {"path": self.path, "requests": self.requests, "per": self.per}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["requests"], state["per"])  # type: ignore[misc]


class _Arrays:
    """Arrays + a no-op lock, for reading/writing state through RateLimiter's own methods."""

    def __init__(self, ring: Any, seqs: Any, state: Any):
        self.ring, self.seqs, self.state = ring, seqs, state
        self.lock = contextlib.nullcontext()


def _rewrite(fd: int, requests: int, per: float, old: Header | None) -> None:
    """Lay the file out anew for `requests`/`per` (the caller holds the lock and nobody uses the
    budget). From an `old` file of this version and boot, the newest sends and a pending pause
    carry over, so a changed limit does not forget what went out within the window."""
    ring_default, seqs_default, state_default = _fresh()
    slots = len(state_default)
    carried: list[float] = []
    paused_until = NEVER
    if old is not None:
        with mmap.mmap(fd, os.fstat(fd).st_size) as current:
            whole = memoryview(current)
            ring = whole[HEADER_SIZE : HEADER_SIZE + 8 * old.requests].cast("d")
            carried = sorted(float(v) for v in ring.tolist())[-requests:]
            if old.slots == slots:
                start = HEADER_SIZE + 16 * old.requests
                state = whole[start : start + 8 * slots].cast("d")
                paused_until = RateLimiter(_Arrays(ring, None, state), 1).paused_until()  # type: ignore[arg-type]
                state.release()
            ring.release()
            whole.release()
    # The header goes first (no magic: unreadable until done) and last (complete).
    os.pwrite(fd, bytes(_HEADER.size), 0)
    os.ftruncate(fd, file_size(requests, slots))
    with mmap.mmap(fd, file_size(requests, slots)) as new:
        whole = memoryview(new)
        ring = whole[HEADER_SIZE : HEADER_SIZE + 8 * requests].cast("d")
        seqs = whole[HEADER_SIZE + 8 * requests : HEADER_SIZE + 16 * requests].cast("q")
        state = whole[HEADER_SIZE + 16 * requests :].cast("d")
        # The carried sends last, oldest first: a fresh limiter's head (the slot it reuses next,
        # the send `requests` back) is 0, so they leave the window in the order they came.
        values = [ring_default] * (requests - len(carried)) + carried
        for i in range(requests):
            ring[i] = values[i]
            seqs[i] = seqs_default
        for i, value in enumerate(state_default):
            state[i] = value
        if paused_until > time.monotonic():
            RateLimiter(_Arrays(ring, seqs, state), 1, clock=lambda: 0.0).pause(paused_until)  # type: ignore[arg-type]
        for view in (state, seqs, ring, whole):
            view.release()
    os.pwrite(fd, _HEADER.pack(MAGIC, VERSION, slots, requests, float(per), _boot_id()), 0)


def allows(budget_requests: int, budget_per: float, requests: int, per: float) -> bool:
    """Whether a budget's limit lets no more than `requests` through in any window of `per`:
    such a window lies within ceil(per / budget_per) of the budget's windows."""
    windows = max(1, math.ceil(per / budget_per - 1e-9))
    return budget_requests * windows <= requests


def _describe(requests: int, per: float) -> str:
    return f"{requests} requests per {per:g} s"


def in_use_message(name: str, budget_requests: int, budget_per: float, requests: int, per: float) -> str:
    """Why a job cannot join budget `name`: it is in use under a limit the job's does not allow."""
    return (
        f"rate_limit: budget {name!r} is in use by other jobs at {_describe(budget_requests, budget_per)}, "
        f"which can let more through than this job's {_describe(requests, per)}; give every job "
        f"naming the budget the same limit (a changed limit takes effect once the budget is idle)"
    )


def open_budget(budget_dir: Path, name: str, requests: int, per: float) -> BudgetLimiterState:
    """Open (making or rewriting it when nobody uses it) the budget `name`'s file for a job whose
    limit is `requests`/`per`. The state's `requests`/`per` are the budget's limit: the job's
    own, or a stricter one of jobs already running. Raises `BudgetConflict` when the budget is
    in use under a limit this job's does not allow."""
    budget_dir = Path(budget_dir)
    try:
        budget_dir.mkdir(parents=True, exist_ok=True)
        path, users_path = budget_files(budget_dir, name)
        lock = FileLock(path)
    except OSError as exc:
        raise BudgetConflict(f"cannot open rate-limit budget {name!r} in {budget_dir}: {exc.strerror or exc}") from None
    users = -1
    try:
        users = os.open(users_path, os.O_RDWR | os.O_CREAT, 0o600)
        with lock:
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                idle = True
            except BlockingIOError:
                idle = False
            size = os.fstat(lock.fileno()).st_size
            header = _read_header(lock.fileno())
            usable = header is not None and header.layout_ok(size)
            if idle:
                if not usable or header is None or (header.requests, header.per) != (requests, per):
                    _rewrite(lock.fileno(), requests, per, header if usable else None)
                fcntl.flock(users, fcntl.LOCK_UN)  # the state takes its own shared flock
                state = BudgetLimiterState(path, requests, per)
                # Nobody has it open: sends of processes killed mid-request will never settle.
                state.copy_into(state)
                return state
            if not usable or header is None:
                elsewhere = header is not None and header.boot != _boot_id()
                raise BudgetConflict(
                    f"rate-limit budget {name!r} is in use by "
                    + ("another machine" if elsewhere else "another version of pageferry")
                    + f" ({path}); wait until its jobs have finished"
                )
            if allows(header.requests, header.per, requests, per):
                return BudgetLimiterState(path, header.requests, header.per)
            raise BudgetConflict(in_use_message(name, header.requests, header.per, requests, per))
    except OSError as exc:
        raise BudgetConflict(f"cannot open rate-limit budget {name!r} in {budget_dir}: {exc.strerror or exc}") from None
    finally:
        if users >= 0:
            os.close(users)
        lock.close()


def open_for_job(rate_limit: RateLimit, budget_dir: Path) -> tuple[BudgetLimiterState, RateLimit]:
    """The budget of a spec's `rate_limit` (which names one) and the `rate_limit` the job's
    processes must use: the budget's requests/per, the job's burst as far as it fits."""
    assert rate_limit.budget is not None
    state = open_budget(budget_dir, rate_limit.budget, rate_limit.requests, rate_limit.per)
    return state, under_budget(rate_limit, state.requests, state.per)


def under_budget(rate_limit: RateLimit, requests: int, per: float) -> RateLimit:
    """`rate_limit` under a budget's limit of requests/per: the budget's requests/per, the job's
    burst as far as it fits (`rate_limit` itself when the limits are the same)."""
    if (requests, per) == (rate_limit.requests, rate_limit.per):
        return rate_limit
    burst = min(rate_limit.burst, requests) if rate_limit.burst else None
    return rate_limit.model_copy(update={"requests": requests, "per": per, "burst": burst})
