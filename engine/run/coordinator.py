"""The coordinator: runs one job from a prepared spec to a result file. It owns the job's
process pool (forkserver), shared primitives (rate limiter, concurrency gate, cancel flag),
progress board and scheduler; it keeps the pool fed, rebuilds it from the ledger of finished
shards when a pool process is killed, and has one pool process reduce the shards into the export.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, MutableMapping
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from engine.deliver.table_targets import in_spec_order, table_job
from engine.errors import JobCancelled, JobFailed, PageFailure, ShapingError
from engine.fetch.budget import open_for_job
from engine.fetch.outbound import OutboundPolicy
from engine.fetch.ratelimit import LimiterState
from engine.fetch.redis_limiter import open_in_redis
from engine.plan.fanout import MAX_UNITS, FanOut, ParentValues, parent_values
from engine.plan.scheduler import Piece, PieceResult, Scheduler
from engine.run import incremental
from engine.run.entrypoints import (
    greet,
    init_worker,
    load_export_here,
    ready,
    run_export,
    run_piece,
    start_export_process,
)
from engine.run.inline import InlinePool
from engine.run.messages import ExportRequest, SharedState, WorkerJob
from engine.run.pool import mp_context
from engine.run.progress import WIDTH, Counter
from engine.shards import ShardInfo, drop_shard, list_shards, remove_temp_files
from engine.spec.models import spec_to_json
from engine.spec.prepare import PreparedJob, check_child
from engine.storage import StoreConfig, WorkCopy

log = logging.getLogger("pageferry.engine")

MAX_POOL_REBUILDS = 5
CANCEL_GRACE = 1.0  # seconds in-flight pieces get to stop by themselves before a kill
PIECES_PER_PROCESS = 2  # one running, one queued: no process waits for the coordinator


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fetch_fingerprint(prepared: PreparedJob) -> str:
    """What the shards depend on: sources and on_error (not shaping or export, which a resumed
    run may change)."""
    spec = spec_to_json(prepared.spec)
    relevant = {"sources": spec["sources"], "on_error": spec["on_error"]}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


class WorkdirMismatch(ValueError):
    """--resume was given a work directory made for a different spec."""


@dataclass
class JobOptions:
    job_id: str
    workdir: Path
    output: Path
    workers: int
    max_body: int
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy)  # every connection's check
    ambient_credentials: bool = True  # deliveries may use boto3's environment/instance credentials
    ftps_ca_file: str | None = None  # FTPS_CA_FILE: the CA bundle FTPS targets are checked with
    deadline: float | None = None  # time.monotonic() after which the job fails (WORKER_TIMEOUT)
    timeout_seconds: float | None = None
    nice: int = 0  # added niceness of the job's processes (the service: web threads first)
    budget_dir: Path = Path(".pageferry") / "budgets"  # rate_limit.budget files (the service: DATA_DIR/budgets)
    incremental_state: dict | None = None  # the saved state of the job's name (engine/run/incremental.py)
    dask_address: str | None = None  # EXECUTOR=dask://: the scheduler whose workers run the pieces
    redis_url: str | None = field(default=None, repr=False)  # REDIS_URL: limiters and budgets (may hold a password)
    result_store: StoreConfig | None = None  # RESULT_STORE: the shared copy of the work (None: local disk only)
    # The export runs in this process, on a thread that loads Polars while the pages are fetched
    # (the CLI: no process to start and wait for); False: in a process of its own (the service).
    export_here: bool = False
    # The first pieces run on a thread of this process while the pool starts, and the pool
    # starts only when page 1 shows more work (engine/run/inline.py; the CLI, no rate limit);
    # with one process's worth of concurrency, never: this process fetches everything.
    inline_start: bool = False


@dataclass
class JobResult:
    job_id: str
    output: Path
    bytes: int
    sha256: str
    rows: int
    rows_by_source: dict[str, int]
    records: int
    pages: int
    requests: int
    retries: int
    downloaded: int
    partial: bool
    skipped: list[dict]
    seconds: float
    started_at: str
    finished_at: str
    sources: list[dict] = field(default_factory=list)
    deliveries: list[dict] = field(default_factory=list)  # one outcome per `deliver` target
    state: dict | None = None  # incremental sources: the state after this run (not saved yet)
    skipped_pages: int = 0  # pages skipped: failed ones (on_error: skip) and rule-skipped ones


class _Progress:
    """Turns the board's per-process counters into the status's progress section."""

    def __init__(self, names: list[str], base: list[list[int]]):
        self.names = names
        self.base = base  # pages/records already on disk when the run started
        self.totals = [[0] * WIDTH for _ in names]
        self.samples: deque = deque(maxlen=64)
        self.causes: dict[str, int] = {}  # retries by cause, all processes
        self.paused_until = 0.0  # time.monotonic() until which the API made the job wait

    def read(self, *boards: Any) -> None:
        """`boards`: the Manager's dict, and an inline pool's own (engine/run/inline.py)."""
        totals = [[0] * WIDTH for _ in self.names]
        causes: dict[str, int] = {}
        paused_until = 0.0
        items: dict = {}
        try:
            for board in boards:
                items.update(dict(board))
        except Exception:
            return
        for key, values in items.items():
            if isinstance(key, str) and key.startswith("proc:"):
                for s, row in enumerate(values[: len(totals)]):
                    for k in range(WIDTH):
                        totals[s][k] += row[k]
                extra = values[len(totals)] if len(values) > len(totals) else None
                if isinstance(extra, dict):
                    for cause, count in (extra.get("causes") or {}).items():
                        causes[cause] = causes.get(cause, 0) + count
                    paused_until = max(paused_until, extra.get("paused_until") or 0.0)
        self.totals, self.causes, self.paused_until = totals, causes, paused_until
        now = time.monotonic()
        self.samples.append((now, self.sum(Counter.REQUESTS), self.pages_done_raw()))

    def sum(self, k: Counter) -> int:
        return sum(row[k] for row in self.totals)

    def pages_done_raw(self) -> int:
        return sum(b[0] for b in self.base) + self.sum(Counter.PAGES)

    def rates(self) -> tuple[float | None, float | None]:
        """(requests/s, pages/s) over the last few seconds."""
        if len(self.samples) < 2:
            return None, None
        now = self.samples[-1][0]
        old = next((s for s in self.samples if now - s[0] <= 5.0), self.samples[0])
        span = now - old[0]
        if span <= 0:
            return None, None
        return (self.samples[-1][1] - old[1]) / span, (self.samples[-1][2] - old[2]) / span


class JobRunner:
    def __init__(
        self, prepared: PreparedJob, options: JobOptions, manager: Any, on_change: Callable[[dict], None] | None = None
    ):
        self.prepared = prepared
        self.options = options
        self._manager = manager  # a started Manager, or what starts one (Engine.manager) when first needed
        self.on_change = on_change
        self.spec = prepared.resolved
        self.phase = "fetching"
        self._cancel = threading.Event()
        self._cancel_reason = "cancelled"
        self._lock = threading.Lock()
        self._scheduler: Scheduler | None = None
        self._progress = _Progress([s.name for s in self.spec.sources], [[0, 0] for _ in self.spec.sources])
        self._board: MutableMapping[str, Any] | None = None  # the Manager's dict while fetching
        self._boards: list[Any] = []  # every board progress is read from (an inline pool's too)
        self._starting: cf.Future | None = None  # the pool starting while the inline pool fetches
        self._inline: InlinePool | None = None  # the inline pool, once the pool took over from it
        self._last_read = 0.0
        self.started_at = utcnow()
        self.result: JobResult | None = None
        self._export_pool: cf.Executor | None = None  # started early: it loads Polars meanwhile
        self._known: dict[str, ShardInfo] = {}  # finished shards by file name
        self._started = time.monotonic()
        self._source_seconds: dict[int, float] = {}  # source index -> seconds until all its pages were in
        self._incremental: list | None = None  # per source: the units' cursors the run started from
        self._fetch_pool: tuple[Any, SharedState] | None = None  # the pool _fetch (re)built last
        self._dask: Any = None  # the job's DaskExecutor (engine/run/dask_pool.py) when EXECUTOR is dask://
        self._copy = WorkCopy(options.result_store, options.job_id, options.workdir)  # RESULT_STORE's copy
        self.fetch_processes = 0  # pool processes the last fetch had started (small jobs: 1)

    # ------------------------------------------------------------ control
    def cancel(self, reason: str = "cancelled") -> None:
        self._cancel_reason = reason
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    # ------------------------------------------------------------ progress
    def progress(self) -> dict:
        """The status's `phase`, `progress` and `sources` sections (safe to call from any thread)."""
        if self._boards and time.monotonic() - self._last_read > 0.2:
            self._last_read = time.monotonic()
            self._progress.read(*self._boards)
        p = self._progress
        scheduler = self._scheduler
        sources = []
        pages_total: int | None = 0
        pages_done = 0
        for i, name in enumerate(p.names):
            total = scheduler.sources[i].pages_total() if scheduler else None
            done = p.base[i][0] + p.totals[i][Counter.PAGES]
            if total is not None:
                done = min(done, total)
            rows = p.base[i][1] + p.totals[i][Counter.RECORDS]
            sources.append({"name": name, "pages_done": done, "pages_total": total, "rows": rows})
            pages_done += done
            pages_total = None if total is None or pages_total is None else pages_total + total
        request_rate, page_rate = p.rates()
        if self.phase in ("merging", "exporting", "delivering", "completed"):
            percent = 100.0 if pages_total is not None else None
        else:
            percent = round(100.0 * pages_done / pages_total, 1) if pages_total else (0.0 if pages_total == 0 else None)
        eta = None
        if pages_total is not None and page_rate and page_rate > 0:
            eta = max(0, math.ceil((pages_total - pages_done) / page_rate))
        return {
            "phase": self.phase,
            "progress": {
                "pages_done": pages_done,
                "pages_total": pages_total,
                "rows": sum(s["rows"] for s in sources),
                "bytes": p.sum(Counter.BYTES),
                "requests": p.sum(Counter.REQUESTS),
                "retries": p.sum(Counter.RETRIES),
                "rate": round(request_rate, 1) if request_rate is not None else 0.0,
                "percent": percent,
                "eta_seconds": eta,
            },
            "sources": sources,
            # beside `progress`, whose keys are the contract's: why requests were retried, and
            # how much longer the API asked the job to wait
            "retry_causes": [
                {"cause": cause, "count": count}
                for cause, count in sorted(p.causes.items(), key=lambda item: (-item[1], item[0]))
            ],
            "paused_seconds": round(max(0.0, p.paused_until - time.monotonic()), 1),
        }

    def source_stats(self) -> list[dict]:
        """Per source: pages, records, bytes downloaded, requests, retries and the seconds its
        fetching took (None while unfinished) - for run summaries (safe from any thread)."""
        p = self._progress
        return [
            {
                "name": name,
                "pages": p.base[i][0] + p.totals[i][Counter.PAGES],
                "records": p.base[i][1] + p.totals[i][Counter.RECORDS],
                "bytes": p.totals[i][Counter.BYTES],
                "requests": p.totals[i][Counter.REQUESTS],
                "retries": p.totals[i][Counter.RETRIES],
                "seconds": self._source_seconds.get(i),
            }
            for i, name in enumerate(p.names)
        ]

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self.progress())
            except Exception:  # a slow or broken observer must not break the job
                log.exception("progress observer failed")

    # ------------------------------------------------------------ the run
    def run(self) -> JobResult:
        started = self._started = time.monotonic()
        options = self.options
        workers = options.workers
        if options.dask_address:  # the pieces run on a Dask cluster's workers (engine/run/dask_pool.py)
            from engine.run.dask_pool import DaskExecutor

            self._dask = DaskExecutor.connect(options.dask_address, self.manager)
            workers = self._dask.slots()  # the cluster's threads: pieces running at once
            options = self.options = replace(options, workdir=options.workdir.resolve())  # read on other hosts
        shards_dir = options.workdir / "shards"
        self._copy.pull()  # what another instance did of this job, before anything is read
        self._claim_workdir()
        # fixed in the work directory on the first run: a resumed run asks for the same bounds
        self._incremental = incremental.started_state(self.spec, options.workdir, options.incremental_state)
        self._copy.push_missing()
        remove_temp_files(shards_dir)
        ledger = list_shards(shards_dir)
        self._progress.base = [[0, 0] for _ in self.spec.sources]
        for info in ledger:
            self._progress.base[info.source][0] += info.pages
            self._progress.base[info.source][1] += info.records
        concurrency = self.spec.concurrency or workers
        processes = max(1, min(workers, concurrency))
        threads = math.ceil(concurrency / processes)
        scheduler = Scheduler(self.spec, self.prepared.fanouts, threads, ledger, processes)
        self._scheduler = scheduler
        offsets, total_units = [], 0
        for fanout in self.prepared.fanouts:
            offsets.append(total_units)
            total_units += fanout.count
        rl = self.spec.rate_limit
        budget: LimiterState | None = None
        limit = rl
        if options.redis_url:
            # The job's limiter (its budget's, with one) in Redis: every host's processes share it.
            budget, limit = open_in_redis(options.redis_url, options.job_id, rl, self.spec.timeout)
        elif rl is not None and rl.budget:
            # One limit for every job naming the budget: the budget's, maybe stricter than ours.
            budget, limit = open_for_job(rl, options.budget_dir)
        if rl is not None and limit is not None and limit is not rl:
            log.warning(
                "rate_limit: budget %r is in use at %d per %g s; this job sends under it",
                rl.budget,
                limit.requests,
                limit.per,
            )
            self.spec = self.spec.model_copy(update={"rate_limit": limit})
            rl = limit
        ctx = mp_context()
        inline = options.inline_start and self._dask is None and rl is None
        board: Any = {} if inline else self._manager_board()  # inline: the pool gets the Manager's later
        self._boards = [board]
        shared = SharedState.create(ctx, rl.requests if rl else None, concurrency, total_units, board, budget)
        worker_job = WorkerJob(
            job_id=options.job_id,
            spec=self.spec,
            secrets=self.prepared.redactor.secrets,
            shards_dir=str(shards_dir),
            threads=threads,
            max_body=options.max_body,
            outbound=options.outbound,
            coordinator_pid=os.getpid(),
            id_values=self.prepared.id_values,
            unit_offsets=offsets,
            nice=options.nice,
            incremental=self._incremental,
            result_store=self._copy.work,
        )
        known = {info.file_name: info for info in ledger}  # finished shards: name -> what it holds
        self._known = known
        pool = None
        try:
            pool = InlinePool(worker_job, shared) if inline else self._new_pool(ctx, processes, worker_job, shared)
            if options.export_here:  # Polars loads while the first pages are fetched (not before: one GIL)
                load_export_here()
            if self.spec.rate_limit is None:
                # Under a rate limit, nothing may burst beside the sends (see _new_pool): the
                # export process starts when it is needed instead.
                self._export_pool = self._start_export_pool(ctx)
            self.phase = "fetching"
            self._changed()
            pool, shared = self._fetch(scheduler, pool, ctx, processes, worker_job, shared, known, shards_dir)
            # The fetch processes go before the export starts: their memory is not needed
            # any more, and the export is the job's memory peak.
            self._stop_pool(pool, shared)
            pool = self._fetch_pool = None
            self.phase = "merging"
            self._changed()
            result = self._export(scheduler, ctx, shards_dir, started)
            if self.spec.deliver:
                self.phase = "delivering"
                self._changed()
                result.deliveries = in_spec_order(self.spec.deliver, result.deliveries, self._deliver(result))
            self.result = result
            return result
        finally:
            if pool is not None:
                self._stop_pool(pool, shared)
            rebuilt, self._fetch_pool = self._fetch_pool, None
            if rebuilt is not None and rebuilt[0] is not pool:  # _fetch rebuilt its pool, then stopped
                self._stop_pool(*rebuilt)
            export_pool, self._export_pool = self._export_pool, None
            if export_pool is not None:
                self._kill(export_pool)
                export_pool.shutdown(wait=True, cancel_futures=True)
            self._abandon_starting()
            handed_over, self._inline = self._inline, None
            if handed_over is not None:
                handed_over.shutdown(wait=True)
            boards, self._boards, self._board = self._boards, [], None
            if boards:
                self._progress.read(*boards)  # the last figures stay readable after the boards are gone
            for board in boards:
                try:
                    board.clear()
                except Exception:
                    pass
            shared.close()  # a budget's file: this job no longer counts as using it
            if self._dask is not None:
                self._dask.close()

    @property
    def manager(self) -> Any:
        if callable(self._manager):  # Engine.manager: started now, when something needs it
            self._manager = self._manager()
        return self._manager

    def _manager_board(self) -> Any:
        """The Manager's dict: the board pool processes report to (made once per run)."""
        if self._board is None:
            self._board = self.manager.dict()
            self._boards.append(self._board)
        return self._board

    def _pool_shared(self, shared: SharedState) -> SharedState:
        """`shared` with the Manager's board: an inline pool's own board (a plain dict) cannot
        reach pool processes. OAuth2 tokens it obtained go along."""
        if not isinstance(shared.board, dict):
            return shared
        board = self._manager_board()
        board.update({key: value for key, value in shared.board.items() if not key.startswith("proc:")})
        return replace(shared, board=board)

    def _leave_inline(self, pool, shared: SharedState, more_work: bool, start):
        """While the inline pool fetches: start the real pool once a settled piece has shown
        `more_work` (not for a job page 1 shows to be done), and switch to it once it is up."""
        if self._starting is None:
            if more_work:
                starter = cf.ThreadPoolExecutor(1, thread_name_prefix="pool-start")
                self._starting = starter.submit(start, shared)
                starter.shutdown(wait=False)  # its one call still runs; the thread ends after it
            return pool, shared
        if not self._starting.done():
            return pool, shared
        started, self._starting = self._starting.result(), None
        self._inline = pool  # shut down once the run ends (its last piece is still in flight)
        self._fetch_pool = started
        return started

    def _started_pool(self, ctx, processes: int, worker_job: WorkerJob, shared: SharedState):
        """The job's pool with its first process up (on the pool-start thread: the forkserver
        may still be loading), and the shared state it reports to."""
        shared = self._pool_shared(shared)
        pool = self._new_pool(ctx, processes, worker_job, shared)
        pool.submit(greet, 0.0).result()
        return pool, shared

    def _abandon_starting(self) -> None:
        """The run ended while its pool was starting: stop that pool once it is up."""
        starting, self._starting = self._starting, None
        if starting is not None:
            try:
                pool, shared = starting.result()
            except Exception:
                return
            self._stop_pool(pool, shared)

    def _claim_workdir(self) -> None:
        workdir = self.options.workdir
        (workdir / "shards").mkdir(parents=True, exist_ok=True)
        marker = workdir / "job.json"
        fingerprint = fetch_fingerprint(self.prepared)
        if marker.exists():
            try:
                existing = json.loads(marker.read_text())
            except (OSError, ValueError):
                existing = {}
            if existing.get("fingerprint") not in (None, fingerprint):
                raise WorkdirMismatch(
                    f"{workdir} holds the work of a different spec (its sources differ); "
                    f"start without --resume or use the matching spec"
                )
            return
        temp = marker.with_suffix(".tmp")
        temp.write_text(json.dumps({"job_id": self.options.job_id, "fingerprint": fingerprint, "created_at": utcnow()}))
        os.replace(temp, marker)

    def _new_pool(self, ctx, processes: int, worker_job: WorkerJob, shared: SharedState) -> cf.Executor:
        """The job's pool. Its processes start as pieces queue up for them: the first with the
        first piece, the others once page 1 has shown work for them - a small job never starts
        processes it has nothing for. Under a rate limit every process is started and waited
        for before the first piece: process start-up is a CPU burst, and overlapping it with
        rate-limited sends skews them. With EXECUTOR=dask://, the Dask cluster's pool of the
        job's next epoch."""
        if self._dask is not None:
            concurrency = self.spec.concurrency or processes
            return self._dask.pool(worker_job, shared, self._board, self.spec.rate_limit, concurrency)
        shared = self._pool_shared(shared)
        pool = cf.ProcessPoolExecutor(
            max_workers=processes, mp_context=ctx, initializer=init_worker, initargs=(worker_job, shared)
        )
        if self.spec.rate_limit is None:
            return pool  # the first piece starts the first process
        started: set[int] = set()
        for _ in range(3):  # each greeting holds its process briefly, so they spread over all
            started |= {f.result() for f in [pool.submit(greet, 0.05) for _ in range(processes)]}
            if len(started) >= processes:
                break
        return pool

    def _check_deadline(self) -> None:
        deadline = self.options.deadline
        if deadline is not None and time.monotonic() > deadline and not self._cancel.is_set():
            self.cancel(f"timed out after {self.options.timeout_seconds:g} s (WORKER_TIMEOUT)")

    def _fetch(
        self,
        scheduler: Scheduler,
        pool,
        ctx,
        processes: int,
        worker_job: WorkerJob,
        shared: SharedState,
        known: dict[str, ShardInfo],
        shards_dir: Path,
    ):
        in_flight: dict[cf.Future, Piece] = {}
        failures: list[PageFailure] = []
        rebuilds = 0
        settled = 0  # pieces done (an inline pool hands over to the pool after the first)
        last_change = 0.0
        while True:
            self._check_deadline()
            if self._cancel.is_set() or failures:
                break
            # Sources fed by a parent that is now fetched: the pool drains, then restarts with them.
            waiting = scheduler.waiting()
            capacity = processes * PIECES_PER_PROCESS
            # One process's worth of work: the inline pool is that process, for the whole run.
            if isinstance(pool, InlinePool) and processes > 1:
                # (a parent's children restart the pool anyway: _start_children)
                more_work = settled > 0 and not in_flight and not waiting and not scheduler.done()
                start = partial(self._started_pool, ctx, processes, worker_job)
                pool, shared = self._leave_inline(pool, shared, more_work, start)
                if isinstance(pool, InlinePool):
                    # One piece at a time, and none once the pool is starting: a piece taken
                    # then would hold its pages on this process's one GIL while the pool idles.
                    capacity = 0 if self._starting is not None else 1
                    if self._starting is not None and not in_flight:
                        cf.wait([self._starting], timeout=0.25)
                        continue
            while not waiting and len(in_flight) < capacity:
                piece = scheduler.next_piece()
                if piece is None:
                    break
                in_flight[pool.submit(run_piece, piece)] = piece
            if not in_flight:
                if waiting:
                    pool, shared, worker_job = self._start_children(
                        waiting, scheduler, pool, ctx, processes, worker_job, shared, shards_dir
                    )
                    continue
                if scheduler.done():
                    break
                raise JobFailed("internal error: the planner has pages left but nothing to fetch")
            # while the pool starts, look at it often: its processes should take over at once
            wait = 0.25 if self._starting is None else 0.01
            finished, _ = cf.wait(in_flight, timeout=wait, return_when=cf.FIRST_COMPLETED)
            broken = False
            for future in finished:
                piece = in_flight.pop(future)
                try:
                    result: PieceResult = future.result()
                except BrokenProcessPool:
                    broken = True
                    scheduler.release(piece)
                    continue
                except JobFailed:  # says what failed (RESULT_STORE, REDIS_URL lost mid-run): its own message
                    raise
                except OSError as exc:
                    raise JobFailed(f"cannot write shards to the work directory: {exc.strerror or exc}") from None
                except Exception as exc:
                    raise JobFailed(
                        self.prepared.redactor.text(f"internal error in an engine process: {type(exc).__name__}: {exc}")
                    ) from None
                for info in result.shards:
                    known[info.file_name] = info
                scheduler.settle(piece, result)
                settled += 1
                failures.extend(result.fatal)
            if broken:
                rebuilds += 1
                if rebuilds > MAX_POOL_REBUILDS:
                    raise JobFailed(f"engine processes died {rebuilds} times; giving up")
                log.warning("an engine process died; rebuilding the pool (%d)", rebuilds)
                for piece in list(in_flight.values()):
                    scheduler.release(piece)
                in_flight.clear()
                self._kill(pool)
                pool.shutdown(wait=False, cancel_futures=True)
                # Pieces of the dead pool may have finished shards before dying: take them in.
                self._copy.sync_shards()  # both ways: a dead process's shard may be on one side only
                for info in list_shards(shards_dir, known=known):
                    if info.file_name not in known:
                        known[info.file_name] = info
                        scheduler.record(info)
                remove_temp_files(shards_dir)
                shared = shared.renew(
                    ctx,
                    self.spec.rate_limit.requests if self.spec.rate_limit else None,
                    self.spec.concurrency or self.options.workers,
                )
                pool = self._new_pool(ctx, processes, worker_job, shared)
                self._fetch_pool = (pool, shared)
            now = time.monotonic()
            for i, plan in enumerate(scheduler.sources):
                if i not in self._source_seconds and plan.done():
                    self._source_seconds[i] = round(now - self._started, 3)
            if now - last_change >= 0.2:
                last_change = now
                self._changed()
        if self._cancel.is_set() or failures:
            shared.cancel.set()
            self._drain(in_flight, scheduler, failures)
            self._kill(pool)
            if failures:
                raise JobFailed(self._failure_message(failures), failures)
            if self._cancel_reason.startswith("timed out"):
                raise JobFailed(self._cancel_reason)
            raise JobCancelled(self._cancel_reason)
        self.fetch_processes = len(getattr(pool, "_processes", None) or {})  # a Dask pool: 0
        return pool, shared

    def _drain(self, in_flight: dict, scheduler: Scheduler, failures: list[PageFailure]) -> None:
        """Give in-flight pieces a moment to stop by themselves (their finished pages become
        shards, useful to --resume); whatever is still running then gets killed."""
        if not in_flight:
            return
        finished, _ = cf.wait(in_flight, timeout=CANCEL_GRACE)
        for future in finished:
            try:
                result = future.result()
            except Exception:
                continue
            scheduler.settle(in_flight[future], result)
            failures.extend(f for f in result.fatal if f not in failures)

    # ------------------------------------------------------------ dependent sources
    def _start_children(
        self,
        waiting: list[int],
        scheduler: Scheduler,
        pool,
        ctx,
        processes: int,
        worker_job: WorkerJob,
        shared: SharedState,
        shards_dir: Path,
    ):
        """Sources fed by a parent's records (`ids.from`) whose parent is fetched: their values
        are read from the parent's shards in row order (in a pool process: Arrow), their units
        planned, and the pool started again knowing them - a pool process learns a job's ids
        and unit slots when it starts. Called with nothing in flight."""
        selected = self._select_shards(scheduler, shards_dir)
        id_values, offsets = list(worker_job.id_values), list(worker_job.unit_offsets)
        slots = max(
            (offsets[i] + p.fanout.count for i, p in enumerate(scheduler.sources) if not p.fanout.pending), default=0
        )
        for i in waiting:
            source = self.spec.sources[i]
            parent = scheduler.parents[i]
            assert source.ids is not None and parent is not None  # waiting: a source with `ids.from`
            at = f"sources.{i}.ids.field"
            paths = [str(x.path) for x in selected[parent]]
            for attempt in range(3):
                try:
                    found: ParentValues = self._await(pool.submit(parent_values, paths, source.ids.field))
                    break
                except BrokenProcessPool:  # a pool process was killed: a new pool reads them
                    if attempt == 2:
                        raise JobFailed("engine processes kept dying while reading a parent's records") from None
                    self._kill(pool)
                    pool.shutdown(wait=False, cancel_futures=True)
                    shared = self._renew(ctx, shared)
                    pool = self._new_pool(ctx, processes, worker_job, shared)
                    self._fetch_pool = (pool, shared)
                except ValueError as exc:
                    raise JobFailed(f"{at}: {exc}") from None
                except (JobFailed, JobCancelled):
                    raise
                except Exception as exc:  # an unreadable shard: say so, not "internal error"
                    raise JobFailed(
                        f"cannot read the records of source {self.spec.sources[parent].name!r}: "
                        f"{type(exc).__name__}: {str(exc)[:300]}"
                    ) from None
            if found.records and not found.found:
                raise JobFailed(
                    f"{at}: the records of source {self.spec.sources[parent].name!r} have no field "
                    f"{source.ids.field!r} (fields: {', '.join(found.columns)})"
                )
            fanout = FanOut(source, found.values)
            problems = check_child(i, source, fanout, self.options.outbound)
            if problems:
                raise JobFailed(self.prepared.redactor.text(f"{problems[0].field}: {problems[0].message}"))
            keep = self._same_ids(i, found.values)
            if not keep:
                self._forget_shards(scheduler.deferred_shards(i))
            scheduler.set_fanout(i, fanout, keep)
            id_values[i], offsets[i] = found.values, slots
            slots += fanout.count
            log.info("source %r: %d ids from %r, %d units", source.name, len(found.values), source.parent, fanout.count)
        if slots > MAX_UNITS:
            raise JobFailed(f"sources: the fan-out makes {slots} units; at most {MAX_UNITS} per job")
        worker_job = replace(worker_job, id_values=id_values, unit_offsets=offsets)
        self._kill(pool)
        pool.shutdown(wait=True, cancel_futures=True)
        shared = self._renew(ctx, shared, slots)
        pool = self._new_pool(ctx, processes, worker_job, shared)
        self._fetch_pool = (pool, shared)
        return pool, shared, worker_job

    def _renew(self, ctx, shared: SharedState, units: int | None = None) -> SharedState:
        rl = self.spec.rate_limit
        return shared.renew(ctx, rl.requests if rl else None, self.spec.concurrency or self.options.workers, units)

    def _await(self, future: cf.Future, pool=None):
        """A pool call's result, the job's cancel and deadline still heard (the pool's processes
        are killed then, when given)."""
        while True:
            self._check_deadline()
            if self._cancel.is_set():
                if pool is not None:
                    self._kill(pool)
                if self._cancel_reason.startswith("timed out"):
                    raise JobFailed(self._cancel_reason)
                raise JobCancelled(self._cancel_reason)
            try:
                return future.result(timeout=0.25)
            except cf.TimeoutError:
                continue

    def _same_ids(self, index: int, values: list) -> bool:
        """Whether a resumed run reads the ids an earlier run fetched this source's shards for
        (its parent's pages may have been fetched again, and changed); the digest is kept in the
        work directory."""
        ids = self.spec.sources[index].ids
        assert ids is not None
        digest = hashlib.sha256(json.dumps([ids.batch, ids.separator, values], default=str).encode()).hexdigest()
        marker = self.options.workdir / "fanout" / f"s{index:03d}.sha256"
        try:
            before = marker.read_text().strip()
        except OSError:
            before = None
        if before != digest:
            marker.parent.mkdir(parents=True, exist_ok=True)
            temp = marker.with_suffix(".tmp")
            temp.write_text(digest)
            os.replace(temp, marker)
            self._copy.push(marker)
        return before in (None, digest)

    def _forget_shards(self, infos: list[ShardInfo]) -> None:
        self._copy.forget(info.file_name for info in infos if info.path is not None)
        for info in infos:
            if info.path is not None:
                drop_shard(info.path, "it was fetched for ids its parent no longer has")
                self._known.pop(info.file_name, None)
            self._progress.base[info.source][0] -= info.pages
            self._progress.base[info.source][1] -= info.records

    @staticmethod
    def _failure_message(failures: list[PageFailure]) -> str:
        first = failures[0]
        more = f" (and {len(failures) - 1} more page{'s' if len(failures) > 2 else ''})" if len(failures) > 1 else ""
        return f"page {first.url} failed: {first.error}{more}"

    @staticmethod
    def _kill(pool) -> None:
        if isinstance(pool, (ExportHere, InlinePool)):  # threads of this process: nothing to kill
            return
        if not isinstance(pool, cf.ProcessPoolExecutor):  # a Dask pool: its pieces stop and return
            pool.kill()
            return
        for process in list((getattr(pool, "_processes", None) or {}).values()):  # None once shut down
            try:
                process.kill()
            except Exception:
                pass

    def _stop_pool(self, pool, shared: SharedState) -> None:
        shared.cancel.set()
        self._kill(pool)
        pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------ reduce + export
    def _select_shards(self, scheduler: Scheduler, shards_dir: Path) -> list[list[ShardInfo]]:
        """Each source's shards in row order, minus those past a unit's end; checks that the
        shards hold every page exactly once."""
        selected: list[list[ShardInfo]] = [[] for _ in self.spec.sources]
        self._copy.sync_shards(set(self._known))  # a piece that ran on another host stored its shard there
        # The directory is the ledger; shards the pieces reported are not read again (reading
        # them would load pyarrow into this process just for their metadata).
        for info in list_shards(shards_dir, known=self._known):
            plan = scheduler.sources[info.source]
            (u1, p1), (u2, _) = info.first, info.last
            if u1 == u2 and u1 in plan.units:
                end = plan.units[u1].end
                if end is not None and p1 > end:
                    continue
            selected[info.source].append(info)
        for i, infos in enumerate(selected):
            for before, after in zip(infos, infos[1:]):
                if after.first <= before.last:
                    raise JobFailed(
                        f"internal error: shards of source {self.spec.sources[i].name!r} overlap "
                        f"({before.file_name}, {after.file_name})"
                    )
        return selected

    def _export(self, scheduler: Scheduler, ctx, shards_dir: Path, started: float) -> JobResult:
        if not scheduler.done():
            raise JobFailed("internal error: fetching ended with pages missing")
        selected = self._select_shards(scheduler, shards_dir)
        self._progress.read(*self._boards)
        skipped = [
            dict(s, source=self.spec.sources[i].name)
            for i, infos in enumerate(selected)
            for info in infos
            for s in info.skipped
        ]
        per_source: list[dict[str, Any]] = []
        for i, infos in enumerate(selected):
            per_source.append(
                {
                    "name": self.spec.sources[i].name,
                    "pages": sum(x.pages for x in infos),
                    "records": sum(x.records for x in infos),
                    "requests": self._progress.totals[i][Counter.REQUESTS],
                    "retries": self._progress.totals[i][Counter.RETRIES],
                    "skipped_pages": sum(len(x.skipped) + x.rule_skipped for x in infos),
                }
            )
        partial = bool(skipped)
        redactor = self.prepared.redactor
        manifest = redactor.data(
            {
                "job_id": self.options.job_id,
                "name": self.spec.name,
                "spec": redactor.spec(spec_to_json(self.prepared.spec)),
                "sources": per_source,
                "partial": partial,
                "skipped_pages": skipped,
                "started_at": self.started_at,
                "finished_at": utcnow(),
            }
        )
        self.options.output.parent.mkdir(parents=True, exist_ok=True)
        request = ExportRequest(
            spec=self.spec,
            output=str(self.options.output),
            manifest=manifest,
            tables=[  # a source with "export": false was fetched for its children's ids only
                (self.spec.sources[i].name, [str(x.path) for x in infos])
                for i, infos in enumerate(selected)
                if self.spec.sources[i].export
            ],
            table_job=table_job(self.spec, self.options.workdir, redactor.secrets, self.options.outbound),
        )
        self.phase = "exporting"
        self._changed()
        pool, self._export_pool = self._export_pool, None
        if pool is None:  # not started early (a rate-limited job)
            pool = self._start_export_pool(ctx)
        try:
            try:
                future = pool.submit(run_export, request)
            except RuntimeError:  # a broken pool: its process died while waiting
                pool.shutdown(wait=False, cancel_futures=True)
                pool = self._start_export_pool(ctx)
                future = pool.submit(run_export, request)
            exported = self._wait_for_export(future, pool)
        finally:
            self._kill(pool)
            pool.shutdown(wait=True, cancel_futures=True)
        finished_at = utcnow()
        return JobResult(
            job_id=self.options.job_id,
            output=exported.path,
            bytes=exported.bytes,
            sha256=exported.sha256,
            rows=sum(exported.rows.values()),
            rows_by_source=dict(exported.rows),
            records=sum(s["records"] for s in per_source),
            pages=sum(s["pages"] for s in per_source),
            requests=self._progress.sum(Counter.REQUESTS),
            retries=self._progress.sum(Counter.RETRIES),
            downloaded=self._progress.sum(Counter.BYTES),
            partial=partial,
            skipped=skipped,
            skipped_pages=sum(s["skipped_pages"] for s in per_source),
            seconds=round(time.monotonic() - started, 3),
            started_at=self.started_at,
            finished_at=finished_at,
            deliveries=list(exported.deliveries),  # the table targets' (loaded by the export process)
            state=incremental.run_state(self.spec, self._incremental, selected),
            sources=[
                {
                    **s,
                    "bytes": self._progress.totals[i][Counter.BYTES],
                    "seconds": self._source_seconds.setdefault(i, round(time.monotonic() - started, 3)),
                }
                for i, s in enumerate(per_source)
            ],
        )

    def _deliver(self, result: JobResult) -> list[dict]:
        """Copies to the `deliver` targets; a failed copy is an outcome, not a failed job."""
        from engine.deliver.targets import DeliveryStopped, deliver_all

        def stop() -> bool:
            self._check_deadline()
            return self._cancel.is_set()

        try:
            return deliver_all(
                self.spec.deliver,
                result.output,
                self.prepared.redactor,
                stop,
                policy=self.options.outbound,
                ambient_credentials=self.options.ambient_credentials,
                ca_file=self.options.ftps_ca_file,
            )
        except DeliveryStopped:
            if self._cancel_reason.startswith("timed out"):
                raise JobFailed(self._cancel_reason) from None
            raise JobCancelled(self._cancel_reason) from None

    def _start_export_pool(self, ctx) -> cf.Executor:
        """The job's export process (one), started now: it loads Polars while it waits. With
        `export_here`, a thread of this process instead."""
        if self.options.export_here:
            return ExportHere()
        pool = cf.ProcessPoolExecutor(
            max_workers=1, mp_context=ctx, initializer=start_export_process, initargs=(self.options.nice, os.getpid())
        )
        pool.submit(ready)
        return pool

    def _wait_for_export(self, future: cf.Future, pool):
        try:
            return self._await(future, pool)
        except (JobFailed, JobCancelled):
            raise
        except BrokenProcessPool:
            raise JobFailed("the engine process writing the export died") from None
        except OSError as exc:
            raise JobFailed(f"cannot write the result: {exc.strerror or exc}") from None
        except Exception as exc:
            raise JobFailed(self.prepared.redactor.text(_export_error(exc))) from None


def _export_error(exc: Exception) -> str:
    """A shaping/export failure in words a user can act on (Polars' messages are long)."""
    if isinstance(exc, ShapingError):  # already names the source, the field and the column
        return exc.message
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"export failed: {text[:500]}"


class ExportHere(cf.Executor):
    """Runs the export on a daemon thread of this process, Polars loaded as soon as it is made
    (a daemon: a cancelled CLI run exits without waiting for an export it gave up on)."""

    def __init__(self) -> None:
        self._loaded = load_export_here()

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        future: cf.Future = cf.Future()

        def work() -> None:
            self._loaded.join()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting coordinator
                    future.set_exception(exc)

        threading.Thread(target=work, name="export", daemon=True).start()
        return future
