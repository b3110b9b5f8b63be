"""What crosses from the coordinator to the job's pool processes, and back - light to import.

The coordinator (the CLI's process, a gunicorn worker) builds these objects and submits these
functions (`engine.run.entrypoints`). A leaf: it imports nothing that fetches or exports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.deliver.table_targets import TableJob
from engine.fetch.outbound import OutboundPolicy
from engine.fetch.ratelimit import SharedLimiterState
from engine.spec.models import JobSpec

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
    coordinator_pid: int
    id_values: list  # per source: ids read from a file, or None
    unit_offsets: list[int]  # per source: index of its first unit in `ends`
    nice: int = 0  # added niceness (the service keeps its web threads ahead)


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

    limiter: SharedLimiterState
    semaphore: Any
    cancel: Any
    ends: Any  # RawArray of each unit's known last page
    ends_lock: Any
    token_lock: Any
    board: Any  # Manager dict: progress and shared OAuth2 tokens

    @classmethod
    def create(cls, ctx, requests: int | None, concurrency: int, units: int, board: Any) -> SharedState:
        ends = ctx.RawArray("q", max(units, 1))
        for i in range(len(ends)):
            ends[i] = UNKNOWN_END
        return cls(
            SharedLimiterState(ctx, requests),
            ctx.BoundedSemaphore(concurrency),
            ctx.Event(),
            ends,
            ctx.Lock(),
            ctx.Lock(),
            board,
        )

    def renew(self, ctx, requests: int | None, concurrency: int) -> SharedState:
        fresh = SharedState.create(ctx, requests, concurrency, len(self.ends), self.board)
        self.limiter.copy_into(fresh.limiter)
        for i in range(len(self.ends)):
            fresh.ends[i] = self.ends[i]
        if self.cancel.is_set():
            fresh.cancel.set()
        return fresh
