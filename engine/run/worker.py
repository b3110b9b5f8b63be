"""What runs inside the job's pool processes.

`init_worker` runs once per process (the shared-memory primitives can only travel this way,
by inheritance at process start); `run_piece` fetches one piece and writes its shards;
`run_export` reduces the shards into the result file. All three keep per-job state in module
globals, because a pool process belongs to exactly one job.

Each process fetches on one event loop with one HTTP session: a piece of addressable pages
(page/offset) keeps `threads` requests in flight; a piece of sequential runs (cursor, next
URL, link) follows each run page after page, all runs at once - no threads needed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.util import Finalize
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pyarrow as pa

from engine.errors import PageFailure
from engine.fetch.auth import DictTokenStore, make_auth
from engine.fetch.client import HttpClient, with_query
from engine.fetch.page import FetchError, Gate, PageFetcher, PageOutcome, SourceRequestSpec
from engine.fetch.ratelimit import Limiter
from engine.fetch.records import PackedReader, ParsedPage, records_to_table
from engine.plan.fanout import FanOut, Unit
from engine.plan.pagination import (
    PageRequest,
    addressable_request,
    is_last_addressable,
    next_token,
    sequential_request,
    total_pages,
)
from engine.plan.scheduler import Piece, PieceResult, RunSpan, _digest
from engine.run.incremental import SourceBounds, fold, unit_key
from engine.run.messages import UNKNOWN_END, ExportRequest, SharedState, WorkerJob
from engine.run.pool import lower_priority, process_alive
from engine.run.progress import Counter, Counters, retry_cause
from engine.shards import ShardInfo, unify, write_shard
from engine.spec.redact import Redactor
from engine.storage.work import upload_shard

REPORT_EVERY = 0.25  # seconds between progress pushes to the Manager board
# Collect the youngest generation every this many new container objects instead of 700: each
# page's decoded document is thousands of dicts that live for a moment, and the default makes
# the collector run (and promote them to older generations) many times a page.
GC_YOUNG_THRESHOLD = 10_000
CANCEL_CHECK = 0.5  # a sleep looks for a cancel at least this often
PARENT_CHECK = 0.05  # s between looks at the coordinator's process (each reads /proc)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _SourceRuntime:
    index: int
    fanout: FanOut
    request: SourceRequestSpec
    fetcher: PageFetcher
    bounds: SourceBounds | None = None  # an incremental source's lower bounds
    native_checked: bool = False  # its first packed page was tried on the native reader
    reader: PackedReader = field(default_factory=PackedReader)  # its packed pages' native reads


@dataclass
class _Process:
    job: WorkerJob
    shared: SharedState
    counters: Counters
    sources: list[_SourceRuntime]
    loop: asyncio.AbstractEventLoop
    client: HttpClient
    redactor: Redactor
    limiter: Limiter
    parent_alive: bool = True
    parent_checked: float = 0.0  # time.monotonic() of the last look at the coordinator
    tables: dict = field(default_factory=dict)
    board_key: str = field(default_factory=lambda: f"proc:{os.getpid()}")  # its counters on the board


_P: _Process | None = None
# A thread that runs pieces of any job (a Dask worker's, engine/run/dask_pool.py): its job's state.
_local = threading.local()


def _state() -> _Process:
    """This thread's or process's job state; set before any piece runs (`init_worker`)."""
    state = getattr(_local, "state", None) or _P
    assert state is not None, "init_worker has not run in this process"
    return state


# ---------------------------------------------------------------- process life


def init_worker(job: WorkerJob, shared: SharedState) -> None:
    global _P
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    lower_priority(job.nice)
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    _P = build_state(job, shared)
    Finalize(_P, _close, exitpriority=10)  # runs when the pool process exits normally
    threading.Thread(target=_report_loop, name="progress", daemon=True).start()


def build_state(job: WorkerJob, shared: SharedState, board_key: str | None = None) -> _Process:
    """The job's state in this process (or thread): limiter, event loop, HTTP client, counters."""
    spec = job.spec
    rl = spec.rate_limit
    # Arrow's default allocator (mimalloc) keeps the JSON reader's freed buffers resident; the
    # system's gives them back (a fetch process's peak: docs/performance.md).
    pa.set_memory_pool(pa.system_memory_pool())
    limiter = shared.limiter.rate_limiter(  # over shared memory, a budget's file or Redis
        rl.requests if rl else None, rl.per if rl else 1.0, rl.effective_burst if rl else None
    )
    loop = asyncio.new_event_loop()
    client = HttpClient(job.max_body, job.outbound, lanes=job.threads)
    counters = Counters(len(spec.sources))
    store = DictTokenStore(shared.board, shared.token_lock)
    redactor = Redactor(job.secrets)  # grows: OAuth2 access tokens are added as they are obtained
    sources = []
    for i, source in enumerate(spec.sources):
        gate = Gate(
            limiter=limiter,
            semaphore=shared.semaphore,
            cancelled=_cancelled,
            sleep=_sleep,
            on_request=partial(counters.add, i, Counter.REQUESTS),
            on_retry=partial(_count_retry, counters, i),
            on_bytes=partial(counters.add, i, Counter.BYTES),
        )
        auth = make_auth(source.auth, store, f"oauth2:{job.job_id}:{i}", spec.timeout, client, redactor.add)
        request = SourceRequestSpec.for_source(source, auth, redactor.text)
        # JSON records stay packed until their shard is built (one native read for all its
        # pages), except where a page's cursor is read from its own table (incremental), and
        # under a rate limit: the job is paced by its limit, and a read at a piece's end would
        # hold back the sends a new window allows.
        request.pack = source.incremental is None and rl is None
        sources.append(
            _SourceRuntime(
                i, FanOut(source, job.id_values[i]), request, PageFetcher(client, gate, spec.retry, spec.timeout)
            )
        )
        if source.incremental is not None:
            sources[-1].bounds = SourceBounds(source, job.incremental[i] if job.incremental else None)
    state = _Process(job, shared, counters, sources, loop, client, redactor, limiter)
    if board_key is not None:
        state.board_key = board_key
    return state


def _count_retry(counters: Counters, source: int, error: FetchError) -> None:
    counters.add_retry(source, _state().redactor.text(retry_cause(error.status, error.message)))


def _close() -> None:
    if _P is not None:
        close_state(_P)


def close_state(state: _Process) -> None:
    """Close the HTTP session and the loop (best effort: the process or the job is ending)."""
    if state.loop.is_closed() or state.loop.is_running():
        return
    try:
        state.loop.run_until_complete(state.client.close())
        state.loop.close()
    except Exception:  # noqa: BLE001 - nothing to do about it at exit
        pass


def greet(hold: float) -> int:
    """A no-op the coordinator uses to start every pool process up front."""
    time.sleep(hold)
    return os.getpid()


def _parent_alive() -> bool:
    state = _state()
    pid = state.job.coordinator_pid
    if pid is None:  # the coordinator is on another host (Dask)
        return True
    now = time.monotonic()
    if state.parent_alive and now - state.parent_checked >= PARENT_CHECK:
        state.parent_checked = now
        state.parent_alive = process_alive(pid)
    return state.parent_alive


def _cancelled() -> bool:
    return _state().shared.cancel.is_set() or not _parent_alive()


async def _sleep(seconds: float) -> bool:
    """Sleep on the event loop, waking early when the job is cancelled or its coordinator is
    gone: returns True then."""
    deadline = time.monotonic() + seconds
    while True:
        if _cancelled():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(remaining, CANCEL_CHECK))


def _report_loop() -> None:
    """Pushes this process's counters to the board, and ends the process when the coordinator
    is gone: an idle pool process would otherwise wait forever for work (it holds both ends
    of the call queue's pipe, so it never sees EOF), and keep the forkserver alive with it."""
    key = f"proc:{os.getpid()}"
    seen = -1
    while True:
        time.sleep(REPORT_EVERY)
        if not _parent_alive():
            os._exit(0)
        state = _state()
        if state.counters.version != seen:
            seen = state.counters.version
            try:
                state.shared.board[key] = state.counters.snapshot(state.limiter.paused_until())
            except Exception:  # the Manager is gone: the job is over
                continue


def flush_progress(state: _Process | None = None) -> None:
    try:
        state = state or _state()
        state.shared.board[state.board_key] = state.counters.snapshot(state.limiter.paused_until())
    except Exception:
        pass


# ---------------------------------------------------------------- ends of units


def _end_of(source: int, unit: int) -> int:
    state = _state()
    return state.shared.ends[state.job.unit_offsets[source] + unit]


def _set_end(source: int, unit: int, page: int) -> None:
    state = _state()
    index = state.job.unit_offsets[source] + unit
    with state.shared.ends_lock:
        if page < state.shared.ends[index]:
            state.shared.ends[index] = page


# ---------------------------------------------------------------- pages


@dataclass
class _Page:
    unit: int
    page: int
    table: pa.Table | None = None  # its records (unit columns added), or:
    packed: bytes | None = None  # its records packed (ParsedPage.packed), read with the shard's
    records: int = 0
    last: bool = False  # this page ends its unit
    total: int | None = None  # pages total (from page 1)
    size: int | None = None  # page size learned from page 1
    token: str | None = None  # next token (sequential)
    failure: PageFailure | None = None
    fetched: bool = False
    rule_skipped: bool = False  # a `skip` response rule matched: no records, ends its unit
    unit_key: str | None = None  # incremental sources: the unit's key in the state
    cursor: Any = None  # incremental sources: the page's largest cursor value


def _failure(runtime: _SourceRuntime, url: str, params: dict, outcome: PageOutcome) -> PageFailure:
    error = outcome.error
    assert error is not None
    # The URL as requested, a query-param credential shown as `***`; no attempt count when
    # none went out (the credentials could not be obtained).
    shown = with_query(url, runtime.request.auth.shown_params(params))
    tries = f" (after {outcome.attempts} attempt{'s' if outcome.attempts != 1 else ''})" if outcome.attempts else ""
    return PageFailure(
        url=_state().redactor.url(shown),
        status=error.status,
        error=_state().redactor.text(f"{error.message}{tries}"),
        source=_state().job.spec.sources[runtime.index].name,
    )


def _with_unit_columns(runtime: _SourceRuntime, unit, table: pa.Table) -> pa.Table:
    columns = runtime.fanout.columns(unit)
    for position, (name, value) in enumerate(columns.items()):
        if isinstance(value, dt.date):
            array = pa.array([value] * table.num_rows, pa.date32())
        elif isinstance(value, int):
            array = pa.array([value] * table.num_rows, pa.int64())
        else:
            array = pa.array([value] * table.num_rows, pa.string())
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.add_column(position, name, array)
    return table


def _take_records(page: _Page, runtime: _SourceRuntime, unit: Unit, parsed: ParsedPage) -> None:
    if parsed.packed is not None and not runtime.native_checked:
        # The source's first packed page in this process: does the native reader take its
        # records? If not (records that disagree on a type, say), the source's pages stop
        # packing now rather than after a whole shard of them.
        runtime.native_checked = True
        table = runtime.reader.read([parsed.packed])
        if table is None:
            runtime.request.pack = False
        # either way the page is a table now: the check's read (the same rows) is not redone
        page.table = _with_unit_columns(runtime, unit, parsed.table if table is None else table)
        return
    if parsed.packed is not None:
        page.packed = parsed.packed  # its unit's columns are added to the shard's table
    else:
        page.table = _with_unit_columns(runtime, unit, parsed.table)


def _packed_table(runtime: _SourceRuntime, pages: list[_Page]) -> pa.Table:
    """The records of consecutive packed pages as one table with their units' columns: one
    native read (`PackedReader`), or page by page where it declines."""
    table = runtime.reader.read([page.packed for page in pages if page.packed is not None])
    if table is None:  # records the reader cannot take as they are: this source's pages stop packing
        runtime.request.pack = False
    units = {page.unit for page in pages}
    if table is not None and len(units) == 1:
        return _with_unit_columns(runtime, runtime.fanout.unit(pages[0].unit), table)
    parts = []
    offset = 0
    for page in pages:
        assert page.packed is not None
        if table is None:
            part = records_to_table(orjson.loads(page.packed))
        else:  # several units (pagination none): each page's rows get their own unit's values
            part, offset = table.slice(offset, page.records), offset + page.records
        parts.append(_with_unit_columns(runtime, runtime.fanout.unit(page.unit), part))
    return unify(parts)


def _unit_request(runtime: _SourceRuntime, unit: Unit) -> PageRequest:
    """The unit's request before pagination: URL, query, body (fan-out values substituted)
    and the incremental lower bound, wherever `incremental.param` puts it."""
    url, params = runtime.fanout.request_base(unit)
    body = runtime.fanout.body_base(unit)
    request = PageRequest(url, params, body, None)
    return request if runtime.bounds is None else runtime.bounds.apply(request, unit)


async def _fetch_addressable(runtime: _SourceRuntime, unit_index: int, page: int, size: int | None) -> _Page:
    request = _addressable_request(runtime, unit_index, page, size)
    if request is None:
        return _Page(unit_index, page)
    outcome = await runtime.fetcher.fetch(runtime.request, request.url, request.params, request.body, request.headers)
    return _addressable_page(runtime, unit_index, page, size, request, outcome)


def _addressable_request(runtime: _SourceRuntime, unit_index: int, page: int, size: int | None):
    """The request for a page of an addressable unit; None when it is not to be fetched (the
    job is cancelled, or its unit is known to end before it)."""
    if _cancelled() or page > _end_of(runtime.index, unit_index):
        return None
    source = _state().job.spec.sources[runtime.index]
    base = _unit_request(runtime, runtime.fanout.unit(unit_index))
    return addressable_request(
        source.pagination, base.url, base.params, page, size, base.body, source.in_body, base.headers
    )


def _addressable_page(
    runtime: _SourceRuntime, unit_index: int, page: int, size: int | None, request, outcome: PageOutcome
) -> _Page:
    result = _Page(unit_index, page)
    if outcome.cancelled:
        return result
    source = _state().job.spec.sources[runtime.index]
    unit = runtime.fanout.unit(unit_index)
    result.fetched = True
    if runtime.bounds is not None:
        result.unit_key = unit_key(unit)
    if outcome.error is not None:
        result.failure = _failure(runtime, request.url, request.params, outcome)
        return result
    if outcome.skipped:  # like an empty page: no records, and the unit ends here
        result.rule_skipped = result.last = True
        _set_end(runtime.index, unit_index, page)
        return result
    parsed = outcome.parsed
    assert parsed is not None  # no error and not cancelled: the page was parsed
    result.records = parsed.records
    if runtime.bounds is not None:
        result.cursor = runtime.bounds.page_max(parsed.table, parsed.doc)
    _take_records(result, runtime, unit, parsed)
    if page == 1:
        result.size = size or (parsed.records or None)
        headers = outcome.response.headers if outcome.response is not None else None
        result.total = total_pages(source.pagination, parsed.doc, result.size, headers)
    effective_size = size or result.size
    result.last = is_last_addressable(
        source.pagination,
        page,
        parsed.records,
        effective_size if page > 1 or size else None,
        result.total,
        source.max_pages,
    )
    if result.last:
        _set_end(runtime.index, unit_index, page)
    _state().counters.add_page(runtime.index, parsed.records)
    return result


async def _run_sequence(runtime: _SourceRuntime, run: RunSpan) -> list[_Page]:
    """Fetch one chunk of a sequential pagination, page after page."""
    source = _state().job.spec.sources[runtime.index]
    unit = runtime.fanout.unit(run.unit)
    base = _unit_request(runtime, unit)
    pages: list[_Page] = []
    token = run.token
    tokens = set(run.seen)
    for page in range(run.page, run.page + run.max_pages):
        if _cancelled():
            break
        request = sequential_request(
            source.pagination, base.url, base.params, token, base.body, source.in_body, base.headers
        )
        outcome = await runtime.fetcher.fetch(
            runtime.request, request.url, request.params, request.body, request.headers
        )
        if outcome.cancelled:
            break
        result = _Page(run.unit, page, fetched=True)
        pages.append(result)
        if runtime.bounds is not None:
            result.unit_key = unit_key(unit)
        if outcome.error is not None:
            result.failure = _failure(runtime, request.url, request.params, outcome)
            result.last = True
            break
        if outcome.skipped:  # a rule-skipped page has no next token: the unit ends here
            result.rule_skipped = result.last = True
            break
        parsed, response = outcome.parsed, outcome.response
        assert parsed is not None and response is not None  # no error and not cancelled
        result.records = parsed.records
        if runtime.bounds is not None:
            result.cursor = runtime.bounds.page_max(parsed.table, parsed.doc)
        _take_records(result, runtime, unit, parsed)
        _state().counters.add_page(runtime.index, parsed.records)
        following = next_token(source.pagination, parsed.doc, response.links, response.url, response.headers)
        if following is not None and source.pagination.type in ("next_url", "link"):
            following = runtime.request.auth.without_credentials(following)
        if following is not None and _digest(following) in tokens:
            result.failure = PageFailure(
                url=_state().redactor.url(with_query(request.url, runtime.request.auth.shown_params(request.params))),
                status=None,
                error=f"pagination repeats a {source.pagination.type} token: the next "
                f"page would be one already fetched (the API loops)",
                source=source.name,
            )
            result.table, result.packed, result.records = None, None, 0
            result.last = True
            break
        if following is None or (source.max_pages is not None and page >= source.max_pages):
            result.last = True
            break
        tokens.add(_digest(following))
        result.token = following
        token = following
    return pages


# ---------------------------------------------------------------- segments → shards


class _Segment:
    def __init__(self, source: int, page: _Page):
        self.source = source
        self.first = (page.unit, page.page)
        self.last = self.first
        self.pages: list[_Page] = []

    def add(self, page: _Page) -> None:
        self.pages.append(page)
        self.last = (page.unit, page.page)

    def info(self) -> ShardInfo:
        info = ShardInfo(self.source, self.first, self.last)
        for page in self.pages:
            if page.failure is not None:
                info.skipped.append({"unit": page.unit, "page": page.page, **page.failure.as_dict()})
            elif page.rule_skipped:
                info.rule_skipped += 1
            else:
                info.pages += 1
                info.records += page.records
            if page.last:
                info.ends[page.unit] = page.page
            if page.total is not None:
                info.totals[page.unit] = page.total
            if page.size is not None:
                info.sizes[page.unit] = page.size
            if page.token is not None:
                info.next_tokens[page.unit] = page.token
            if page.unit_key is not None:  # an incremental source's page
                bounds = _state().sources[self.source].bounds
                assert bounds is not None  # unit keys are noted only where there are bounds
                fold(info.cursors, page.unit_key, page.cursor, page.failure is not None, bounds.time)
        return info

    def table(self) -> pa.Table:
        """The shard's rows, page order kept: runs of packed pages read natively in one go."""
        runtime = _state().sources[self.source]
        parts: list[pa.Table] = []
        run: list[_Page] = []
        for page in self.pages:
            if page.packed is not None:
                run.append(page)
                continue
            if run:
                parts.append(_packed_table(runtime, run))
                run = []
            if page.table is not None:
                parts.append(page.table)
        if run:
            parts.append(_packed_table(runtime, run))
        return unify(parts)


def _segments(source: int, pages: list[_Page], one_page_units: bool) -> list[_Segment]:
    segments: list[_Segment] = []
    current: _Segment | None = None
    for page in pages:
        if current is not None:
            unit, number = current.last
            follows = (page.unit == unit and page.page == number + 1) or (
                one_page_units and page.page == 1 and number == 1 and page.unit == unit + 1
            )
            if not follows:
                segments.append(current)
                current = None
        if current is None:
            current = _Segment(source, page)
        current.add(page)
    if current is not None:
        segments.append(current)
    return segments


def _keep(pages: list[_Page], source: int, skip_failures: bool) -> list[_Page]:
    """Pages that belong in shards: fetched, not past their unit's end, and not failed -
    unless failures are skipped (then the failed page is covered, as a skipped page)."""
    ends: dict[int, int] = {}
    for page in pages:
        if page.last:
            ends[page.unit] = min(ends.get(page.unit, UNKNOWN_END), page.page)
    kept = []
    for page in pages:
        end = min(ends.get(page.unit, UNKNOWN_END), _end_of(source, page.unit))
        if not page.fetched or page.page > end:
            continue
        if page.failure is not None and not skip_failures:
            continue
        kept.append(page)
    return kept


def _on_loop(fn: Callable[[T], Awaitable[R]], items: list[T]) -> list[R]:
    """`fn` (a coroutine function) over `items` on the process's event loop, `threads` in
    flight at a time, results in order. A failure cancels the rest and is raised as it is."""

    async def run_all() -> list[R]:
        results: list[Any] = [None] * len(items)
        work = iter(enumerate(items))

        async def lane() -> None:
            for index, item in work:
                results[index] = await fn(item)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(max(_state().job.threads, 1), len(items))):
                    group.create_task(lane())
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return results

    return _state().loop.run_until_complete(run_all())


def run_piece(piece: Piece) -> PieceResult:
    state = _state()
    runtime = state.sources[piece.source]
    source = state.job.spec.sources[piece.source]
    skip = state.job.spec.on_error == "skip"
    result = PieceResult(piece.id)
    if piece.spans:
        work = [(s.unit, p, s.size) for s in piece.spans for p in range(s.first, s.last + 1)]
        pages = _on_loop(lambda w: _fetch_addressable(runtime, *w), work)
    else:
        # A piece holds at most `threads` runs (the scheduler's limit): all run at once.
        seen = {}
        chunks = _on_loop(partial(_run_sequence, runtime), list(piece.runs))
        pages = [page for chunk in chunks for page in chunk]
        for run, chunk in zip(piece.runs, chunks):
            seen[run.unit] = [p.token for p in chunk if p.token is not None]
        result.seen_tokens = seen
    result.fatal = [p.failure for p in pages if p.failure is not None and not skip]
    result.cancelled = _cancelled()
    kept = _keep(pages, piece.source, skip)
    shards_dir = Path(state.job.shards_dir)
    for segment in _segments(piece.source, kept, source.pagination.type == "none"):
        info = segment.info()
        path = write_shard(shards_dir, segment.table(), info)
        if state.job.result_store is not None:  # stored before the piece reports it (engine/storage/work.py)
            upload_shard(state.job.result_store, path)
        result.shards.append(info)
    flush_progress()
    return result


def run_piece_with(state: _Process, piece: Piece) -> PieceResult:
    """`run_piece` on a thread that serves pieces of any job (a Dask worker's): `state` is its job's."""
    _local.state = state
    try:
        return run_piece(piece)
    finally:
        _local.state = None


def run_export(request: ExportRequest) -> Any:
    """Reduce the shards and write the result file, inside a pool process so the caller's
    process (a gunicorn worker, say) never holds the data - nor even imports Polars."""
    from engine.export.reduce import export_job

    return export_job(request)
