"""engine/export/infer.py: `csv.infer_types` converts a whole column only when every value
prints back as its text."""

from __future__ import annotations

import polars as pl
import pytest

from engine.export.infer import infer_types


def inferred(values: list) -> pl.Series:
    return infer_types(pl.LazyFrame({"v": values}, schema={"v": pl.String})).collect()["v"]


@pytest.mark.parametrize("values", [["5", "-12", "0", None], ["123456789012345"]])
def test_plain_integers_become_int(values):
    column = inferred(values)
    assert column.dtype == pl.Int64
    assert [None if v is None else str(v) for v in column] == values


@pytest.mark.parametrize("values", [["1.5", "-0.25", None], ["123.456"], ["0.001"]])
def test_plain_decimals_become_float(values):
    column = inferred(values)
    assert column.dtype == pl.Float64
    assert [None if v is None else repr(v) for v in column] == values


@pytest.mark.parametrize(
    "values",
    [
        ["5", "007"],
        ["1.50"],
        ["1e3"],
        ["+5"],
        [" 5"],
        ["5 "],
        ["-0"],
        ["5", "1.5"],
        [".5"],
        ["5."],
        ["0.0001"],
        ["1234567890123456"],
        ["TRUE", "false"],
        ["2024-01-02"],
        [None, None],
        ["1.2345678901234567"],
        ["0x1F"],
        ["١٢"],
    ],
)
def test_anything_else_stays_text(values):
    column = inferred(values)
    assert column.dtype == pl.String
    assert column.to_list() == values
