"""Benchmark of engine.export against raw Polars sinks and DataFrame.write_excel.

    python tests/benchmarks/bench_export.py [--repeat 3] [--shards 1000] [--xlsx-rows 200000]

Writes `--shards` Arrow IPC shards of 1,000 rows (8 columns) to a temp dir, then times
(median of `--repeat`, runs interleaved):
- CSV / Parquet: `export_tables` over `pl.concat([pl.scan_ipc(f) ...], how="diagonal_relaxed")`
  (the reducer's shape; includes fsync, sha256 and the row count) vs a raw
  `pl.scan_ipc(files).sink_csv / sink_parquet`. Target: ratio <= 1.3. Also shown: the same
  concat input sunk directly, which isolates the exporter's own overhead from the cost of
  the 1,000-scan concat itself.
- XLSX, `--xlsx-rows` rows: `export_tables(..., "xlsx")` vs `pl.DataFrame.write_excel`
  (xlsxwriter). Target: speed-up >= 5.
"""
from __future__ import annotations

import argparse
import datetime as dt
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

ROWS_PER_SHARD = 1_000


def make_shards(directory: Path, n_shards: int) -> list[str]:
    files = []
    for k in range(n_shards):
        base = k * ROWS_PER_SHARD
        df = (pl.DataFrame({"i": pl.int_range(base, base + ROWS_PER_SHARD, eager=True)})
              .select(
                  pl.col("i").alias("id"),
                  pl.format("customer-{}-{}", pl.col("i") % 977, pl.col("i")).alias("name"),
                  (pl.col("i") * 1.37 % 1000).round(2).alias("amount"),
                  (pl.col("i") % 100).cast(pl.Int32).alias("qty"),
                  (pl.col("i") % 3 == 0).alias("active"),
                  (pl.lit(dt.date(2020, 1, 1)) + pl.duration(days=pl.col("i") % 2000)).alias("day"),
                  (pl.lit(dt.datetime(2024, 1, 1)) + pl.duration(seconds=pl.col("i"))).alias("ts"),
                  pl.format("cat{}", pl.col("i") % 17).alias("category"),
              ))
        path = directory / f"shard-{k:05d}.arrow"
        df.write_ipc(path)
        files.append(str(path))
    return files


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(repeat: int, **fns) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--shards", type=int, default=1_000)
    ap.add_argument("--xlsx-rows", type=int, default=200_000)
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-export-") as tmp:
        work = Path(tmp)
        (work / "shards").mkdir()
        t0 = time.perf_counter()
        files = make_shards(work / "shards", args.shards)
        rows = len(files) * ROWS_PER_SHARD
        print(f"{len(files)} shards x {ROWS_PER_SHARD} rows x 8 columns written in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)

        def reduced() -> pl.LazyFrame:
            return pl.concat([pl.scan_ipc(f) for f in files], how="diagonal_relaxed")

        results = []
        for fmt in ("csv", "parquet"):
            def raw(fmt=fmt):
                lf = pl.scan_ipc(files)
                (lf.sink_csv if fmt == "csv" else lf.sink_parquet)(work / f"raw.{fmt}")

            def concat_raw(fmt=fmt):
                lf = reduced()
                (lf.sink_csv if fmt == "csv" else lf.sink_parquet)(work / f"concat.{fmt}")

            def ours(fmt=fmt):
                out = export_tables([Table("bench", reduced())], fmt, work / f"ours.{fmt}")
                assert out.rows == {"bench": rows}, out.rows

            t = interleaved(args.repeat, raw=raw, concat_raw=concat_raw, ours=ours)
            results.append((f"{fmt} ({rows:,} rows)", "raw sink", t["raw"], t["ours"],
                            t["ours"] / t["raw"], "ratio <= 1.3"))
            results.append((f"  same input, sink only", "concat sink", t["concat_raw"], t["ours"],
                            t["ours"] / t["concat_raw"], "(export's own overhead)"))
            print(f"  {fmt}: raw {t['raw']:.3f}s, concat+sink {t['concat_raw']:.3f}s, "
                  f"export_tables {t['ours']:.3f}s", flush=True)

        n_x = min(args.xlsx_rows, rows)
        x_files = files[: (n_x + ROWS_PER_SHARD - 1) // ROWS_PER_SHARD]
        x_frame = lambda: pl.concat([pl.scan_ipc(f) for f in x_files],  # noqa: E731
                                    how="diagonal_relaxed").head(n_x)

        def write_excel():
            x_frame().collect().write_excel(work / "we.xlsx")

        def ours_xlsx():
            out = export_tables([Table("bench", x_frame())], "xlsx", work / "ours.xlsx")
            assert out.rows == {"bench": n_x}, out.rows

        t = interleaved(args.repeat, write_excel=write_excel, ours=ours_xlsx)
        results.append((f"xlsx ({n_x:,} rows)", "write_excel", t["write_excel"], t["ours"],
                        t["write_excel"] / t["ours"], "speed-up >= 5"))
        sizes = ((work / "we.xlsx").stat().st_size, (work / "ours.xlsx").stat().st_size)

    print()
    print(f"median of {args.repeat}, seconds")
    print(f"{'case':<27}{'baseline':<14}{'baseline s':>11}{'ours s':>9}{'figure':>9}  target")
    for case, base, tb, to, fig, target in results:
        print(f"{case:<27}{base:<14}{tb:>11.3f}{to:>9.3f}{fig:>9.2f}  {target}")
    print(f"xlsx size: write_excel {sizes[0]:,} B, ours {sizes[1]:,} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
