"""Reduce: a source's shards → one lazy frame in row order → shaping → the export writer.
Shards are scanned lazily in file-name order, which is row order; schemas that drifted between
shards are reconciled first (`scan_source`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

from engine.export import ExportedFile, Table, export_tables
from engine.export.infer import infer_types
from engine.export.shaping import shape
from engine.fetch.records import EXACT_INTEGERS
from engine.run.messages import ExportRequest

SPILL_BUDGET_MB = 64  # working memory of a sort/distinct/group_by before it spills to disk


def _nested(dtype: pa.DataType) -> bool:
    return pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_struct(dtype)


def _inexact_numbers(kept: list) -> set[str]:
    """Columns that are integers in one shard and floats in another, where an integer is at or
    beyond 2**53: the relaxed concat would round it to a float, so they become text instead."""
    floats = {f.name for _, schema in kept for f in schema if pa.types.is_floating(f.type)}
    found: set[str] = set()
    for path, schema in kept:
        names = [f.name for f in schema if f.name in floats and f.name not in found and pa.types.is_integer(f.type)]
        if not names:
            continue
        bounds = [pl.col(name).min().alias(f"{i}min") for i, name in enumerate(names)]
        bounds += [pl.col(name).max().alias(f"{i}max") for i, name in enumerate(names)]
        row = pl.scan_ipc(path).select(bounds).collect().row(0)  # one read of the shard for all of them
        for i, name in enumerate(names):
            if any(v is not None and abs(v) >= EXACT_INTEGERS for v in (row[i], row[len(names) + i])):
                found.add(name)
    return found


def json_text(column: str) -> pl.Expr:
    """A list/struct column as JSON text (null stays null)."""
    encoded = pl.struct(pl.col(column).alias("v")).struct.json_encode()  # {"v":<value>}
    return (
        pl.when(pl.col(column).is_null())
        .then(None)
        .otherwise(encoded.str.slice(5, encoded.str.len_bytes() - 6))
        .alias(column)
    )


def scan_source(paths: list[str]) -> pl.LazyFrame:
    """One lazy frame over a source's shards, in order, with drifted schemas reconciled.

    Schemas that drifted between shards are reconciled by Polars'
    `diagonal_relaxed` concat (missing columns → null, Null → the other type, int + float →
    float, number + string → string); a column that is a list in one shard and a scalar in
    another cannot meet that way, so it becomes JSON text everywhere first.
    """
    # Reading every shard's schema with Polars is cheap (cheaper than with pyarrow). When they
    # are all the same (no drift: the usual case), one scan over every shard is faster than a
    # relaxed concat of one scan per shard (docs/performance.md) - same rows, same order.
    quick = [(path, list(pl.read_ipc_schema(path).items())) for path in paths]
    quick = [(path, schema) for path, schema in quick if schema]
    if not quick:
        return pl.LazyFrame()
    if len(quick) > 1 and all(schema == quick[0][1] for _, schema in quick[1:]):
        return pl.scan_ipc([path for path, _ in quick])
    schemas = []
    for path in paths:
        with ipc.open_file(path) as reader:
            schemas.append(reader.schema)
    kept = [(p, s) for p, s in zip(paths, schemas) if len(s)]
    if not kept:
        return pl.LazyFrame()
    kinds: dict[str, set] = {}
    for _, schema in kept:
        for field in schema:
            if not pa.types.is_null(field.type):
                kinds.setdefault(field.name, set()).add(_nested(field.type))
    mixed = {name for name, found in kinds.items() if len(found) > 1} | _inexact_numbers(kept)
    frames = []
    for path, schema in kept:
        frame = pl.scan_ipc(path)
        to_text = [name for name in mixed if name in schema.names]
        if to_text:
            frame = frame.with_columns(
                [json_text(n) if _nested(schema.field(n).type) else pl.col(n).cast(pl.String) for n in to_text]
            )
        frames.append(frame)
    if len(frames) == 1:
        return frames[0]
    return pl.concat(frames, how="diagonal_relaxed")


def bound_blocking_memory(spec, shard_paths: list[str]) -> None:
    """Sort, distinct and group_by hold their rows; past a working-memory budget Polars' streaming
    engine spills them to disk (in the job's work directory), so a large sort keeps the export
    process small (docs/performance.md) at some cost in time. Only in the
    export process, which is new for every job; POLARS_OOC_MEMORY_BUDGET_MB / POLARS_OOC_SPILL_DIR
    in the environment win."""
    if not (spec.sort or spec.distinct or spec.group_by is not None):
        return
    env = {}
    if "POLARS_OOC_MEMORY_BUDGET_MB" not in os.environ:
        env["POLARS_OOC_MEMORY_BUDGET_MB"] = str(SPILL_BUDGET_MB)
    if "POLARS_OOC_SPILL_DIR" not in os.environ and shard_paths:
        spill = Path(shard_paths[0]).parent.parent / "spill"
        spill.mkdir(parents=True, exist_ok=True)
        env["POLARS_OOC_SPILL_DIR"] = str(spill)
    if env:
        pl.Config.load(json.dumps({"environment": env}))  # sets the variables and reloads Polars' config


def _typed(frame: pl.LazyFrame, infer: bool) -> pl.LazyFrame:
    """A CSV source with `csv.infer_types`: decided over its whole columns, not page by page."""
    return infer_types(frame) if infer else frame


def export_job(request: ExportRequest) -> ExportedFile:
    spec = request.spec
    bound_blocking_memory(spec, [p for _, paths in request.tables for p in paths])
    inferring = {s.name for s in spec.sources if s.format == "csv" and s.csv.infer_types}
    tables = [
        Table(name, shape(_typed(scan_source(paths), name in inferring), spec, table=name))
        for name, paths in request.tables
    ]
    exported = export_tables(
        tables,
        spec.export.format,
        Path(request.output),
        inner=spec.export.inner,
        csv_separator=spec.export.csv.separator,
        escape_formulas=spec.export.csv.escape_formulas,
        manifest=request.manifest,
    )
    if request.table_job is not None:  # table targets: each source's shaped rows as Parquet
        from engine.deliver.tables import write_shaped_parquet

        write_shaped_parquet([(t.name, t.frame) for t in tables], request.table_job)
    return exported
