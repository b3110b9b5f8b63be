"""engine/fetch/records.py `PackedReader`: the records of a shard's packed pages read by Arrow's
JSON reader give exactly the table `records_to_table` gives over the same records - or the
reader declines (None) and the worker takes that Python path itself. A reader that keeps the
record type of its last read gives, over a source's shards, the export the Python path gives."""

from __future__ import annotations

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.fetch import records as records_module
from engine.fetch.records import PackedReader, ParsedPage, parse_page, records_to_table
from engine.shards import unify
from engine.spec.models import CsvSourceOptions

KEYS = ["id", "name", "when", "n", "tags", "meta"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(["2020-01-06", "2020-01-06T10:00:00Z", "2020-01-06 10:00:00", "10:00", "01067", "1e3"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
    max_leaves=6,
)
records = st.lists(st.dictionaries(st.sampled_from(KEYS), values, min_size=1, max_size=4), min_size=1, max_size=4)
pages = st.lists(records, min_size=1, max_size=4)


def packed(page: list[dict]) -> bytes:
    parsed = ParsedPage.of_records(page, None, pack=True)
    assert parsed.packed is not None
    return parsed.packed


def packed_to_table(pages: list[bytes]) -> pa.Table | None:
    return PackedReader().read(pages)  # a reader of its own: nothing learnt before


def same(native: pa.Table, expected: pa.Table) -> None:
    assert native.schema == expected.schema
    assert native.to_pylist() == expected.to_pylist()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pages)
@example([[{"id": [None, None]}]])  # pyarrow's combine_chunks trips over it: the Python path takes it
def test_the_native_read_equals_the_python_path_or_declines(page_list):
    native = packed_to_table([packed(page) for page in page_list])
    if native is not None:
        same(native, records_to_table([record for page in page_list for record in page]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.fixed_dictionaries({"id": st.integers(0, 2**40), "name": st.text(max_size=6)}), min_size=1))
def test_records_of_one_type_are_read_natively(page):
    native = packed_to_table([packed(page)])
    assert native is not None
    same(native, records_to_table(page))


def test_time_like_strings_stay_the_text_they_are():
    # the reader would make them timestamps: they are read again as text, as the Python path keeps them
    page = [
        {"d": "2020-01-06", "t": "2020-01-06T10:00:00Z", "m": {"at": "2021-02-03 04:05:06"}, "l": [{"at": "10:00"}]},
        {"d": "2020-01-07", "t": "2020-01-07T11:30:00.250Z", "m": {"at": "2021-02-03"}, "l": []},
    ]
    native = packed_to_table([packed(page)])
    assert native is not None
    same(native, records_to_table(page))
    assert native.column("t").to_pylist() == ["2020-01-06T10:00:00Z", "2020-01-07T11:30:00.250Z"]
    assert native.schema.field("l").type == pa.list_(pa.struct([("at", pa.string())]))


def counted_reads(monkeypatch) -> list:
    reads: list = []
    real = records_module._read_records

    def read(buffer, record_type=None):
        reads.append(record_type)
        return real(buffer, record_type)

    monkeypatch.setattr(records_module, "_read_records", read)
    return reads


def test_a_reader_reads_later_shards_once_with_the_record_type_it_kept(monkeypatch):
    reads = counted_reads(monkeypatch)
    reader = PackedReader()
    first = [{"id": 1, "at": "2020-01-06", "m": {"n": 1}}]
    assert reader.read([packed(first)]) is not None
    assert len(reads) == 2 and reads[1] is not None  # inferred, then read again with the dates as text
    reads.clear()
    later = [{"id": 2, "at": "2020-01-07", "m": {"n": 2}}, {"id": 3, "at": None, "m": {"n": None}}]
    same(reader.read([packed(later)]), records_to_table(later))
    assert reads == [reader.record_type]  # one read, no inference


@pytest.mark.parametrize(
    "later",
    [
        [{"id": 2, "at": "2020-01-07", "new": "x"}],  # a field the kept type lacks
        [{"id": 2.5, "at": "2020-01-07"}],  # an integer field now a double
        [{"id": 2, "at": 7}],  # text now a number
        [{"id": 2, "at": {"day": "2020-01-07"}}],  # text now an object
    ],
)
def test_a_shard_the_kept_type_does_not_fit_is_read_as_the_first_was(monkeypatch, later):
    reader = PackedReader()
    assert reader.read([packed([{"id": 1, "at": "2020-01-06"}])]) is not None
    reads = counted_reads(monkeypatch)
    same(reader.read([packed(later)]), records_to_table(later))
    assert reads[0] is not None and reads[1] is None  # the kept type refused it, then inference


def test_a_shard_is_read_a_few_pages_at_a_time_into_one_table(monkeypatch):
    monkeypatch.setattr(records_module, "READ_BYTES", 64)
    reads = counted_reads(monkeypatch)
    pages = [[{"id": i, "at": "2020-01-06", "v": i}] for i in range(6)] + [[{"id": 6, "at": "2020-01-07", "v": 6.5}]]
    table = PackedReader().read([packed(page) for page in pages])
    assert table is not None and len(reads) > 5  # small groups, one read each at least
    records = [record for page in pages for record in page]
    same(table, records_to_table(records))  # the int64 of the first groups and the double of the last: doubles


@pytest.mark.parametrize("first, then", [(2**53 + 1, 2.5), (2.5, 2**53 + 1)])
def test_groups_that_make_an_integer_a_double_it_cannot_hold_are_declined(monkeypatch, first, then):
    monkeypatch.setattr(records_module, "READ_BYTES", 16)
    pages = [[{"v": first}], [{"v": then}]]
    assert PackedReader().read([packed(page) for page in pages]) is None  # the Python path keeps it exact


shards = st.lists(pages, min_size=1, max_size=4)  # one source's shards, in order


def same_export(native: pa.Table, python: pa.Table) -> None:
    assert native.num_rows == python.num_rows
    for name in set(native.column_names) ^ set(python.column_names):
        # an object in one shard and null in all of a later one: the later shard holds its children
        # as null columns (the kept type) instead of one null column of its own name (Python path)
        table = native if name in native.column_names else python
        assert table.column(name).null_count == table.num_rows, name
    for name in set(native.column_names) & set(python.column_names):
        assert native.schema.field(name).type == python.schema.field(name).type, name
        assert native.column(name).to_pylist() == python.column(name).to_pylist(), name
    assert holding_values(native) == holding_values(python)  # in the same order


def holding_values(table: pa.Table) -> list[str]:
    return [name for name in table.column_names if table.column(name).null_count < table.num_rows]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shards)
@example([[[{"id": 1}]], [[{"id": 2.5}]], [[{"id": 3}]]])  # the kept double reads later integers as doubles
@example([[[{"id": "2020-01-06"}]], [[{"id": 5}]]])
@example([[[{"id": {"id": None}}]], [[{"id": None}]]])
def test_a_sources_shards_through_one_reader_export_what_the_python_path_exports(shard_list):
    # The worker's use: each shard through the source's reader, the Python path where it declines;
    # the reducer then unifies the shards.
    reader = PackedReader()
    native, python = [], []
    for shard in shard_list:
        records = [record for page in shard for record in page]
        expected = records_to_table(records)
        table = reader.read([packed(page) for page in shard])
        native.append(expected if table is None else table)
        python.append(expected)
    same_export(unify(native), unify(python))


@pytest.mark.parametrize(
    "page",
    [
        [{"x": 2**53 + 1}, {"x": 2.5}],  # a double would round the integer
        [{"x": 2**64 - 1}],  # beyond int64: the reader would make it a double
        [{"x": 1}, {"x": "a"}],  # records disagree on the type
        [{"x": True}, {"x": 1}],
        [{"x": [1, "a"]}],
    ],
)
def test_the_reader_declines_what_it_would_type_differently(page):
    assert packed_to_table([packed(page)]) is None
    assert records_to_table(page).num_rows == len(page)  # the Python path takes them


def test_pages_are_read_in_order_and_drift_is_one_schema():
    first = [{"id": 1, "a": {"b": 1}}]
    second = [{"id": 2, "a": {"b": 2.5, "c": "x"}, "z": None}]
    table = packed_to_table([packed(first), packed(second)])
    assert table is not None
    assert table.column_names == ["id", "a.b", "a.c", "z"]
    assert table.to_pylist() == [
        {"id": 1, "a.b": 1.0, "a.c": None, "z": None},
        {"id": 2, "a.b": 2.5, "a.c": "x", "z": None},
    ]


def test_a_packed_page_still_gives_its_table_when_asked():
    parsed = parse_page(orjson.dumps({"data": [{"id": 1}, {"id": 2}]}), "json", "data", CsvSourceOptions(), pack=True)
    assert parsed.packed == b'[{"id":1},{"id":2}]' and parsed.records == 2
    assert parsed.table.to_pylist() == [{"id": 1}, {"id": 2}]


def test_pages_that_cannot_be_packed_are_tables_at_once():
    assert ParsedPage.of_records([1, 2], None, pack=True).packed is None  # not records of fields
    assert ParsedPage.of_records([], None, pack=True).packed is None  # nothing to read
    assert ParsedPage.of_records([{"id": 1}], None, pack=False).packed is None
    assert ParsedPage.of_records([{"id": i} for i in range(1001)], None, pack=True).packed is None  # a large page
    assert ParsedPage.of_records([{"id": i} for i in range(1000)], None, pack=True).packed is not None
