"""The scheduler, driven by a fake API and fake workers that follow the real workers' rules:
pieces complete in random order, some are lost (a killed process) or the run restarts from
its ledger (resume) - and every page must still end up in exactly one shard."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from engine.plan.fanout import FanOut
from engine.plan.scheduler import RUN_CHUNK_PAGES, Piece, PieceResult, RangeSet, Scheduler, _digest
from engine.shards import ShardInfo
from engine.spec.models import parse_spec


@dataclass
class FakeAPI:
    pages: dict[int, int]  # unit -> its number of pages (the last one is short)
    totals: bool = False  # page 1 tells the total
    ends: dict[int, int] = field(default_factory=dict)  # the workers' shared "unit ends"
    requests: int = 0

    def run(self, piece: Piece, sequential: bool, none: bool) -> PieceResult:
        result = PieceResult(piece.id)
        kept = []
        for span in piece.spans:
            for page in range(span.first, span.last + 1):
                if page > self.ends.get(span.unit, 10**9):
                    continue  # the worker checks the shared end before each request
                self.requests += 1
                last = none or page >= self.pages[span.unit]
                if last:
                    self.ends[span.unit] = min(self.ends.get(span.unit, 10**9), page)
                kept.append((span.unit, page, last, self.pages[span.unit] if (page == 1 and self.totals) else None))
        for run in piece.runs:
            seen = []
            for page in range(run.page, run.page + run.max_pages):
                self.requests += 1
                last = page >= self.pages[run.unit]
                kept.append((run.unit, page, last, None))
                if last:
                    break
                seen.append(f"t{run.unit}-{page + 1}")
            result.seen_tokens[run.unit] = seen
        kept = [k for k in kept if k[1] <= self.ends.get(k[0], 10**9)]
        # segments: consecutive pages of a unit (or page 1 of consecutive units for `none`)
        segments: list[list] = []
        for item in kept:
            if segments:
                u, p = segments[-1][-1][:2]
                follows = (item[0] == u and item[1] == p + 1) or (none and item[0] == u + 1 and item[1] == 1)
                if follows:
                    segments[-1].append(item)
                    continue
            segments.append([item])
        for seg in segments:
            info = ShardInfo(piece.source, seg[0][:2], seg[-1][:2], pages=len(seg))
            for unit, page, last, total in seg:
                if last:
                    info.ends[unit] = page
                if total is not None:
                    info.totals[unit] = total
                if sequential and not last:
                    info.next_tokens[unit] = f"t{unit}-{page + 1}"
            result.shards.append(info)
        return result


def make(
    kind: str, units: int, max_pages: int | None = None, threads: int = 4, processes: int = 2, ledger=()
) -> Scheduler:
    pagination = {"type": kind} if kind in ("none", "cursor", "link") else {"type": kind, "size": 10}
    source = {"url": "http://api.test/{id}", "pagination": pagination, "ids": {"range": {"start": 0, "end": units}}}
    if max_pages:
        source["max_pages"] = max_pages
    spec = parse_spec({"sources": [source]})
    return Scheduler(spec, [FanOut(spec.sources[0])], threads, list(ledger), processes)


def drive(
    scheduler: Scheduler,
    api: FakeAPI,
    kind: str,
    rng: random.Random,
    in_flight_max: int = 4,
    lose: float = 0.0,
    stop_after: int | None = None,
) -> list[ShardInfo]:
    shards: list[ShardInfo] = []
    in_flight: list[Piece] = []
    settled = 0
    for _ in range(100_000):  # a planner that never finishes fails instead of hanging
        while len(in_flight) < in_flight_max:
            piece = scheduler.next_piece()
            if piece is None:
                break
            in_flight.append(piece)
        if not in_flight:
            break
        piece = in_flight.pop(rng.randrange(len(in_flight)))
        if rng.random() < lose:
            scheduler.release(piece)  # its process died before reporting
            continue
        result = api.run(piece, kind in ("cursor", "link"), kind == "none")
        shards.extend(result.shards)
        scheduler.settle(piece, result)
        settled += 1
        if stop_after is not None and settled >= stop_after:
            for piece in in_flight:
                scheduler.release(piece)
            return shards
    else:
        raise AssertionError("the scheduler never finished")
    assert scheduler.done()
    return shards


def assert_exactly_once(shards: list[ShardInfo], api: FakeAPI, max_pages: int | None = None) -> None:
    covered: dict[int, list[int]] = {}
    for info in shards:
        (u1, p1), (u2, p2) = info.first, info.last
        if u1 != u2:
            for u in range(u1, u2 + 1):
                covered.setdefault(u, []).append(1)
        else:
            covered.setdefault(u1, []).extend(range(p1, p2 + 1))
    for unit, pages in api.pages.items():
        want = min(pages, max_pages or pages)
        got = sorted(p for p in covered.get(unit, []) if p <= api.ends.get(unit, want))
        assert got == list(range(1, want + 1)), (unit, got[:20])


@pytest.mark.parametrize("kind", ["page", "offset", "cursor", "link"])
@pytest.mark.parametrize("totals", [True, False])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_page_planned_exactly_once(kind, totals, seed):
    rng = random.Random(seed)
    api = FakeAPI({u: rng.choice([1, 1, 2, 3, 7, 40, 150]) for u in range(12)}, totals=totals)
    shards = drive(make(kind, 12), api, kind, rng)
    assert_exactly_once(shards, api)


def test_one_page_units_are_batched_and_done():
    rng = random.Random(7)
    api = FakeAPI({u: 1 for u in range(500)})
    scheduler = make("none", 500)
    shards = drive(scheduler, api, "none", rng)
    assert_exactly_once(shards, api)
    assert api.requests == 500
    assert len(shards) < 500  # consecutive units share shards


def test_known_total_is_split_across_processes():
    scheduler = make("page", 1, processes=2, threads=2)
    api = FakeAPI({0: 200}, totals=True)
    probe = scheduler.next_piece()
    scheduler.settle(probe, api.run(probe, False, False))
    pieces = []
    while (piece := scheduler.next_piece()) is not None:
        pieces.append(piece)
    assert sum(p.pages for p in pieces) == 199  # pages 2..200, each once
    assert len(pieces) >= 4 * 2 - 1  # enough pieces for both processes
    assert max(p.pages for p in pieces) <= 50


def test_unknown_total_claims_growing_blocks_and_wastes_little():
    rng = random.Random(3)
    api = FakeAPI({0: 300}, totals=False)
    shards = drive(make("page", 1, threads=4), api, "page", rng, in_flight_max=4)
    assert_exactly_once(shards, api)
    assert api.requests <= 300 + 4 * 4  # speculative pages past the end: bounded by what runs at once


@pytest.mark.parametrize("kind", ["page", "cursor"])
def test_max_pages_bounds_every_unit(kind):
    rng = random.Random(5)
    api = FakeAPI({u: 100 for u in range(3)}, totals=True)
    shards = drive(make(kind, 3, max_pages=7), api, kind, rng)
    assert_exactly_once(shards, api, max_pages=7)
    assert api.requests <= 3 * 7


@pytest.mark.parametrize("kind", ["page", "cursor", "none"])
def test_lost_pieces_are_planned_again(kind):
    rng = random.Random(11)
    api = FakeAPI({u: (1 if kind == "none" else rng.choice([1, 5, 30])) for u in range(20)}, totals=True)
    shards = drive(make(kind, 20), api, kind, rng, lose=0.3)
    assert_exactly_once(shards, api)


@pytest.mark.parametrize("kind", ["page", "offset", "cursor", "none"])
@pytest.mark.parametrize("stop_after", [3, 8, 20])
def test_resume_plans_only_what_the_ledger_lacks(kind, stop_after):
    rng = random.Random(13)
    pages = {u: (1 if kind == "none" else rng.choice([1, 4, 90])) for u in range(10)}
    api = FakeAPI(dict(pages), totals=kind != "offset")
    first = drive(make(kind, 10), api, kind, rng, stop_after=stop_after)
    requests_before = api.requests
    resumed = make(kind, 10, ledger=first)
    api2 = FakeAPI(dict(pages), totals=api.totals, ends=dict(api.ends))
    rest = drive(resumed, api2, kind, rng)
    assert_exactly_once(first + rest, api2)
    total_pages = sum(pages.values())
    assert api2.requests < total_pages + 10 * 4 and requests_before > 0


def test_sequential_runs_continue_from_the_last_token():
    scheduler = make("cursor", 1)
    api = FakeAPI({0: RUN_CHUNK_PAGES * 2 + 5})
    first = scheduler.next_piece()
    assert first.runs[0].token is None and first.runs[0].page == 1
    scheduler.settle(first, api.run(first, True, False))
    second = scheduler.next_piece()
    assert second.runs[0].page == RUN_CHUNK_PAGES + 1
    assert second.runs[0].token == f"t0-{RUN_CHUNK_PAGES + 1}"
    assert _digest(f"t0-{RUN_CHUNK_PAGES}") in second.runs[0].seen  # loops across chunks are caught


def test_rangeset_algebra():
    r = RangeSet([(1, 3), (7, 9)])
    r.add(4, 5)
    assert r.ranges == [[1, 5], [7, 9]]
    r.remove(2, 8)
    assert r.ranges == [[1, 1], [9, 9]]
    assert list(RangeSet([(3, 4)]).gaps(1, 6)) == [(1, 2), (5, 6)]
    assert RangeSet([(1, 10)]).covers(2, 9) and not RangeSet([(1, 5)]).covers(4, 6)
    assert RangeSet([(1, 2), (5, 5)]).count() == 3
