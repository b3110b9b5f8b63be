"""Table targets (`duckdb`, `postgres`) as the coordinator sees them - light to import (stdlib
only): the coordinator never imports polars, pyarrow, duckdb or psycopg. The loading itself
(engine/deliver/tables.py) runs in the job's export process, right after the export; its
outcomes come back with the export and join the file deliveries in the spec's order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.fetch.outbound import OutboundPolicy
from engine.spec.models import TABLE_TARGET_TYPES


@dataclass
class TableJob:
    """What the export process needs to load the shaped rows into the table targets."""

    workdir: str  # the shaped rows go to <workdir>/tables/<source index>.parquet
    secrets: frozenset = frozenset()  # the job's redactor's secrets (outcomes are scrubbed)
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy)

    @property
    def tables_dir(self) -> Path:
        return Path(self.workdir) / "tables"


def is_table_target(target) -> bool:
    return getattr(target, "type", None) in TABLE_TARGET_TYPES


def table_job(spec, workdir: Path, secrets: Iterable[str], outbound: OutboundPolicy) -> TableJob | None:
    """The export request's table part, or None when the spec has no table target."""
    if not any(is_table_target(t) for t in spec.deliver):
        return None
    return TableJob(str(workdir), frozenset(secrets), outbound)


def in_spec_order(targets: Sequence, table_outcomes: Sequence[dict], file_outcomes: Sequence[dict]) -> list[dict]:
    """One outcome per target, in the order of `deliver`: table targets' outcomes (from the
    export process) and file targets' (deliver_all), each list in its own targets' order."""
    tables, files = iter(table_outcomes), iter(file_outcomes)
    merged = []
    for target in targets:
        outcome = next(tables if is_table_target(target) else files, None)
        if outcome is not None:
            merged.append(outcome)
    return merged
