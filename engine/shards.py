"""Arrow IPC shards: the fetched pages on disk, and the ledger of what has been fetched.

A shard holds a contiguous run of pages of one source - pages first..last of one unit, or
(for `pagination: none`) page 1 of consecutive units. Its file name gives its place in the
source's row order, so sorting the names sorts the rows; its schema metadata says what it
covers (pages, skipped pages, the next cursor of a sequential run, totals). A shard is
written to a temporary name and renamed when complete, so a finished shard is exactly a
file with the final name: the directory listing *is* the ledger that `--resume` and crash
recovery read.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

# pyarrow is imported where it is used: the coordinator imports this module for `ShardInfo`
# and the ledger, and only pool processes (which have pyarrow preloaded) read or write shards.

META_KEY = b"pageferry"
NAME = re.compile(r"^s(\d{3})_u(\d{7})_p(\d{7})_u(\d{7})_p(\d{7})\.arrow$")
TEMP_PREFIX = ".tmp-"


@dataclass
class ShardInfo:
    """What one finished shard covers (the ledger entry)."""
    source: int
    first: tuple[int, int]   # (unit, page) of its first page
    last: tuple[int, int]    # (unit, page) of its last page
    path: Path | None = None
    pages: int = 0           # pages fetched into it (skipped pages not counted)
    records: int = 0
    skipped: list[dict] = field(default_factory=list)   # [{"unit", "page", "url", "status", "error"}]
    ends: dict[int, int] = field(default_factory=dict)  # unit -> its last page, when this shard holds it
    totals: dict[int, int] = field(default_factory=dict)  # unit -> pages_total learned from page 1
    sizes: dict[int, int] = field(default_factory=dict)   # unit -> page size learned from page 1
    next_tokens: dict[int, str] = field(default_factory=dict)  # unit -> token after `last` (sequential)

    def metadata(self) -> dict:
        return {"source": self.source, "first": list(self.first), "last": list(self.last),
                "pages": self.pages, "records": self.records, "skipped": self.skipped,
                "ends": self.ends, "totals": self.totals, "sizes": self.sizes, "next_tokens": self.next_tokens}

    @classmethod
    def from_metadata(cls, meta: dict, path: Path) -> "ShardInfo":
        ints = lambda d: {int(k): v for k, v in (d or {}).items()}
        return cls(source=meta["source"], first=tuple(meta["first"]), last=tuple(meta["last"]), path=path,
                   pages=meta.get("pages", 0), records=meta.get("records", 0), skipped=meta.get("skipped", []),
                   ends=ints(meta.get("ends")), totals=ints(meta.get("totals")), sizes=ints(meta.get("sizes")),
                   next_tokens=ints(meta.get("next_tokens")))


def shard_name(source: int, first: tuple[int, int], last: tuple[int, int]) -> str:
    return f"s{source:03d}_u{first[0]:07d}_p{first[1]:07d}_u{last[0]:07d}_p{last[1]:07d}.arrow"


def write_shard(directory: Path, table, info: ShardInfo) -> Path:
    """Write atomically: a temp name inside `with ipc.new_file` (the footer is written on
    close), fsync, then rename to the final name."""
    import pyarrow as pa
    import pyarrow.ipc as ipc
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / shard_name(info.source, info.first, info.last)
    temp = directory / f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}.arrow"
    # One record batch per shard, not one per page: a shard of 250 pages is written ~2x faster
    # and read back by the reducer ~2x faster (measured: 200k rows in 8 shards, 0.42 -> 0.20 s
    # to write, 0.28 -> 0.15 s to export to Parquet) for one copy of the shard's data.
    table = table.combine_chunks()
    schema = table.schema.with_metadata({META_KEY: json.dumps(info.metadata()).encode()})
    try:
        with pa.OSFile(str(temp), "wb") as sink:
            with ipc.new_file(sink, schema) as writer:
                writer.write_table(table.replace_schema_metadata(schema.metadata))
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    info.path = final
    return final


def read_info(path: Path) -> ShardInfo:
    import pyarrow.ipc as ipc
    with ipc.open_file(str(path)) as reader:
        metadata = reader.schema.metadata or {}
    if META_KEY not in metadata:
        raise ValueError(f"{path.name} is not a pageferry shard")
    return ShardInfo.from_metadata(json.loads(metadata[META_KEY]), path)


def list_shards(directory: Path, source: int | None = None,
                known: Mapping[str, ShardInfo] | None = None) -> list[ShardInfo]:
    """Every finished shard (of one source), in row order. Unreadable files are ignored: only
    a complete, renamed shard counts as fetched. `known`: infos already at hand by file name
    (what the pieces reported), taken as they are instead of reading those files again."""
    if not directory.exists():
        return []
    infos = []
    for entry in sorted(os.listdir(directory)):
        match = NAME.match(entry)
        if not match or (source is not None and int(match.group(1)) != source):
            continue
        if known is not None and entry in known:
            infos.append(known[entry])
            continue
        import pyarrow as pa
        try:
            infos.append(read_info(directory / entry))
        except (OSError, pa.ArrowInvalid, KeyError, TypeError, ValueError):
            continue
    return infos


def remove_temp_files(directory: Path) -> int:
    """Temp shards of processes that died mid-write."""
    removed = 0
    if directory.exists():
        for entry in os.listdir(directory):
            if entry.startswith(TEMP_PREFIX):
                (directory / entry).unlink(missing_ok=True)
                removed += 1
    return removed


def unify(tables: list):
    """Concatenate pages whose schemas drifted: missing columns become null, null-typed columns
    take the other pages' type, int and float become float; types that cannot meet become text."""
    import pyarrow as pa
    tables = [t for t in tables if t.num_columns or t.num_rows]
    if not tables:
        return pa.table({})
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    types: dict[str, set] = {}
    for table in tables:
        for f in table.schema:
            types.setdefault(f.name, set()).add(f.type)
    conflicting = {name for name, found in types.items() if len({t for t in found if t != pa.null()}) > 1}
    fixed = []
    for table in tables:
        for name in conflicting & set(table.column_names):
            index = table.column_names.index(name)
            table = table.set_column(index, name, _as_text(table.column(name)))
        fixed.append(table)
    return pa.concat_tables(fixed, promote_options="permissive")


def _as_text(column):
    import pyarrow as pa

    from engine.fetch.records import _as_text as text_of
    if pa.types.is_string(column.type):
        return column.combine_chunks()
    if pa.types.is_null(column.type):
        return pa.nulls(len(column), pa.string())
    return pa.array([text_of(v) for v in column.to_pylist()], type=pa.string())
