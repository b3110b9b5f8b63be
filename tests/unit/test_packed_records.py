"""engine/fetch/records.py `packed_to_table`: the records of a shard's packed pages read by
Arrow's JSON reader give exactly the table `records_to_table` gives over the same records - or
the reader declines (None) and the worker takes that Python path itself."""

from __future__ import annotations

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.fetch.records import ParsedPage, packed_to_table, parse_page, records_to_table
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


def test_time_like_strings_are_left_to_the_python_path():
    # the reader would make them timestamps: declined, and the Python path keeps the text
    page = [{"d": "2020-01-06", "t": "2020-01-06T10:00:00Z", "m": {"at": "2021-02-03 04:05:06"}}]
    assert packed_to_table([packed(page)]) is None
    assert records_to_table(page).to_pylist() == [
        {"d": "2020-01-06", "t": "2020-01-06T10:00:00Z", "m.at": "2021-02-03 04:05:06"}
    ]


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
    assert ParsedPage.of_records([{"id": i} for i in range(501)], None, pack=True).packed is None  # a large page
    assert ParsedPage.of_records([{"id": i} for i in range(500)], None, pack=True).packed is not None
