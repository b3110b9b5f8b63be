"""XLSX writer: the OOXML package written directly, each batch's `<row>` XML built by vectorised
Polars strings (in Rust) and taken straight from the Arrow buffer, because xlsxwriter and
`DataFrame.write_excel` go through Python per cell (docs/performance.md has the comparison).
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa

from . import encode, ziparchive
from .atomic import TempFiles

ROWS_PER_SHEET = 1_048_575  # + the header row = Excel's 1,048,576
MAX_COLUMNS = 16_384
MAX_CELL_CHARS = 32_767
MAX_SHEET_NAME = 31
COMPRESSLEVEL = 2  # deflate level of the sheets: faster than 6, a little larger
BATCH_BYTES = 24 << 20  # aim for about this much XML per batch
MIN_BATCH_ROWS, MAX_BATCH_ROWS = 1_000, 50_000

STYLE_HEADER, STYLE_DATE, STYLE_DATETIME, STYLE_TIME, STYLE_DURATION = 1, 2, 3, 4, 5

_EXCEL_EPOCH_DAYS = 25_569  # serial of 1970-01-01
_DAYS_1900_03_01 = -25_508  # 1900-03-01 in days since 1970-01-01
_DAYS_10000_01_01 = 2_932_897
_US_PER_DAY = 86_400_000_000
_NS_PER_DAY = 86_400_000_000_000

_ILLEGAL_XML = [chr(c) for c in range(0x20) if c not in (0x09, 0x0A, 0x0D)] + ["\ufffe", "\uffff"]
_TEXT_PATTERNS = ["&", "<", ">", "\r", *_ILLEGAL_XML]
_TEXT_REPLACEMENTS = ["&amp;", "&lt;", "&gt;", "&#13;", *([""] * len(_ILLEGAL_XML))]
_EXCEL_ESCAPE = r"_(x[0-9A-Fa-f]{4}_)"
_ILLEGAL_XML_RE = re.compile("[" + "".join(re.escape(c) for c in _ILLEGAL_XML) + "]")
_EXCEL_ESCAPE_RE = re.compile(_EXCEL_ESCAPE)
_SHEET_BAD = re.compile(r"[\[\]:*?/\\]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ufffe\uffff]")

NS_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
NS_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
NS_PKG_REL = "http://schemas.openxmlformats.org/package/2006/relationships"
XML_DECL = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'


# --------------------------------------------------------------------------- names


def column_letter(index: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA, 16383 -> XFD."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


def _excel_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _fit(text: str, limit: int) -> str:
    while _excel_len(text) > limit:
        text = text[:-1]
    return text


class SheetNames:
    """Excel sheet names: at most 31 characters, none of `[]:*?/\\`, not starting or ending
    with `'`, not `History`, unique ignoring case."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    @staticmethod
    def clean(name: str) -> str:
        name = _CONTROL.sub("", _SHEET_BAD.sub("_", str(name))).strip().strip("'")
        name = _fit(name, MAX_SHEET_NAME) or "Sheet"
        if name.casefold() == "history":
            name = "History_"
        return name

    def take(self, wanted: str) -> str:
        """`wanted` (already clean) or, when taken, `wanted (2)`, `wanted (3)`, ..."""
        name, n = wanted, 1
        while name.casefold() in self._used:
            n += 1
            suffix = f" ({n})"
            name = _fit(wanted, MAX_SHEET_NAME - len(suffix)) + suffix
        self._used.add(name.casefold())
        return name

    def rollover(self, base: str, part: int) -> str:
        suffix = f"_{part}"
        return self.take(_fit(base, MAX_SHEET_NAME - len(suffix)) + suffix)


# --------------------------------------------------------------------------- text


def xml_text(value: str) -> str:
    """Python twin of `_text_expr`, for header cells and attributes."""
    value = _ILLEGAL_XML_RE.sub("", value[:MAX_CELL_CHARS])
    value = _EXCEL_ESCAPE_RE.sub(r"_x005F_\1", value)
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def xml_attr(value: str) -> str:
    """Attribute text (sheet names): XML escapes only; Excel reads `_xHHHH_` literally here."""
    value = _ILLEGAL_XML_RE.sub("", value)
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _text_expr(expr: pl.Expr) -> pl.Expr:
    expr = expr.str.slice(0, MAX_CELL_CHARS).str.replace_many(_TEXT_PATTERNS, _TEXT_REPLACEMENTS)
    return expr.str.replace_all(_EXCEL_ESCAPE, "_x005F_$1")


# --------------------------------------------------------------------------- cells


@dataclass
class _Column:
    letter: str
    header: str
    width: float
    cell: pl.Expr | None  # XML of one cell, null where the cell is skipped


def _num(letter: str, row: pl.Expr, value: pl.Expr, style: int = 0) -> pl.Expr:
    s = f' s="{style}"' if style else ""
    return pl.concat_str([pl.lit(f'<c r="{letter}'), row, pl.lit(f'"{s}><v>'), value, pl.lit("</v></c>")])


def _str(letter: str, row: pl.Expr, text: pl.Expr) -> pl.Expr:
    return pl.concat_str(
        [
            pl.lit(f'<c r="{letter}'),
            row,
            pl.lit('" t="inlineStr"><is><t xml:space="preserve">'),
            _text_expr(text),
            pl.lit("</t></is></c>"),
        ]
    )


def _cell(col: pl.Expr, dtype: pl.DataType, letter: str, row: pl.Expr) -> pl.Expr | None:
    if dtype == pl.Null:
        return None
    if dtype == pl.Boolean:
        return pl.concat_str(
            [
                pl.lit(f'<c r="{letter}'),
                row,
                pl.lit('" t="b"><v>'),
                col.cast(pl.UInt8).cast(pl.String),
                pl.lit("</v></c>"),
            ]
        )
    if dtype.is_integer() or isinstance(dtype, pl.Decimal):
        return _num(letter, row, col.cast(pl.String))
    if dtype.is_float():
        return (
            pl.when(col.is_finite())
            .then(_num(letter, row, col.cast(pl.String)))
            .when(col.is_not_null())
            .then(_str(letter, row, col.cast(pl.String)))
        )
    if dtype == pl.Date:
        days = col.cast(pl.Int32)
        serial = days + _EXCEL_EPOCH_DAYS
        ok = (days >= _DAYS_1900_03_01) & (days < _DAYS_10000_01_01)
        return (
            pl.when(ok)
            .then(_num(letter, row, serial.cast(pl.String), STYLE_DATE))
            .when(col.is_not_null())
            .then(_str(letter, row, col.cast(pl.String)))
        )
    if isinstance(dtype, pl.Datetime):
        iso = encode.datetime_iso(col, dtype, fixed_fraction=False)
        wall = col.dt.replace_time_zone(None) if dtype.time_zone is not None else col
        us = wall.dt.epoch("us")
        days = us.floordiv(_US_PER_DAY)
        serial = us.cast(pl.Float64) / _US_PER_DAY + _EXCEL_EPOCH_DAYS
        ok = (days >= _DAYS_1900_03_01) & (days < _DAYS_10000_01_01)
        return (
            pl.when(ok)
            .then(_num(letter, row, serial.cast(pl.String), STYLE_DATETIME))
            .when(col.is_not_null())
            .then(_str(letter, row, iso))
        )
    if dtype == pl.Time:
        fraction = col.cast(pl.Int64).cast(pl.Float64) / _NS_PER_DAY
        return _num(letter, row, fraction.cast(pl.String), STYLE_TIME)
    if isinstance(dtype, pl.Duration):
        days = col.dt.total_microseconds().cast(pl.Float64) / _US_PER_DAY
        return _num(letter, row, days.cast(pl.String), STYLE_DURATION)
    if encode.is_nested(dtype):
        return _str(letter, row, encode.json_text(col, dtype))
    if dtype == pl.Binary:
        return _str(letter, row, col.bin.encode("base64"))
    return _str(letter, row, col.cast(pl.String))


def _width(name: str, dtype: pl.DataType) -> float:
    if isinstance(dtype, pl.Datetime):
        natural = 19.0
    elif isinstance(dtype, pl.Duration):
        natural = 12.0
    elif isinstance(dtype, pl.Date):
        natural = 11.0
    elif isinstance(dtype, pl.Time):
        natural = 10.0
    else:
        natural = 0.0
    return round(min(max(natural, 0.8 * _excel_len(name) + 3, 8.43), 60.0), 2)


def _columns(schema: pl.Schema, row: pl.Expr) -> list[_Column]:
    if len(schema) > MAX_COLUMNS:
        raise ValueError(f"XLSX holds at most {MAX_COLUMNS} columns, the table has {len(schema)}")
    out = []
    for i, (name, dtype) in enumerate(schema.items()):
        letter = column_letter(i)
        out.append(_Column(letter, name, _width(name, dtype), _cell(pl.nth(i), dtype, letter, row)))
    return out


def _joined(series: pl.Series) -> memoryview:
    """The concatenation of a string Series (no nulls), taken from its Arrow data buffer."""
    arr = series.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != pa.large_string():
        arr = arr.cast(pa.large_string())
    if len(arr) == 0:
        return memoryview(b"")
    _, offsets_buf, data_buf = arr.buffers()
    offsets = memoryview(offsets_buf).cast("q")
    start, end = offsets[arr.offset], offsets[arr.offset + len(arr)]
    return memoryview(data_buf)[start:end]


# --------------------------------------------------------------------------- sheets

_DIM_SLOT = 40  # room for `<dimension ref="A1:XFD1048576"/>` plus padding


@dataclass
class _Sheet:
    name: str
    path: Path
    rows: int = 0


class _SheetWriter:
    def __init__(self, name: str, path: Path, columns: list[_Column], rowcol: str, selected: bool):
        self.sheet = _Sheet(name, path)
        self.columns = columns
        self.rowcol = rowcol
        cells = [c.cell for c in columns if c.cell is not None]
        self.row_expr = pl.concat_str(
            [pl.lit('<row r="'), pl.col(rowcol), pl.lit('">'), *cells, pl.lit("</row>")], ignore_nulls=True
        ).alias(rowcol)
        fh = open(path, "wb", buffering=1 << 20)
        self._fh = fh
        fh.write(f'{XML_DECL}<worksheet xmlns="{NS_MAIN}" xmlns:r="{NS_REL}">'.encode())
        self._dim_at = fh.tell()
        fh.write(b" " * _DIM_SLOT)
        tab = ' tabSelected="1"' if selected else ""
        head = [f'<sheetViews><sheetView workbookViewId="0"{tab}>']
        if columns:
            head.append(
                '<pane ySplit="1" topLeftCell="A2" activePane="bottomLeft" '
                'state="frozen"/><selection pane="bottomLeft"/>'
            )
        head.append('</sheetView></sheetViews><sheetFormatPr defaultRowHeight="15"/>')
        if columns:
            head.append("<cols>")
            head.extend(
                f'<col min="{i}" max="{i}" width="{c.width}" customWidth="1"/>' for i, c in enumerate(columns, 1)
            )
            head.append("</cols>")
        head.append("<sheetData>")
        if columns:
            head.append('<row r="1">')
            head.extend(
                f'<c r="{c.letter}1" t="inlineStr" s="{STYLE_HEADER}"><is>'
                f'<t xml:space="preserve">{xml_text(c.header)}</t></is></c>'
                for c in columns
            )
            head.append("</row>")
        fh.write("".join(head).encode())

    def write(self, batch: pl.DataFrame) -> None:
        first = self.sheet.rows + 2
        numbered = batch.with_columns(
            pl.int_range(first, first + batch.height, dtype=pl.Int64).cast(pl.String).alias(self.rowcol)
        )
        xml = numbered.select(self.row_expr).to_series()
        self._fh.write(_joined(xml))
        self.sheet.rows += batch.height

    def close(self) -> _Sheet:
        fh = self._fh
        fh.write(b"</sheetData></worksheet>")
        last_col = self.columns[-1].letter if self.columns else "A"
        ref = f"A1:{last_col}{self.sheet.rows + 1}" if self.columns else "A1"
        fh.seek(self._dim_at)
        fh.write(f'<dimension ref="{ref}"/>'.ljust(_DIM_SLOT).encode())
        fh.close()
        return self.sheet

    def abort(self) -> None:
        self._fh.close()


def _batch_rows(ncols: int) -> int:
    return max(MIN_BATCH_ROWS, min(MAX_BATCH_ROWS, BATCH_BYTES // (48 * max(ncols, 1))))


def _write_table(
    frame: pl.LazyFrame, base: str, names: SheetNames, temps: TempFiles, first_sheet_no: int
) -> list[_Sheet]:
    schema = frame.collect_schema()
    rowcol = "__pageferry_row__"
    while rowcol in schema:
        rowcol += "_"
    columns = _columns(schema, pl.col(rowcol))
    sheets: list[_Sheet] = []
    writer: _SheetWriter | None = None

    def open_sheet() -> _SheetWriter:
        no = first_sheet_no + len(sheets)
        name = base if not sheets else names.rollover(base, len(sheets) + 1)
        path = temps.new(f"sheet{no}.xml")
        w = _SheetWriter(name, path, columns, rowcol, selected=(no == 1))
        sheets.append(w.sheet)
        return w

    try:
        for batch in frame.collect_batches(chunk_size=_batch_rows(len(schema))):
            pos = 0
            while pos < batch.height:
                if writer is None or writer.sheet.rows >= ROWS_PER_SHEET:
                    if writer is not None:
                        writer.close()
                    writer = open_sheet()
                take = min(batch.height - pos, ROWS_PER_SHEET - writer.sheet.rows)
                writer.write(batch.slice(pos, take) if (pos or take < batch.height) else batch)
                pos += take
        if writer is None:
            writer = open_sheet()  # header-only sheet for an empty table
        writer.close()
        writer = None
    finally:
        if writer is not None:
            writer.abort()
    return sheets


# --------------------------------------------------------------------------- package

_STYLES = (
    f'{XML_DECL}<styleSheet xmlns="{NS_MAIN}">'
    '<numFmts count="4">'
    '<numFmt numFmtId="164" formatCode="yyyy\\-mm\\-dd"/>'
    '<numFmt numFmtId="165" formatCode="yyyy\\-mm\\-dd\\ hh:mm:ss"/>'
    '<numFmt numFmtId="166" formatCode="hh:mm:ss"/>'
    '<numFmt numFmtId="167" formatCode="[h]:mm:ss"/>'
    "</numFmts>"
    '<fonts count="2">'
    '<font><sz val="11"/><color theme="1"/><name val="Calibri"/><family val="2"/><scheme val="minor"/></font>'
    '<font><b/><sz val="11"/><color theme="1"/><name val="Calibri"/><family val="2"/><scheme val="minor"/></font>'
    "</fonts>"
    '<fills count="2"><fill><patternFill patternType="none"/></fill>'
    '<fill><patternFill patternType="gray125"/></fill></fills>'
    '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
    '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
    '<cellXfs count="6">'
    '<xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
    '<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1"/>'
    '<xf numFmtId="164" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
    '<xf numFmtId="165" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
    '<xf numFmtId="166" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
    '<xf numFmtId="167" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
    "</cellXfs>"
    '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
    "</styleSheet>"
)

_ROOT_RELS = (
    f'{XML_DECL}<Relationships xmlns="{NS_PKG_REL}">'
    '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
    'relationships/officeDocument" Target="xl/workbook.xml"/>'
    '<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/package/2006/'
    'relationships/metadata/core-properties" Target="docProps/core.xml"/>'
    '<Relationship Id="rId3" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
    'relationships/extended-properties" Target="docProps/app.xml"/>'
    "</Relationships>"
)

_CORE = (
    f'{XML_DECL}<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/'
    'metadata/core-properties" xmlns:dc="http://purl.org/dc/elements/1.1/" '
    'xmlns:dcterms="http://purl.org/dc/terms/" xmlns:dcmitype="http://purl.org/dc/dcmitype/" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><dc:creator>pageferry</dc:creator>'
    "</cp:coreProperties>"
)

_APP = (
    f'{XML_DECL}<Properties xmlns="http://schemas.openxmlformats.org/officeDocument/2006/'
    'extended-properties"><Application>pageferry</Application></Properties>'
)


def _content_types(n_sheets: int) -> str:
    sheet_ct = "application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"
    parts = [
        f'{XML_DECL}<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">',
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>',
        '<Default Extension="xml" ContentType="application/xml"/>',
        '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-'
        'officedocument.spreadsheetml.sheet.main+xml"/>',
        '<Override PartName="/xl/styles.xml" ContentType="application/vnd.openxmlformats-'
        'officedocument.spreadsheetml.styles+xml"/>',
        '<Override PartName="/docProps/core.xml" ContentType="application/vnd.openxmlformats-'
        'package.core-properties+xml"/>',
        '<Override PartName="/docProps/app.xml" ContentType="application/vnd.openxmlformats-'
        'officedocument.extended-properties+xml"/>',
    ]
    parts += [
        f'<Override PartName="/xl/worksheets/sheet{i}.xml" ContentType="{sheet_ct}"/>' for i in range(1, n_sheets + 1)
    ]
    parts.append("</Types>")
    return "".join(parts)


def _workbook(names: list[str]) -> str:
    sheets = "".join(f'<sheet name="{xml_attr(n)}" sheetId="{i}" r:id="rId{i}"/>' for i, n in enumerate(names, 1))
    return (
        f'{XML_DECL}<workbook xmlns="{NS_MAIN}" xmlns:r="{NS_REL}">'
        f'<bookViews><workbookView activeTab="0"/></bookViews>'
        f"<sheets>{sheets}</sheets></workbook>"
    )


def _workbook_rels(n_sheets: int) -> str:
    rels = [
        f'<Relationship Id="rId{i}" Type="{NS_REL}/worksheet" Target="worksheets/sheet{i}.xml"/>'
        for i in range(1, n_sheets + 1)
    ]
    rels.append(f'<Relationship Id="rId{n_sheets + 1}" Type="{NS_REL}/styles" Target="styles.xml"/>')
    return f'{XML_DECL}<Relationships xmlns="{NS_PKG_REL}">{"".join(rels)}</Relationships>'


def write_xlsx(tables: list[tuple[str, pl.LazyFrame]], path: Path, temps: TempFiles) -> list[int]:
    """Write one sheet (or more, past ROWS_PER_SHEET) per table into `path`.
    Returns the data rows written per table, in order. Each sheet's XML goes to a file beside
    the output first; the sheets are then deflated into the package.

    Cells:
    - strings: inline strings (`t="inlineStr"`, `xml:space="preserve"`), never formulas, URLs or
      numbers; `& < >` escaped, `\r` as `&#13;`, characters XML 1.0 forbids removed, Excel's own
      `_xHHHH_` escape neutralised (`_x005F_`), cut at 32,767 characters (Excel's cell limit);
    - integers, floats, decimals: `<v>`; NaN and ±inf (which Excel cannot hold) as the text
      `NaN`, `inf`, `-inf`;
    - booleans `t="b"`; dates, datetimes, times, durations: serial numbers with a number format
      (tz-aware datetimes as wall-clock time in their zone). Dates before 1900-03-01 are ISO
      text: Excel's phantom 1900-02-29 makes earlier serials mean different days in Excel and
      LibreOffice, and before 1900 there are none; so are dates after 9999-12-31;
    - lists/structs: compact JSON text; binary: base64 text; nulls: no cell at all.
    Sheets hold at most `ROWS_PER_SHEET` data rows under a header row; the rest continues on
    `{sheet}_2`, `{sheet}_3`, ... each with the header again.
    """
    names = SheetNames()
    bases = [names.take(SheetNames.clean(name)) for name, _ in tables]
    sheets: list[_Sheet] = []
    rows: list[int] = []
    try:
        for (_, frame), base in zip(tables, bases):
            table_sheets = _write_table(frame, base, names, temps, len(sheets) + 1)
            sheets += table_sheets
            rows.append(sum(s.rows for s in table_sheets))
        deflated = dict(compress_type=zipfile.ZIP_DEFLATED, level=6)
        with zipfile.ZipFile(path, "w", allowZip64=True) as zf:
            ziparchive.add_bytes(zf, _content_types(len(sheets)).encode(), "[Content_Types].xml", **deflated)
            ziparchive.add_bytes(zf, _ROOT_RELS.encode(), "_rels/.rels", **deflated)
            ziparchive.add_bytes(zf, _CORE.encode(), "docProps/core.xml", **deflated)
            ziparchive.add_bytes(zf, _APP.encode(), "docProps/app.xml", **deflated)
            ziparchive.add_bytes(zf, _workbook([s.name for s in sheets]).encode(), "xl/workbook.xml", **deflated)
            ziparchive.add_bytes(zf, _workbook_rels(len(sheets)).encode(), "xl/_rels/workbook.xml.rels", **deflated)
            ziparchive.add_bytes(zf, _STYLES.encode(), "xl/styles.xml", **deflated)
            for i, sheet in enumerate(sheets, 1):
                ziparchive.add_file(
                    zf,
                    sheet.path,
                    f"xl/worksheets/sheet{i}.xml",
                    compress_type=zipfile.ZIP_DEFLATED,
                    level=COMPRESSLEVEL,
                )
                temps.discard(sheet.path)
    finally:
        for sheet in sheets:
            temps.discard(sheet.path)
    return rows
