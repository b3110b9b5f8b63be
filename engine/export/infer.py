"""`csv.infer_types`: a CSV source's text columns become numbers only when every value in the
column prints back as exactly its text, in every export format. Integers: `0` or an optional
`-` and up to 15 digits without a leading zero (`5`, `-12`; not `007`, `+5`, ` 5`, `-0`).
Decimals: digits, a point and digits not ending in `0`, at most 15 digits, not below 0.001
(`1.5`, `-0.25`; not `1.50`, `1e3`, `.5`, `5.`). Booleans, dates and everything else stay text.
A column mixing integers and decimals stays text (`5` would print back as `5.0`).
"""

from __future__ import annotations

import polars as pl

INT_TEXT = r"^(?:0|-?[1-9][0-9]{0,14})$"
DECIMAL_TEXT = r"^-?(?:0|[1-9][0-9]*)\.[0-9]*[1-9]$"
TINY_DECIMAL = r"^-?0\.000"
MAX_DIGITS = 15


def _checks(index: int, name: str) -> list[pl.Expr]:
    col = pl.col(name)
    decimal = (
        col.str.contains(DECIMAL_TEXT)
        & ~col.str.contains(TINY_DECIMAL)
        & (col.str.count_matches(r"[0-9]") <= MAX_DIGITS)
    )
    return [
        col.is_not_null().any().alias(f"any{index}"),
        col.str.contains(INT_TEXT).all().alias(f"int{index}"),
        decimal.all().alias(f"dec{index}"),
    ]


def infer_types(frame: pl.LazyFrame) -> pl.LazyFrame:
    """`frame` with each text column that holds only integers (or only decimals) as Int64
    (Float64); one pass over the text columns decides."""
    names = [name for name, dtype in frame.collect_schema().items() if dtype == pl.String]
    if not names:
        return frame
    found = frame.select([e for i, name in enumerate(names) for e in _checks(i, name)]).collect().row(0, named=True)
    casts = []
    for i, name in enumerate(names):
        if not found[f"any{i}"]:
            continue
        if found[f"int{i}"]:
            casts.append(pl.col(name).cast(pl.Int64))
        elif found[f"dec{i}"]:
            casts.append(pl.col(name).cast(pl.Float64))
    return frame.with_columns(casts) if casts else frame
