"""What crosses from the coordinator to the job's pool processes, and back - light to import.

The coordinator (the CLI's process, a gunicorn worker) builds these objects and submits these
functions (`engine.run.entrypoints`). A leaf: it imports nothing that fetches or exports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.deliver.table_targets import TableJob
from engine.fetch.outbound import OutboundPolicy
from engine.fetch.ratelimit import LimiterState, SharedLimiterState
from engine.spec.models import JobSpec
from engine.storage.work import WorkStore

UNKNOWN_END = 2**62


@dataclass
class WorkerJob:
    """Everything a pool process needs about its job (pickled once, at process start)."""

    job_id: str
    spec: JobSpec  # resolved: holds secrets, never logged
    secrets: frozenset
    shards_dir: str
    threads: int
    max_body: int
    outbound: OutboundPolicy  # where it may connect (every connection and redirect hop)
    coordinator_pid: int | None  # None: the coordinator is on another host (a Dask worker's pieces)
    id_values: list  # per source: ids read from a file, or None
    unit_offsets: list[int]  # per source: index of its first unit in `ends`
    nice: int = 0  # added niceness (the service keeps its web threads ahead)
    # per source: the units' cursors the run started from (engine/run/incremental.py), None
    # for a source that is not incremental; None when no source is
    incremental: list | None = None
    # RESULT_STORE's copy of the job's work: each shard is stored there once written (None: local only)
    result_store: WorkStore | None = None


@dataclass
class ExportRequest:
    """What the coordinator asks a pool process to export."""

    spec: JobSpec
    tables: list[tuple[str, list[str]]]  # (source name, its shard paths in row order)
    output: str
    manifest: dict | None
    table_job: TableJob | None = None  # table targets: shaped Parquet + loads (engine/deliver/tables.py)


@dataclass
class ExportOutcome:
    """The written file, as the coordinator gets it back (`engine.export.ExportedFile`'s fields)."""

    path: Any
    bytes: int
    sha256: str
    rows: dict[str, int]
    deliveries: list[dict] = field(default_factory=list)  # the table targets' outcomes


@dataclass
class SharedState:
    """Cross-process primitives of one job; recreated (history copied) when a pool is rebuilt,
    because a killed process may have died holding a lock or a semaphore slot."""

    limiter: LimiterState  # shared memory, a budget's file, or Redis: each builds its own limiter
    semaphore: Any
    cancel: Any
    ends: Any  # RawArray of each unit's known last page
    ends_lock: Any
    token_lock: Any
    board: Any  # Manager dict: progress and shared OAuth2 tokens

    @classmethod
    def create(
        cls,
        ctx,
        requests: int | None,
        concurrency: int,
        units: int,
        board: Any,
        limiter: LimiterState | None = None,
    ) -> SharedState:
        """`limiter`: a rate-limit budget's state (engine/fetch/budget.py) or the job's limiter in
        Redis (engine/fetch/redis_limiter.py) instead of the job's own in shared memory."""
        ends = ctx.RawArray("q", max(units, 1))
        for i in range(len(ends)):
            ends[i] = UNKNOWN_END
        return cls(
            limiter or SharedLimiterState(ctx, requests),
            ctx.BoundedSemaphore(concurrency),
            ctx.Event(),
            ends,
            ctx.Lock(),
            ctx.Lock(),
            board,
        )

    def renew(self, ctx, requests: int | None, concurrency: int, units: int | None = None) -> SharedState:
        """`units`: more unit slots (a dependent source's units, now known), after the old ones."""
        # Shared memory: fresh primitives, history copied. A budget's file or Redis: the same state.
        limiter = self.limiter.renewed(ctx, requests)
        fresh = SharedState.create(ctx, requests, concurrency, max(units or 0, len(self.ends)), self.board, limiter)
        for i in range(len(self.ends)):
            fresh.ends[i] = self.ends[i]
        if self.cancel.is_set():
            fresh.cancel.set()
        return fresh

    def close(self) -> None:
        """Let go of a rate-limit budget: this job no longer counts as using it."""
        self.limiter.close()
