"""Shaping (contract §1 "Shaping", §3): columns, filters, group_by, distinct, sort, limit.

End to end: real jobs against the local test API; the expected tables are computed here in
plain Python from the API's deterministic records (tests/testapi/records.py), never with
Polars. Unit tests: `shape()` on small in-memory LazyFrames (nulls, every cast, every op,
every aggregation) and `parse_spec` for what validation rejects up front.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import OrderedDict

import polars as pl
import pytest

from engine.errors import JobFailed, ShapingError, SpecError
from engine.export.shaping import shape
from engine.spec.models import parse_spec
from engine.spec.shaping_rules import convert_literal, output_order
from service.profiles import in_output_order
from tests.conftest import write_spec
from tests.support.readback import read_export, xlsx_sheets
from tests.testapi.records import dataset, drift_record, record

URL = "http://api.test/items"
UTC = dt.UTC


# ====================================================================== helpers


def spec_of(**shaping):
    return parse_spec({"sources": [{"url": URL}], **shaping})


def shaped(data, **shaping) -> list[dict]:
    frame = data if isinstance(data, pl.LazyFrame) else pl.LazyFrame(data)
    return shape(frame, spec_of(**shaping)).collect().to_dicts()


def shaped_frame(data, **shaping) -> pl.DataFrame:
    frame = data if isinstance(data, pl.LazyFrame) else pl.LazyFrame(data)
    return shape(frame, spec_of(**shaping)).collect()


def field_errors(**shaping) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        spec_of(**shaping)
    return [(d.field, d.message) for d in info.value.details]


def items(api, n: int = 120, size: int = 50, fmt: str = "parquet", **shaping) -> dict:
    return {
        "name": "items",
        "sources": [
            {
                "url": api.url("/items/page"),
                "params": {"n": n},
                "pagination": {"type": "page", "size": size, "total_pages": "meta.total_pages"},
            }
        ],
        "concurrency": 4,
        "export": {"format": fmt},
        **shaping,
    }


def flat(r: dict) -> dict:
    """A test API record as the engine flattens it."""
    out = {k: v for k, v in r.items() if k != "meta"}
    out["meta.created"] = r["meta"]["created"]
    out["meta.score"] = r["meta"]["score"]
    return out


def flat_dataset(n: int) -> list[dict]:
    return [flat(r) for r in dataset(n)]


SAMPLE = {  # small frame with nulls in every column
    "id": [1, 2, 3, 4, 5, 6],
    "cat": ["a", "b", "a", None, "b", "a"],
    "x": [10, None, 30, 40, 20, None],
    "f": [1.5, 2.5, None, -1.0, 2.5, 0.0],
    "ok": [True, False, None, True, True, False],
    "s": ["apple", "banana", None, "apricot", "cherry", "Apple"],
    "tags": [["r", "g"], [], None, ["g"], ["b", "r"], ["x"]],
}


# ====================================================================== columns


def test_columns_select_rename_and_order_with_ties_then_unordered():
    spec = dict(
        columns=[
            {"name": "C", "source": "cat", "order": 2},
            {"name": "I", "source": "id"},
            {"name": "X", "source": "x", "order": 1},
            {"name": "S", "source": "s", "order": 2},
            {"name": "F", "source": "f"},
        ]
    )
    frame = shaped_frame(SAMPLE, **spec)
    assert frame.columns == ["X", "C", "S", "I", "F"]  # order 1, then the order-2 tie in list order, then the rest
    assert frame["C"].to_list() == SAMPLE["cat"] and frame["X"].to_list() == SAMPLE["x"]


def test_columns_absent_keeps_every_field_in_first_seen_order():
    frame = shaped_frame(SAMPLE)
    assert frame.columns == list(SAMPLE) and frame.to_dict(as_series=False) == SAMPLE


def test_column_without_source_takes_the_field_of_its_name():
    assert shaped(SAMPLE, columns=[{"name": "s"}, {"name": "id"}])[0] == {"s": "apple", "id": 1}


def test_column_index_is_0_based_into_the_schema_order():
    rows = shaped(SAMPLE, columns=[{"name": "third", "column": 2}, {"name": "first", "column": 0}])
    assert [r["third"] for r in rows] == SAMPLE["x"] and [r["first"] for r in rows] == SAMPLE["id"]


def test_column_index_past_the_last_field_fails_listing_the_fields():
    with pytest.raises(ShapingError) as info:
        shaped(SAMPLE, columns=[{"name": "a", "column": 7}])
    message = str(info.value)
    assert "columns.0.column" in message and "index 7" in message and "7 columns" in message and "'tags'" in message


def test_source_path_into_lists_and_structs():
    data = pl.LazyFrame(
        {"items": [[{"sku": "a", "n": 1}, {"sku": "b", "n": 2}], [], None], "tags": [["x", "y"], ["z"], None]}
    )
    rows = shaped(
        data,
        columns=[
            {"name": "second_tag", "source": "tags.1"},
            {"name": "first_sku", "source": "items.0.sku"},
            {"name": "last_n", "source": "items.-1.n"},
        ],
    )
    assert rows == [
        {"second_tag": "y", "first_sku": "a", "last_n": 2},
        {"second_tag": None, "first_sku": None, "last_n": None},
        {"second_tag": None, "first_sku": None, "last_n": None},
    ]


def test_missing_source_fails_naming_it_and_listing_the_columns_that_exist():
    with pytest.raises(ShapingError) as info:
        shape(
            pl.LazyFrame(SAMPLE),
            spec_of(columns=[{"name": "x"}, {"name": "amount", "source": "total.amount"}]),
            table="orders",
        )
    message = str(info.value)
    assert message.startswith("source 'orders': columns.1.source: column 'total.amount' is not in the fetched data")
    assert all(repr(c) in message for c in SAMPLE)


@pytest.mark.parametrize(
    "where, shaping",
    [
        ("filters.0.column", {"filters": [{"column": "nope", "op": "is_null"}]}),
        ("group_by.keys.0", {"group_by": {"keys": ["nope"], "aggregations": [{"agg": "count"}]}}),
        (
            "group_by.aggregations.0.column",
            {"group_by": {"keys": ["cat"], "aggregations": [{"column": "nope", "agg": "max"}]}},
        ),
        ("distinct.1", {"distinct": ["cat", "nope"]}),
        ("sort.0.column", {"sort": ["nope"]}),
    ],
)
def test_names_not_in_the_fetched_data_fail_naming_the_field_and_listing_columns(where, shaping):
    with pytest.raises(ShapingError) as info:
        shaped(SAMPLE, **shaping)
    message = str(info.value)
    assert message.startswith(f"{where}: column 'nope' is not in the fetched data; the columns are: 'id', 'cat'")


def test_no_fetched_fields_at_all_gives_an_empty_table_with_the_declared_columns():
    frame = shape(
        pl.LazyFrame(),
        spec_of(
            columns=[{"name": "b", "type": "int", "order": 2}, {"name": "a"}],
            filters=[{"column": "b", "op": ">", "value": 1}],
            sort=["a"],
        ),
    ).collect()
    assert frame.height == 0 and frame.columns == ["b", "a"] and frame.schema["b"] == pl.Int64
    frame = shape(pl.LazyFrame(), spec_of(group_by={"keys": ["k"], "aggregations": [{"agg": "count"}]})).collect()
    assert frame.height == 0 and frame.columns == ["k", "count"]


# ====================================================================== casts

CASTS = [
    # (values, target, expected; None where the value does not cast)
    (["42", " 7 ", "+3", "-0", "4.0", "x", "", "9223372036854775808"], "int", [42, 7, 3, 0, None, None, None, None]),
    ([3.0, 3.5, float("nan"), float("inf"), -2.0, 1e19], "int", [3, None, None, None, -2, None]),
    ([True, False], "int", [1, 0]),
    (["1.5", "1e3", ".5", "-2", "abc", "1,5", "nan"], "float", [1.5, 1000.0, 0.5, -2.0, None, None, None]),
    ([1, 2], "float", [1.0, 2.0]),
    ([0, 1, 2, -1], "bool", [False, True, None, None]),
    (["true", "FALSE", " yes ", "no", "1", "0", "maybe"], "bool", [True, False, True, False, True, False, None]),
    (
        ["2024-02-29", "2024-01-31T23:30:00+05:00", "2023-02-29", "31/01/2024", "2024-1-5"],
        "date",
        [dt.date(2024, 2, 29), dt.date(2024, 1, 31), None, None, None],
    ),
    ([86_400, 0, -86_400], "date", [dt.date(1970, 1, 2), dt.date(1970, 1, 1), dt.date(1969, 12, 31)]),
    ([86_400.0, 0.5, 1e300], "date", [dt.date(1970, 1, 2), dt.date(1970, 1, 1), None]),
    (
        [
            "2024-01-31T12:30:00Z",
            "2024-01-31T12:30:00.250+01:00",
            "2024-01-31 12:30",
            "2024-01-31",
            "2024-01-31T12:30:00+0530",
            "2024-01-31T25:00",
            "yesterday",
        ],
        "datetime",
        [
            dt.datetime(2024, 1, 31, 12, 30, tzinfo=UTC),
            dt.datetime(2024, 1, 31, 11, 30, 0, 250000, tzinfo=UTC),
            dt.datetime(2024, 1, 31, 12, 30, tzinfo=UTC),
            dt.datetime(2024, 1, 31, tzinfo=UTC),
            dt.datetime(2024, 1, 31, 7, 0, tzinfo=UTC),
            None,
            None,
        ],
    ),
    (
        [1_700_000_000.0, 1.5],
        "datetime",
        [dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC), dt.datetime(1970, 1, 1, 0, 0, 1, 500000, tzinfo=UTC)],
    ),
    ([1, -5], "string", ["1", "-5"]),
    ([True, False], "string", ["true", "false"]),
    ([["a", "b"], []], "string", ['["a","b"]', "[]"]),
    ([dt.date(2024, 3, 1)], "string", ["2024-03-01"]),
]


@pytest.mark.parametrize("values, target, expected", CASTS, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASTS)])
def test_casts_with_on_cast_error_null(values, target, expected):
    data = pl.LazyFrame({"v": values + [None]})
    frame = shaped_frame(data, columns=[{"name": "v", "type": target, "on_cast_error": "null"}])
    assert frame["v"].to_list() == expected + [None]
    assert (
        frame.schema["v"]
        == {
            "string": pl.String,
            "int": pl.Int64,
            "float": pl.Float64,
            "bool": pl.Boolean,
            "date": pl.Date,
            "datetime": pl.Datetime("us", "UTC"),
        }[target]
    )


@pytest.mark.parametrize(
    "values, target, expected",
    [c for c in CASTS if None in c[2]],
    ids=[f"{c[1]}-{i}" for i, c in enumerate(CASTS) if None in c[2]],
)
def test_a_value_that_does_not_cast_fails_naming_the_column_and_the_value(values, target, expected):
    data = pl.LazyFrame({"raw": values})
    with pytest.raises(ShapingError) as info:
        shaped(data, columns=[{"name": "v", "source": "raw", "type": target}])
    blank = [isinstance(v, str) and not v.strip() for v in values]  # a blank text is missing, not bad
    bad = [v for v, e, b in zip(values, expected, blank) if e is None and not b]
    first_bad = bad[0]
    message = str(info.value)
    assert message.startswith(f"columns.0.type: column 'v' (from 'raw'): {len(bad)} value")
    shown = "NaN" if isinstance(first_bad, float) and math.isnan(first_bad) else json.dumps(first_bad)
    assert f"e.g. {shown};" in message and '"on_cast_error": "null"' in message


@pytest.mark.parametrize("target", ["int", "float", "bool", "date", "datetime"])
def test_a_blank_text_casts_to_null_without_failing(target):
    frame = shaped_frame(
        pl.LazyFrame({"raw": ["", "  ", None]}), columns=[{"name": "v", "source": "raw", "type": target}]
    )
    assert frame["v"].to_list() == [None, None, None]


def test_the_cast_check_sees_rows_that_later_stages_drop():
    data = {"id": [1, 2, 3], "n": ["1", "oops", "3"]}
    with pytest.raises(ShapingError, match='e.g. "oops"'):
        shaped(
            data,
            columns=[{"name": "id"}, {"name": "n", "type": "int"}],
            filters=[{"column": "id", "op": "!=", "value": 2}],
            limit=1,
        )


def test_typed_text_reads_the_same_in_filters_and_casts():
    texts = [
        "2024-01-31T12:30:00Z",
        "2024-01-31 12:30:00.5-02:00",
        "2024-02-30",
        "2024-01-31T12:30+0100",
        "2024-01-31",
        " 2024-01-31T00:00:00 ",
        "2024-01-31T12",
        "20240131",
    ]
    frame = shaped_frame({"t": texts}, columns=[{"name": "t", "type": "datetime", "on_cast_error": "null"}])

    def read(text):
        try:
            return convert_literal(text, "datetime")
        except ValueError:
            return None

    assert frame["t"].to_list() == [read(t) for t in texts]
    assert sum(v is not None for v in frame["t"].to_list()) == 5


# ====================================================================== filters

FILTERS = [
    # (filter, predicate over a SAMPLE row)
    ({"column": "cat", "op": "==", "value": "a"}, lambda r: r["cat"] == "a"),
    ({"column": "x", "op": "==", "value": "30"}, lambda r: r["x"] == 30),  # typed: "30" is read as 30
    ({"column": "x", "op": "!=", "value": 30}, lambda r: r["x"] != 30),  # nulls kept
    ({"column": "x", "op": ">", "value": 20}, lambda r: r["x"] is not None and r["x"] > 20),
    ({"column": "x", "op": ">=", "value": 20.0}, lambda r: r["x"] is not None and r["x"] >= 20),
    ({"column": "f", "op": "<", "value": 1}, lambda r: r["f"] is not None and r["f"] < 1),
    ({"column": "f", "op": "<=", "value": "1.5"}, lambda r: r["f"] is not None and r["f"] <= 1.5),
    ({"column": "x", "op": "in", "value": [10, "40", 25.5]}, lambda r: r["x"] in (10, 40)),
    ({"column": "f", "op": "in", "value": [2.5, 0]}, lambda r: r["f"] in (2.5, 0.0)),
    ({"column": "cat", "op": "not_in", "value": ["a"]}, lambda r: r["cat"] != "a"),  # nulls kept
    ({"column": "s", "op": "contains", "value": "an"}, lambda r: r["s"] is not None and "an" in r["s"]),
    ({"column": "tags", "op": "contains", "value": "r"}, lambda r: r["tags"] is not None and "r" in r["tags"]),
    ({"column": "s", "op": "starts_with", "value": "ap"}, lambda r: r["s"] is not None and r["s"].startswith("ap")),
    ({"column": "ok", "op": "==", "value": True}, lambda r: r["ok"] is True),
    ({"column": "ok", "op": "==", "value": "false"}, lambda r: r["ok"] is False),
    ({"column": "x", "op": "is_null"}, lambda r: r["x"] is None),
    ({"column": "tags", "op": "not_null"}, lambda r: r["tags"] is not None),
    ({"column": "s", "op": ">", "value": "b"}, lambda r: r["s"] is not None and r["s"] > "b"),
    ({"column": "x", "op": ">", "value": 1000}, lambda r: False),  # empty result
]


def sample_rows() -> list[dict]:
    return [dict(zip(SAMPLE, values)) for values in zip(*SAMPLE.values())]


@pytest.mark.parametrize(
    "item, predicate", FILTERS, ids=[f"{f['op']}-{f['column']}-{i}" for i, (f, _) in enumerate(FILTERS)]
)
def test_each_filter_op_on_its_own(item, predicate):
    expected = [r["id"] for r in sample_rows() if predicate(r)]
    frame = shaped_frame(SAMPLE, filters=[item])
    assert frame["id"].to_list() == expected
    assert frame.columns == list(SAMPLE)


def test_filters_are_anded():
    rows = shaped(
        SAMPLE,
        filters=[
            {"column": "cat", "op": "==", "value": "a"},
            {"column": "x", "op": "not_null"},
            {"column": "f", "op": ">=", "value": 1},
        ],
    )
    assert [r["id"] for r in rows] == [1]


def test_typed_comparisons_on_dates_datetimes_and_lists():
    data = {
        "id": [1, 2, 3, 4],
        "d": ["2024-01-01", "2024-03-15", None, "2023-12-31"],
        "t": ["2024-01-01T10:00:00Z", "2024-01-01T08:00:00-03:00", "2024-01-01T10:30:00+00:00", None],
        "n": [[1, 2], [3], [], None],
    }
    columns = [{"name": "id"}, {"name": "d", "type": "date"}, {"name": "t", "type": "datetime"}, {"name": "n"}]
    assert [
        r["id"] for r in shaped(data, columns=columns, filters=[{"column": "d", "op": ">", "value": "2024-01-01"}])
    ] == [2]
    assert [
        r["id"]
        for r in shaped(
            data, columns=columns, filters=[{"column": "t", "op": ">", "value": "2024-01-01T12:00:00+02:00"}]
        )
    ] == [2, 3]
    assert [
        r["id"]
        for r in shaped(data, columns=columns, filters=[{"column": "t", "op": "==", "value": "2024-01-01 11:00Z"}])
    ] == [2]
    assert [
        r["id"]
        for r in shaped(
            data, columns=columns, filters=[{"column": "d", "op": "in", "value": ["2023-12-31", "2024-03-15"]}]
        )
    ] == [2, 4]
    assert [
        r["id"] for r in shaped(data, columns=columns, filters=[{"column": "n", "op": "contains", "value": "3"}])
    ] == [2]


def test_a_filter_on_a_column_without_values_keeps_only_what_negative_ops_keep():
    data = pl.LazyFrame({"id": [1, 2], "none": [None, None]})
    assert [r["id"] for r in shaped(data, filters=[{"column": "none", "op": "==", "value": 1}])] == []
    assert [r["id"] for r in shaped(data, filters=[{"column": "none", "op": "!=", "value": 1}])] == [1, 2]
    assert [r["id"] for r in shaped(data, filters=[{"column": "none", "op": "not_in", "value": [1]}])] == [1, 2]


@pytest.mark.parametrize(
    "item, words",
    [
        (
            {"column": "x", "op": "contains", "value": "1"},
            "filters.0.op: op 'contains' applies to text (or list) columns",
        ),
        ({"column": "x", "op": "starts_with", "value": "1"}, "filters.0.op: op 'starts_with' applies to text"),
        ({"column": "tags", "op": "==", "value": "r"}, "filters.0.op: op '==' does not apply to list column 'tags'"),
        (
            {"column": "x", "op": ">", "value": "ten"},
            "filters.0.value: \"ten\" cannot be compared with column 'x' of type int",
        ),
        (
            {"column": "ok", "op": "==", "value": 2},
            "filters.0.value: 2 cannot be compared with column 'ok' of type bool",
        ),
        ({"column": "x", "op": "in", "value": [1, "two"]}, 'filters.0.value.1: "two" cannot be compared'),
    ],
)
def test_an_op_or_value_the_column_type_cannot_take_fails(item, words):
    with pytest.raises(ShapingError) as info:
        shaped(SAMPLE, filters=[item])
    assert str(info.value).startswith(words)


# ====================================================================== group_by


def group_rows(agg: str, column: str | None) -> list[dict]:
    out: OrderedDict = OrderedDict()
    for r in sample_rows():
        out.setdefault(r["cat"], []).append(r)
    result = []
    for key, rows in out.items():
        values = [r[column] for r in rows] if column else None
        present = [v for v in values if v is not None] if column else None
        if agg == "sum":
            value = sum(present) if present else None
        elif agg == "mean":
            value = sum(present) / len(present) if present else None
        elif agg == "min":
            value = min(present) if present else None
        elif agg == "max":
            value = max(present) if present else None
        elif agg == "count":
            value = len(present) if column else len(rows)
        elif agg == "n_unique":
            value = len(set(present))
        elif agg == "first":
            value = values[0]
        else:
            value = values[-1]
        result.append({"cat": key, "out": value})
    return result


AGGREGATIONS = [
    ("sum", "x"),
    ("sum", "f"),
    ("sum", "ok"),
    ("mean", "x"),
    ("mean", "f"),
    ("min", "x"),
    ("min", "s"),
    ("max", "f"),
    ("max", "s"),
    ("count", "x"),
    ("count", None),
    ("n_unique", "x"),
    ("n_unique", "s"),
    ("first", "x"),
    ("first", "tags"),
    ("last", "s"),
    ("last", "f"),
]


@pytest.mark.parametrize("agg, column", AGGREGATIONS, ids=[f"{a}-{c}" for a, c in AGGREGATIONS])
def test_each_aggregation_on_its_own(agg, column):
    aggregation = {"agg": agg, "as": "out", **({"column": column} if column else {})}
    frame = shaped_frame(SAMPLE, group_by={"keys": ["cat"], "aggregations": [aggregation]})
    assert frame.columns == ["cat", "out"]
    got = frame.to_dicts()
    want = group_rows(agg, column)
    for g, w in zip(got, want, strict=True):
        assert g["cat"] == w["cat"]
        if isinstance(w["out"], float):
            assert math.isclose(g["out"], w["out"], rel_tol=1e-9)
        else:
            assert g["out"] == w["out"], (g, w)


def test_group_by_columns_are_keys_then_aggregations_with_default_names():
    frame = shaped_frame(
        SAMPLE,
        group_by={
            "keys": ["ok", "cat"],
            "aggregations": [
                {"column": "x", "agg": "max"},
                {"agg": "count"},
                {"column": "f", "agg": "sum", "as": "total"},
            ],
        },
    )
    assert frame.columns == ["ok", "cat", "x_max", "count", "total"]
    assert frame.schema["count"] == pl.Int64


def test_group_by_nulls_all_null_groups_and_group_order():
    data = {"k": ["z", None, "a", "z", None], "v": [None, 1, None, None, 2]}
    rows = shaped(
        data,
        group_by={
            "keys": ["k"],
            "aggregations": [
                {"column": "v", "agg": "sum"},
                {"column": "v", "agg": "mean"},
                {"column": "v", "agg": "count"},
                {"agg": "count", "as": "rows"},
                {"column": "v", "agg": "n_unique"},
                {"column": "v", "agg": "min"},
            ],
        },
    )
    assert rows == [  # groups in order of first appearance, null is a group of its own
        {"k": "z", "v_sum": None, "v_mean": None, "v_count": 0, "rows": 2, "v_n_unique": 0, "v_min": None},
        {"k": None, "v_sum": 3, "v_mean": 1.5, "v_count": 2, "rows": 2, "v_n_unique": 2, "v_min": 1},
        {"k": "a", "v_sum": None, "v_mean": None, "v_count": 0, "rows": 1, "v_n_unique": 0, "v_min": None},
    ]


@pytest.mark.parametrize(
    "agg, column, words",
    [
        ("sum", "s", "group_by.aggregations.0.agg: agg 'sum' needs a numeric column; column 's' is string"),
        ("mean", "tags", "group_by.aggregations.0.agg: agg 'mean' needs a numeric column; column 'tags' is list"),
        ("max", "tags", "group_by.aggregations.0.agg: agg 'max' cannot order column 'tags'"),
    ],
)
def test_an_aggregation_the_column_type_cannot_take_fails(agg, column, words):
    with pytest.raises(ShapingError) as info:
        shaped(SAMPLE, group_by={"keys": ["cat"], "aggregations": [{"column": column, "agg": agg}]})
    assert str(info.value).startswith(words)


# ====================================================================== distinct, sort, limit


def test_distinct_whole_rows_keeps_the_first_in_order():
    data = {"a": [1, 2, 1, 3, 2, 1], "b": ["x", "y", "x", "z", "q", "x"]}
    assert shaped(data, distinct=True) == [
        {"a": 1, "b": "x"},
        {"a": 2, "b": "y"},
        {"a": 3, "b": "z"},
        {"a": 2, "b": "q"},
    ]


def test_distinct_on_columns_keeps_whole_first_rows():
    assert [r["id"] for r in shaped(SAMPLE, distinct=["cat"])] == [1, 2, 4]
    assert [r["id"] for r in shaped(SAMPLE, distinct=["ok"])] == [1, 2, 3]  # null is a value of its own
    assert [r["id"] for r in shaped(SAMPLE, distinct=["cat", "ok"])] == [1, 2, 3, 4, 5, 6]


def test_sort_multi_key_per_key_direction_nulls_last_stable():
    rows = shaped(SAMPLE, sort=[{"column": "cat", "descending": True}, "f"])
    assert [r["id"] for r in rows] == [2, 5, 6, 1, 3, 4]  # b(2.5, 2.5: stable), a(0.0, 1.5, null), null
    rows = shaped(SAMPLE, sort=["x"])
    assert [r["id"] for r in rows] == [1, 5, 3, 4, 2, 6]
    rows = shaped(SAMPLE, sort=[{"column": "x", "descending": True}])
    assert [r["id"] for r in rows] == [4, 3, 5, 1, 2, 6]  # nulls last in both directions


def test_limit_and_limit_zero():
    assert [r["id"] for r in shaped(SAMPLE, limit=2)] == [1, 2]
    frame = shaped_frame(SAMPLE, limit=0)
    assert frame.height == 0 and frame.columns == list(SAMPLE)
    assert [r["id"] for r in shaped(SAMPLE, limit=100)] == SAMPLE["id"]


def test_stages_apply_in_contract_order():
    # filters see renamed columns; group_by sees filtered rows; distinct runs before sort; limit last
    rows = shaped(
        SAMPLE,
        columns=[{"name": "group", "source": "cat"}, {"name": "n", "source": "x"}],
        filters=[{"column": "n", "op": "not_null"}],
        group_by={
            "keys": ["group"],
            "aggregations": [{"agg": "count", "as": "c"}, {"column": "n", "agg": "max", "as": "top"}],
        },
        distinct=["c"],
        sort=["top"],
        limit=1,
    )
    # groups in order of first appearance: a [10, 30] c=2 top=30; null [40] c=1 top=40; b [20] c=1 top=20.
    # distinct on c (before sort) keeps a and null; sorted by top: a first. (Sorting before distinct
    # would have kept b.)
    assert rows == [{"group": "a", "c": 2, "top": 30}]


# ====================================================================== validation (no data needed)

INVALID = [
    ("unknown-op", dict(filters=[{"column": "a", "op": "~="}]), "filters.0.op"),
    (
        "unknown-agg",
        dict(group_by={"keys": ["k"], "aggregations": [{"column": "a", "agg": "median"}]}),
        "group_by.aggregations.0.agg",
    ),
    ("unknown-type", dict(columns=[{"name": "a", "type": "decimal"}]), "columns.0.type"),
    (
        "unknown-on-cast-error",
        dict(columns=[{"name": "a", "type": "int", "on_cast_error": "skip"}]),
        "columns.0.on_cast_error",
    ),
    (
        "duplicate-name",
        dict(columns=[{"name": "a"}, {"name": "b", "source": "x"}, {"name": "a", "source": "y"}]),
        "columns.2.name",
    ),
    ("empty-columns", dict(columns=[]), "columns"),
    ("group-by-no-aggregations", dict(group_by={"keys": ["k"], "aggregations": []}), "group_by.aggregations"),
    (
        "group-by-duplicate-key",
        dict(group_by={"keys": ["k", "k"], "aggregations": [{"agg": "count"}]}),
        "group_by.keys.1",
    ),
    (
        "agg-name-taken-by-key",
        dict(group_by={"keys": ["k"], "aggregations": [{"agg": "count", "as": "k"}]}),
        "group_by.aggregations.0.as",
    ),
    (
        "agg-default-names-collide",
        dict(group_by={"keys": ["k"], "aggregations": [{"column": "v", "agg": "sum"}, {"column": "v", "agg": "sum"}]}),
        "group_by.aggregations.1.as",
    ),
    (
        "filter-column-not-produced",
        dict(columns=[{"name": "a"}], filters=[{"column": "b", "op": "is_null"}]),
        "filters.0.column",
    ),
    (
        "filter-uses-source-not-name",
        dict(columns=[{"name": "a", "source": "b"}], filters=[{"column": "b", "op": "is_null"}]),
        "filters.0.column",
    ),
    (
        "group-key-not-produced",
        dict(columns=[{"name": "a"}], group_by={"keys": ["b"], "aggregations": [{"agg": "count"}]}),
        "group_by.keys.0",
    ),
    (
        "agg-column-not-produced",
        dict(columns=[{"name": "a"}], group_by={"keys": ["a"], "aggregations": [{"column": "b", "agg": "max"}]}),
        "group_by.aggregations.0.column",
    ),
    (
        "sort-key-missing-after-group-by",
        dict(group_by={"keys": ["k"], "aggregations": [{"agg": "count"}]}, sort=["v"]),
        "sort.0.column",
    ),
    ("sort-key-not-produced", dict(columns=[{"name": "a"}], sort=["a", "b"]), "sort.1.column"),
    (
        "distinct-missing-after-group-by",
        dict(group_by={"keys": ["k"], "aggregations": [{"agg": "count"}]}, distinct=["v"]),
        "distinct.0",
    ),
    ("in-without-list", dict(filters=[{"column": "a", "op": "in", "value": "x"}]), "filters.0.value"),
    ("gt-with-list", dict(filters=[{"column": "a", "op": ">", "value": [1]}]), "filters.0.value"),
    ("eq-without-value", dict(filters=[{"column": "a", "op": "=="}]), "filters.0.value"),
    ("in-with-null", dict(filters=[{"column": "a", "op": "not_in", "value": ["x", None]}]), "filters.0.value.1"),
    ("in-with-object", dict(filters=[{"column": "a", "op": "in", "value": [{"x": 1}]}]), "filters.0.value.0"),
    ("is-null-with-value", dict(filters=[{"column": "a", "op": "is_null", "value": 1}]), "filters.0.value"),
    ("starts-with-number", dict(filters=[{"column": "a", "op": "starts_with", "value": 1}]), "filters.0.value"),
    (
        "typed-value-mismatch",
        dict(columns=[{"name": "a", "type": "int"}], filters=[{"column": "a", "op": ">", "value": "many"}]),
        "filters.0.value",
    ),
    (
        "typed-date-mismatch",
        dict(
            columns=[{"name": "a", "type": "date"}],
            filters=[{"column": "a", "op": "in", "value": ["2024-01-01", "soon"]}],
        ),
        "filters.0.value.1",
    ),
    (
        "contains-on-typed-int",
        dict(columns=[{"name": "a", "type": "int"}], filters=[{"column": "a", "op": "contains", "value": "1"}]),
        "filters.0.op",
    ),
    (
        "sum-of-typed-string",
        dict(
            columns=[{"name": "a", "type": "string"}, {"name": "k"}],
            group_by={"keys": ["k"], "aggregations": [{"column": "a", "agg": "sum"}]},
        ),
        "group_by.aggregations.0.agg",
    ),
    (
        "agg-without-column",
        dict(group_by={"keys": ["k"], "aggregations": [{"agg": "mean"}]}),
        "group_by.aggregations.0.column",
    ),
    ("limit-negative", dict(limit=-1), "limit"),
]


@pytest.mark.parametrize("shaping, field", [pytest.param(s, f, id=i) for i, s, f in INVALID])
def test_validation_names_the_field(shaping, field):
    assert [f for f, _ in field_errors(**shaping)] == [field]


def test_validation_messages_name_the_column():
    [(_, message)] = field_errors(columns=[{"name": "a"}, {"name": "b"}], filters=[{"column": "c", "op": "is_null"}])
    assert message == "column 'c' does not exist after `columns`: there are only 'a', 'b'"
    [(_, message)] = field_errors(group_by={"keys": ["k"], "aggregations": [{"column": "v", "agg": "max"}]}, sort=["v"])
    assert message == "column 'v' does not exist after group_by: there are only 'k', 'v_max'"
    [(_, message)] = field_errors(columns=[{"name": "a"}, {"name": "a", "source": "b"}])
    assert message == "duplicate output name 'a' (also columns.0.name)"


def test_valid_shaping_passes():
    spec = spec_of(
        columns=[{"name": "k"}, {"name": "v", "type": "float"}, {"name": "d", "type": "date"}],
        filters=[
            {"column": "v", "op": ">", "value": "1.5"},
            {"column": "d", "op": ">=", "value": "2024-01-01"},
            {"column": "k", "op": "in", "value": [1, "x", True]},
            {"column": "k", "op": "is_null"},
        ],
        group_by={"keys": ["k"], "aggregations": [{"column": "v", "agg": "sum"}, {"agg": "count"}]},
        distinct=["k", "count"],
        sort=[{"column": "v_sum", "descending": True}],
        limit=0,
    )
    assert spec.limit == 0
    # without `columns` the names can only be checked against the fetched data
    spec_of(filters=[{"column": "anything", "op": "==", "value": 1}], sort=["whatever"], distinct=["x"])


def test_service_lists_inputs_in_the_shaping_output_order():
    inputs = [
        {"name": "c", "change_order": 3},
        {"name": "x"},
        {"name": "b", "change_order": 2},
        {"name": "a", "change_order": 3},
        {"name": "y"},
        {"name": "z", "change_order": -1},
    ]
    listed = [i["name"] for i in in_output_order(inputs)]
    assert listed == ["z", "b", "c", "a", "x", "y"]
    columns = [
        {"name": i["name"], "source": "id", **({"order": i["change_order"]} if "change_order" in i else {})}
        for i in inputs
    ]
    assert shaped_frame({"id": [1]}, columns=columns).columns == listed
    assert output_order([3, None, 2, 3, None, -1]) == [5, 2, 0, 3, 1, 4]


# ====================================================================== end to end: every feature at once

EVERYTHING = {
    "columns": [
        {"name": "cat", "source": "category", "order": 1},
        {"name": "qty", "source": "quantity", "type": "float", "order": 3},
        {"name": "score", "source": "meta.score", "type": "string"},
        {"name": "day", "source": "meta.created", "type": "date", "order": 2},
        {"name": "first_field", "column": 0, "order": 3},
        {"name": "is_active", "source": "active", "type": "int"},
        {"name": "price"},
        {"name": "note", "source": "note"},
        {"name": "tags"},
    ],
    "filters": [
        {"column": "price", "op": ">", "value": 10},
        {"column": "first_field", "op": "!=", "value": 13},
        {"column": "cat", "op": "in", "value": ["books", "games", "tools"]},
        {"column": "note", "op": "!=", "value": "note 22"},
        {"column": "day", "op": ">=", "value": "2020-01-15"},
        {"column": "qty", "op": "<", "value": 45},
    ],
    "group_by": {
        "keys": ["score"],
        "aggregations": [
            {"column": "price", "agg": "sum", "as": "total"},
            {"column": "price", "agg": "mean"},
            {"column": "qty", "agg": "min", "as": "qty_min"},
            {"column": "qty", "agg": "max", "as": "qty_max"},
            {"agg": "count"},
            {"column": "note", "agg": "count", "as": "notes"},
            {"column": "cat", "agg": "n_unique", "as": "cats"},
            {"column": "day", "agg": "first", "as": "first_day"},
            {"column": "day", "agg": "last", "as": "last_day"},
            {"column": "tags", "agg": "last", "as": "last_tags"},
            {"column": "is_active", "agg": "sum", "as": "active_n"},
        ],
    },
    "distinct": ["count", "notes"],
    "sort": [{"column": "count", "descending": True}, {"column": "total"}],
    "limit": 10,
}
EVERYTHING_COLUMNS = [
    "score",
    "total",
    "price_mean",
    "qty_min",
    "qty_max",
    "count",
    "notes",
    "cats",
    "first_day",
    "last_day",
    "last_tags",
    "active_n",
]


def everything_expected(n: int) -> list[dict]:
    rows = []
    for r in dataset(n):
        rows.append(
            {
                "cat": r["category"],
                "day": dt.date.fromisoformat(r["meta"]["created"]),
                "qty": float(r["quantity"]),
                "first_field": r["id"],
                "score": str(r["meta"]["score"]),
                "is_active": 1 if r["active"] else 0,
                "price": r["price"],
                "note": r["note"],
                "tags": r["tags"],
            }
        )
    kept = [
        x
        for x in rows
        if x["price"] > 10
        and x["first_field"] != 13
        and x["cat"] in ("books", "games", "tools")
        and x["note"] != "note 22"
        and x["day"] >= dt.date(2020, 1, 15)
        and x["qty"] < 45
    ]
    groups: dict[str, list[dict]] = {}
    for x in kept:
        groups.setdefault(x["score"], []).append(x)
    out = []
    for score, g in groups.items():
        prices = [x["price"] for x in g]
        out.append(
            {
                "score": score,
                "total": sum(prices),
                "price_mean": sum(prices) / len(prices),
                "qty_min": min(x["qty"] for x in g),
                "qty_max": max(x["qty"] for x in g),
                "count": len(g),
                "notes": sum(x["note"] is not None for x in g),
                "cats": len({x["cat"] for x in g}),
                "first_day": g[0]["day"],
                "last_day": g[-1]["day"],
                "last_tags": g[-1]["tags"],
                "active_n": sum(x["is_active"] for x in g),
            }
        )
    seen, distinct = set(), []
    for o in out:
        if (o["count"], o["notes"]) not in seen:
            seen.add((o["count"], o["notes"]))
            distinct.append(o)
    distinct.sort(key=lambda o: o["total"])
    distinct.sort(key=lambda o: o["count"], reverse=True)  # stable: ties keep the total order
    return distinct[:10]


def same_cell(got, want, fmt: str) -> bool:
    if want is None:
        return got in (None, "") if fmt in ("csv", "xlsx") else got is None
    if isinstance(want, float):
        return math.isclose(float(got), want, rel_tol=1e-9)
    if isinstance(want, int):
        return int(got) == want and (fmt == "csv" or not isinstance(got, bool))
    if isinstance(want, dt.date):
        if fmt in ("csv", "json"):
            return got == want.isoformat()
        return (got.date() if isinstance(got, dt.datetime) else got) == want
    if isinstance(want, list):
        return (json.loads(got) if fmt in ("csv", "xlsx") else got) == want
    return got == want


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet", "xlsx"])
def test_every_feature_at_once_matches_an_independent_computation(api, run_job, fmt):
    n = 600
    expected = everything_expected(n)
    assert 5 <= len(expected) <= 10 and len({(e["count"], e["notes"]) for e in expected}) == len(expected)
    result = run_job(items(api, n=n, fmt=fmt, **EVERYTHING))
    rows = read_export(result.output, fmt)
    assert result.rows == len(expected) and result.records == n
    assert [list(r) for r in rows] == [EVERYTHING_COLUMNS] * len(expected)  # keys then aggregations, in order
    for got, want in zip(rows, expected, strict=True):
        for column in EVERYTHING_COLUMNS:
            assert same_cell(got[column], want[column], fmt), (column, got[column], want[column])


def test_column_index_follows_first_seen_field_order_across_pages(api, run_job):
    # /items/drift: `extra` only on even pages, so it is first seen on page 2, after every other field
    spec = {
        "sources": [
            {
                "url": api.url("/items/drift"),
                "params": {"n": 60},
                "pagination": {"type": "page", "size": 10, "total_pages": "meta.total_pages"},
            }
        ],
        "concurrency": 4,
        "export": {"format": "parquet"},
        "columns": [
            {"name": "extra_by_index", "column": 14},
            {"name": "id_by_index", "column": 0},
            {"name": "maybe_by_index", "column": 13},
            {"name": "created", "source": "meta.created"},
            {"name": "second_tag", "source": "tags.1"},
        ],
    }
    rows = read_export(run_job(spec).output, "parquet")
    expected = [drift_record(i, (i - 1) // 10 + 1) for i in range(1, 61)]
    assert [r["id_by_index"] for r in rows] == list(range(1, 61))
    assert [r["extra_by_index"] for r in rows] == [e.get("extra") for e in expected]
    assert [r["maybe_by_index"] for r in rows] == [e["maybe"] for e in expected]
    assert [r["created"] for r in rows] == [e["meta"]["created"] for e in expected]
    assert [r["second_tag"] for r in rows] == [(e["tags"] + [None, None])[1] for e in expected]


# ====================================================================== end to end: ops and aggregations

E2E_FILTERS = [
    ({"column": "category", "op": "==", "value": "books"}, lambda r: r["category"] == "books"),
    ({"column": "note", "op": "!=", "value": "note 1"}, lambda r: r["note"] != "note 1"),
    ({"column": "price", "op": ">", "value": 100}, lambda r: r["price"] > 100),
    ({"column": "quantity", "op": ">=", "value": "45"}, lambda r: r["quantity"] >= 45),
    ({"column": "meta.score", "op": "<", "value": 3}, lambda r: r["meta.score"] < 3),
    ({"column": "id", "op": "<=", "value": 10}, lambda r: r["id"] <= 10),
    (
        {"column": "note", "op": "in", "value": ["note 1", "note 2", "note 5"]},
        lambda r: r["note"] in ("note 1", "note 2"),
    ),
    (
        {"column": "note", "op": "not_in", "value": ["note 1", "note 2"]},
        lambda r: r["note"] not in ("note 1", "note 2"),
    ),
    ({"column": "name", "op": "contains", "value": "-1"}, lambda r: "-1" in r["name"]),
    ({"column": "tags", "op": "contains", "value": "red"}, lambda r: "red" in r["tags"]),
    ({"column": "sku", "op": "starts_with", "value": "SKU-0000002"}, lambda r: r["sku"].startswith("SKU-0000002")),
    ({"column": "note", "op": "is_null"}, lambda r: r["note"] is None),
    ({"column": "note", "op": "not_null"}, lambda r: r["note"] is not None),
    ({"column": "active", "op": "==", "value": False}, lambda r: r["active"] is False),
    ({"column": "meta.created", "op": ">", "value": "2020-03-01"}, lambda r: r["meta.created"] > "2020-03-01"),
    ({"column": "id", "op": ">", "value": 10_000}, lambda r: False),
]


@pytest.mark.parametrize("item, predicate", E2E_FILTERS, ids=[f"{f['op']}-{f['column']}" for f, _ in E2E_FILTERS])
def test_each_filter_op_end_to_end(api, run_job, item, predicate):
    result = run_job(items(api, filters=[item]))
    expected = [r["id"] for r in flat_dataset(120) if predicate(r)]
    rows = read_export(result.output, "parquet")
    assert [r["id"] for r in rows] == expected and result.rows == len(expected)
    assert all(r == flat(record(r["id"])) for r in rows[:5])  # whole records, untouched


E2E_AGGS = [
    ("sum", "price"),
    ("mean", "quantity"),
    ("min", "name"),
    ("max", "meta.score"),
    ("count", "note"),
    ("count", None),
    ("n_unique", "quantity"),
    ("first", "note"),
    ("last", "note"),
    ("first", "tags"),
    ("sum", "active"),
]


@pytest.mark.parametrize("agg, column", E2E_AGGS, ids=[f"{a}-{c}" for a, c in E2E_AGGS])
def test_each_aggregation_end_to_end(api, run_job, agg, column):
    aggregation = {"agg": agg, **({"column": column} if column else {})}
    result = run_job(items(api, n=200, group_by={"keys": ["category"], "aggregations": [aggregation]}))
    rows = read_export(result.output, "parquet")
    groups: dict[str, list[dict]] = {}
    for r in flat_dataset(200):
        groups.setdefault(r["category"], []).append(r)
    name = f"{column}_{agg}" if column else "count"
    assert [list(r) for r in rows] == [["category", name]] * 4
    for row, (key, members) in zip(rows, groups.items(), strict=True):
        values = [m[column] for m in members] if column else []
        present = [v for v in values if v is not None]
        want = {
            "sum": lambda: sum(present),
            "mean": lambda: sum(present) / len(present),
            "min": lambda: min(present),
            "max": lambda: max(present),
            "count": lambda: len(present) if column else len(members),
            "n_unique": lambda: len(set(present)),
            "first": lambda: values[0],
            "last": lambda: values[-1],
        }[agg]()
        assert row["category"] == key
        assert math.isclose(row[name], want, rel_tol=1e-9) if isinstance(want, float) else row[name] == want


def test_distinct_sort_and_limit_end_to_end(api, run_job):
    result = run_job(
        items(
            api,
            n=150,
            fmt="json",
            columns=[{"name": "category"}, {"name": "q", "source": "quantity"}, {"name": "id"}],
            distinct=["category", "q"],
            sort=[{"column": "q", "descending": True}, "category"],
            limit=7,
        )
    )
    seen, firsts = set(), []
    for r in dataset(150):
        if (r["category"], r["quantity"]) not in seen:
            seen.add((r["category"], r["quantity"]))
            firsts.append({"category": r["category"], "q": r["quantity"], "id": r["id"]})
    firsts.sort(key=lambda x: x["category"])
    firsts.sort(key=lambda x: x["q"], reverse=True)
    assert read_export(result.output, "json") == firsts[:7]


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson", "xlsx", "parquet"])
def test_an_empty_result_is_a_valid_file(api, run_job, fmt):
    spec = items(
        api,
        n=60,
        fmt=fmt,
        columns=[{"name": "id"}, {"name": "when", "source": "meta.created", "type": "date"}, {"name": "tags"}],
        filters=[{"column": "id", "op": ">", "value": 1000}],
    )
    result = run_job(spec)
    assert result.rows == 0 and result.records == 60
    data = result.output.read_bytes()
    if fmt == "csv":
        assert data == b"id,when,tags\n"
    elif fmt == "json":
        assert json.loads(data) == []
    elif fmt == "ndjson":
        assert data == b""
    elif fmt == "xlsx":
        import openpyxl

        sheet = openpyxl.load_workbook(result.output, read_only=True).worksheets[0]
        assert [list(r) for r in sheet.iter_rows(values_only=True)] == [["id", "when", "tags"]]
        assert xlsx_sheets(result.output) == {"items": []}
    else:
        frame = pl.read_parquet(result.output)
        assert frame.height == 0
        assert frame.schema == pl.Schema({"id": pl.Int64, "when": pl.Date, "tags": pl.List(pl.String)})


def test_on_cast_error_null_end_to_end(api, run_job):
    spec = items(
        api,
        n=60,
        columns=[
            {"name": "id"},
            {"name": "n", "source": "note", "type": "int", "on_cast_error": "null"},
            {"name": "created", "source": "meta.created", "type": "datetime"},
        ],
    )
    rows = read_export(run_job(spec).output, "parquet")
    assert [r["n"] for r in rows] == [None] * 60
    assert rows[0]["created"] == dt.datetime(2020, 1, 2, tzinfo=UTC)


def test_a_bad_cast_fails_the_job_naming_column_and_value(api, run_job):
    spec = items(api, n=60, columns=[{"name": "id"}, {"name": "n", "source": "note", "type": "int"}])
    with pytest.raises(JobFailed) as info:
        run_job(spec)
    assert info.value.message == (
        "source 'items': columns.1.type: column 'n' (from 'note'): 48 values cannot be read "
        'as int, e.g. "note 1"; set "on_cast_error": "null" on the column to write '
        "nulls for them instead"
    )


# ====================================================================== the command line


@pytest.mark.parametrize(
    "shaping, field",
    [
        (dict(filters=[{"column": "id", "op": "like", "value": 1}]), "filters.0.op"),
        (
            dict(group_by={"keys": ["category"], "aggregations": [{"column": "price", "agg": "median"}]}),
            "group_by.aggregations.0.agg",
        ),
        (dict(columns=[{"name": "id", "type": "integer"}]), "columns.0.type"),
        (dict(columns=[{"name": "id"}, {"name": "id", "source": "sku"}]), "columns.1.name"),
        (dict(columns=[{"name": "id"}], sort=["price"]), "sort.0.column"),
        (dict(filters=[{"column": "id", "op": "in", "value": 3}]), "filters.0.value"),
    ],
)
def test_cli_invalid_shaping_exits_2_naming_the_field(api, cli, tmp_path, shaping, field):
    path = write_spec(tmp_path / "spec.json", items(api, fmt="csv", **shaping))
    for command in ("validate", "run"):
        run = cli(command, str(path))
        assert run.code == 2, run.stderr
        assert run.summary["status"] == "invalid" and [d["field"] for d in run.summary["details"]] == [field]
        assert f"invalid spec: {field}: " in run.stderr
    assert api.log() == []  # nothing fetched


@pytest.mark.parametrize(
    "shaping, words",
    [
        (
            dict(columns=[{"name": "id"}, {"name": "amount"}]),
            "source 'items': columns.1.name: column 'amount' is not in the fetched data; "
            "the columns are: 'id', 'name', 'sku', 'price', 'quantity', 'category', 'active', 'tags', "
            "'meta.created', 'meta.score', 'description', 'note'",
        ),
        (
            dict(sort=["total"]),
            "source 'items': sort.0.column: column 'total' is not in the fetched data; the columns are: 'id', 'name'",
        ),
        (
            dict(columns=[{"name": "x", "column": 12}]),
            "source 'items': columns.0.column: index 12 is past the last field",
        ),
        (
            dict(columns=[{"name": "when", "source": "name", "type": "date"}]),
            "source 'items': columns.0.type: column 'when' (from 'name'): "
            '120 values cannot be read as date, e.g. "item-1"',
        ),
        (
            dict(filters=[{"column": "price", "op": ">", "value": "cheap"}]),
            "source 'items': filters.0.value: \"cheap\" cannot be compared with column 'price' of type float",
        ),
    ],
)
def test_cli_data_errors_exit_1_naming_the_column(api, cli, tmp_path, shaping, words):
    path = write_spec(tmp_path / "spec.json", items(api, fmt="csv", **shaping))
    run = cli("run", str(path), "-o", str(tmp_path / "out.csv"))
    assert run.code == 1, run.stderr
    summary = run.summary
    assert summary["status"] == "failed" and summary["error"].startswith(words), summary["error"]
    assert summary["rows"] == 0 and summary["output"] is None
    assert not (tmp_path / "out.csv").exists()  # never an empty file
    assert f"failed: {words}" in run.stderr


def test_cli_rows_count_after_shaping(api, cli, tmp_path):
    path = write_spec(
        tmp_path / "spec.json",
        items(
            api,
            n=300,
            fmt="csv",
            filters=[{"column": "category", "op": "==", "value": "music"}],
            sort=[{"column": "id", "descending": True}],
            limit=20,
        ),
    )
    run = cli("run", str(path), "-o", str(tmp_path / "out.csv"))
    assert run.code == 0, run.stderr
    assert run.summary["rows"] == 20 and run.summary["records"] == 300
    ids = [int(r["id"]) for r in read_export(tmp_path / "out.csv", "csv")]
    assert ids == [i for i in range(300, 0, -1) if i % 4 == 2][:20]
