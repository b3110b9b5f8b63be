"""Table targets (engine/deliver/tables.py) against the databases' own bulk loads - not a timed test:

    python tests/benchmarks/bench_tables.py [--rows 1000000] [--runs 5]

One Parquet file of `--rows` shaped rows (ints, floats, text with nulls, bools, timestamps with a
zone) is loaded, in interleaved runs (A B C A B C ...; medians), by:

PostgreSQL (a throwaway cluster on 127.0.0.1, tests/support/postgres.py):
  copy     a plain psycopg script: CREATE TABLE, then COPY ... FROM STDIN (FORMAT csv) fed from
           the Parquet's Arrow batches (pyarrow.csv) - the baseline
  append   the postgres target, mode append, into a new table (CREATE + COPY, one transaction)
  merge    the postgres target, mode merge, key id, into a table already holding `rows` rows
           where half the loaded keys are new (stage + COPY, DISTINCT ON, INSERT ... ON CONFLICT)
DuckDB (a file per run):
  copy     CREATE TABLE, then COPY t FROM 'file.parquet' - the baseline
  append   the duckdb target, mode append
  merge    the duckdb target, mode merge, half the keys new

Prints the medians and the ratios to the baseline; writes tests/benchmarks/results_tables.json.
The reducer's writing of the shaped Parquet (`sink_parquet`, in the export process, before
the loads) is timed on its own (`sink`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import duckdb  # noqa: E402
import polars as pl  # noqa: E402
import psycopg  # noqa: E402
import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from engine.deliver.table_targets import TableJob  # noqa: E402
from engine.deliver.tables import DuckdbLoader, PostgresLoader, plan_tables  # noqa: E402
from engine.spec.models import parse_spec  # noqa: E402
from tests.support.postgres import PostgresCluster  # noqa: E402

PG_DDL = "id bigint, name text, price double precision, quantity bigint, active boolean, created timestamptz, note text"
DUCK_DDL = "id BIGINT, name VARCHAR, price DOUBLE, quantity BIGINT, active BOOLEAN, created TIMESTAMPTZ, note VARCHAR"


def make_rows(rows: int, first_id: int = 0) -> pl.LazyFrame:
    ids = pl.int_range(first_id, first_id + rows, dtype=pl.Int64, eager=False)
    return pl.LazyFrame({"i": pl.int_range(0, rows, dtype=pl.Int64, eager=True)}).select(
        ids.alias("id"),
        pl.format("item-{}", pl.col("i")).alias("name"),
        (pl.col("i") * 1.25).alias("price"),
        (pl.col("i") % 50).alias("quantity"),
        (pl.col("i") % 3 != 0).alias("active"),
        (pl.datetime(2020, 1, 1, time_zone="UTC") + pl.duration(seconds=pl.col("i"))).alias("created"),
        pl.when(pl.col("i") % 5 == 0).then(None).otherwise(pl.format("note {}", pl.col("i"))).alias("note"),
    )


def target(kind: str, mode: str, **extra):
    item = {"type": kind, "table": "items", "mode": mode, **extra}
    if mode == "merge":
        item["key"] = ["id"]
    return parse_spec({"sources": [{"url": "http://x.invalid/"}], "deliver": [item]}).deliver[0]


# ------------------------------------------------------------------ PostgreSQL


def pg_reset(dsn: str, prefill: Path | None = None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS items")
        conn.execute("DROP TABLE IF EXISTS items__new")
        if prefill is not None:
            conn.execute(f"CREATE TABLE items ({PG_DDL})")
            pg_plain_copy(conn, prefill, create=False)
            conn.execute('CREATE UNIQUE INDEX "items__pf_key" ON items (id)')
        conn.execute("CHECKPOINT")


def pg_plain_copy(conn, parquet: Path, create: bool = True) -> None:
    """The baseline: what a plain psycopg script does with a Parquet file."""
    if create:
        conn.execute(f"CREATE TABLE items ({PG_DDL})")
    options = pacsv.WriteOptions(include_header=False)
    with conn.cursor() as cur, cur.copy("COPY items FROM STDIN (FORMAT csv)") as copy:
        for batch in pq.ParquetFile(parquet).iter_batches(batch_size=65_536):
            sink = io.BytesIO()
            pacsv.write_csv(batch, sink, options)
            copy.write(sink.getvalue())


def pg_runs(dsn: str, work: Path, load: Path, prefill: Path, runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"copy": [], "append": [], "merge": []}
    job = TableJob(str(work))
    for _ in range(runs):
        pg_reset(dsn)
        started = time.perf_counter()
        with psycopg.connect(dsn) as conn, conn.transaction():
            pg_plain_copy(conn, load)
        times["copy"].append(time.perf_counter() - started)

        pg_reset(dsn)
        t = target("postgres", "append", dsn=dsn)
        started = time.perf_counter()
        PostgresLoader(t).load(plan_tables(t, job, ["items"]))
        times["append"].append(time.perf_counter() - started)

        pg_reset(dsn, prefill)
        t = target("postgres", "merge", dsn=dsn)
        started = time.perf_counter()
        written = PostgresLoader(t).load(plan_tables(t, job, ["items"]))
        times["merge"].append(time.perf_counter() - started)
        assert written["items"] > 0
    return times


# ------------------------------------------------------------------ DuckDB


def duck_runs(work: Path, load: Path, prefill: Path, runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"copy": [], "append": [], "merge": []}
    job = TableJob(str(work))
    path = work / "bench.duckdb"

    def fresh() -> None:
        for p in (path, Path(f"{path}.wal")):
            p.unlink(missing_ok=True)

    for _ in range(runs):
        fresh()
        started = time.perf_counter()
        with duckdb.connect(str(path)) as con:
            con.execute(f"CREATE TABLE items ({DUCK_DDL})")
            con.execute(f"COPY items FROM '{load}' (FORMAT parquet)")
        times["copy"].append(time.perf_counter() - started)

        fresh()
        t = target("duckdb", "append", path=str(path))
        started = time.perf_counter()
        DuckdbLoader(t).load(plan_tables(t, job, ["items"]))
        times["append"].append(time.perf_counter() - started)

        fresh()
        with duckdb.connect(str(path)) as con:
            con.execute(f"CREATE TABLE items ({DUCK_DDL})")
            con.execute(f"COPY items FROM '{prefill}' (FORMAT parquet)")
            con.execute('CREATE UNIQUE INDEX "items__pf_key" ON items (id)')
        t = target("duckdb", "merge", path=str(path))
        started = time.perf_counter()
        DuckdbLoader(t).load(plan_tables(t, job, ["items"]))
        times["merge"].append(time.perf_counter() - started)
    fresh()
    return times


def summary(times: dict[str, list[float]]) -> dict:
    medians = {k: round(statistics.median(v), 3) for k, v in times.items()}
    return {
        "median_seconds": medians,
        "runs": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "ratio_to_copy": {k: round(medians[k] / medians["copy"], 2) for k in ("append", "merge")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pageferry-bench-tables-"))
    os.chmod(root, 0o755)
    work = root / "work"
    (work / "tables").mkdir(parents=True)
    load = work / "tables" / "0.parquet"  # where the reducer puts source 0's shaped rows
    prefill = root / "prefill.parquet"
    started = time.perf_counter()
    make_rows(args.rows, first_id=args.rows // 2).sink_parquet(load, compression="lz4", row_group_size=65_536)
    sink_seconds = time.perf_counter() - started
    make_rows(args.rows).sink_parquet(prefill)
    results: dict = {
        "rows": args.rows,
        "runs": args.runs,
        "cpus": os.cpu_count(),
        "sink_seconds": round(sink_seconds, 3),
        "versions": {
            "duckdb": duckdb.__version__,
            "psycopg": psycopg.__version__,
            "polars": pl.__version__,
        },
    }
    cluster = None
    try:
        if not args.skip_postgres:
            cluster = PostgresCluster(root / "pg")
            cluster.start()
            with psycopg.connect(cluster.dsn) as conn:
                results["versions"]["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
            results["postgres"] = summary(pg_runs(cluster.dsn, work, load, prefill, args.runs))
        results["duckdb"] = summary(duck_runs(work, load, prefill, args.runs))
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results, indent=2))
    (REPO / "tests" / "benchmarks" / "results_tables.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
