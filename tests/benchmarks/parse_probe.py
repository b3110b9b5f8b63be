"""How a JSON page becomes Arrow. First table: one page on its own - orjson, then `pa.array`
over the records (the Python path), beside the native readers a page could be handed to
(pyarrow's and Polars' NDJSON readers over the records joined as NDJSON), CPU time per page for
pages of 100, 1,000 and 10,000 test-API records. Second table: the pages of one shard
(32,768 rows), per page - the Python path page by page against the native one (each page
decoded and its records packed, then the shard through the source's `PackedReader`, which has
read a first page: its time-like field kept as text). Third table: that read a given number of
bytes at a time (`READ_BYTES`). Not a test: a probe for docs/performance.md.

    python tests/benchmarks/parse_probe.py [--rounds N]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.json as pj

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.fetch import records  # noqa: E402
from engine.fetch.records import PackedReader, parse_page  # noqa: E402
from engine.spec.models import CsvSourceOptions  # noqa: E402
from tests.testapi.records import record  # noqa: E402


def cpu_us(fn, rounds: int) -> float:
    fn()
    started = time.process_time()
    for _ in range(rounds):
        fn()
    return (time.process_time() - started) / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    options = CsvSourceOptions()
    names = ("records", "pageferry", "orjson", "pa.array", "+ndjson", "pyarrow.json", "polars")
    widths = (8, 10, 8, 9, 8, 13, 8)
    print(" ".join(f"{name:>{width}}" for name, width in zip(names, widths)))
    for n in (100, 1_000, 10_000):
        rounds = max(args.rounds * 100 // n, 5)
        body = orjson.dumps({"data": [record(i) for i in range(1, n + 1)], "meta": {"page": 1}})
        doc = orjson.loads(body)
        ndjson = b"\n".join(map(orjson.dumps, doc["data"]))
        figures = [
            cpu_us(lambda: parse_page(body, "json", "data", options), rounds),
            cpu_us(lambda: orjson.loads(body), rounds),
            cpu_us(lambda: pa.array(doc["data"]), rounds),
            cpu_us(lambda: b"\n".join(map(orjson.dumps, doc["data"])), rounds),
            cpu_us(lambda: pj.read_json(io.BytesIO(ndjson)), rounds),
            cpu_us(lambda: pl.read_ndjson(io.BytesIO(ndjson)), rounds),
        ]
        print(f"{n:>8} " + " ".join(f"{f:>{w}.0f}" for f, w in zip(figures, widths[1:])))
    print("CPU µs per page (all threads); a native reader needs orjson.loads (pagination) and the NDJSON join too")
    print()
    shard_table(options, args.rounds)
    print()
    read_size_table(args.rounds)


def shard_table(options: CsvSourceOptions, rounds: int) -> None:
    """CPU µs per page when a shard's pages are parsed: page by page, or packed + the native
    reader (engine/fetch/records.py `PackedReader`) that has seen the source's first page, as
    in a fetch process. The test API's records, `meta.created` (a date) included."""
    print(f"{'records':>8} {'page by page':>13} {'packed+shard':>13} {'ratio':>6}")
    for n in (100, 1_000):
        pages = 32_768 // n
        bodies = []
        for page in range(pages):
            records = [record(page * n + i) for i in range(1, n + 1)]
            bodies.append(orjson.dumps({"data": records, "meta": {"page": page + 1}}))
        reader = PackedReader()
        assert reader.read([orjson.dumps(orjson.loads(bodies[0])["data"])]) is not None

        def by_page() -> None:
            for body in bodies:
                parse_page(body, "json", "data", options).table  # noqa: B018 - built eagerly

        def packed() -> None:  # a piece keeps each page's packed records, not its document
            kept = [orjson.dumps(orjson.loads(body)["data"]) for body in bodies]  # (any page size)
            assert reader.read(kept) is not None

        shard_rounds = max(rounds // 50, 3)
        old, new = cpu_us(by_page, shard_rounds) / pages, cpu_us(packed, shard_rounds) / pages
        print(f"{n:>8} {old:>13.0f} {new:>13.0f} {new / old:>6.2f}")


def read_size_table(rounds: int) -> None:
    """CPU µs per page of a shard's native read (100-record pages, packed) by bytes per read."""
    packed = [orjson.dumps([record(page * 100 + i) for i in range(1, 101)]) for page in range(327)]
    reader = PackedReader()
    assert reader.read(packed[:1]) is not None
    default = records.READ_BYTES
    print(f"{'bytes per read':>15} {'µs per page':>12}")
    try:
        for size in (256 << 10, 1 << 20, 2 << 20, 64 << 20):
            records.READ_BYTES = size
            cost = cpu_us(lambda: reader.read(packed), max(rounds // 50, 3)) / len(packed)
            print(f"{size >> 10:>12} KiB {cost:>12.0f}" + ("  (READ_BYTES)" if size == default else ""))
    finally:
        records.READ_BYTES = default


if __name__ == "__main__":
    main()
