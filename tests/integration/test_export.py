"""engine.export: every format read back and compared value by value; zip + manifest;
multi-table and rollover XLSX; atomicity (no half-written file, no temp file left)."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
import re
import sys
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import openpyxl
import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

try:
    import engine.export  # noqa: F401
except ImportError:  # run as plain `pytest` without the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import engine.export as export  # noqa: E402
from engine.export import ExportedFile, Table, export_tables  # noqa: E402
from engine.export import atomic as _atomic  # noqa: E402
from engine.export import text as text_mod
from engine.export import xlsx as xlsx_mod

UTC = dt.UTC
HOSTILE = "<a href=\"x\">&amp;</a> 'q' ]]> \x01\x02\x0b\x1f end"
HOSTILE_CLEAN = "<a href=\"x\">&amp;</a> 'q' ]]>  end"  # XML 1.0 forbids \x01 \x02 \x0b \x1f
STRINGS = [
    "plain",
    "=1+2",
    "+44 123",
    "@SUM(A1)",
    "-5",
    "http://x.example/?a=1&b=2",
    HOSTILE,
    "  padded  ",
    "",
    "ünïcødé 漢字 😀 עברית",
    "line1\nline2\r\nline3\ttab",
    "_x0041_ literal",
    "0012",
    "1e5",
    None,
]
N = len(STRINGS)


def rich_frame() -> pl.DataFrame:
    """One row per entry of STRINGS; every dtype the reducer can hand over, with nulls."""
    ints = [i * 1000 - 3 if i % 4 else None for i in range(N)]
    return pl.DataFrame(
        {
            "id": pl.Series(list(range(1, N + 1)), dtype=pl.Int64),
            "small": pl.Series([i if i % 3 else None for i in range(N)], dtype=pl.Int32),
            "big": pl.Series(ints, dtype=pl.Int64),
            "amount": pl.Series([None if i % 5 == 4 else i * 1.25 - 3 for i in range(N)], dtype=pl.Float64),
            "text": pl.Series(STRINGS, dtype=pl.String),
            "flag": pl.Series([None if i % 4 == 3 else i % 2 == 0 for i in range(N)], dtype=pl.Boolean),
            "day": pl.Series(
                [None if i % 6 == 5 else dt.date(2024, 1, 31) + dt.timedelta(days=i) for i in range(N)], dtype=pl.Date
            ),
            "at": pl.Series(
                [
                    None if i % 7 == 6 else dt.datetime(2024, 2, 29, 23, 59, 58, 123000) + dt.timedelta(hours=i)
                    for i in range(N)
                ],
                dtype=pl.Datetime("us"),
            ),
            "nothing": pl.Series([None] * N, dtype=pl.Null),
            "tags": pl.Series([None if i % 5 == 2 else list(range(i % 3)) for i in range(N)], dtype=pl.List(pl.Int64)),
            "matrix": pl.Series(
                [[[i, None], []] if i % 2 else None for i in range(N)], dtype=pl.List(pl.List(pl.Int64))
            ),
            "items": pl.Series(
                [None if i % 4 == 1 else [{"sku": f"s{i}", "qty": i, "note": None}] for i in range(N)],
                dtype=pl.List(pl.Struct({"sku": pl.String, "qty": pl.Int64, "note": pl.String})),
            ),
            "owner": pl.Series(
                [None if i % 3 == 0 else {"name": f"o<{i}>", "age": i} for i in range(N)],
                dtype=pl.Struct({"name": pl.String, "age": pl.Int64}),
            ),
        }
    )


def as_rows(df: pl.DataFrame) -> list[dict]:
    return df.to_dicts()


def to_json_value(v):
    """What JSON text (csv/xlsx cells) or JSON values (ndjson/json) should hold for `v`."""
    if isinstance(v, dt.datetime):
        text = v.strftime("%Y-%m-%dT%H:%M:%S")  # Polars' %.f: 0, 3 or 6 digits as needed
        if v.microsecond % 1000:
            text += f".{v.microsecond:06d}"
        elif v.microsecond:
            text += f".{v.microsecond // 1000:03d}"
        return text + (v.strftime("%z")[:3] + ":" + v.strftime("%z")[3:] if v.tzinfo else "")
    if isinstance(v, dt.date):
        return v.isoformat()
    return v


def csv_cell(v, *, escape: bool = False) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%dT%H:%M:%S.%f") + (
            v.strftime("%z")[:3] + ":" + v.strftime("%z")[3:] if v.tzinfo else ""
        )
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"), ensure_ascii=False)
    if isinstance(v, str):
        return "'" + v if escape and v[:1] in ("=", "+", "-", "@") else v
    return repr(v) if isinstance(v, float) else str(v)


def read_csv_rows(path: Path, sep: str = ",") -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh, delimiter=sep))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_exported(result: ExportedFile, path: Path) -> None:
    assert result.path == path
    assert result.bytes == path.stat().st_size
    assert result.sha256 == sha256_of(path)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


def export_rich_frame(tmp_path: Path, fmt: str, **options) -> tuple[pl.DataFrame, Path]:
    """rich_frame() exported as the one table `orders` to out.<fmt>, checked: the result names the
    file, its size and digest, and N rows. Returns the frame and the file."""
    df = rich_frame()
    path = tmp_path / f"out.{fmt}"
    result = export_tables([Table("orders", df.lazy())], fmt, path, **options)
    check_exported(result, path)
    assert result.rows == {"orders": N}
    return df, path


# --------------------------------------------------------------------------- csv


@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
def test_csv_values_read_back_exactly(tmp_path, sep):
    df, path = export_rich_frame(tmp_path, "csv", csv_separator=sep)
    rows = read_csv_rows(path, sep)
    assert rows[0] == df.columns
    assert len(rows) == N + 1
    for got, want in zip(rows[1:], as_rows(df)):
        for name, cell in zip(df.columns, got):
            value = want[name]
            if name in ("tags", "matrix", "items", "owner"):
                assert (json.loads(cell) if cell else None) == value, name
            else:
                assert cell == csv_cell(value), (name, cell, value)
    assert leftovers(tmp_path) == []


def test_csv_escape_formulas_on_and_off(tmp_path):
    df = pl.DataFrame(
        {
            "s": ["=1+2", "+44", "-x", "@SUM(A1)", "ok", " =no", None],
            "n": [-1, 2, -3, 4, 5, 6, None],
            "f": [-1.5, 0.0, None, 1.0, 2.0, 3.0, 4.0],
            "cat": pl.Series(["=c", "d", "e", "f", "g", "h", "i"], dtype=pl.Categorical),
        }
    )
    off = export_tables([Table("t", df.lazy())], "csv", tmp_path / "off.csv")
    on = export_tables([Table("t", df.lazy())], "csv", tmp_path / "on.csv", escape_formulas=True)
    assert off.rows == on.rows == {"t": 7}
    assert [r[0] for r in read_csv_rows(tmp_path / "off.csv")[1:]] == [
        "=1+2",
        "+44",
        "-x",
        "@SUM(A1)",
        "ok",
        " =no",
        "",
    ]
    rows_on = read_csv_rows(tmp_path / "on.csv")[1:]
    assert [r[0] for r in rows_on] == ["'=1+2", "'+44", "'-x", "'@SUM(A1)", "ok", " =no", ""]
    assert [r[1] for r in rows_on] == ["-1", "2", "-3", "4", "5", "6", ""]  # numbers untouched
    assert [r[2] for r in rows_on] == ["-1.5", "0.0", "", "1.0", "2.0", "3.0", "4.0"]
    assert [r[3] for r in rows_on] == ["'=c", "d", "e", "f", "g", "h", "i"]


def test_csv_row_count_is_quote_aware(tmp_path):
    df = pl.DataFrame({"a": ["x\ny", 'q"uote', "a,b", "\r\n\n", "last"], "b": [1, 2, 3, 4, 5]})
    result = export_tables([Table("t", df.lazy())], "csv", tmp_path / "t.csv")
    assert result.rows == {"t": 5}
    assert [r[0] for r in read_csv_rows(tmp_path / "t.csv")[1:]] == df["a"].to_list()


def test_csv_tz_datetime_and_other_types(tmp_path):
    df = pl.DataFrame(
        {
            "tz": [dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), None],
            "ms": pl.Series([dt.datetime(2024, 1, 2, 3, 4, 5, 6000), None], dtype=pl.Datetime("ms")),
            "dur": [dt.timedelta(days=1, seconds=5), None],
            "bin": [b"\x00ab", None],
            "arr": pl.Series([[1, 2], None], dtype=pl.Array(pl.Int64, 2)),
        }
    ).with_columns(pl.col("tz").dt.convert_time_zone("Europe/Paris"))
    export_tables([Table("t", df.lazy())], "csv", tmp_path / "t.csv")
    rows = read_csv_rows(tmp_path / "t.csv")
    assert rows[1] == ["2024-01-02T04:04:05.000000+01:00", "2024-01-02T03:04:05.006", "P1DT5S", "AGFi", "[1,2]"]
    assert rows[2] == ["", "", "", "", ""]


# --------------------------------------------------------------------------- ndjson / json


def expected_json_records(df: pl.DataFrame) -> list[dict]:
    out = []
    for row in as_rows(df):
        out.append({k: to_json_value(v) for k, v in row.items()})
    return out


def read_ndjson_records(path: Path) -> list:
    """One record a line, N lines."""
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == N
    return [json.loads(line) for line in lines]


def read_json_records(path: Path) -> list:
    """One JSON array."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


@pytest.mark.parametrize("fmt,read_records", [("ndjson", read_ndjson_records), ("json", read_json_records)])
def test_json_formats_read_back_exactly(tmp_path, fmt, read_records):
    df, path = export_rich_frame(tmp_path, fmt)
    assert read_records(path) == expected_json_records(df)
    assert leftovers(tmp_path) == []


def test_json_datetime_text_and_nan(tmp_path):
    df = pl.DataFrame(
        {
            "at": [dt.datetime(2024, 1, 2, 3, 4, 5), dt.datetime(2024, 1, 2, 3, 4, 5, 120000)],
            "tz": [dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), None],
            "f": [float("nan"), float("inf")],
        }
    )
    export_tables([Table("t", df.lazy())], "json", tmp_path / "t.json")
    assert json.loads((tmp_path / "t.json").read_text()) == [
        {"at": "2024-01-02T03:04:05", "tz": "2024-01-02T03:04:05+00:00", "f": None},
        {"at": "2024-01-02T03:04:05.120", "tz": None, "f": None},
    ]


def test_json_framing_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(text_mod, "JSON_CHUNK", 7)  # splits records and newlines across reads
    df = pl.DataFrame({"a": list(range(50)), "s": [f"v{i}\n" * (i % 4) for i in range(50)]})
    result = export_tables([Table("t", df.lazy())], "json", tmp_path / "t.json")
    assert result.rows == {"t": 50}
    assert json.loads((tmp_path / "t.json").read_text()) == df.to_dicts()


# --------------------------------------------------------------------------- parquet


def test_parquet_roundtrip_keeps_types(tmp_path):
    df, path = export_rich_frame(tmp_path, "parquet")
    assert pq.read_metadata(path).row_group(0).column(0).compression == "ZSTD"
    back = pl.read_parquet(path)
    assert back.schema["tags"] == pl.List(pl.Int64)
    assert_frame_equal(back, df)


# --------------------------------------------------------------------------- xlsx


def unescape_excel(text: str) -> str:
    """What Excel shows for an inline string: `_x005F_` stands for `_` (openpyxl does this for
    shared strings only)."""
    return text.replace("_x005F_", "_")


def expected_xlsx(value, dtype):
    """(value, openpyxl data_type) that a cell must hold."""
    if value is None:
        return None, "n"
    if isinstance(dtype, (pl.List, pl.Struct, pl.Array)):
        return value, "json"
    if isinstance(value, str):
        return re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", "", value), "s"
    if isinstance(value, bool):
        return value, "b"
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None), "d"
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day), "d"
    return value, "n"


def read_sheets(path: Path) -> dict[str, list[list]]:
    wb = openpyxl.load_workbook(path)
    return {ws.title: [list(r) for r in ws.iter_rows()] for ws in wb.worksheets}


def assert_sheet_matches(cells: list[list], df: pl.DataFrame) -> None:
    header = cells[0]
    assert [c.value for c in header] == df.columns
    assert all(c.font.b for c in header)
    assert len(cells) == df.height + 1
    for r, (row_cells, row) in enumerate(zip(cells[1:], as_rows(df)), start=2):
        by_col = {c.column: c for c in row_cells}
        for j, name in enumerate(df.columns, start=1):
            want, kind = expected_xlsx(row[name], df.schema[name])
            cell = by_col.get(j)
            got = cell.value if cell is not None else None
            if kind == "json":
                assert cell.data_type == "s" and json.loads(got) == want, (r, name, got)
                continue
            if want is None:
                assert got is None, (r, name, got)
                continue
            assert cell.data_type == kind, (r, name, cell.data_type, got)
            if kind == "s":
                got = unescape_excel(got)
            assert got == want and type(got) is type(want), (r, name, got, want)
            if isinstance(row[name], dt.datetime):
                assert cell.number_format == "yyyy\\-mm\\-dd\\ hh:mm:ss"
            elif isinstance(row[name], dt.date):
                assert cell.number_format == "yyyy\\-mm\\-dd"


def sheet_xml(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        return {n: zf.read(n) for n in zf.namelist() if n.startswith("xl/worksheets/")}


def test_xlsx_every_cell_value_and_type(tmp_path):
    df, path = export_rich_frame(tmp_path, "xlsx")
    sheets = read_sheets(path)
    assert list(sheets) == ["orders"]
    assert_sheet_matches(sheets["orders"], df)
    xml = sheet_xml(path)["xl/worksheets/sheet1.xml"]
    ET.fromstring(xml)  # well-formed XML 1.0
    assert b"<f>" not in xml and b"<f " not in xml  # never a formula
    assert b"_x005F_x0041_" in xml  # Excel's escape neutralised
    assert b'<dimension ref="A1:M16"/>' in xml
    with zipfile.ZipFile(path) as zf:
        assert "xl/sharedStrings.xml" not in zf.namelist()
        assert not any("hyperlink" in n for n in zf.namelist())
        assert zf.getinfo("xl/worksheets/sheet1.xml").compress_type == zipfile.ZIP_DEFLATED


def test_xlsx_special_values(tmp_path):
    df = pl.DataFrame(
        {
            "f": [float("nan"), float("inf"), float("-inf"), 1e300, 1e-7, -0.5],
            "tz": [dt.datetime(2024, 6, 1, 12, tzinfo=UTC)] * 6,
            "old": [
                dt.date(1899, 12, 31),
                dt.date(1900, 2, 28),
                dt.date(1900, 3, 1),
                dt.date(1, 1, 1),
                dt.date(9999, 12, 31),
                None,
            ],
            "oldts": [dt.datetime(1850, 1, 1, 1, 2, 3), dt.datetime(1900, 3, 1, 0, 0, 1), None, None, None, None],
            "t": [dt.time(13, 14, 15), None, None, None, None, None],
            "dur": [dt.timedelta(hours=30, minutes=1), None, None, None, None, None],
            "u64": pl.Series([2**63 + 5, 0, 1, 2, 3, 4], dtype=pl.UInt64),
            "long": ["x" * 40_000, "", " ", "\r", "a\r\nb", "<&>"],
            "bin": [b"\x00ab", None, None, None, None, None],
        }
    ).with_columns(pl.col("tz").dt.convert_time_zone("America/New_York"))
    path = tmp_path / "s.xlsx"
    export_tables([Table("s", df.lazy())], "xlsx", path)
    ws = openpyxl.load_workbook(path)["s"]
    col = {name: [ws.cell(r, j).value for r in range(2, 8)] for j, name in enumerate(df.columns, 1)}
    assert col["f"] == ["NaN", "inf", "-inf", 1e300, 1e-7, -0.5]
    assert [ws.cell(r, 1).data_type for r in range(2, 8)] == ["s", "s", "s", "n", "n", "n"]
    assert col["tz"] == [dt.datetime(2024, 6, 1, 8)] * 6  # wall-clock in its zone
    assert col["old"] == [
        "1899-12-31",
        "1900-02-28",
        dt.datetime(1900, 3, 1),
        "0001-01-01",
        dt.datetime(9999, 12, 31),
        None,
    ]
    assert col["oldts"][:2] == ["1850-01-01T01:02:03", dt.datetime(1900, 3, 1, 0, 0, 1)]
    assert col["t"][0] == dt.time(13, 14, 15)
    assert col["dur"][0] == dt.timedelta(hours=30, minutes=1)
    assert col["u64"][0] == 2**63 + 5
    assert col["long"][0] == "x" * 32_767  # Excel's cell limit
    assert col["long"][1:] in (["", " ", "\r", "a\r\nb", "<&>"], [None, " ", "\r", "a\r\nb", "<&>"])
    assert col["bin"][0] == "AGFi"


def test_xlsx_multi_table_sheet_names(tmp_path):
    frames = [
        Table("orders", pl.LazyFrame({"a": [1, 2]})),
        Table("Orders", pl.LazyFrame({"b": ["x"]})),
        Table("a/b:c*d?e[f]g\\h", pl.LazyFrame({"c": [True]})),
        Table("x" * 40, pl.LazyFrame({"d": [1.5]})),
        Table("x" * 31 + "y", pl.LazyFrame({"e": [None]}, schema={"e": pl.Int64})),
        Table("'quoted'", pl.LazyFrame({"f": [dt.date(2024, 1, 1)]})),
        Table("History", pl.LazyFrame({"g": [1]})),
        Table('tab\there_x0041_&<"', pl.LazyFrame({"h": [1]})),
        Table("😀" * 20, pl.LazyFrame({"i": [1]})),
    ]
    path = tmp_path / "multi.xlsx"
    result = export_tables(frames, "xlsx", path)
    assert result.rows == {
        "orders": 2,
        "Orders": 1,
        "a/b:c*d?e[f]g\\h": 1,
        "x" * 40: 1,
        "x" * 31 + "y": 1,
        "'quoted'": 1,
        "History": 1,
        'tab\there_x0041_&<"': 1,
        "😀" * 20: 1,
    }
    wb = openpyxl.load_workbook(path)
    names = wb.sheetnames
    assert names == [
        "orders",
        "Orders (2)",
        "a_b_c_d_e_f_g_h",
        "x" * 31,
        "x" * 27 + " (2)",
        "quoted",
        "History_",
        'tabhere_x0041_&<"',
        "😀" * 15,
    ]  # 31 UTF-16 units max
    assert len({n.casefold() for n in names}) == len(names)
    assert all(len(n) <= 31 for n in names)
    assert [[c.value for c in r] for r in wb["orders"].iter_rows()] == [["a"], [1], [2]]
    assert [[c.value for c in r] for r in wb["Orders (2)"].iter_rows()] == [["b"], ["x"]]
    assert [[c.value for c in r] for r in wb["x" * 27 + " (2)"].iter_rows()] == [["e"]]


def test_xlsx_rollover_with_lowered_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(xlsx_mod, "ROWS_PER_SHEET", 5)
    monkeypatch.setattr(xlsx_mod, "MIN_BATCH_ROWS", 3)  # batches of 3: splits inside batches
    monkeypatch.setattr(xlsx_mod, "MAX_BATCH_ROWS", 3)
    big = pl.DataFrame({"n": list(range(12)), "s": [f"r{i}" for i in range(12)]})
    exact = pl.DataFrame({"n": list(range(10))})
    path = tmp_path / "roll.xlsx"
    result = export_tables(
        [Table("big", big.lazy()), Table("exact", exact.lazy()), Table("big_2", pl.LazyFrame({"z": [1]}))], "xlsx", path
    )
    assert result.rows == {"big": 12, "exact": 10, "big_2": 1}
    sheets = read_sheets(path)
    assert list(sheets) == ["big", "big_2 (2)", "big_3", "exact", "exact_2", "big_2"]
    values = {name: [[c.value for c in r] for r in rows] for name, rows in sheets.items()}
    assert values["big"] == [["n", "s"]] + [[i, f"r{i}"] for i in range(5)]
    assert values["big_2 (2)"] == [["n", "s"]] + [[i, f"r{i}"] for i in range(5, 10)]
    assert values["big_3"] == [["n", "s"]] + [[i, f"r{i}"] for i in range(10, 12)]
    assert values["exact"] == [["n"]] + [[i] for i in range(5)]
    assert values["exact_2"] == [["n"]] + [[i] for i in range(5, 10)]
    xml = sheet_xml(path)
    assert b'<dimension ref="A1:B3"/>' in xml["xl/worksheets/sheet3.xml"]
    assert b'<row r="6">' in xml["xl/worksheets/sheet2.xml"]


def test_xlsx_many_batches_keep_row_order(tmp_path, monkeypatch):
    monkeypatch.setattr(xlsx_mod, "MIN_BATCH_ROWS", 1000)
    monkeypatch.setattr(xlsx_mod, "MAX_BATCH_ROWS", 1000)
    n = 5_500
    df = pl.DataFrame(
        {
            "id": range(n),
            "s": [f"<{i}>" for i in range(n)],
            "d": [dt.date(2020, 1, 1) + dt.timedelta(days=i % 900) for i in range(n)],
        }
    )
    path = tmp_path / "many.xlsx"
    assert export_tables([Table("t", df.lazy())], "xlsx", path).rows == {"t": n}
    ws = openpyxl.load_workbook(path, read_only=True)["t"]
    got = list(ws.iter_rows(min_row=2, values_only=True))
    assert got == [(i, f"<{i}>", dt.datetime.combine(d, dt.time())) for i, d in zip(range(n), df["d"].to_list())]


# --------------------------------------------------------------------------- zero rows

EMPTY = pl.LazyFrame(schema={"id": pl.Int64, "name": pl.String, "tags": pl.List(pl.Int64), "at": pl.Datetime("us")})


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson", "parquet", "xlsx"])
def test_zero_rows(tmp_path, fmt):
    path = tmp_path / f"empty.{fmt}"
    result = export_tables([Table("empty", EMPTY)], fmt, path)
    check_exported(result, path)
    assert result.rows == {"empty": 0}
    if fmt == "csv":
        assert path.read_text() == "id,name,tags,at\n"
    elif fmt == "json":
        assert json.loads(path.read_text()) == []
    elif fmt == "ndjson":
        assert path.read_bytes() == b""
    elif fmt == "parquet":
        back = pl.read_parquet(path)
        assert back.height == 0 and back.schema == EMPTY.collect_schema()
    else:
        assert read_sheets(path)["empty"] and [[c.value for c in r] for r in read_sheets(path)["empty"]] == [
            ["id", "name", "tags", "at"]
        ]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("inner", ["csv", "json", "ndjson", "parquet", "xlsx"])
def test_zero_rows_zip(tmp_path, inner):
    path = tmp_path / "empty.zip"
    result = export_tables([Table("empty", EMPTY)], "zip", path, inner=inner)
    assert result.rows == {"empty": 0}
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        assert manifest["files"][0]["rows"] == 0
        assert zf.namelist() == [f"empty.{inner}", "manifest.json"]


# --------------------------------------------------------------------------- zip


@pytest.mark.parametrize("inner", ["csv", "json", "ndjson", "parquet", "xlsx"])
def test_zip_contents_and_manifest(tmp_path, inner):
    a = rich_frame()
    b = pl.DataFrame({"k": ["=x", "y"], "v": [1, 2]})
    path = tmp_path / "bundle.zip"
    given = {"job_id": "job_1", "spec": {"name": "orders"}, "sources": [{"name": "a", "rows": 15}]}
    result = export_tables(
        [Table("alpha", a.lazy()), Table("beta", b.lazy())],
        "zip",
        path,
        inner=inner,
        manifest=given,
        escape_formulas=True,
        csv_separator=";",
    )
    check_exported(result, path)
    assert result.rows == {"alpha": N, "beta": 2}
    assert given == {"job_id": "job_1", "spec": {"name": "orders"}, "sources": [{"name": "a", "rows": 15}]}
    out = tmp_path / "unzipped"
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        assert zf.namelist() == [f"alpha.{inner}", f"beta.{inner}", "manifest.json"]
        text = inner in ("csv", "json", "ndjson")
        for name in zf.namelist()[:2]:
            assert zf.getinfo(name).compress_type == (zipfile.ZIP_DEFLATED if text else zipfile.ZIP_STORED)
        manifest = json.loads(zf.read("manifest.json"))
        zf.extractall(out)
    assert {k: v for k, v in manifest.items() if k != "files"} == given
    assert [f["name"] for f in manifest["files"]] == [f"alpha.{inner}", f"beta.{inner}"]
    for entry, rows in zip(manifest["files"], (N, 2)):
        inner_path = out / entry["name"]
        assert entry["bytes"] == inner_path.stat().st_size
        assert entry["sha256"] == sha256_of(inner_path)
        assert entry["rows"] == rows
    # the inner files are the same as the single-format exports
    if inner == "csv":
        assert read_csv_rows(out / "beta.csv", ";") == [["k", "v"], ["'=x", "1"], ["y", "2"]]
    elif inner == "parquet":
        assert_frame_equal(pl.read_parquet(out / "alpha.parquet"), a)
    elif inner == "xlsx":
        assert_sheet_matches(read_sheets(out / "alpha.xlsx")["alpha"], a)
    elif inner == "json":
        assert json.loads((out / "alpha.json").read_text()) == expected_json_records(a)
    else:
        lines = (out / "alpha.ndjson").read_text().splitlines()
        assert [json.loads(x) for x in lines] == expected_json_records(a)
    assert leftovers(tmp_path) == []


def test_zip_member_names_are_safe_and_unique(tmp_path):
    tables = [
        Table("manifest", pl.LazyFrame({"a": [1]})),
        Table("a/b", pl.LazyFrame({"a": [2]})),
        Table("A/B", pl.LazyFrame({"a": [3]})),
        Table("..", pl.LazyFrame({"a": [4]})),
    ]
    path = tmp_path / "names.zip"
    result = export_tables(tables, "zip", path, inner="json")
    assert result.rows == {"manifest": 1, "a/b": 1, "A/B": 1, "..": 1}
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["manifest (2).json", "a_b.json", "A_B (2).json", "__.json", "manifest.json"]


# --------------------------------------------------------------------------- validation


def test_validation_errors(tmp_path):
    one = Table("a", pl.LazyFrame({"x": [1]}))
    two = Table("b", pl.LazyFrame({"x": [1]}))
    for fmt in ("csv", "json", "ndjson", "parquet"):
        with pytest.raises(ValueError, match="zip"):
            export_tables([one, two], fmt, tmp_path / f"x.{fmt}")
    with pytest.raises(ValueError, match="format"):
        export_tables([one], "xml", tmp_path / "x.xml")
    with pytest.raises(ValueError, match="inner"):
        export_tables([one], "zip", tmp_path / "x.zip", inner="zip")
    with pytest.raises(ValueError, match="separator"):
        export_tables([one], "csv", tmp_path / "x.csv", csv_separator=";;")
    with pytest.raises(ValueError, match="unique"):
        export_tables([one, Table("a", pl.LazyFrame())], "zip", tmp_path / "x.zip")
    with pytest.raises(ValueError, match="no tables"):
        export_tables([], "csv", tmp_path / "x.csv")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- atomicity


def _failing_frame() -> pl.LazyFrame:
    """Fails while streaming, after the sink has opened its file."""
    lf = pl.LazyFrame({"s": ["1", "2", "x"]})
    return lf.select(pl.col("s").cast(pl.Int64, strict=True))


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson", "parquet", "xlsx", "zip"])
def test_failure_leaves_no_file_and_no_temp(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    tables = [Table("ok", pl.LazyFrame({"s": [1]})), Table("bad", _failing_frame())]
    if fmt not in ("xlsx", "zip"):
        tables = tables[1:]
    with pytest.raises(pl.exceptions.InvalidOperationError):
        export_tables(tables, fmt, path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["csv", "xlsx", "zip"])
def test_failure_mid_write_keeps_previous_result(tmp_path, monkeypatch, fmt):
    path = tmp_path / f"out.{fmt}"
    path.write_bytes(b"previous result")
    calls = {"n": 0}
    real_digest = _atomic.digest

    def broken_digest(p, **kw):
        calls["n"] += 1
        raise OSError("disk on fire")

    monkeypatch.setattr(_atomic, "digest", broken_digest)
    with pytest.raises(OSError, match="disk on fire"):
        export_tables([Table("t", pl.LazyFrame({"a": list(range(100))}))], fmt, path)
    assert calls["n"] == 1
    assert path.read_bytes() == b"previous result"
    assert leftovers(tmp_path) == []
    monkeypatch.setattr(_atomic, "digest", real_digest)
    result = export_tables([Table("t", pl.LazyFrame({"a": list(range(100))}))], fmt, path)
    assert result.rows == {"t": 100}
    check_exported(result, path)


def test_failure_in_xlsx_batch_removes_sheet_temps(tmp_path, monkeypatch):
    monkeypatch.setattr(xlsx_mod, "MIN_BATCH_ROWS", 10)
    monkeypatch.setattr(xlsx_mod, "MAX_BATCH_ROWS", 10)
    real = xlsx_mod._SheetWriter.write
    seen = {"n": 0}

    def write(self, batch):
        seen["n"] += 1
        if seen["n"] == 3:
            assert any(".sheet1.xml" in n for n in leftovers(tmp_path))  # temp is beside the output
            raise KeyboardInterrupt
        real(self, batch)

    monkeypatch.setattr(xlsx_mod._SheetWriter, "write", write)
    with pytest.raises(KeyboardInterrupt):
        export_tables([Table("t", pl.LazyFrame({"a": list(range(100))}))], "xlsx", tmp_path / "out.xlsx")
    assert list(tmp_path.iterdir()) == []


def test_temp_names_and_stale_cleanup(tmp_path):
    temps = _atomic.TempFiles(tmp_path / "report.csv")
    a, b = temps.new(), temps.new("ndjson")
    assert a.parent == tmp_path and a.name.startswith(".report.csv.tmp-")
    assert b.name == a.name + ".ndjson"
    keep = tmp_path / "report.csv"
    keep.write_text("x")
    old = time.time() - 7200
    os.utime(a, (old, old))
    assert _atomic.remove_stale_temps(tmp_path, older_than=3600) == [a]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([b.name, "report.csv"])
    temps.cleanup()
    assert [p.name for p in tmp_path.iterdir()] == ["report.csv"]


def test_export_from_ipc_shards_with_drift(tmp_path):
    """The reducer's shape: a diagonal_relaxed concat of shard scans."""
    shards = tmp_path / "shards"
    shards.mkdir()
    pl.DataFrame({"id": [1, 2], "v": [None, None]}).write_ipc(shards / "0.arrow")
    pl.DataFrame({"id": [3], "v": ["x"], "extra": [[1]]}).write_ipc(shards / "1.arrow")
    lf = pl.concat([pl.scan_ipc(shards / f"{i}.arrow") for i in range(2)], how="diagonal_relaxed")
    for fmt in export.INNER_FORMATS:
        result = export_tables([Table("s", lf)], fmt, tmp_path / f"s.{fmt}")
        assert result.rows == {"s": 3}, fmt
    assert read_csv_rows(tmp_path / "s.csv") == [["id", "v", "extra"], ["1", "", ""], ["2", "", ""], ["3", "x", "[1]"]]
