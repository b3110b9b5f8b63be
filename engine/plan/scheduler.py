"""Planning: which pages to fetch next, as pieces of work for the process pool. A pure state
machine driven by coverage (the ledger of finished shards): needed minus covered minus in
flight is what gets planned, so fresh, resumed and recovering runs all plan the same way.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from engine.errors import PageFailure  # noqa: F401  (PieceResult.fatal)
from engine.plan.fanout import FanOut
from engine.plan.pagination import is_sequential
from engine.shards import ShardInfo
from engine.spec.models import JobSpec

ROWS_PER_PIECE = 32_768  # bounds a piece's memory in its process
MAX_PAGES_PER_PIECE = 2_048  # ... and its per-page objects (a table, a result) when pages are tiny
RUN_CHUNK_PAGES = 64  # pages of a sequential run per shard (the resume granularity)


class RangeSet:
    """Sorted, disjoint, inclusive integer ranges."""

    def __init__(self, ranges: Iterable[Sequence[int]] = ()) -> None:
        self.ranges: list[list[int]] = []
        for a, b in ranges:
            self.add(a, b)

    def add(self, first: int, last: int) -> None:
        merged = []
        placed = False
        for a, b in self.ranges:
            if b < first - 1:
                merged.append([a, b])
            elif a > last + 1:
                if not placed:
                    merged.append([first, last])
                    placed = True
                merged.append([a, b])
            else:
                first, last = min(a, first), max(b, last)
        if not placed:
            merged.append([first, last])
        merged.sort()
        self.ranges = merged

    def remove(self, first: int, last: int) -> None:
        out = []
        for a, b in self.ranges:
            if b < first or a > last:
                out.append([a, b])
                continue
            if a < first:
                out.append([a, first - 1])
            if b > last:
                out.append([last + 1, b])
        self.ranges = out

    def __contains__(self, value: int) -> bool:
        return any(a <= value <= b for a, b in self.ranges)

    def covers(self, first: int, last: int) -> bool:
        return any(a <= first and last <= b for a, b in self.ranges)

    def gaps(self, first: int, last: int):
        """Sub-ranges of first..last not in the set."""
        cursor = first
        for a, b in self.ranges:
            if b < cursor:
                continue
            if a > last:
                break
            if a > cursor:
                yield cursor, min(a - 1, last)
            cursor = max(cursor, b + 1)
            if cursor > last:
                return
        if cursor <= last:
            yield cursor, last

    def count(self) -> int:
        return sum(b - a + 1 for a, b in self.ranges)


@dataclass(frozen=True)
class PageSpan:
    unit: int
    first: int
    last: int
    size: int | None = None  # page size for short-page detection and offsets


@dataclass(frozen=True)
class RunSpan:
    unit: int
    page: int  # the page the run starts at
    token: str | None  # its token (None: the unit's first page)
    max_pages: int
    seen: frozenset = frozenset()  # digests of the unit's tokens so far: a repeat means a loop


@dataclass(frozen=True)
class Piece:
    id: int
    source: int
    spans: tuple[PageSpan, ...] = ()
    runs: tuple[RunSpan, ...] = ()

    @property
    def pages(self) -> int:
        return sum(s.last - s.first + 1 for s in self.spans) + sum(r.max_pages for r in self.runs)


@dataclass
class PieceResult:
    piece_id: int
    shards: list[ShardInfo] = field(default_factory=list)
    fatal: list[PageFailure] = field(default_factory=list)
    cancelled: bool = False
    seen_tokens: dict[int, list[str]] = field(default_factory=dict)


@dataclass
class UnitState:
    covered: RangeSet = field(default_factory=RangeSet)
    in_flight: RangeSet = field(default_factory=RangeSet)
    size: int | None = None
    total: int | None = None
    end: int | None = None
    frontier: int = 1  # highest page handed out (addressable, unknown end)
    token: str | None = None  # next token after the covered prefix (sequential)
    seen: set = field(default_factory=set)
    running: bool = False

    def done(self) -> bool:
        return self.end is not None and not any(True for _ in self.covered.gaps(1, self.end))


def _digest(token: str) -> bytes:
    return hashlib.blake2b(token.encode(), digest_size=8).digest()


class SourcePlan:
    def __init__(self, index: int, spec: JobSpec, fanout: FanOut, threads: int, processes: int = 1):
        self.index = index
        self.source = spec.sources[index]
        self.fanout = fanout
        self.pagination = self.source.pagination
        self.sequential = is_sequential(self.pagination)
        self.max_pages = self.source.max_pages
        self.threads = threads
        self.processes = processes
        self.known_pages = 0  # sum of the ends known so far (sizes the blocks)
        self.probed = RangeSet()  # units whose page 1 is covered
        self.probing = RangeSet()  # units whose page 1 is in flight
        self.units: dict[int, UnitState] = {}  # units with more than page 1 to track
        self.skipped: list[dict] = []
        self.failed = False

    # ------------------------------------------------------------ sizes
    def _page_size(self) -> int:
        return self.pagination.size or next((u.size for u in self.units.values() if u.size), None) or 100

    def block_pages(self) -> int:
        """Pages per piece. Every piece ends in a pause - its last requests drain, its shard is
        written, the next piece is handed over (docs/performance.md) - so with one
        process a piece is as large as the memory bound allows. With several, it is about a
        quarter of a process's share of the known pages, so every process gets work and none
        finishes long after the others. At least enough to keep the piece's requests in flight."""
        cap = max(min(ROWS_PER_PIECE // max(self._page_size(), 1), MAX_PAGES_PER_PIECE), 1)
        share = cap
        if self.processes > 1 and self.known_pages:
            share = math.ceil(self.known_pages / (4 * self.processes))
        return max(min(share, cap), 2 * self.threads, 1)

    def _unit(self, unit: int) -> UnitState:
        state = self.units.get(unit)
        if state is None:
            state = self.units[unit] = UnitState(size=self.pagination.size)
        return state

    # ------------------------------------------------------------ ledger
    def record(self, info: ShardInfo) -> None:
        """Take a finished shard into account (from a piece, or from disk on resume)."""
        (u1, p1), (u2, p2) = info.first, info.last
        self.skipped.extend(s for s in info.skipped if s not in self.skipped)
        if u1 != u2 or self.pagination.type == "none":  # page 1 of consecutive units
            self.probed.add(u1, u2)
            return
        if p1 == 1:
            self.probed.add(u1, u1)
            if p2 == 1 and info.ends.get(u1) == 1 and u1 not in self.units:
                self.known_pages += 1
                return  # a one-page unit needs no state: `probed` says it all
        state = self._unit(u1)
        state.covered.add(p1, p2)
        state.frontier = max(state.frontier, p2)
        state.size = state.size or info.sizes.get(u1)
        if info.totals.get(u1) is not None:
            state.total = info.totals[u1]
        # A sequential run learns its end only by reaching it; an addressable unit also ends
        # at its total and at max_pages (a configured maximum always wins).
        candidates = [info.ends.get(u1)]
        if not self.sequential:
            candidates += [state.total, self.max_pages]
        before = state.end
        for candidate in candidates:
            if candidate is not None:
                state.end = max(1, candidate if state.end is None else min(state.end, candidate))
        if state.end is not None and state.end != before:  # only ever set to a number above
            self.known_pages += state.end - (before or 0)
        if self.sequential and u1 in info.next_tokens and state.covered.covers(1, p2):
            state.token = info.next_tokens[u1]

    # ------------------------------------------------------------ planning
    def needs_probe(self) -> bool:
        return self.probed.count() + self.probing.count() < self.fanout.count

    def _unprobed_units(self):
        taken = RangeSet(self.probed.ranges)
        for a, b in self.probing.ranges:
            taken.add(a, b)
        return taken.gaps(0, self.fanout.count - 1)

    def plan_probe(self, piece_id: int, limit: int) -> Piece | None:
        for first, last in self._unprobed_units():
            last = min(last, first + limit - 1)
            self.probing.add(first, last)
            if self.sequential:
                runs = tuple(RunSpan(u, 1, None, self._chunk(1)) for u in range(first, last + 1))
                for u in range(first, last + 1):
                    self._unit(u).running = True
                return Piece(piece_id, self.index, runs=runs)
            spans = tuple(PageSpan(u, 1, 1, self.pagination.size) for u in range(first, last + 1))
            return Piece(piece_id, self.index, spans=spans)
        return None

    def _chunk(self, page: int) -> int:
        if self.max_pages is None:
            return RUN_CHUNK_PAGES
        return max(0, min(RUN_CHUNK_PAGES, self.max_pages - page + 1))

    def plan_more(self, piece_id: int, budget: int) -> Piece | None:
        """Pages after page 1: known gaps first, then, for a unit whose end is unknown, the
        next block - small at first and doubling as the unit proves long, so short units of a
        fan-out waste little and long ones soon fill the pool."""
        if self.sequential:
            return self._plan_runs(piece_id)
        spans: list[PageSpan] = []
        room = budget
        for unit in sorted(self.units):
            if room <= 0:
                break
            state = self.units[unit]
            if 1 not in state.covered or state.done():
                continue
            limit = state.end if state.end is not None else state.frontier
            for a, b in state.covered.gaps(2, limit):
                for c, d in state.in_flight.gaps(a, b):
                    d = min(d, c + room - 1)
                    spans.append(PageSpan(unit, c, d, state.size))
                    state.in_flight.add(c, d)
                    room -= d - c + 1
                    if room <= 0:
                        break
                if room <= 0:
                    break
            if room > 0 and state.end is None:
                first = state.frontier + 1
                last = first + min(room, max(self.threads, state.frontier)) - 1
                spans.append(PageSpan(unit, first, last, state.size))
                state.in_flight.add(first, last)
                state.frontier = last
                room -= last - first + 1
        return Piece(piece_id, self.index, spans=tuple(spans)) if spans else None

    def _plan_runs(self, piece_id: int) -> Piece | None:
        runs = []
        for unit in sorted(self.units):
            state = self.units[unit]
            if state.running or state.end is not None or 1 not in state.covered:
                continue
            page = (state.covered.ranges[0][1] + 1) if state.covered.ranges else 1
            if state.token is None:
                continue
            max_pages = self._chunk(page)
            if max_pages <= 0:
                state.end = page - 1
                continue
            runs.append(RunSpan(unit, page, state.token, max_pages, frozenset(state.seen)))
            state.running = True
            if len(runs) >= self.threads:
                break
        return Piece(piece_id, self.index, runs=tuple(runs)) if runs else None

    # ------------------------------------------------------------ results
    def settle(self, piece: Piece, result: PieceResult) -> None:
        """Take a piece's outcome in."""
        for info in result.shards:
            self.record(info)
        self._unclaim(piece)
        for run in piece.runs:
            self._unit(run.unit).seen.update(_digest(token) for token in result.seen_tokens.get(run.unit, []))

    def release(self, piece: Piece) -> None:
        """A piece that never reported (its process died): its pages go back to planning."""
        self._unclaim(piece)

    def _unclaim(self, piece: Piece) -> None:
        """The piece's pages and runs are no longer in flight (done or handed back)."""
        for span in piece.spans:
            if span.first == 1 and span.last == 1:
                self.probing.remove(span.unit, span.unit)
            if span.unit in self.units:
                self.units[span.unit].in_flight.remove(span.first, span.last)
        for run in piece.runs:
            if run.page == 1:
                self.probing.remove(run.unit, run.unit)
            if run.unit in self.units:
                self.units[run.unit].running = False

    # ------------------------------------------------------------ state
    def done(self) -> bool:
        if self.fanout.pending or self.probed.count() < self.fanout.count:
            return False
        return all(state.done() for state in self.units.values())

    def pages_total(self) -> int | None:
        """Pages the source will take, once every unit knows its end (or total)."""
        if self.fanout.pending:
            return None
        if self.pagination.type == "none":
            return self.fanout.count
        if self.probed.count() < self.fanout.count:
            return None
        total = self.fanout.count - len(self.units)  # one-page units
        for state in self.units.values():
            known = state.end if state.end is not None else state.total
            if known is None:
                return None
            total += known
        return total

    def pages_covered(self) -> int:
        if self.pagination.type == "none":
            return self.probed.count()
        one_page_units = self.probed.count() - sum(1 for u in self.units if u in self.probed)
        return one_page_units + sum(
            s.covered.count()
            if s.end is None
            else sum(min(b, s.end) - a + 1 for a, b in s.covered.ranges if a <= s.end)
            for s in self.units.values()
        )


class Scheduler:
    """All sources of a job; hands out pieces in source order, probes before later pages.

    - Addressable pagination (`none`, `page`, `offset`): page 1 of every unit is probed first
      (batched across units). When page 1 reveals the total, the remaining pages are split into
      blocks; when it doesn't, blocks are claimed in page order until a short page ends the unit.
    - Sequential pagination (`cursor`, `next_url`, `link`): each unit runs in chunks of pages,
      each chunk continuing from the previous one's next token; units of a source (and sources)
      run side by side.
    - A source fed by another's records (`ids.from`) plans nothing until its parent is done and
      its values are set (`waiting`, `set_fanout`); its shards found on disk wait until then.
    """

    def __init__(
        self, spec: JobSpec, fanouts: list[FanOut], threads: int, ledger: Sequence[ShardInfo] = (), processes: int = 1
    ):
        self.sources = [SourcePlan(i, spec, fanouts[i], threads, processes) for i in range(len(spec.sources))]
        index = {s.name: i for i, s in enumerate(spec.sources)}
        self.parents = [index.get(s.parent) if s.parent is not None else None for s in spec.sources]
        self.deferred: dict[int, list[ShardInfo]] = {}  # shards of sources whose units are not known yet
        for info in ledger:
            self.record(info)
        self._ids = itertools.count(1)
        self.in_flight: dict[int, Piece] = {}

    def next_piece(self) -> Piece | None:
        for plan in self.sources:
            if plan.needs_probe():
                limit = max(1, min(plan.block_pages(), plan.threads * 4)) if not plan.sequential else plan.threads
                piece = plan.plan_probe(next(self._ids), limit)
                if piece:
                    self.in_flight[piece.id] = piece
                    return piece
        for plan in self.sources:
            piece = plan.plan_more(next(self._ids), plan.block_pages())
            if piece:
                self.in_flight[piece.id] = piece
                return piece
        return None

    def settle(self, piece: Piece, result: PieceResult) -> None:
        self.in_flight.pop(piece.id, None)
        self.sources[piece.source].settle(piece, result)

    def release(self, piece: Piece) -> None:
        self.in_flight.pop(piece.id, None)
        self.sources[piece.source].release(piece)

    def record(self, info: ShardInfo) -> None:
        if self.sources[info.source].fanout.pending:
            self.deferred.setdefault(info.source, []).append(info)
        else:
            self.sources[info.source].record(info)

    def done(self) -> bool:
        return all(plan.done() for plan in self.sources)

    # ------------------------------------------------------------ dependent sources
    def waiting(self) -> list[int]:
        """Sources whose units are still unknown while their parent is done: their ids can be
        read now."""
        ready = []
        for i, plan in enumerate(self.sources):
            parent = self.parents[i]
            if plan.fanout.pending and parent is not None and self.sources[parent].done():
                ready.append(i)
        return ready

    def deferred_shards(self, index: int) -> list[ShardInfo]:
        return list(self.deferred.get(index, []))

    def set_fanout(self, index: int, fanout: FanOut, keep: bool = True) -> None:
        """A source's units, now known. Its shards found on disk (--resume) are taken in, or,
        `keep=False` (they were fetched for other ids), forgotten: the caller deletes them."""
        plan = self.sources[index]
        plan.fanout = fanout
        for info in self.deferred.pop(index, []):
            if keep:
                plan.record(info)
