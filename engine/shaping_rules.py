"""Checks on the shaping section that need no data (run by `parse_spec`, so `validate` and the
service's `start` reject them before anything is fetched). Pure Python: no Polars here."""
from __future__ import annotations

from engine.errors import FieldError


def check(spec) -> list[FieldError]:
    """Field errors in columns/filters/group_by/distinct/sort/limit that are knowable up front."""
    return []
