"""Export: write shaped tables (Polars LazyFrames) as csv / json / ndjson / xlsx / parquet / zip,
streamed (nothing is collected whole) and atomically (nothing appears under the final name until
the file is complete), so a reader never sees half a result.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from . import ziparchive
from .atomic import BackgroundFlush, TempFiles, remove_stale_temps, seal
from .parquet import write_parquet
from .text import write_csv, write_json, write_ndjson
from .xlsx import write_xlsx

__all__ = ["Table", "ExportedFile", "export_tables", "remove_stale_temps", "FORMATS", "INNER_FORMATS"]

FORMATS = ("csv", "json", "ndjson", "xlsx", "parquet", "zip")
INNER_FORMATS = ("csv", "json", "ndjson", "xlsx", "parquet")
MULTI_TABLE_FORMATS = ("xlsx", "zip")
ZIP_TEXT_LEVEL = 6  # deflate level of csv/json/ndjson inside a zip
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class Table:
    name: str  # source name: inner file name (zip) / sheet name (xlsx)
    frame: pl.LazyFrame


@dataclass(frozen=True)
class ExportedFile:
    path: Path  # the final path
    bytes: int
    sha256: str  # hex of the final file
    rows: dict[str, int]  # rows written per table name


@dataclass(frozen=True)
class _Options:
    csv_separator: str
    escape_formulas: bool


@dataclass(frozen=True)
class _Rows:
    """How to learn the row count of a written file: known, a function to call, or the
    newlines counted while it is hashed."""

    value: int | None = None
    fn: Callable[[], int] | None = None
    count_newlines: bool = False

    def rows(self, counted: int | None) -> int:
        """The row count: the known value, else what `seal` counted (with `fn` or newlines)."""
        if self.value is not None:
            return self.value
        assert counted is not None  # a _Rows from _produce always gives `seal` a way to count
        return counted


def export_tables(
    tables: list[Table],
    fmt: str,
    final_path: Path,
    *,
    inner: str = "csv",
    csv_separator: str = ",",
    escape_formulas: bool = False,
    manifest: dict | None = None,
) -> ExportedFile:
    """Write `tables` as `fmt` to `final_path`, atomically.

    Streaming (Polars sinks, or batches for XLSX; nothing is collected whole) and atomic: every
    byte goes to a temp file beside `final_path` (`.{name}.tmp-{12 hex}[.suffix]`), which is
    fsynced and renamed onto `final_path` only when complete. On any error all temp files are
    removed and the error propagates; nothing appears under the final name.

    Encodings (see the writer modules for details):
    - csv: header always; lists/structs as compact JSON text, nulls as empty cells; dates ISO
      `2024-01-31`, datetimes ISO 8601 `2024-01-31T12:30:00.000000[+01:00]`, durations ISO 8601,
      binary base64; `escape_formulas` prefixes `'` to strings starting with `= + - @`, TAB or CR,
      header cells included.
    - ndjson / json: lists/structs stay JSON arrays/objects; datetimes ISO 8601 with `T` and only
      the fractional digits needed; NaN/inf as null (Polars' JSON writer); binary base64.
    - parquet: zstd, types kept.
    - xlsx: see `engine.export.xlsx`.
    - zip: `{table.name}.{inner}` per table plus `manifest.json`.
    """
    _validate(tables, fmt, inner, csv_separator)
    final_path = Path(final_path)
    opts = _Options(csv_separator, escape_formulas)
    with TempFiles(final_path) as temps:
        out = temps.new()
        with BackgroundFlush(out):
            if fmt == "zip":
                rows = _write_zip(tables, inner, out, temps, opts, manifest)
                how = _Rows()
            elif fmt == "xlsx":
                rows = dict(zip((t.name for t in tables), write_xlsx([(t.name, t.frame) for t in tables], out, temps)))
                how = _Rows()
            else:
                how = _produce(fmt, tables[0], out, temps, opts)
                rows = {}
        size, sha, n = seal(out, sync=True, count_newlines=how.count_newlines, rows_fn=how.fn)
        if fmt not in MULTI_TABLE_FORMATS:
            rows = {tables[0].name: how.rows(n)}
        temps.publish(out)
    return ExportedFile(path=final_path, bytes=size, sha256=sha, rows=rows)


def _validate(tables: list[Table], fmt: str, inner: str, separator: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "zip" and inner not in INNER_FORMATS:
        raise ValueError(f"unknown inner format {inner!r}; expected one of {', '.join(INNER_FORMATS)}")
    if not tables:
        raise ValueError("nothing to export: no tables")
    if len(tables) > 1 and fmt not in MULTI_TABLE_FORMATS:
        raise ValueError(f"{len(tables)} tables need format 'zip' or 'xlsx', not {fmt!r}")
    names = [t.name for t in tables]
    if len(set(names)) != len(names):
        raise ValueError(f"table names must be unique: {names}")
    if len(separator) != 1 or len(separator.encode()) != 1 or separator in '"\r\n':
        raise ValueError(f"csv separator must be one ASCII character other than a quote or newline, not {separator!r}")


def _produce(fmt: str, table: Table, path: Path, temps: TempFiles, opts: _Options) -> _Rows:
    """Write one table as `fmt` into the (existing, empty) file `path`."""
    frame = table.frame
    if fmt == "csv":
        return _Rows(fn=write_csv(frame, path, separator=opts.csv_separator, escape_formulas=opts.escape_formulas))
    if fmt == "ndjson":
        write_ndjson(frame, path)
        return _Rows(count_newlines=True)
    if fmt == "json":
        return _Rows(value=write_json(frame, path, temps))
    if fmt == "parquet":
        return _Rows(value=write_parquet(frame, path))
    if fmt == "xlsx":
        return _Rows(value=write_xlsx([(table.name, frame)], path, temps)[0])
    raise ValueError(f"unknown format {fmt!r}")


_UNSAFE_FILE_CHARS = re.compile(r"[\x00-\x1f/\\]")


def inner_file_name(name: str, ext: str, used: set[str]) -> str:
    """`{name}.{ext}`, made safe as a zip member name and unique ignoring case."""
    stem = _UNSAFE_FILE_CHARS.sub("_", name).strip() or "table"
    if set(stem) <= {"."}:
        stem = stem.replace(".", "_")
    candidate, n = f"{stem}.{ext}", 1
    while candidate.casefold() in used:
        n += 1
        candidate = f"{stem} ({n}).{ext}"
    used.add(candidate.casefold())
    return candidate


def _write_zip(
    tables: list[Table], inner: str, path: Path, temps: TempFiles, opts: _Options, manifest: dict | None
) -> dict[str, int]:
    text = inner in ("csv", "json", "ndjson")
    compress_type = zipfile.ZIP_DEFLATED if text else zipfile.ZIP_STORED
    level = ZIP_TEXT_LEVEL if text else None
    used = {MANIFEST_NAME}
    files: list[dict] = []
    rows: dict[str, int] = {}
    with zipfile.ZipFile(path, "w", allowZip64=True) as zf:
        for i, table in enumerate(tables, 1):
            arcname = inner_file_name(table.name, inner, used)
            part = temps.new(f"{i}.{inner}")
            how = _produce(inner, table, part, temps, opts)
            size, sha, counted = seal(part, sync=False, count_newlines=how.count_newlines, rows_fn=how.fn)
            n = how.rows(counted)
            ziparchive.add_file(
                zf, part, arcname, compress_type=compress_type, level=level, date_time=ziparchive.now_date_time()
            )
            temps.discard(part)
            files.append({"name": arcname, "bytes": size, "sha256": sha, "rows": n})
            rows[table.name] = n
        doc = dict(manifest or {})
        doc["files"] = files
        ziparchive.add_bytes(
            zf,
            json.dumps(doc, indent=2, ensure_ascii=False, default=str).encode(),
            MANIFEST_NAME,
            compress_type=zipfile.ZIP_DEFLATED,
            level=ZIP_TEXT_LEVEL,
            date_time=ziparchive.now_date_time(),
        )
    return rows
