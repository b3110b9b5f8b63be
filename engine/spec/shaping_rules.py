"""Shaping checks that need no data (run by `parse_spec`, so `validate` and `start` reject them
before anything is fetched), and the rules they share with `engine.export.shaping`: the output
order of `columns` and how a JSON value reads as a typed value. Pure Python: no Polars here.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

from engine.errors import FieldError

# ---------------------------------------------------------------- shared rules

INT_TEXT = r"^[+-]?[0-9]+$"
FLOAT_TEXT = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
# ISO 8601 as APIs write it: a date, optionally a time (`T` or one space), optionally seconds
# and a fraction, optionally an offset (`Z`, `+01:00`, `+0100`) - the offset only with a time.
DATETIME_TEXT = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?(?:[Zz]|[+-][0-9]{2}:?[0-9]{2})?)?$"
)
TRUE_TEXT = ("true", "1", "yes")
FALSE_TEXT = ("false", "0", "no")
UNIX_SECONDS_MIN = -62_135_596_800  # 0001-01-01T00:00:00Z
UNIX_SECONDS_MAX = 253_402_300_799  # 9999-12-31T23:59:59Z

_INT_RE = re.compile(INT_TEXT)
_FLOAT_RE = re.compile(FLOAT_TEXT)
_DATETIME_RE = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,9}))?)?([Zz]|[+-][0-9]{2}:?[0-9]{2})?)?$"
)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# What a filter value is compared as, by the column's type.
KIND_OF_TYPE = {
    "string": "string",
    "int": "numeric",
    "float": "numeric",
    "bool": "bool",
    "date": "date",
    "datetime": "datetime",
}
TEXT_OPS = ("contains", "starts_with")
NUMERIC_AGGS = ("sum", "mean")


def output_order(orders: list[int | None]) -> list[int]:
    """Indexes of `columns` entries in output order: those with an `order` by it (ties keep
    list order), then those without one, in list order. The service lists stored inputs the
    same way."""
    return sorted(range(len(orders)), key=lambda i: (orders[i] is None, orders[i] or 0, i))


def default_source(column) -> str | None:
    """A `columns` entry with neither `source` nor `column` takes the field of its own name."""
    if column.source is None and column.column is None:
        return column.name
    return column.source


def parse_datetime_text(text: str) -> dt.datetime | None:
    """ISO 8601 text → an aware UTC datetime (no offset means UTC), None when it is not one."""
    m = _DATETIME_RE.fullmatch(text.strip())
    if not m:
        return None
    year, month, day, hour, minute, second, fraction, offset = m.groups()
    try:
        value = dt.datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0")[:6].ljust(6, "0")),
            tzinfo=dt.UTC,
        )
    except ValueError:
        return None
    if offset and offset not in "Zz":
        hours, minutes = int(offset[1:3]), int(offset[-2:])
        if hours > 23 or minutes > 59:
            return None
        delta = dt.timedelta(hours=hours, minutes=minutes)
        try:
            value = value - delta if offset[0] == "+" else value + delta
        except OverflowError:
            return None
    return value


def parse_date_text(text: str) -> dt.date | None:
    """A date, or the date part (as written) of a datetime; None when it is neither."""
    text = text.strip()
    if parse_datetime_text(text) is None:
        return None
    return dt.date(int(text[0:4]), int(text[5:7]), int(text[8:10]))


def from_unix_seconds(value: float) -> dt.datetime | None:
    if not math.isfinite(value) or not UNIX_SECONDS_MIN <= value <= UNIX_SECONDS_MAX:
        return None
    return _EPOCH + dt.timedelta(microseconds=round(value * 1_000_000))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def convert_literal(value: Any, kind: str) -> Any:
    """A JSON scalar read as `kind` (string, numeric, bool, date, datetime), by the rules the
    `type` casts apply to data. Raises ValueError when it cannot be read so."""
    if kind == "string":
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (str, int, float)):
            return value if isinstance(value, str) else repr(value)
    elif kind == "numeric":
        if _number(value):
            return value
        if isinstance(value, str):
            text = value.strip()
            if _INT_RE.fullmatch(text):
                return int(text)
            if _FLOAT_RE.fullmatch(text):
                return float(text)
    elif kind == "bool":
        if isinstance(value, bool):
            return value
        if _number(value) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in TRUE_TEXT + FALSE_TEXT:
            return value.strip().lower() in TRUE_TEXT
    elif kind in ("date", "datetime"):
        parsed = None
        if isinstance(value, str):
            parsed = parse_date_text(value) if kind == "date" else parse_datetime_text(value)
        elif _number(value):
            parsed = from_unix_seconds(value)
            if parsed is not None and kind == "date":
                parsed = parsed.date()
        if parsed is not None:
            return parsed
    else:
        raise ValueError(f"unknown kind {kind!r}")
    raise ValueError(f"{value!r} cannot be read as {'a number' if kind == 'numeric' else kind}")


# ---------------------------------------------------------------- the checks


def check(spec) -> list[FieldError]:
    """Field errors in columns/filters/group_by/distinct/sort/limit that are knowable up front.

    What is knowable up front: the columns `columns` produces (when given) and their declared
    types, and the columns `group_by` produces. A name that cannot exist at the stage that uses
    it is an error naming the field; a name that may exist (no `columns` given) is checked against
    the fetched data by `engine.export.shaping`.
    """
    out: list[FieldError] = []
    declared = _columns(spec, out)
    _filters(spec, declared, out)
    after = _group_by(spec, declared, out)
    _distinct(spec, after, out)
    _sort(spec, after, out)
    return out


def _listing(names) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:30])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 30 else "")


def _columns(spec, out: list[FieldError]) -> dict[str, str | None] | None:
    """The columns `columns` produces, name → declared type (None: untyped); None when
    `columns` is absent (every fetched field)."""
    if spec.columns is None:
        return None
    if not spec.columns:
        out.append(FieldError("columns", "must not be empty (leave it out to keep every field)"))
        return {}
    declared: dict[str, str | None] = {}
    first: dict[str, int] = {}
    for i, column in enumerate(spec.columns):
        if column.name in first:
            out.append(
                FieldError(
                    f"columns.{i}.name",
                    f"duplicate output name {column.name!r} (also columns.{first[column.name]}.name)",
                )
            )
            continue
        first[column.name] = i
        declared[column.name] = column.type
    return declared


def _missing(name: str, known: dict, stage: str) -> str:
    return f"column {name!r} does not exist {stage}: there are only {_listing(known)}"


def _filters(spec, declared: dict | None, out: list[FieldError]) -> None:
    for i, item in enumerate(spec.filters):
        at = f"filters.{i}"
        if not _filter_value_shape(at, item, out):
            continue
        if declared is None:
            continue
        if item.column not in declared:
            out.append(FieldError(f"{at}.column", _missing(item.column, declared, "after `columns`")))
            continue
        kind = declared[item.column]
        if kind is None:
            continue
        if item.op in TEXT_OPS and kind != "string":
            out.append(
                FieldError(
                    f"{at}.op",
                    f"op {item.op!r} applies to text (or list) columns; column {item.column!r} has type {kind!r}",
                )
            )
            continue
        if item.op in ("in", "not_in"):
            values = [(f"{at}.value.{j}", value) for j, value in enumerate(item.value)]
        elif item.op in ("is_null", "not_null"):
            values = []
        else:
            values = [(f"{at}.value", item.value)]
        for path, value in values:
            try:
                convert_literal(value, KIND_OF_TYPE[kind])
            except ValueError:
                out.append(
                    FieldError(path, f"{value!r} is not a {kind} value, but column {item.column!r} has type {kind!r}")
                )


def _filter_value_shape(at: str, item, out: list[FieldError]) -> bool:
    """Does the value fit the op (a list for in/not_in, text for contains/starts_with, no value
    for is_null/not_null, one scalar otherwise)?"""
    before = len(out)
    if item.op in ("in", "not_in"):
        if not isinstance(item.value, list):
            out.append(FieldError(f"{at}.value", f"op {item.op!r} needs a list value"))
        else:
            for j, value in enumerate(item.value):
                if value is None:
                    out.append(
                        FieldError(f"{at}.value.{j}", "null never matches: use op 'is_null' or 'not_null' for nulls")
                    )
                elif not isinstance(value, (str, int, float)):
                    out.append(FieldError(f"{at}.value.{j}", "must be a string, number or boolean"))
    elif item.op in TEXT_OPS:
        if not isinstance(item.value, str):
            out.append(FieldError(f"{at}.value", f"op {item.op!r} needs a string value"))
    elif item.op in ("is_null", "not_null"):
        if item.value is not None:
            out.append(FieldError(f"{at}.value", f"op {item.op!r} takes no value"))
    elif item.value is None or isinstance(item.value, (list, dict)):
        out.append(FieldError(f"{at}.value", f"op {item.op!r} needs a single value (string, number or boolean)"))
    return len(out) == before


def _group_by(spec, declared: dict | None, out: list[FieldError]) -> dict | None:
    """The columns after group_by (name → type or None), or what came in when there is none."""
    group = spec.group_by
    if group is None:
        return declared
    after: dict[str, str | None] = {}
    used: dict[str, str] = {}
    for i, key in enumerate(group.keys):
        at = f"group_by.keys.{i}"
        if not key:
            out.append(FieldError(at, "must be a column name"))
            continue
        if key in used:
            out.append(FieldError(at, f"key {key!r} listed twice (also {used[key]})"))
            continue
        if declared is not None and key not in declared:
            out.append(FieldError(at, _missing(key, declared, "after `columns`")))
        used[key] = at
        after[key] = declared.get(key) if declared else None
    for i, agg in enumerate(group.aggregations):
        at = f"group_by.aggregations.{i}"
        if agg.column is None:
            if agg.agg != "count":
                out.append(FieldError(f"{at}.column", f"agg {agg.agg!r} needs a column"))
        elif declared is not None and agg.column not in declared:
            out.append(FieldError(f"{at}.column", _missing(agg.column, declared, "after `columns`")))
        elif (
            declared is not None
            and agg.agg in NUMERIC_AGGS
            and declared[agg.column] not in (None, "int", "float", "bool")
        ):
            out.append(
                FieldError(
                    f"{at}.agg",
                    f"agg {agg.agg!r} needs a numeric column; column {agg.column!r} has type {declared[agg.column]!r}",
                )
            )
        name = agg.output_name
        if name in used:
            out.append(
                FieldError(
                    f"{at}.as",
                    f"output name {name!r} is already taken (by {used[name]}); give this aggregation another `as`",
                )
            )
            continue
        used[name] = at
        after[name] = _aggregated_type(agg, declared)
    return after


def _aggregated_type(agg, declared: dict | None) -> str | None:
    if agg.agg in ("count", "n_unique"):
        return "int"
    if agg.agg == "mean":
        return "float"
    source = declared.get(agg.column) if declared and agg.column else None
    if agg.agg == "sum" and source == "bool":
        return "int"
    return source


def _stage(spec) -> str:
    return "after group_by" if spec.group_by is not None else "after `columns`"


def _distinct(spec, after: dict | None, out: list[FieldError]) -> None:
    if after is None or not isinstance(spec.distinct, tuple):
        return
    for i, name in enumerate(spec.distinct):
        if name not in after:
            out.append(FieldError(f"distinct.{i}", _missing(name, after, _stage(spec))))


def _sort(spec, after: dict | None, out: list[FieldError]) -> None:
    if after is None:
        return
    for i, key in enumerate(spec.sort):
        if key.column not in after:
            out.append(FieldError(f"sort.{i}.column", _missing(key.column, after, _stage(spec))))
