"""How baseline (c) (baselines/async_polars.py) should turn pages into one Polars frame: the
ways of feeding `pl.read_ndjson` (or `pl.read_json`) from raw test-API page bodies, wall and CPU
time for 200k rows in 2,000 pages and 1M rows in 1,000 pages. Not a test: the probe behind (c)'s
choice, for docs/performance.md.

    python tests/benchmarks/ndjson_join_probe.py [--rounds 3]

- records:  per page orjson.loads + orjson.dumps per record joined by b"\\n" (the per-page part
            runs in (c)'s event loop as pages arrive), then one read_ndjson over all records;
- pages:    every raw body as one NDJSON line (no per-page work), read_ndjson, explode "data";
- slices:   each body's records array sliced out as raw bytes, joined into one JSON array,
            pl.read_json (a raw slice is comma-separated records, not NDJSON lines);
- (b):      baseline (b)'s orjson.loads per page + one pa.array over every record.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import polars as pl
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.testapi.records import page_range, record  # noqa: E402


def bodies(pages: int, per_page: int) -> list[bytes]:
    n = pages * per_page
    return [
        orjson.dumps({"data": [record(i) for i in page_range(p, per_page, n)], "meta": {"page": p}})
        for p in range(1, pages + 1)
    ]


def per_page_records(pages: list[bytes]) -> list[bytes]:
    return [b"\n".join(map(orjson.dumps, orjson.loads(body)["data"])) for body in pages]


def via_records(pages: list[bytes]) -> pl.DataFrame:
    return pl.read_ndjson(b"\n".join(per_page_records(pages)))


def via_pages(pages: list[bytes]) -> pl.DataFrame:
    return pl.read_ndjson(b"\n".join(pages)).select(pl.col("data").explode()).unnest("data")


def via_slices(pages: list[bytes]) -> pl.DataFrame:
    # Only safe for this API's exact shape ({"data":[...],"meta":{numbers}}): shown for its speed.
    arrays = [body[body.index(b"[") + 1 : body.rindex(b'],"meta"')] for body in pages]
    return pl.read_json(b"[" + b",".join(arrays) + b"]")


def via_pa_array(pages: list[bytes]) -> pl.DataFrame:
    records = [r for body in pages for r in orjson.loads(body)["data"]]
    return pl.DataFrame(pa.Table.from_struct_array(pa.array(records)))


def best(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    """(wall s, CPU s of all threads) of the fastest of `rounds` calls after one warm call."""
    fn()
    runs = []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    gc.disable()  # as in the contenders
    ways = {"records": via_records, "pages": via_pages, "slices": via_slices, "(b) pa.array": via_pa_array}
    for pages, per_page in ((2_000, 100), (1_000, 1_000)):
        data = bodies(pages, per_page)
        expected = via_records(data)
        print(f"\n{pages * per_page:,} rows in {pages:,} pages      wall s    CPU s")
        wall, cpu = best(lambda: per_page_records(data), args.rounds)
        print(f"  {'records: the per-page part alone':34s} {wall:7.3f}  {cpu:7.3f}")
        for name, way in ways.items():
            assert way(data).equals(expected), f"{name}: a different frame"
            wall, cpu = best(lambda: way(data), args.rounds)
            print(f"  {name:34s} {wall:7.3f}  {cpu:7.3f}")


if __name__ == "__main__":
    main()
