"""Read an export back into plain rows (list of dicts), whatever its format - for assertions."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import polars as pl


def flat(row: dict) -> dict:
    """A record as the engine writes it: nested objects become `parent.child` columns."""
    out = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in flat(value).items()})
        else:
            out[key] = value
    return out


def _csv_rows(data: bytes, separator: str = ",") -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8")), delimiter=separator))


def _xlsx_rows(data: bytes) -> dict[str, list[dict]]:
    import openpyxl

    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True)
    sheets = {}
    for sheet in book.worksheets:
        rows = list(sheet.iter_rows(values_only=True))
        header = rows[0] if rows else ()
        sheets[sheet.title] = [dict(zip(header, row)) for row in rows[1:]]
    return sheets


def rows_of(data: bytes, fmt: str, separator: str = ",") -> list[dict]:
    if fmt == "csv":
        return _csv_rows(data, separator)
    if fmt == "json":
        return json.loads(data)
    if fmt == "ndjson":
        return [json.loads(line) for line in data.splitlines() if line.strip()]
    if fmt == "parquet":
        return pl.read_parquet(io.BytesIO(data)).to_dicts()
    if fmt == "xlsx":
        sheets = _xlsx_rows(data)
        return [row for rows in sheets.values() for row in rows]
    raise ValueError(fmt)


def read_export(path: Path, fmt: str, inner: str = "csv") -> list[dict] | dict[str, list[dict]]:
    """Rows of a single-table export; for zip, {inner file name: rows} plus "manifest.json"."""
    data = Path(path).read_bytes()
    if fmt != "zip":
        return rows_of(data, fmt)
    out: dict = {}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for name in archive.namelist():
            content = archive.read(name)
            out[name] = json.loads(content) if name == "manifest.json" else rows_of(content, inner)
    return out


def xlsx_sheets(path: Path) -> dict[str, list[dict]]:
    return _xlsx_rows(Path(path).read_bytes())


def all_bytes_under(root: Path) -> dict[str, bytes]:
    """Every file under root; zip archives also contribute their members, uncompressed."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found[str(path)] = data
            if zipfile.is_zipfile(io.BytesIO(data)):
                with zipfile.ZipFile(io.BytesIO(data)) as archive:
                    for name in archive.namelist():
                        found[f"{path}!{name}"] = archive.read(name)
    return found
