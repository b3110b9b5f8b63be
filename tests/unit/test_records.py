"""engine/records.py: dotted paths, finding the records in a page (contract §1 `records`),
records → flat Arrow tables (contract §1 Shaping: flattening), NDJSON and CSV pages."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from engine.fetch.records import (
    BodyError,
    csv_table,
    decode_json,
    find_records,
    get_path,
    ndjson_records,
    parse_page,
    records_to_table,
)
from engine.spec.models import CsvSourceOptions

# ------------------------------------------------------------------ get_path

DOC = {
    "meta": {"total": 42, "zero": 0, "flag": False, "none": None},
    "result": {"items": [{"id": 1}, {"id": 2}, {"id": 3}]},
    "s": "text",
}


@pytest.mark.parametrize(
    "path, expected",
    [
        ("meta.total", 42),
        ("meta.zero", 0),
        ("meta.flag", False),
        ("meta.none", None),
        ("meta.absent", None),
        ("absent.deeper", None),
        ("result.items.0.id", 1),
        ("result.items.2.id", 3),
        ("result.items.-1.id", 3),
        ("result.items.3.id", None),  # out of range
        ("result.items.-4", None),
        ("result.items.x", None),  # not an index into a list
        ("s.x", None),  # into a string
        ("meta.none.x", None),
        ("s", "text"),
    ],
)
def test_get_path(path, expected):
    assert get_path(DOC, path) == expected


def test_get_path_returns_whole_subtrees():
    assert get_path(DOC, "result.items") == [{"id": 1}, {"id": 2}, {"id": 3}]
    assert get_path([[1, 2], [3]], "1.0") == 3


# ------------------------------------------------------------------ find_records


def test_find_records_explicit_path():
    doc = {"result": {"items": [{"a": 1}]}, "other": [1, 2]}
    assert find_records(doc, "result.items") == [{"a": 1}]
    assert find_records(doc, "other") == [1, 2]


def test_find_records_explicit_path_empty_list_is_fine():
    assert find_records({"data": [], "x": [1]}, "data") == []


def test_find_records_explicit_path_not_found():
    with pytest.raises(BodyError) as info:
        find_records({"items": [1]}, "data")
    assert "'data'" in str(info.value) and "not found" in str(info.value)
    assert info.value.retryable is False


def test_find_records_explicit_path_not_a_list():
    with pytest.raises(BodyError) as info:
        find_records({"data": {"a": 1}}, "data")
    assert "'data'" in str(info.value) and "dict" in str(info.value) and "not a list" in str(info.value)
    assert info.value.retryable is False


def test_find_records_auto_bare_list():
    assert find_records([{"a": 1}, {"a": 2}], None) == [{"a": 1}, {"a": 2}]
    assert find_records([], None) == []


def test_find_records_auto_single_list_field():
    doc = {"meta": {"page": 1, "list_inside": [9]}, "count": 2, "results": [{"a": 1}, {"a": 2}]}
    assert find_records(doc, None) == [{"a": 1}, {"a": 2}]


def test_find_records_auto_no_list_is_an_error():
    with pytest.raises(BodyError) as info:
        find_records({"meta": {"items": [1]}, "n": 1}, None)
    assert "no list" in str(info.value) and "records" in str(info.value)
    assert info.value.retryable is False


def test_find_records_auto_several_lists_names_them():
    with pytest.raises(BodyError) as info:
        find_records({"data": [1], "errors": [], "meta": {}}, None)
    message = str(info.value)
    assert "several lists" in message and "data" in message and "errors" in message
    assert info.value.retryable is False


@pytest.mark.parametrize("doc", ["text", 42, None, True])
def test_find_records_auto_scalar_page_is_an_error(doc):
    with pytest.raises(BodyError) as info:
        find_records(doc, None)
    assert info.value.retryable is False


# ------------------------------------------------------------------ records_to_table


def test_nested_objects_are_flattened_and_lists_kept():
    table = records_to_table([{"id": 1, "a": {"b": {"c": 1, "d": "x"}, "e": 2}, "tags": ["x", "y"], "pts": [{"x": 1}]}])
    assert table.column_names == ["id", "a.b.c", "a.b.d", "a.e", "tags", "pts"]
    row = table.to_pylist()[0]
    assert row == {"id": 1, "a.b.c": 1, "a.b.d": "x", "a.e": 2, "tags": ["x", "y"], "pts": [{"x": 1}]}
    assert pa.types.is_list(table.schema.field("tags").type)


def test_empty_object_becomes_a_null_column_of_its_name():
    table = records_to_table([{"a": 1, "e": {}}, {"a": 2, "e": {}}])
    assert table.column_names == ["a", "e"]
    assert table.column("e").to_pylist() == [None, None]
    assert table.num_rows == 2


def test_empty_object_next_to_a_filled_one():
    table = records_to_table([{"a": {}}, {"a": {"b": 1}}])
    assert "a.b" in table.column_names
    assert table.column("a.b").to_pylist() == [None, 1]


def test_scalars_in_the_list_become_value():
    table = records_to_table([1, 2, 3])
    assert table.column_names == ["value"]
    assert table.column("value").to_pylist() == [1, 2, 3]
    mixed = records_to_table([{"a": 1}, 5])
    assert mixed.column_names == ["a", "value"]
    assert mixed.to_pylist() == [{"a": 1, "value": None}, {"a": None, "value": 5}]


def test_mixed_int_and_string_in_one_field_becomes_text():
    table = records_to_table([{"a": 1, "b": 1}, {"a": "x", "b": 2}])
    assert table.schema.field("a").type == pa.string()
    assert table.column("a").to_pylist() == ["1", "x"]
    assert table.schema.field("b").type == pa.int64()  # other columns keep their type
    assert table.column("b").to_pylist() == [1, 2]


def test_mixed_nested_types_become_text():
    table = records_to_table([{"a": {"b": 1}}, {"a": {"b": "x"}}])
    assert table.column("a.b").to_pylist() == ["1", "x"]
    table = records_to_table([{"a": [1, 2]}, {"a": "s"}])
    assert table.column("a").to_pylist() == ["[1,2]", "s"]


def test_int_and_float_become_float():
    table = records_to_table([{"a": 1}, {"a": 2.5}, {"a": None}])
    assert table.schema.field("a").type == pa.float64()
    assert table.column("a").to_pylist() == [1.0, 2.5, None]


def test_big_integer_beyond_64_bits_becomes_text():
    big = 2**70
    table = records_to_table([{"a": big, "b": 1}])
    assert table.schema.field("a").type == pa.string()
    assert table.column("a").to_pylist() == [str(big)]
    assert table.column("b").to_pylist() == [1]
    table = records_to_table([{"a": 1}, {"a": -big}])
    assert table.column("a").to_pylist() == ["1", str(-big)]


def test_keys_appearing_only_in_later_records_are_kept():
    records = [{"a": 1}, {"a": 2}, {"a": 3, "late": "z", "n": {"x": 1}}]
    # pyarrow's from_pylist infers the columns from the first record only:
    assert pa.Table.from_pylist(records).column_names == ["a"]
    table = records_to_table(records)
    assert table.column_names == ["a", "late", "n.x"]
    assert table.column("late").to_pylist() == [None, None, "z"]
    assert table.column("n.x").to_pylist() == [None, None, 1]


def test_keys_appearing_later_are_kept_on_the_slow_path_too():
    table = records_to_table([{"a": 1}, {"a": "x", "late": True}])
    assert table.column_names == ["a", "late"]
    assert table.column("late").to_pylist() == [None, True]


def test_column_order_is_first_seen():
    table = records_to_table([{"b": 1, "a": 2}, {"c": 3, "a": 4}])
    assert table.column_names == ["b", "a", "c"]


def test_no_records_is_an_empty_table():
    table = records_to_table([])
    assert table.num_columns == 0 and table.num_rows == 0


def test_rows_and_values_survive_in_order():
    records = [{"id": i, "name": f"n{i}", "price": i / 2} for i in range(100)]
    assert records_to_table(records).to_pylist() == records


# ------------------------------------------------------------------ ndjson


def test_ndjson_records_skips_blank_lines_and_crlf():
    body = b'{"a": 1}\n\n{"a": 2}\r\n   \n{"a": 3}'
    assert ndjson_records(body) == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert ndjson_records(b"") == []


def test_ndjson_bad_line_is_retryable_and_named():
    with pytest.raises(BodyError) as info:
        ndjson_records(b'{"a": 1}\n{"a": 2}\n{"a": \n')
    assert "line 3" in str(info.value)
    assert info.value.retryable is True


# ------------------------------------------------------------------ csv


def test_csv_separator():
    table = csv_table(b"a;b\n1;x\n2;y\n", CsvSourceOptions(separator=";"))
    assert table.to_pylist() == [{"a": "1", "b": "x"}, {"a": "2", "b": "y"}]


def test_csv_latin1():
    body = "name;city\nJosé;Zürich\n".encode("latin-1")
    with pytest.raises(BodyError):  # not UTF-8...
        csv_table(body, CsvSourceOptions(separator=";"))
    table = csv_table(body, CsvSourceOptions(separator=";", encoding="latin-1"))  # ...but latin-1
    assert table.to_pylist() == [{"name": "José", "city": "Zürich"}]


def test_csv_without_header_names_columns():
    table = csv_table(b"1,a,x\n2,b,y\n", CsvSourceOptions(header=False))
    assert table.column_names == ["column_1", "column_2", "column_3"]
    assert table.num_rows == 2
    assert table.column("column_2").to_pylist() == ["a", "b"]


def test_csv_null_values():
    table = csv_table(b"a,b\n,x\n1,\n", CsvSourceOptions())  # empty fields stay empty text
    assert table.to_pylist() == [{"a": "", "b": "x"}, {"a": "1", "b": ""}]
    table = csv_table(b"a,b\n,x\n1,\n", CsvSourceOptions(null_values=("",)))
    assert table.to_pylist() == [{"a": None, "b": "x"}, {"a": "1", "b": None}]
    table = csv_table(b"a,b\nNA,NA\nq,r\n", CsvSourceOptions(null_values=("NA",)))
    assert table.to_pylist() == [{"a": None, "b": None}, {"a": "q", "b": "r"}]


def test_csv_skip_rows():
    body = b"# exported 2024-01-01\n# by someone\nid,v\n1,2\n"
    table = csv_table(body, CsvSourceOptions(skip_rows=2))
    assert table.to_pylist() == [{"id": "1", "v": "2"}]


def test_csv_fields_arrive_as_written_text():
    body = (
        b"zip,n,flag,sci,dec,plus,space,date,empty,formula\n"
        b"01067,5,TRUE,1e3,1.50,+5, 5,2024-01-02,,=1+2\n"
        b"99999,-12,false,2E-3,0.1,-5,5 ,01/02/2024,x,@SUM(1)\n"
    )
    table = csv_table(body, CsvSourceOptions())
    assert all(pa.types.is_string(t) for t in table.schema.types)
    assert table.to_pylist() == [
        {
            "zip": "01067",
            "n": "5",
            "flag": "TRUE",
            "sci": "1e3",
            "dec": "1.50",
            "plus": "+5",
            "space": " 5",
            "date": "2024-01-02",
            "empty": "",
            "formula": "=1+2",
        },
        {
            "zip": "99999",
            "n": "-12",
            "flag": "false",
            "sci": "2E-3",
            "dec": "0.1",
            "plus": "-5",
            "space": "5 ",
            "date": "01/02/2024",
            "empty": "x",
            "formula": "@SUM(1)",
        },
    ]


def test_csv_empty_fields_are_empty_text_without_null_values():
    table = csv_table(b'a,b\n,x\n"",\n', CsvSourceOptions(null_values=()))
    assert table.to_pylist() == [{"a": "", "b": "x"}, {"a": "", "b": ""}]


def test_csv_header_only_quoted_separators_and_more_fields_than_the_header_line_counts():
    assert csv_table(b"a,b\n", CsvSourceOptions()).num_rows == 0
    table = csv_table(b'"x,y",b\n"1,2",007\n', CsvSourceOptions())
    assert table.to_pylist() == [{"x,y": "1,2", "b": "007"}]
    table = csv_table(b"# note\r\nid,v\r\n01,02\r\n", CsvSourceOptions(skip_rows=1))
    assert table.to_pylist() == [{"id": "01", "v": "02"}]
    table = csv_table("a;b\n01;1e3\n".encode("utf-16"), CsvSourceOptions(separator=";", encoding="utf-16"))
    assert table.to_pylist() == [{"a": "01", "b": "1e3"}]


def test_csv_invalid_utf8_is_a_non_retryable_body_error():
    with pytest.raises(BodyError) as info:
        csv_table(b"a,b\n1,\xff\xfe\n", CsvSourceOptions())
    assert "UTF-8" in str(info.value)
    assert info.value.retryable is False


def test_csv_empty_body_is_an_empty_table():
    assert csv_table(b"", CsvSourceOptions()).num_rows == 0
    assert csv_table(b"  \n", CsvSourceOptions()).num_rows == 0


# ------------------------------------------------------------------ json decoding / parse_page


@pytest.mark.parametrize(
    "body, hint",
    [(b"{oops", "invalid JSON"), (b"", "empty body"), (b" \n", "empty body"), (b'{"data": [1, 2', "invalid JSON")],
)
def test_decode_json_errors_are_retryable(body, hint):
    with pytest.raises(BodyError) as info:
        decode_json(body)
    assert "not valid JSON" in str(info.value) and hint in str(info.value)
    assert info.value.retryable is True


def test_parse_page_json():
    doc = {"data": [{"a": 1, "n": {"x": 2}}, {"a": 2, "n": {"x": 3}}], "meta": {"total_pages": 7}}
    page = parse_page(json.dumps(doc).encode(), "json", None, CsvSourceOptions())
    assert page.records == 2
    assert page.doc == doc  # kept for pagination
    assert page.table.to_pylist() == [{"a": 1, "n.x": 2}, {"a": 2, "n.x": 3}]
    page = parse_page(json.dumps(doc).encode(), "json", "data", CsvSourceOptions())
    assert page.records == 2


def test_parse_page_json_records_path_error_is_not_retryable():
    with pytest.raises(BodyError) as info:
        parse_page(b'{"items": []}', "json", "data", CsvSourceOptions())
    assert info.value.retryable is False


def test_parse_page_ndjson():
    page = parse_page(b'{"a": 1}\n{"a": 2, "b": "x"}\n', "ndjson", None, CsvSourceOptions())
    assert page.records == 2 and page.doc is None
    assert page.table.to_pylist() == [{"a": 1, "b": None}, {"a": 2, "b": "x"}]


def test_parse_page_csv():
    page = parse_page(b"a|b\n1|x\n2|y\n3|z\n", "csv", None, CsvSourceOptions(separator="|"))
    assert page.records == 3 and page.doc is None
    assert page.table.column("b").to_pylist() == ["x", "y", "z"]


def test_parse_page_empty_json_list():
    page = parse_page(b'{"data": []}', "json", None, CsvSourceOptions())
    assert page.records == 0 and page.table.num_rows == 0
