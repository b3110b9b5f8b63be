"""Polars expressions that turn columns into what a text format can hold.

All of them are vectorised (no Python per row) and keep nulls as nulls.
"""

from __future__ import annotations

import polars as pl

FORMULA_PREFIX = r"^[=+\-@\t\r]"  # what a spreadsheet may read as a formula (OWASP: TAB and CR too)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NESTED = (pl.List, pl.Array, pl.Struct)


def is_nested(dtype: pl.DataType) -> bool:
    return isinstance(dtype, _NESTED)


def json_text(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A List/Array/Struct column as compact JSON text (`[1,2]`, `[{"a":1}]`); null stays null."""
    if isinstance(dtype, pl.Struct):
        encoded = expr.struct.json_encode()
    else:
        encoded = pl.struct(expr.alias("v")).struct.json_encode().str.strip_prefix('{"v":').str.strip_suffix("}")
    return pl.when(expr.is_null()).then(pl.lit(None, pl.String)).otherwise(encoded)


def datetime_iso(expr: pl.Expr, dtype: pl.Datetime, *, fixed_fraction: bool) -> pl.Expr:
    """ISO 8601 text: `2024-01-31T12:30:00[.fraction][+01:00]`.

    fixed_fraction: as many fractional digits as the time unit (like Polars' CSV writer);
    otherwise only as many as needed (0, 3, 6 or 9, like its JSON writer)."""
    if fixed_fraction:
        frac = {"ms": "%.3f", "us": "%.6f", "ns": "%.9f"}[dtype.time_unit or "us"]
    else:
        frac = "%.f"
    fmt = f"%Y-%m-%dT%H:%M:%S{frac}"
    if dtype.time_zone is not None:
        fmt += "%:z"
    return expr.dt.to_string(fmt)


def escape_formula(expr: pl.Expr) -> pl.Expr:
    """Prefix `'` to strings that start with = + - @, TAB or CR (spreadsheet formula injection guard)."""
    return pl.when(expr.str.contains(FORMULA_PREFIX)).then(pl.concat_str([pl.lit("'"), expr])).otherwise(expr)


def for_csv(schema: pl.Schema, *, escape_formulas: bool) -> list[pl.Expr]:
    """The column expressions that make a frame writable by `sink_csv` (empty when none are
    needed, so flat frames go to the sink untouched)."""
    out: list[pl.Expr] = []
    for i, (name, dtype) in enumerate(schema.items()):
        col = pl.nth(i)
        expr: pl.Expr | None = None
        if is_nested(dtype):
            expr = json_text(col, dtype)
        elif isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
            expr = datetime_iso(col, dtype, fixed_fraction=True)
        elif isinstance(dtype, pl.Duration):
            expr = col.dt.to_string("iso")
        elif dtype == pl.Binary:
            expr = col.bin.encode("base64")
        elif escape_formulas and (dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum))):
            expr = escape_formula(col.cast(pl.String))
        if expr is not None:
            out.append(expr.alias(name))
    return out


def escaped_names(names: list[str]) -> dict[str, str]:
    """Header cells get the same guard as values: {column: its escaped name} for the columns
    whose name a spreadsheet would read as a formula (kept distinct from every other name)."""
    taken = set(names)
    renamed: dict[str, str] = {}
    for name in names:
        if name.startswith(FORMULA_START):
            new = "'" + name
            while new in taken:
                new = "'" + new
            taken.add(new)
            renamed[name] = new
    return renamed


def for_json(schema: pl.Schema) -> list[pl.Expr]:
    """Expressions for NDJSON/JSON: datetimes as ISO 8601 with `T`, binary as base64.
    Lists and structs stay JSON arrays/objects."""
    out: list[pl.Expr] = []
    for i, (name, dtype) in enumerate(schema.items()):
        col = pl.nth(i)
        if isinstance(dtype, pl.Datetime):
            out.append(datetime_iso(col, dtype, fixed_fraction=False).alias(name))
        elif dtype == pl.Binary:
            out.append(col.bin.encode("base64").alias(name))
    return out


def apply(frame: pl.LazyFrame, exprs: list[pl.Expr]) -> pl.LazyFrame:
    return frame.with_columns(exprs) if exprs else frame
