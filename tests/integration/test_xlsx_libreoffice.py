"""XLSX exports opened by another reader: LibreOffice (headless) converts the workbook to CSV,
and every cell must read back as the exact text of the data - text that looks like a number,
a date or a formula stays text."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import polars as pl

from engine.export import Table, export_tables
from engine.export.infer import infer_types

SOFFICE = shutil.which("soffice") or shutil.which("libreoffice")


LONG = ("0123456789abcdef" * 2048)[:32_767]
TEXT = {
    "numbers": ["01067", "1e3", "1.50", "007", " 5", "0x1F", "1,000", "123456789012345678901234567890"],
    "dates": ["2024-01-02", "01/02/2024", "2024-01-02T03:04:05", "12:30", "Jan 2 2024", "1/2", "2024", "45000"],
    "formulas": ["=1+2", "+A1", "@SUM(1)", "-3", '=HYPERLINK("http://x")', "'quoted", "=", "-"],
    "unicode": ["😀👍🏽", "שלום עולם", "مرحبا", "e\u0301 n\u0303", "日本語", "Ω≈ç√", "\u200bzero-width", "naïve"],
    "long": [LONG, "x", LONG[:-1] + "é", "y", "z", "w", "v", "u"],
    "booleans": ["TRUE", "false", "yes", "1", "0", "N/A", "#DIV/0!", "NaN"],
}
# Columns `csv.infer_types` turns into numbers must print back unchanged too.
INFERRED = {
    "ints": ["5", "-12", "0", "123456789012345", "42", "-999999999999999", "7", "100"],
    "decimals": ["1.5", "-0.25", "123.456", "0.001", "99999999.5", "3.14159265358979", "7.25", "-0.1"],
}


def soffice_csv(xlsx: Path, tmp_path: Path) -> list[list[str]]:
    profile = tmp_path / "lo-profile"
    outdir = tmp_path / "lo-out"
    subprocess.run(
        [
            SOFFICE,
            f"-env:UserInstallation=file://{profile}",
            "--headless",
            "--norestore",
            "--convert-to",
            "csv:Text - txt - csv (StarCalc):44,34,76,1",
            "--outdir",
            str(outdir),
            str(xlsx),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    converted = outdir / (xlsx.stem + ".csv")
    with converted.open(encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def test_libreoffice_reads_every_cell_back_as_written(tmp_path):
    data = {**TEXT, **INFERRED}
    frame = infer_types(pl.LazyFrame(data, schema={name: pl.String for name in data}))
    schema = frame.collect_schema()
    assert schema["ints"] == pl.Int64 and schema["decimals"] == pl.Float64
    assert all(schema[name] == pl.String for name in TEXT)
    path = tmp_path / "cells.xlsx"
    export_tables([Table("cells", frame)], "xlsx", path)
    rows = soffice_csv(path, tmp_path)
    assert rows[0] == list(data)
    body = rows[1:]
    assert len(body) == 8
    for name, column in zip(data, zip(*body)):
        for want, got in zip(data[name], column):
            assert got == want, (name, want[:40], got[:40], len(want), len(got))
