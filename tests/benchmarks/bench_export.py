"""Benchmark of engine.export against raw Polars sinks and DataFrame.write_excel.

    python tests/benchmarks/bench_export.py [--repeat 3] [--shards 1000] [--xlsx-rows 200000]

Writes `--shards` Arrow IPC shards of 1,000 rows (8 columns) to a temp dir, then times
(median of `--repeat`, runs interleaved):
- CSV / Parquet: `export_tables` over `engine.export.reduce.scan_source(files)` (the reducer's
  frame; includes fsync, sha256 and the row count) vs a raw
  `pl.scan_ipc(files).sink_csv / sink_parquet`. Target: ratio <= 1.3. Also shown: a relaxed
  concat of one scan per shard sunk directly (what the reducer does when schemas drifted).
- XLSX, `--xlsx-rows` rows: `export_tables(..., "xlsx")` vs `pl.DataFrame.write_excel`
  (xlsxwriter). Target: speed-up >= 5.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

try:
    import engine.export  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.export import Table, export_tables  # noqa: E402
from engine.export.reduce import scan_source  # noqa: E402

ROWS_PER_SHARD = 1_000


def make_shards(directory: Path, n_shards: int) -> list[str]:
    files = []
    for k in range(n_shards):
        base = k * ROWS_PER_SHARD
        df = pl.DataFrame({"i": pl.int_range(base, base + ROWS_PER_SHARD, eager=True)}).select(
            pl.col("i").alias("id"),
            pl.format("customer-{}-{}", pl.col("i") % 977, pl.col("i")).alias("name"),
            (pl.col("i") * 1.37 % 1000).round(2).alias("amount"),
            (pl.col("i") % 100).cast(pl.Int32).alias("qty"),
            (pl.col("i") % 3 == 0).alias("active"),
            (pl.lit(dt.date(2020, 1, 1)) + pl.duration(days=pl.col("i") % 2000)).alias("day"),
            (pl.lit(dt.datetime(2024, 1, 1)) + pl.duration(seconds=pl.col("i"))).alias("ts"),
            pl.format("cat{}", pl.col("i") % 17).alias("category"),
        )
        path = directory / f"shard-{k:05d}.arrow"
        df.write_ipc(path)
        files.append(str(path))
    return files


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(work: Path, repeat: int = 3, n_shards: int = 1_000, xlsx_rows: int = 200_000, log=print) -> dict:
    """Write the shards into `work` and time every contender (interleaved). Returns
    {"rows", "xlsx_rows", "seconds": {case: {contender: median s}}, "runs": {...}}."""
    (work / "shards").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    files = make_shards(work / "shards", n_shards)
    rows = len(files) * ROWS_PER_SHARD
    log(f"{len(files)} shards x {ROWS_PER_SHARD} rows x 8 columns written in {time.perf_counter() - t0:.1f}s")

    def reduced() -> pl.LazyFrame:
        return scan_source(files)  # the engine's reducer: what the export step gets

    seconds: dict[str, dict[str, float]] = {}
    runs: dict[str, dict[str, list[float]]] = {}
    for fmt in ("csv", "parquet"):

        def raw(fmt=fmt):
            lf = pl.scan_ipc(files)
            (lf.sink_csv if fmt == "csv" else lf.sink_parquet)(work / f"raw.{fmt}")

        def concat_raw(fmt=fmt):
            lf = pl.concat([pl.scan_ipc(f) for f in files], how="diagonal_relaxed")
            (lf.sink_csv if fmt == "csv" else lf.sink_parquet)(work / f"concat.{fmt}")

        def ours(fmt=fmt):
            out = export_tables([Table("bench", reduced())], fmt, work / f"ours.{fmt}")
            assert out.rows == {"bench": rows}, out.rows

        runs[fmt] = interleaved_runs(repeat, raw=raw, concat_raw=concat_raw, ours=ours)
        seconds[fmt] = {k: statistics.median(v) for k, v in runs[fmt].items()}
        t = seconds[fmt]
        log(f"  {fmt}: raw {t['raw']:.3f}s, concat+sink {t['concat_raw']:.3f}s, export_tables {t['ours']:.3f}s")

    n_x = min(xlsx_rows, rows)
    x_files = files[: (n_x + ROWS_PER_SHARD - 1) // ROWS_PER_SHARD]
    x_frame = lambda: scan_source(x_files).head(n_x)  # noqa: E731

    def write_excel():
        x_frame().collect().write_excel(work / "we.xlsx")

    def ours_xlsx():
        out = export_tables([Table("bench", x_frame())], "xlsx", work / "ours.xlsx")
        assert out.rows == {"bench": n_x}, out.rows

    runs["xlsx"] = interleaved_runs(repeat, write_excel=write_excel, ours=ours_xlsx)
    seconds["xlsx"] = {k: statistics.median(v) for k, v in runs["xlsx"].items()}
    log(f"  xlsx: write_excel {seconds['xlsx']['write_excel']:.3f}s, export_tables {seconds['xlsx']['ours']:.3f}s")
    sizes = {"write_excel": (work / "we.xlsx").stat().st_size, "ours": (work / "ours.xlsx").stat().st_size}
    return {"rows": rows, "xlsx_rows": n_x, "seconds": seconds, "runs": runs, "xlsx_bytes": sizes}


def interleaved_runs(repeat: int, **fns) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            # Untimed: write back what the previous run left dirty, so no contender's fsync
            # (engine.export's) pays for another's deferred writes (the raw sinks never flush).
            os.sync()
            times[name].append(timed(fn))
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--shards", type=int, default=1_000)
    ap.add_argument("--xlsx-rows", type=int, default=200_000)
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-export-") as tmp:
        out = run(Path(tmp), args.repeat, args.shards, args.xlsx_rows)
    rows, n_x, t = out["rows"], out["xlsx_rows"], out["seconds"]
    results = []
    for fmt in ("csv", "parquet"):
        results.append(
            (
                f"{fmt} ({rows:,} rows)",
                "raw sink",
                t[fmt]["raw"],
                t[fmt]["ours"],
                t[fmt]["ours"] / t[fmt]["raw"],
                "ratio <= 1.3",
            )
        )
        results.append(
            (
                "  same input, sink only",
                "concat sink",
                t[fmt]["concat_raw"],
                t[fmt]["ours"],
                t[fmt]["ours"] / t[fmt]["concat_raw"],
                "(export's own overhead)",
            )
        )
    results.append(
        (
            f"xlsx ({n_x:,} rows)",
            "write_excel",
            t["xlsx"]["write_excel"],
            t["xlsx"]["ours"],
            t["xlsx"]["write_excel"] / t["xlsx"]["ours"],
            "speed-up >= 5",
        )
    )
    print()
    print(f"median of {args.repeat}, seconds")
    print(f"{'case':<27}{'baseline':<14}{'baseline s':>11}{'ours s':>9}{'figure':>9}  target")
    for case, base, tb, to, fig, target in results:
        print(f"{case:<27}{base:<14}{tb:>11.3f}{to:>9.3f}{fig:>9.2f}  {target}")
    print(f"xlsx size: write_excel {out['xlsx_bytes']['write_excel']:,} B, ours {out['xlsx_bytes']['ours']:,} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
