"""Fan-out: a source becomes units (ids × date windows); each unit is paginated on its own.

Units are addressed by ordinal and computed on demand, so a range of a million ids costs no
memory until it is fetched.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from engine.errors import FieldError, SpecError
from engine.spec.models import Source, check_http_url

ID_COLUMN = "_fanout_id"
WINDOW_COLUMN = "_fanout_window_start"
MAX_UNITS = 1_000_000


@dataclass(frozen=True)
class Unit:
    ordinal: int
    id: Any = None
    window: tuple[dt.date, dt.date] | None = None


def date_windows(start: dt.date, end: dt.date, days: int) -> list[tuple[dt.date, dt.date]]:
    """Consecutive, non-overlapping windows covering start..end inclusive; the last may be shorter."""
    windows = []
    first = start
    while first <= end:
        last = min(first + dt.timedelta(days=days - 1), end)
        windows.append((first, last))
        first = last + dt.timedelta(days=1)
    return windows


def read_id_file(path: Path, column: str | None, field: str = "ids.file") -> list[str]:
    """Values of one column of a CSV file (the first column by default), blanks skipped."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError([FieldError(field, f"cannot read {path.name}: {exc.strerror}")]) from None
    return parse_id_csv(raw, column, field)


def parse_id_csv(raw: bytes, column: str | None, field: str = "ids.file") -> list[str]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError([FieldError(field, f"is not UTF-8 text (byte {exc.start})")]) from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise SpecError([FieldError(field, "is empty")])
    header = [h.strip() for h in header]
    if column is None:
        index = 0
    elif column in header:
        index = header.index(column)
    else:
        column_field = field[: -len("file")] + "column" if field.endswith("file") else field
        raise SpecError(
            [FieldError(column_field, f"column {column!r} not in the file (columns: {', '.join(header[:20])})")]
        )
    values = [row[index].strip() for row in reader if len(row) > index and row[index].strip()]
    if not values:
        raise SpecError([FieldError(field, f"column {header[index]!r} holds no values")])
    return values


class _Batches:
    """Consecutive values joined into one: batch k is values[k*size:(k+1)*size] joined by
    `separator` (computed on demand, like the values themselves)."""

    def __init__(self, values, size: int, separator: str):
        self.values, self.size, self.separator = values, size, separator

    def __len__(self) -> int:
        return -(-len(self.values) // self.size)

    def __getitem__(self, k: int) -> str:
        if not 0 <= k < len(self):
            raise IndexError(k)
        return self.separator.join(str(v) for v in self.values[k * self.size : (k + 1) * self.size])


class FanOut:
    """The units of one source.

    A source whose ids come from another source's records (`ids.from`) has no units until
    those values are known: built without them it is `pending` (no units, never done)."""

    def __init__(self, source: Source, id_values: list | None = None):
        self.source = source
        ids = source.ids
        self.pending = False
        raw: Any
        if ids is None:
            raw = None
        elif ids.values is not None:
            raw = list(ids.values)
        elif ids.range is not None:
            raw = range(ids.range.start, ids.range.end, ids.range.step)
        elif ids.from_ is not None and id_values is None:
            raw, self.pending = [], True
        else:
            if id_values is None:
                raise ValueError("ids.file values must be read before planning")
            raw = id_values
        self.batch = ids.batch if ids is not None else 1
        if ids is not None and ids.batch > 1:
            self._ids: Any = _Batches(raw, ids.batch, ids.separator)
            self.ids_are_ints = False  # a batch is text: the values joined
        else:
            self._ids = raw
            self.ids_are_ints = raw is not None and (
                isinstance(raw, range) or all(isinstance(v, int) and not isinstance(v, bool) for v in raw)
            )
        self._windows = (
            date_windows(source.windows.start, source.windows.end, source.windows.days) if source.windows else None
        )
        n_ids = len(self._ids) if self._ids is not None else 1
        n_windows = len(self._windows) if self._windows is not None else 1
        self.count = n_ids * n_windows
        self.used = self._ids is not None or self._windows is not None

    def unit(self, ordinal: int) -> Unit:
        n_windows = len(self._windows) if self._windows is not None else 1
        id_index, window_index = divmod(ordinal, n_windows)
        value = self._ids[id_index] if self._ids is not None else None
        if self._ids is not None and not self.ids_are_ints:
            value = str(value)
        window = self._windows[window_index] if self._windows is not None else None
        return Unit(ordinal, value, window)

    def request_base(self, unit: Unit) -> tuple[str, dict]:
        """URL and query parameters of the unit's first request (before pagination)."""
        source = self.source
        url = source.url
        params = dict(source.params)
        if unit.id is not None:
            if url.strip() == "{id}":
                url = str(unit.id)
            else:
                url = url.replace("{id}", quote(str(unit.id), safe=self._separator_safe()))
            ids = source.ids
            assert ids is not None  # a unit has an id only when its source fans out over ids
            if ids.param:
                params[ids.param] = unit.id
        if unit.window is not None:
            windows = source.windows
            assert windows is not None  # a unit has a window only when its source has windows
            first, last = (d.strftime(windows.date_format) for d in unit.window)
            url = url.replace("{start}", first).replace("{end}", last)
            if windows.start_param:
                params[windows.start_param] = first
            if windows.end_param:
                params[windows.end_param] = last
        return url, params

    def _separator_safe(self) -> str:
        """A batch's separator stays as written in a URL when it may (`1,2,3`, not `1%2C2%2C3`:
        what an API that takes lists expects); each value is encoded."""
        ids = self.source.ids
        if self.batch == 1 or ids is None:
            return ""
        return "".join(c for c in ids.separator if c in ",;:!$'()*@")

    def body_base(self, unit: Unit) -> Any:
        """The unit's JSON body before pagination (a GraphQL source's `{query, variables}`), with
        `{id}`, `{start}` and `{end}` substituted in its strings (GraphQL: in the variables only);
        None when the source sends none.
        A string that is exactly `{id}` becomes the value itself (a number stays a number)."""
        source = self.source
        if source.graphql is None and source.body is None:
            return None
        marks: dict[str, Any] = {}
        if unit.id is not None:
            marks["{id}"] = unit.id
        if unit.window is not None:
            windows = source.windows
            assert windows is not None  # a unit has a window only when its source has windows
            marks["{start}"], marks["{end}"] = (d.strftime(windows.date_format) for d in unit.window)
        if source.graphql is not None:
            # Only the variables: a query's selection set is text like `items{id}`, not a mark.
            variables = dict(source.graphql.variables)
            return {"query": source.graphql.query, "variables": _substitute(variables, marks) if marks else variables}
        return _substitute(source.body, marks) if marks else source.body

    def check_urls(self, index: int) -> list[FieldError]:
        """Whole-URL fan-out (`"url": "{id}"`): every value must be an http(s) URL."""
        if self.source.url.strip() != "{id}" or self._ids is None:
            return []
        problems = []
        ids = self.source.ids
        assert ids is not None  # `self._ids` is set only from `source.ids`
        for i in range(len(self._ids)):
            problem = check_http_url(str(self._ids[i]))
            if problem:
                # The field to change: the listed value, the file, or (a range of numbers) the range.
                if ids.from_ is not None:  # values of the parent's records
                    field = f"sources.{index}.ids.field"
                else:
                    field = (
                        f"sources.{index}.ids.values.{i}"
                        if ids.values is not None
                        else f"sources.{index}.ids.file"
                        if ids.file is not None
                        else f"sources.{index}.ids.range"
                    )
                problems.append(FieldError(field, f"value {i + 1} ({str(self._ids[i])[:80]!r}) {problem}"))
                if len(problems) >= 5:
                    break
        return problems

    def columns(self, unit: Unit) -> dict[str, Any]:
        """Constant columns that tell the unit's rows apart in the output."""
        out: dict[str, Any] = {}
        if self._ids is not None:
            out[ID_COLUMN] = unit.id
        if self._windows is not None:
            assert unit.window is not None  # every unit of a windowed fan-out has a window
            out[WINDOW_COLUMN] = unit.window[0]
        return out


def _substitute(node: Any, marks: dict[str, Any]) -> Any:
    if isinstance(node, str):
        if node in marks:
            return marks[node]
        for mark, value in marks.items():
            node = node.replace(mark, str(value))
        return node
    if isinstance(node, dict):
        return {key: _substitute(value, marks) for key, value in node.items()}
    if isinstance(node, list):
        return [_substitute(value, marks) for value in node]
    return node


# ---------------------------------------------------------------- dependent sources


@dataclass
class ParentValues:
    """A parent source's values for its children's fan-out (what `parent_values` found)."""

    values: list  # in the parent's row order, nulls skipped
    records: int  # rows the parent's shards hold
    found: bool  # some shard has the column
    columns: list[str]  # the first columns seen (for an error message)


def parent_values(paths: list[str], column: str) -> ParentValues:
    """The values of `column` (a flattened dotted path, `owner.id`) in a parent source's shards,
    given in row order. Runs in a pool process: it reads Arrow, which the coordinator never
    imports. A list or object in the column is a ValueError (a value must fit one `{id}`)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    found = ParentValues([], 0, False, [])
    for path in paths:
        try:
            _read_values(pa, ipc, path, column, found)
        except (OSError, pa.ArrowException) as exc:  # as text: the coordinator must not unpickle Arrow's errors
            raise RuntimeError(f"{Path(path).name}: {exc}") from None
    return found


def _read_values(pa, ipc, path: str, column: str, found: ParentValues) -> None:
    with pa.memory_map(path) as mapped:  # shards are uncompressed: columns are read in place
        reader = ipc.open_file(mapped)
        for name in reader.schema.names:
            if len(found.columns) < 20 and name not in found.columns:
                found.columns.append(name)
        index = reader.schema.get_field_index(column)
        if index >= 0:
            found.found = True
            if pa.types.is_nested(reader.schema.field(index).type):
                raise ValueError(f"column {column!r} holds lists or objects, not single values")
        for k in range(reader.num_record_batches):
            batch = reader.get_batch(k)
            found.records += batch.num_rows
            if index >= 0:
                found.values.extend(plain_value(v) for v in batch.column(index).to_pylist() if v is not None)


def plain_value(value: Any) -> Any:
    """A value as it goes into a URL: a whole float is the integer it holds (JSON numbers that
    were read as floats), dates in ISO form; ints and strings as they are."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, (int, str, float)):
        return value
    return str(value)
