"""Page bodies → flat Arrow tables.

JSON is decoded once per page with orjson (pagination, response rules and the record count need
the document); a page's records are then kept *packed* - one compact JSON array - and the
packed pages of a shard become one table through Arrow's native JSON reader (`PackedReader`),
which types them as `pa.array` over all their records would: a time-like string stays text.
Where that reader would type a value differently from `records_to_table` (an integer a double
cannot hold, records that disagree on a field's type), the Python path below decides instead:
`pa.array` over the records, then, when they still disagree, each column typed on its own and,
where values don't agree, kept as text (JSON for lists and objects) - nothing is dropped.
Nested objects are flattened to `parent.child` columns; lists stay lists.
"""

from __future__ import annotations

import codecs
import dataclasses
import io
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from engine.plan.pagination import get_path  # noqa: F401  (part of this module's interface)
from engine.spec.models import CsvSourceOptions


class BodyError(Exception):
    """The body cannot be read as the source's format. `retryable`: may a new try help?"""

    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


def find_records(doc: Any, path: str | None) -> list:
    """The list of records inside a decoded JSON page (docs/spec.md: `records` auto-detection)."""
    if path:
        found = get_path(doc, path)
        if found is None:
            raise BodyError(f"records path {path!r} not found in the page", retryable=False)
        if not isinstance(found, list):
            raise BodyError(f"records path {path!r} holds a {type(found).__name__}, not a list", retryable=False)
        return found
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        lists = [key for key, value in doc.items() if isinstance(value, list)]
        if len(lists) == 1:
            return doc[lists[0]]
        if not lists:
            raise BodyError("the page holds no list of records; set `records` to its path", retryable=False)
        raise BodyError(
            f"the page holds several lists ({', '.join(lists[:5])}); set `records` to the path of the records",
            retryable=False,
        )
    raise BodyError(f"the page is a JSON {type(doc).__name__}, not an object or a list", retryable=False)


def decode_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        hint = "empty body" if not body.strip() else f"invalid JSON ({exc})"
        raise BodyError(f"the page is not valid JSON: {hint}", retryable=True) from None


# The last record type seen and the flatten() passes it needs (None: has an empty struct).
# Pages of a source share their type, and comparing types is ~50x cheaper than hashing one.
_last_flatten: tuple = (None, None)


def _struct_depth(struct_type: pa.DataType) -> int | None:
    """How deep structs nest inside `struct_type` (0: no struct field); None when an empty
    struct is among them (those need `_flatten_table`'s care)."""
    depth = 0
    for i in range(struct_type.num_fields):
        field_type = struct_type.field(i).type
        if pa.types.is_struct(field_type):
            inner = _struct_depth(field_type) if field_type.num_fields else None
            if inner is None:
                return None
            depth = max(depth, inner + 1)
    return depth


def _flatten_records(array: pa.StructArray) -> pa.Table:
    """`_flatten_table(Table.from_struct_array(array))`, with the struct walk done when the
    record type changes instead of on every page."""
    global _last_flatten
    table = pa.Table.from_struct_array(array)
    last_type, depth = _last_flatten
    if last_type is None or not array.type.equals(last_type):
        depth = _struct_depth(array.type)
        _last_flatten = (array.type, depth)
    if depth is None:
        return _flatten_table(table)
    for _ in range(depth):
        table = table.flatten()
    return table


def _flatten_table(table: pa.Table) -> pa.Table:
    while any(pa.types.is_struct(field.type) for field in table.schema):
        # Table.flatten names children `parent.child`; an empty struct would vanish silently,
        # so it becomes a null column of the parent's name instead.
        columns, names = [], []
        for field, column in zip(table.schema, table.columns):
            if pa.types.is_struct(field.type) and field.type.num_fields == 0:
                columns.append(pa.nulls(len(table)))
                names.append(field.name)
            else:
                columns.append(column)
                names.append(field.name)
        table = pa.table(columns, names=names).flatten()
    return table


def _flatten_record(record: dict, prefix: str, out: dict) -> None:
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            _flatten_record(value, name + ".", out)
        else:
            out[name] = None if isinstance(value, dict) else value


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # e.g. an integer beyond 64 bits
        return json.dumps(value, default=str)


def _column_array(values: list) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        return pa.array([_as_text(v) for v in values], type=pa.string())


def _records_slow(records: list[dict]) -> pa.Table:
    flat: list[dict] = []
    for record in records:
        row: dict = {}
        _flatten_record(record, "", row)
        flat.append(row)
    names: dict[str, None] = {}
    for row in flat:
        for key in row:
            names.setdefault(key)
    return pa.table({name: _column_array([row.get(name) for row in flat]) for name in names})


def records_to_table(records: list) -> pa.Table:
    """Records (dicts; other values become a `value` column) → a flat Arrow table."""
    if not records:
        return pa.table({})
    kinds = set(map(type, records))
    if kinds != {dict} and not all(isinstance(r, dict) for r in records):
        records = [r if isinstance(r, dict) else {"value": r} for r in records]
    try:
        array = pa.array(records)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        return _records_slow(records)
    if not pa.types.is_struct(array.type) or array.type.num_fields == 0:
        return _records_slow(records)
    return _flatten_records(array)


def ndjson_records(body: bytes) -> list:
    records = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise BodyError(f"NDJSON line {number} is not valid JSON ({exc})", retryable=True) from None
    return records


_LINE_END = re.compile(rb"\r\n?|\n")
_WIDE_ENCODINGS = ("utf-16", "utf-32")


def _fields_bound(body: bytes, options: CsvSourceOptions) -> int:
    """At least the number of fields in a row: separators in the first row (after `skip_rows`)
    plus one; a quoted separator only makes it larger."""
    end = 0
    for _ in range(options.skip_rows + 1):
        found = _LINE_END.search(body, end)
        if found is None:
            end = len(body)
            break
        end = found.end()
    if options.separator.isascii() and not codecs.lookup(options.encoding).name.startswith(_WIDE_ENCODINGS):
        return body.count(options.separator.encode("ascii"), 0, end) + 1
    return end + 1


def csv_table(body: bytes, options: CsvSourceOptions) -> pa.Table:
    """A CSV page as a table of text columns, each value exactly as written (no type
    inference: `01067`, `1e3`, `TRUE` and an empty field stay as they are). Fields in
    `csv.null_values` (none by default) are null. `csv.infer_types` is applied later, over the whole
    column (`engine.export.infer`)."""
    if not body.strip():
        return pa.table({})
    if codecs.lookup(options.encoding).name == "utf-8":
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BodyError(
                f"CSV is not valid UTF-8 (byte {exc.start}: {body[exc.start : exc.start + 4]!r}); "
                f"set csv.encoding if the source uses another encoding",
                retryable=False,
            ) from None
    # Columns are named f0, f1, ... so that every one can be read as text; the header is then
    # the first row.
    read = pacsv.ReadOptions(
        encoding=options.encoding,
        skip_rows=options.skip_rows,
        autogenerate_column_names=True,
        block_size=max(1 << 20, len(body) + 1),
    )
    parse = pacsv.ParseOptions(delimiter=options.separator)
    text = {f"f{i}": pa.string() for i in range(_fields_bound(body, options))}
    convert = pacsv.ConvertOptions(null_values=list(options.null_values), strings_can_be_null=True, column_types=text)
    try:
        table = pacsv.read_csv(io.BytesIO(body), read_options=read, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as exc:
        message = str(exc)
        if "UTF8" in message or "utf8" in message or "decode" in message.lower():
            raise BodyError(f"CSV is not valid {options.encoding}: {message}", retryable=False) from None
        if "Empty CSV file" in message:
            return pa.table({})
        raise BodyError(f"CSV cannot be parsed: {message}", retryable=False) from None
    except UnicodeDecodeError as exc:
        raise BodyError(f"CSV is not valid {options.encoding}: {exc}", retryable=False) from None
    if options.header:
        if table.num_rows == 0:
            return pa.table({})
        names = ["" if name is None else name for name in table.slice(0, 1).to_pylist()[0].values()]
        return table.slice(1).rename_columns(names)
    return table.rename_columns([f"column_{i + 1}" for i in range(table.num_columns)])


# Larger pages go to Arrow page by page: packing is measured to pay up to a thousand records
# (tests/benchmarks/parse_probe.py, docs/performance.md).
PACK_MAX_RECORDS = 1000


@dataclass
class ParsedPage:
    """One page's records: as a table, or packed (one compact JSON array of dict records) for
    the shard's native read. `table` builds the table of a packed page when it is asked for."""

    _table: pa.Table | None
    doc: Any  # the decoded JSON document (for pagination), or None
    records: int
    packed: bytes | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def of_records(cls, records: list, doc: Any, pack: bool) -> ParsedPage:
        if pack and 0 < len(records) <= PACK_MAX_RECORDS and all(type(r) is dict for r in records):
            return cls(None, doc, len(records), orjson.dumps(records))
        return cls(records_to_table(records), doc, len(records))

    @property
    def table(self) -> pa.Table:
        if self._table is None:
            assert self.packed is not None
            self._table = records_to_table(orjson.loads(self.packed))
        return self._table


def parse_page(
    body: bytes, fmt: str, records_path: str | None, csv_options: CsvSourceOptions, pack: bool = False
) -> ParsedPage:
    if fmt == "json":
        doc = decode_json(body)
        return ParsedPage.of_records(find_records(doc, records_path), doc, pack)
    if fmt == "ndjson":
        return ParsedPage.of_records(ndjson_records(body), None, pack)
    table = csv_table(body, csv_options)
    return ParsedPage(table, None, table.num_rows)


# ---------------------------------------------------------------- packed pages → one table

EXACT_INTEGERS = 2**53  # a double holds every integer below this, and not all above


# The reader needs several times its input in memory while it works: a shard is read 1 MB at a time.
READ_BYTES = 1 << 20


class PackedReader:
    """Reads one source's packed pages with Arrow's JSON reader, where its typing is the Python
    path's: records that disagree on a type (the reader refuses them) and a double at or beyond
    2**53 (it may stand for an integer the reader rounded) make `read` return None, and the
    caller takes the Python path. A time-like string, which the reader would make a timestamp,
    is read again as text. The record type of the last read (time-like fields as text) is kept
    and given to the next one: one read, no type inference - where a value does not fit it (a
    field it lacks, a type it has not), that read is done as the first one was. A shard's pages
    are read `READ_BYTES` at a time."""

    def __init__(self) -> None:
        self.record_type: pa.StructType | None = None

    def read(self, packed: list[bytes]) -> pa.Table | None:
        tables = []
        for group in _groups(packed, READ_BYTES):
            table = self._read(b"".join(part for page in group for part in (b'{"r":', page, b"}\n")))
            if table is None:
                return None
            tables.append(table)
        if len(tables) < 2:
            return tables[0] if tables else None
        # The groups' types differ only where the kept one was refused (an int64, a double now);
        # the promotion refuses an integer a double cannot hold.
        try:
            return pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return None

    def _read(self, buffer: bytes) -> pa.Table | None:
        try:
            records = self._read_as_before(buffer)
            if records is None:
                records = _read_records(buffer)
                if records is None:
                    return None
                as_text = _timestamps_as_text(records.type)
                if not as_text.equals(records.type):  # time-like strings, read as timestamps
                    records = _read_records(buffer, as_text)
                    if records is None or not records.type.equals(as_text):
                        return None
                self.record_type = records.type
            if _beyond_exact(records):
                return None
            return _flatten_records(records)
        except pa.ArrowException:  # what the reader refuses (or trips over) the Python path takes
            return None

    def _read_as_before(self, buffer: bytes) -> pa.StructArray | None:
        if self.record_type is None:
            return None
        try:
            records = _read_records(buffer, self.record_type)
        except pa.ArrowInvalid:  # a field or a type the kept record type lacks
            return None
        return records if records is not None and records.type.equals(self.record_type) else None


def _groups(packed: list[bytes], limit: int) -> list[list[bytes]]:
    """Consecutive pages in groups of at most `limit` bytes (a larger page is a group of its own)."""
    groups: list[list[bytes]] = []
    size = limit
    for page in packed:
        if size + len(page) > limit:
            groups.append([])
            size = 0
        groups[-1].append(page)
        size += len(page)
    return groups


def _read_records(buffer: bytes, record_type: pa.StructType | None = None) -> pa.StructArray | None:
    # One block, one thread: a call's bytes are bounded by `PackedReader` (the pool processes are
    # the parallelism).
    read = pajson.ReadOptions(use_threads=False, block_size=len(buffer) + 1)
    parse = None
    if record_type is not None:  # a field it lacks is an error: the caller reads with inference then
        schema = pa.schema([pa.field("r", pa.list_(record_type))])
        parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
    table = pajson.read_json(io.BytesIO(buffer), read_options=read, parse_options=parse)
    column = table.column("r").combine_chunks()
    if not pa.types.is_list(column.type):
        return None
    records = column.flatten()
    if not pa.types.is_struct(records.type) or records.type.num_fields == 0:
        return None  # no fields at all: `records_to_table` has its own rule for those
    return records


def _timestamps_as_text(kind: Any) -> Any:
    """`kind` with every time-like type (what the reader infers from a time-like string) text."""
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind) or pa.types.is_time(kind):
        return pa.string()
    if pa.types.is_struct(kind):
        return pa.struct([field.with_type(_timestamps_as_text(field.type)) for field in kind])
    if pa.types.is_list(kind):
        return pa.list_(kind.value_field.with_type(_timestamps_as_text(kind.value_type)))
    return kind


def _beyond_exact(array: pa.Array) -> bool:
    """Does any double in `array` (through structs and lists) reach 2**53 in magnitude?"""
    kind = array.type
    if pa.types.is_floating(kind):  # numpy, not pyarrow.compute: it is loaded with pyarrow already
        return bool((np.abs(array.to_numpy(zero_copy_only=False)) >= EXACT_INTEGERS).any())  # a null: NaN, False
    if pa.types.is_struct(kind):
        return any(_beyond_exact(array.field(i)) for i in range(kind.num_fields))
    if pa.types.is_list(kind):
        return _beyond_exact(array.flatten())
    return False
