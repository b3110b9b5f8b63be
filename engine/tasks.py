"""What crosses from the coordinator to the job's pool processes, and back - light to import.

The coordinator (the CLI's process, a gunicorn worker) builds these objects and submits these
functions, but never runs a fetch or an export itself: it must not pay for importing
pyarrow, polars or the HTTP stack (~0.5-1 s of CPU on a 2-core machine, at every CLI start),
nor for unpickling an export result that names a Polars-side class. The pool processes come
from the forkserver with `engine.worker` preloaded, so the functions below only forward to it.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from engine.ratelimit import SharedLimiterState
from engine.spec import JobSpec

UNKNOWN_END = 2 ** 62


@dataclass
class WorkerJob:
    """Everything a pool process needs about its job (pickled once, at process start)."""
    job_id: str
    spec: JobSpec                 # resolved: holds secrets, never logged
    secrets: frozenset
    shards_dir: str
    threads: int
    max_body: int
    allowed_hosts: tuple
    coordinator_pid: int
    id_values: list               # per source: ids read from a file, or None
    unit_offsets: list[int]       # per source: index of its first unit in `ends`
    nice: int = 0                 # added niceness (the service keeps its web threads ahead)


@dataclass
class ExportRequest:
    """What the coordinator asks a pool process to export."""
    spec: JobSpec
    tables: list[tuple[str, list[str]]]   # (source name, its shard paths in row order)
    output: str
    manifest: dict | None


@dataclass
class ExportOutcome:
    """The written file, as the coordinator gets it back (`engine.export.ExportedFile`'s fields)."""
    path: Any
    bytes: int
    sha256: str
    rows: dict[str, int]


@dataclass
class SharedState:
    """Cross-process primitives of one job; recreated (history copied) when a pool is rebuilt,
    because a killed process may have died holding a lock or a semaphore slot."""
    limiter: SharedLimiterState
    semaphore: Any
    cancel: Any
    ends: Any                     # RawArray of each unit's known last page
    ends_lock: Any
    token_lock: Any
    board: Any                    # Manager dict: progress and shared OAuth2 tokens

    @classmethod
    def create(cls, ctx, requests: int | None, concurrency: int, units: int, board: Any) -> "SharedState":
        ends = ctx.RawArray("q", max(units, 1))
        for i in range(len(ends)):
            ends[i] = UNKNOWN_END
        return cls(SharedLimiterState(ctx, requests), ctx.BoundedSemaphore(concurrency), ctx.Event(),
                   ends, ctx.Lock(), ctx.Lock(), board)

    def renew(self, ctx, requests: int | None, concurrency: int) -> "SharedState":
        fresh = SharedState.create(ctx, requests, concurrency, len(self.ends), self.board)
        self.limiter.copy_into(fresh.limiter)
        for i in range(len(self.ends)):
            fresh.ends[i] = self.ends[i]
        if self.cancel.is_set():
            fresh.cancel.set()
        return fresh


# ---------------------------------------------------------------- run in the pool processes

def init_worker(job: WorkerJob, shared: SharedState) -> None:
    from engine.worker import init_worker as init
    init(job, shared)


def greet(hold: float) -> int:
    """A no-op the coordinator uses to start every pool process up front."""
    from engine.worker import greet as hello
    return hello(hold)


def run_piece(piece):
    from engine.worker import run_piece as run
    return run(piece)


def run_export(request: ExportRequest) -> ExportOutcome:
    from engine.worker import run_export as run
    exported = run(request)
    return ExportOutcome(exported.path, exported.bytes, exported.sha256, dict(exported.rows))


def start_export_process(nice: int, coordinator_pid: int | None = None) -> None:
    """Initializer of a job's export process: its priority, and the reducer with Polars loaded
    at once. The process is started while pages are still being fetched, so this import
    (~0.3 s of CPU) is neither on the way to the first request (the forkserver preloads only
    what fetching needs) nor on the way from the last page to the result. It waits idle for a
    while, so it ends itself when the coordinator is gone (an idle pool process never sees
    EOF on its call queue: it holds both ends of the pipe)."""
    lower_priority(nice)
    if coordinator_pid is not None:
        threading.Thread(target=_exit_with, args=(coordinator_pid,), name="coordinator-watch", daemon=True).start()
    import engine.reduce  # noqa: F401


def _exit_with(pid: int, every: float = 0.25) -> None:
    while True:
        time.sleep(every)
        if not process_alive(pid):
            os._exit(0)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, someone else's
        return True


def ready() -> int:
    """A no-op that makes a pool start its process now."""
    return os.getpid()


def lower_priority(nice: int) -> None:
    """Yield the CPU to the web threads that share this machine: a status request should not
    queue behind page parsing. Throughput is unchanged when nothing else wants the CPU."""
    if nice > 0:
        try:
            os.nice(nice)
        except OSError:
            pass
