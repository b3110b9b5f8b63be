"""Shaping (docs/spec.md, docs/shaping.md) as lazy Polars expressions, applied in the reducer
in a fixed order: columns, filters, group_by, distinct, sort, limit. Nothing here evaluates
user text: names select columns, values become typed literals.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import polars as pl
from polars.datatypes import DataTypeClass

from engine.errors import ShapingError
from engine.export.encode import datetime_iso, json_text
from engine.spec.models import Column, GroupBy, JobSpec
from engine.spec.shaping_rules import (
    DATETIME_TEXT,
    FALSE_TEXT,
    FLOAT_TEXT,
    INT_TEXT,
    TEXT_OPS,
    TRUE_TEXT,
    UNIX_SECONDS_MAX,
    UNIX_SECONDS_MIN,
    convert_literal,
    default_source,
    output_order,
)

DTYPES: dict[str, pl.DataType] = {
    "string": pl.String(),
    "int": pl.Int64(),
    "float": pl.Float64(),
    "bool": pl.Boolean(),
    "date": pl.Date(),
    "datetime": pl.Datetime("us", "UTC"),
}
_INT64_LIMIT = 2.0**63
_LOSSLESS_INTS = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32)


# ---------------------------------------------------------------- types


def kind_of(dtype: pl.DataType) -> str:
    """null | numeric | string | bool | date | datetime | list | other."""
    if dtype == pl.Null:
        return "null"
    if dtype == pl.Boolean:
        return "bool"
    if dtype.is_numeric():
        return "numeric"
    if dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum)):
        return "string"
    if dtype == pl.Date:
        return "date"
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    if isinstance(dtype, (pl.List, pl.Array)):
        return "list"
    return "other"


def _nested_dtype(dtype: pl.DataType | DataTypeClass) -> pl.DataType:
    """A list's element or a struct field's type, read from a schema. Polars types these as a
    data type instance or a bare class; in a schema they are always instances."""
    assert isinstance(dtype, pl.DataType), dtype
    return dtype


def type_name(dtype: pl.DataType) -> str:
    """A column's type in the words of the spec's `type` names."""
    kind = kind_of(dtype)
    if kind == "numeric":
        return "int" if dtype.is_integer() else "float"
    if kind == "null":
        return "null (no values)"
    if kind in ("list", "other"):
        return "list" if kind == "list" else str(dtype).lower()
    return kind


# ---------------------------------------------------------------- casts


def _never(expr: pl.Expr, target: pl.DataType) -> pl.Expr:
    """All null, one per row of `expr` (a conversion that does not exist)."""
    return pl.when(expr.is_null()).then(pl.lit(None, target)).otherwise(pl.lit(None, target))


def datetime_from_text(text: pl.Expr) -> pl.Expr:
    """ISO 8601 text → Datetime(us, UTC); the forms `shaping_rules.parse_datetime_text` reads."""
    t = text.str.strip_chars()
    norm = t.str.replace(r"^([0-9]{4}-[0-9]{2}-[0-9]{2}) ", "${1}T").str.replace(r"[Zz]$", "+00:00")
    aware = [
        norm.str.to_datetime(fmt, strict=False, time_unit="us").dt.convert_time_zone("UTC")
        for fmt in ("%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M%:z")
    ]
    naive = [
        norm.str.to_datetime(fmt, strict=False, time_unit="us").dt.replace_time_zone("UTC")
        for fmt in ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M")
    ]
    day = norm.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    return pl.when(t.str.contains(DATETIME_TEXT)).then(pl.coalesce(*aware, *naive, day))


def date_from_text(text: pl.Expr) -> pl.Expr:
    """A date, or the date part (as written) of a datetime text."""
    t = text.str.strip_chars()
    return pl.when(datetime_from_text(t).is_not_null()).then(t.str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False))


def datetime_from_unix(number: pl.Expr) -> pl.Expr:
    seconds = number.cast(pl.Float64)
    ok = seconds.is_finite() & (seconds >= UNIX_SECONDS_MIN) & (seconds <= UNIX_SECONDS_MAX)
    micros = (seconds * 1_000_000).round(0).cast(pl.Int64, strict=False)
    return pl.when(ok).then(pl.from_epoch(micros, time_unit="us").dt.replace_time_zone("UTC"))


def cast_expr(expr: pl.Expr, dtype: pl.DataType, target: str) -> pl.Expr:
    """`expr` (of type `dtype`) as the spec type `target`; null where a value does not convert."""
    kind = kind_of(dtype)
    out = DTYPES[target]
    if kind == "null":
        return expr.cast(out)
    if target == "string":
        if kind == "string":
            return expr.cast(pl.String)
        if kind == "list" or isinstance(dtype, pl.Struct):
            return json_text(expr, dtype)
        if isinstance(dtype, pl.Datetime):  # kind "datetime"
            return datetime_iso(expr, dtype, fixed_fraction=False)
        if kind == "date":
            return expr.dt.to_string("%Y-%m-%d")
        return expr.cast(pl.String, strict=False)
    if target == "int":
        if kind == "bool" or isinstance(dtype, _LOSSLESS_INTS):
            return expr.cast(pl.Int64)
        if kind == "numeric" and dtype.is_integer():  # UInt64: beyond Int64 does not cast
            return expr.cast(pl.Int64, strict=False)
        if kind == "numeric":
            f = expr.cast(pl.Float64)
            whole = f.is_finite() & (f == f.floor()) & (f >= -_INT64_LIMIT) & (f < _INT64_LIMIT)
            return pl.when(whole).then(f.cast(pl.Int64, strict=False))
        if kind == "string":
            t = expr.str.strip_chars()
            return pl.when(t.str.contains(INT_TEXT)).then(t.cast(pl.Int64, strict=False))
        return _never(expr, out)
    if target == "float":
        if kind in ("numeric", "bool"):
            return expr.cast(pl.Float64)
        if kind == "string":
            t = expr.str.strip_chars()
            return pl.when(t.str.contains(FLOAT_TEXT)).then(t.cast(pl.Float64, strict=False))
        return _never(expr, out)
    if target == "bool":
        if kind == "bool":
            return expr
        if kind == "numeric":
            return pl.when(expr == 1).then(pl.lit(True)).when(expr == 0).then(pl.lit(False))
        if kind == "string":
            t = expr.str.strip_chars().str.to_lowercase()
            return (
                pl.when(t.is_in(pl.Series(TRUE_TEXT).implode()))
                .then(pl.lit(True))
                .when(t.is_in(pl.Series(FALSE_TEXT).implode()))
                .then(pl.lit(False))
            )
        return _never(expr, out)
    if target == "date":
        if kind == "date":
            return expr
        if kind == "datetime":
            return expr.dt.date()
        if kind == "string":
            return date_from_text(expr)
        if kind == "numeric":
            return datetime_from_unix(expr).dt.date()
        return _never(expr, out)
    if target == "datetime":
        if isinstance(dtype, pl.Datetime):  # kind "datetime"
            moved = expr.dt.convert_time_zone("UTC") if dtype.time_zone else expr.dt.replace_time_zone("UTC")
            return moved.dt.cast_time_unit("us")
        if kind == "date":
            return expr.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        if kind == "string":
            return datetime_from_text(expr)
        if kind == "numeric":
            return datetime_from_unix(expr)
        return _never(expr, out)
    raise ValueError(f"unknown type {target!r}")


def cast_can_fail(dtype: pl.DataType, target: str) -> bool:
    """Can a non-null value of `dtype` fail to become `target`? (No: no check is needed.)"""
    kind = kind_of(dtype)
    if kind == "null" or target == "string":
        return False
    if target == "int":
        return not (kind == "bool" or isinstance(dtype, _LOSSLESS_INTS))
    if target == "float":
        return kind not in ("numeric", "bool")
    if target == "bool":
        return kind != "bool"
    return kind not in ("date", "datetime")


# ---------------------------------------------------------------- messages


def _show(value: Any) -> str:
    """A data value as a user would write it, cut short."""
    if isinstance(value, (dt.date, dt.datetime)):
        text = value.isoformat()
    elif isinstance(value, float) and value != value:
        text = "NaN"
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _listing(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:40])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 40 else "")


class _Context:
    def __init__(self, table: str | None):
        self.where = f"source {table!r}: " if table else ""

    def fail(self, at: str, message: str) -> ShapingError:
        return ShapingError(f"{self.where}{at}: {message}")

    def missing(self, at: str, name: str, schema: pl.Schema, fetched: bool) -> ShapingError:
        names = list(schema.names())
        where = "in the fetched data" if fetched else "here"
        if not names:
            return self.fail(at, f"column {name!r} is not {where}: there are no columns")
        return self.fail(at, f"column {name!r} is not {where}; the columns are: {_listing(names)}")


# ---------------------------------------------------------------- columns


@dataclass
class _CastCheck:
    index: int  # the `columns` entry
    name: str
    label: str  # how the source is named in messages
    target: str
    source: pl.Expr
    result: pl.Expr


def resolve_path(path: str, schema: pl.Schema) -> tuple[pl.Expr, pl.DataType] | None:
    """A dotted `source` path over the flattened columns: a column's own name (`meta.created`),
    else a column followed by list indexes and struct fields (`tags.0`, `items.0.sku`)."""
    if path in schema:
        return pl.col(path), schema[path]
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head not in schema:
            continue
        expr, dtype = pl.col(head), schema[head]
        for part in parts[cut:]:
            if isinstance(dtype, pl.List) and part.lstrip("-").isdigit():
                expr, dtype = expr.list.get(int(part), null_on_oob=True), _nested_dtype(dtype.inner)
            elif isinstance(dtype, pl.Struct) and part in {f.name for f in dtype.fields}:
                expr, dtype = expr.struct.field(part), _nested_dtype({f.name: f.dtype for f in dtype.fields}[part])
            else:
                return None
        return expr, dtype
    return None


def _columns(frame: pl.LazyFrame, columns: tuple[Column, ...], schema: pl.Schema, ctx: _Context):
    exprs: list[pl.Expr] = []
    checks: list[_CastCheck] = []
    names = list(schema.names())
    for i in output_order([c.order for c in columns]):
        column = columns[i]
        if column.column is not None:
            if column.column >= len(names):
                raise ctx.fail(
                    f"columns.{i}.column",
                    f"index {column.column} is past the last field: the fetched "
                    f"data has {len(names)} columns (0-based): "
                    f"{_listing(names) or 'none'}",
                )
            label = names[column.column]
            expr, dtype = pl.col(label), schema[label]
        else:
            path = default_source(column)
            assert path is not None  # no `column` index: the `source` path or the column's own name
            label = path
            found = resolve_path(label, schema)
            if found is None:
                at = f"columns.{i}.source" if column.source is not None else f"columns.{i}.name"
                raise ctx.missing(at, label, schema, fetched=True)
            expr, dtype = found
        if column.type is not None:
            if column.type != "string" and kind_of(dtype) == "string":
                expr = pl.when(expr.str.strip_chars() != "").then(expr)  # a blank text is a missing value
            result = cast_expr(expr, dtype, column.type)
            if column.on_cast_error == "fail" and cast_can_fail(dtype, column.type):
                checks.append(_CastCheck(i, column.name, label, column.type, expr, result))
            expr = result
        exprs.append(expr.alias(column.name))
    return frame.select(exprs), checks


def _check_casts(frame: pl.LazyFrame, checks: list[_CastCheck], ctx: _Context) -> None:
    """One streaming pass: for each checked cast, how many non-null values became null, and
    the first of them."""
    if not checks:
        return
    exprs = []
    for k, check in enumerate(checks):
        bad = check.source.is_not_null() & check.result.is_null()
        exprs += [bad.sum().alias(f"bad_{k}"), check.source.filter(bad).first().alias(f"example_{k}")]
    row = frame.select(exprs).collect(engine="streaming").row(0)
    for k, check in enumerate(checks):
        count, example = row[2 * k], row[2 * k + 1]
        if count:
            origin = f" (from {check.label!r})" if check.label != check.name else ""
            raise ctx.fail(
                f"columns.{check.index}.type",
                f"column {check.name!r}{origin}: {count} value{'s' if count != 1 else ''} cannot be "
                f'read as {check.target}, e.g. {_show(example)}; set "on_cast_error": "null" on '
                f"the column to write nulls for them instead",
            )


# ---------------------------------------------------------------- filters


def _literal_value(value: Any, dtype: pl.DataType, at: str, column: str, ctx: _Context) -> Any:
    kind = kind_of(dtype)
    try:
        return convert_literal(value, kind)
    except ValueError:
        raise ctx.fail(
            at, f"{_show(value)} cannot be compared with column {column!r} of type {type_name(dtype)}"
        ) from None


def _lit(value: Any, dtype: pl.DataType) -> pl.Expr:
    """A converted value as a literal of exactly `dtype` (temporal) or its natural type."""
    kind = kind_of(dtype)
    if isinstance(dtype, pl.Datetime):  # kind "datetime"
        naive = pl.lit(value.astimezone(dt.UTC).replace(tzinfo=None), pl.Datetime(dtype.time_unit or "us"))
        return naive.dt.replace_time_zone("UTC").dt.convert_time_zone(dtype.time_zone) if dtype.time_zone else naive
    if kind == "date":
        return pl.lit(value, pl.Date)
    if kind == "string":
        return pl.lit(value, pl.String)
    if kind == "bool":
        return pl.lit(value, pl.Boolean)
    return pl.lit(value)


def _in_list(col: pl.Expr, values: list, dtype: pl.DataType) -> pl.Expr:
    kind = kind_of(dtype)
    if kind == "numeric":
        if dtype.is_integer() and all(isinstance(v, int) for v in values):
            return col.cast(pl.Int64, strict=False).is_in(pl.Series(values, dtype=pl.Int64).implode())
        return col.cast(pl.Float64).is_in(pl.Series([float(v) for v in values], dtype=pl.Float64).implode())
    if isinstance(dtype, pl.Datetime):  # kind "datetime"
        series = pl.Series(
            [v.astimezone(dt.UTC).replace(tzinfo=None) for v in values], dtype=pl.Datetime(dtype.time_unit or "us")
        )
        if dtype.time_zone:
            series = series.dt.replace_time_zone("UTC").dt.convert_time_zone(dtype.time_zone)
        return col.is_in(series.implode())
    natural = {"string": pl.String, "bool": pl.Boolean, "date": pl.Date}[kind]
    return col.cast(natural).is_in(pl.Series(values, dtype=natural).implode())


def _filter(item, i: int, schema: pl.Schema, ctx: _Context, fetched: bool) -> pl.Expr:
    at = f"filters.{i}"
    name, op = item.column, item.op
    if name not in schema:
        raise ctx.missing(f"{at}.column", name, schema, fetched)
    dtype = schema[name]
    kind = kind_of(dtype)
    col = pl.col(name)
    if op == "is_null":
        return col.is_null()
    if op == "not_null":
        return col.is_not_null()
    if kind == "null":  # no values at all: only the negative ops keep rows (nulls included)
        return pl.lit(op in ("!=", "not_in"))
    if kind == "list":
        if op != "contains":
            raise ctx.fail(
                f"{at}.op",
                f"op {op!r} does not apply to list column {name!r}; lists take "
                f"'contains' (an element), 'is_null' and 'not_null'",
            )
        assert isinstance(dtype, (pl.List, pl.Array))  # kind "list"
        inner = _nested_dtype(dtype.inner)
        if kind_of(inner) == "null":
            return pl.lit(False)
        if kind_of(inner) in ("list", "other"):
            raise ctx.fail(f"{at}.op", f"op 'contains' cannot look into list column {name!r} of {inner}")
        value = _literal_value(item.value, inner, f"{at}.value", name, ctx)
        return col.list.contains(_lit(value, inner))
    if kind == "other":
        raise ctx.fail(
            f"{at}.column",
            f"column {name!r} of type {type_name(dtype)} can only be filtered with 'is_null' or 'not_null'",
        )
    if op in TEXT_OPS:
        if kind != "string":
            raise ctx.fail(
                f"{at}.op", f"op {op!r} applies to text (or list) columns; column {name!r} is {type_name(dtype)}"
            )
        text = col.cast(pl.String)
        return text.str.contains(item.value, literal=True) if op == "contains" else text.str.starts_with(item.value)
    if op in ("in", "not_in"):
        values = [_literal_value(v, dtype, f"{at}.value.{j}", name, ctx) for j, v in enumerate(item.value)]
        matched = _in_list(col, values, dtype)
        return matched if op == "in" else (~matched) | col.is_null()
    value = _lit(_literal_value(item.value, dtype, f"{at}.value", name, ctx), dtype)
    if kind == "string" and dtype != pl.String:
        col = col.cast(pl.String)
    if op == "==":
        return col == value
    if op == "!=":
        return col.ne_missing(value)  # a null is not equal to the value: kept
    if op == ">":
        return col > value
    if op == ">=":
        return col >= value
    if op == "<":
        return col < value
    return col <= value


# ---------------------------------------------------------------- group_by


def _aggregation(agg, i: int, schema: pl.Schema, ctx: _Context, fetched: bool) -> pl.Expr:
    at = f"group_by.aggregations.{i}"
    if agg.column is None:
        return pl.len().cast(pl.Int64).alias(agg.output_name)
    if agg.column not in schema:
        raise ctx.missing(f"{at}.column", agg.column, schema, fetched)
    dtype = schema[agg.column]
    kind = kind_of(dtype)
    col = pl.col(agg.column)
    if agg.agg in ("sum", "mean") and kind not in ("numeric", "bool", "null"):
        raise ctx.fail(
            f"{at}.agg", f"agg {agg.agg!r} needs a numeric column; column {agg.column!r} is {type_name(dtype)}"
        )
    if agg.agg in ("min", "max") and kind in ("list", "other"):
        raise ctx.fail(f"{at}.agg", f"agg {agg.agg!r} cannot order column {agg.column!r} of type {type_name(dtype)}")
    if kind == "bool" and agg.agg in ("sum", "mean"):
        col = col.cast(pl.Int64 if agg.agg == "sum" else pl.Float64)
    if agg.agg == "sum":
        expr: pl.Expr = pl.when(col.count() > 0).then(col.sum())  # nothing to add up: null, not 0
    elif agg.agg == "mean":
        expr = col.mean()
    elif agg.agg == "min":
        expr = col.min()
    elif agg.agg == "max":
        expr = col.max()
    elif agg.agg == "count":
        expr = col.count().cast(pl.Int64)
    elif agg.agg == "n_unique":
        expr = col.drop_nulls().n_unique().cast(pl.Int64)
    elif agg.agg == "first":
        expr = col.first()
    else:
        expr = col.last()
    return expr.alias(agg.output_name)


def _group_by(frame: pl.LazyFrame, group: GroupBy, ctx: _Context, fetched: bool) -> pl.LazyFrame:
    schema = frame.collect_schema()
    for i, key in enumerate(group.keys):
        if key not in schema:
            raise ctx.missing(f"group_by.keys.{i}", key, schema, fetched)
    aggs = [_aggregation(a, i, schema, ctx, fetched) for i, a in enumerate(group.aggregations)]
    return frame.group_by(list(group.keys), maintain_order=True).agg(aggs)


# ---------------------------------------------------------------- shape


def _empty_input(spec: JobSpec) -> pl.LazyFrame:
    """No records were fetched at all (so no schema): the columns the spec names, without rows."""
    if spec.columns is not None:
        ordered = [spec.columns[i] for i in output_order([c.order for c in spec.columns])]
        return pl.LazyFrame(schema={c.name: DTYPES[c.type] if c.type else pl.Null() for c in ordered})
    names: list[str] = [f.column for f in spec.filters]
    if spec.group_by is not None:
        names += list(spec.group_by.keys) + [a.column for a in spec.group_by.aggregations if a.column]
    else:
        names += list(spec.distinct) if isinstance(spec.distinct, tuple) else []
        names += [k.column for k in spec.sort]
    return pl.LazyFrame(schema={n: pl.Null() for n in dict.fromkeys(names)})


def shape(frame: pl.LazyFrame, spec: JobSpec, table: str | None = None) -> pl.LazyFrame:
    """`frame` shaped by the spec: columns, filters, group_by, distinct, sort, limit. `table`
    (the source's name) is named in errors.

    The plan is built against the frame's schema (no data is read for that). Raises
    `ShapingError` for what the fetched data cannot do: a column that is not there (the
    message lists the columns that are), an index past the last field, an op or aggregation the
    column's type cannot take, a filter value that cannot be read as the column's type. When a
    `columns` entry casts with `on_cast_error: "fail"` (the default) and the cast can fail for the
    column's type, one streaming pass over just those columns looks for values that don't cast;
    the first such column fails the job with its count and an example value. The rules shared
    with validation (output order, how text reads as a type) live in `engine.spec.shaping_rules`.
    """
    ctx = _Context(table)
    schema = frame.collect_schema()
    checks: list[_CastCheck] = []
    source = frame
    fetched = spec.columns is None  # do the names still refer to the fetched fields?
    if not len(schema):
        frame = _empty_input(spec)
    elif spec.columns is not None:
        frame, checks = _columns(frame, spec.columns, schema, ctx)
    if spec.filters:
        schema = frame.collect_schema()
        frame = frame.filter(*[_filter(f, i, schema, ctx, fetched) for i, f in enumerate(spec.filters)])
    if spec.group_by is not None:
        frame = _group_by(frame, spec.group_by, ctx, fetched)
        fetched = False
    if spec.distinct:
        subset = None
        if isinstance(spec.distinct, tuple):
            schema = frame.collect_schema()
            for i, name in enumerate(spec.distinct):
                if name not in schema:
                    raise ctx.missing(f"distinct.{i}", name, schema, fetched)
            subset = list(spec.distinct)
        frame = frame.unique(subset=subset, keep="first", maintain_order=True)
    if spec.sort:
        schema = frame.collect_schema()
        for i, key in enumerate(spec.sort):
            if key.column not in schema:
                raise ctx.missing(f"sort.{i}.column", key.column, schema, fetched)
        frame = frame.sort(
            [k.column for k in spec.sort],
            descending=[k.descending for k in spec.sort],
            nulls_last=True,
            maintain_order=True,
        )
    if spec.limit is not None:
        frame = frame.head(spec.limit)
    _check_casts(source, checks, ctx)  # last: every check that needs no data has passed
    return frame
