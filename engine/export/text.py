"""CSV, NDJSON and JSON-array writers: Polars sinks, streamed, never collected."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

from . import encode
from .atomic import TempFiles, sink_into

JSON_CHUNK = 4 << 20


def write_csv(
    frame: pl.LazyFrame, path: Path, *, separator: str = ",", escape_formulas: bool = False
) -> Callable[[], int]:
    """Sink `frame` as CSV (header always). Returns a function that counts the data rows of
    the written file (quote-aware, so embedded newlines are not rows)."""
    schema = frame.collect_schema()
    frame = encode.apply(frame, encode.for_csv(schema, escape_formulas=escape_formulas))
    if escape_formulas and (renamed := encode.escaped_names(list(schema.names()))):
        frame = frame.rename(renamed)  # header cells (column names come from API keys) too
    sink_into(path, lambda out: frame.sink_csv(out, separator=separator, include_header=True, quote_char='"'))

    def count_rows() -> int:
        if not schema:
            return 0
        return (
            pl.scan_csv(path, separator=separator, quote_char='"', has_header=True, infer_schema=False)
            .select(pl.len())
            .collect()
            .item()
        )

    return count_rows


def write_ndjson(frame: pl.LazyFrame, path: Path) -> None:
    """Sink `frame` as NDJSON (one object per line). Rows = lines, counted while hashing."""
    frame = encode.apply(frame, encode.for_json(frame.collect_schema()))
    sink_into(path, frame.sink_ndjson)


def write_json(frame: pl.LazyFrame, path: Path, temps: TempFiles) -> int:
    """Stream `frame` as ONE JSON array: sink NDJSON to a temp file beside `path`, then copy
    it with `[`, `,` and `]` framing (records never contain a raw newline, so every `\\n` of
    NDJSON is a record boundary). Returns the number of records."""
    lines = temps.new("ndjson")
    try:
        write_ndjson(frame, lines)
        return frame_ndjson_as_array(lines, path)
    finally:
        temps.discard(lines)


def frame_ndjson_as_array(src: Path, dst: Path) -> int:
    rows = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(b"[")
        pending = b""  # the newline that ends the previous chunk, written once we know more follows
        while True:
            chunk = fin.read(JSON_CHUNK)
            if not chunk:
                break
            rows += chunk.count(b"\n")
            body = pending + chunk
            if body.endswith(b"\n"):
                body, pending = body[:-1], b"\n"
            else:
                pending = b""
            fout.write(body.replace(b"\n", b",\n"))
        if pending:
            fout.write(b"\n")
        fout.write(b"]\n")
    return rows
