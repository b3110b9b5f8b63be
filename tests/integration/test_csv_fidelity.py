"""CSV sources keep every field's text exactly as written, in every export format;
`csv.infer_types` turns only columns that print back unchanged into numbers."""

from __future__ import annotations

import csv
import io

import pytest

from tests.support.readback import read_export
from tests.support.scripted_server import Reply, ScriptedServer

HEADER = ["zip", "sci", "dec", "flag", "date", "formula", "space", "uni", "int", "float", "mixed"]
ROWS = [
    ["01067", "1e3", "1.50", "TRUE", "2024-01-02", "=1+2", " 5", "😀 ok", "5", "1.5", "5"],
    ["00501", "1E5", "2.0", "false", "01/02/2024", "+A1", "5 ", "שלום", "-12", "-0.25", "1.5"],
    ["99999", "-2e-3", "007", "yes", "2024-13-45", "@SUM(1)", "+5", "e\u0301", "0", "123.456", "x"],
    ["12345", "0x1F", ".5", "1", "12:30", "-3", "1,000", 'a"b', "42", "7.25", "2"],
]
FORMATS = ["csv", "json", "ndjson", "xlsx", "parquet", "zip"]


def csv_body() -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(ROWS)
    return out.getvalue().encode()


@pytest.fixture
def server(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    srv = ScriptedServer()
    srv.add("GET", "/rows.csv", Reply(200, {"Content-Type": "text/csv"}, csv_body()))
    yield srv
    srv.close()


def exported_rows(path, fmt) -> list[dict]:
    rows = read_export(path, fmt)
    if fmt == "zip":
        rows = next(v for k, v in rows.items() if k != "manifest.json")
    return rows


def as_text(value) -> str:
    return value if isinstance(value, str) else str(value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_csv_fields_are_exported_exactly_as_written(server, run_job, tmp_path, fmt):
    spec = {
        "name": "fidelity",
        "sources": [{"url": server.url("/rows.csv"), "format": "csv"}],
        "export": {"format": fmt},
    }
    result = run_job(spec, output=tmp_path / f"out.{fmt}")
    rows = exported_rows(result.output, fmt)
    assert [[row[name] for name in HEADER] for row in rows] == ROWS


@pytest.mark.parametrize("fmt", FORMATS)
def test_infer_types_only_converts_columns_that_print_back_unchanged(server, run_job, tmp_path, fmt):
    spec = {
        "name": "fidelity",
        "sources": [{"url": server.url("/rows.csv"), "format": "csv", "csv": {"infer_types": True}}],
        "export": {"format": fmt},
    }
    result = run_job(spec, output=tmp_path / f"out.{fmt}")
    rows = exported_rows(result.output, fmt)
    assert [[as_text(row[name]) for name in HEADER] for row in rows] == ROWS
    if fmt in ("json", "ndjson", "parquet"):
        assert [type(row["int"]) for row in rows] == [int] * 4
        assert [type(row["float"]) for row in rows] == [float] * 4
        for name in ("zip", "sci", "dec", "flag", "date", "formula", "space", "mixed"):
            assert all(isinstance(row[name], str) for row in rows), name


def test_columns_type_string_keeps_leading_zeros_and_int_casts(server, run_job, tmp_path):
    spec = {
        "name": "fidelity",
        "sources": [{"url": server.url("/rows.csv"), "format": "csv"}],
        "columns": [{"name": "zip", "type": "string"}, {"name": "n", "source": "zip", "type": "int"}],
        "export": {"format": "json"},
    }
    rows = exported_rows(run_job(spec, output=tmp_path / "out.json").output, "json")
    assert rows == [{"zip": r[0], "n": int(r[0])} for r in ROWS]
