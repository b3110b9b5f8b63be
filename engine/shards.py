"""Arrow IPC shards: the fetched pages on disk, and the ledger of what has been fetched. A
shard is written under a temporary name and renamed when complete, so the directory listing
*is* the ledger that `--resume` and crash recovery read. Each shard has a SHA-256 sidecar
(`<name>.sha256`); reading the ledger drops a shard that does not match it, so its pages are
fetched again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# pyarrow is imported where it is used: the coordinator imports this module for `ShardInfo`
# and the ledger, and only pool processes (which have pyarrow preloaded) read or write shards.

META_KEY = b"pageferry"
NAME = re.compile(r"^s(\d{3})_u(\d{7})_p(\d{7})_u(\d{7})_p(\d{7})\.arrow\Z")
TEMP_PREFIX = ".tmp-"
CHECKSUM_SUFFIX = ".sha256"

log = logging.getLogger("pageferry.shards")


@dataclass
class ShardInfo:
    """What one finished shard covers (the ledger entry).

    A shard holds a contiguous run of pages of one source - pages first..last of one unit, or
    (for `pagination: none`) page 1 of consecutive units. Its file name gives its place in the
    source's row order, so sorting the names sorts the rows; its schema metadata says what it
    covers (pages, skipped pages, the next cursor of a sequential run, totals)."""

    source: int
    first: tuple[int, int]  # (unit, page) of its first page
    last: tuple[int, int]  # (unit, page) of its last page
    path: Path | None = None
    pages: int = 0  # pages fetched into it (skipped pages not counted)
    records: int = 0
    skipped: list[dict] = field(default_factory=list)  # [{"unit", "page", "url", "status", "error"}]
    rule_skipped: int = 0  # pages a `skip` response rule matched (no records, not failures)
    ends: dict[int, int] = field(default_factory=dict)  # unit -> its last page, when this shard holds it
    totals: dict[int, int] = field(default_factory=dict)  # unit -> pages_total learned from page 1
    sizes: dict[int, int] = field(default_factory=dict)  # unit -> page size learned from page 1
    next_tokens: dict[int, str] = field(default_factory=dict)  # unit -> token after `last` (sequential)
    # incremental sources: unit key -> the largest cursor in the shard; None: a page of the
    # unit was skipped (engine/run/incremental.py)
    cursors: dict[str, Any] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        """The shard's file name; known once it is written (or read back from disk)."""
        assert self.path is not None, "the shard has no file yet"
        return self.path.name

    def metadata(self) -> dict:
        return {
            "source": self.source,
            "first": list(self.first),
            "last": list(self.last),
            "pages": self.pages,
            "records": self.records,
            "skipped": self.skipped,
            "rule_skipped": self.rule_skipped,
            "ends": self.ends,
            "totals": self.totals,
            "sizes": self.sizes,
            "next_tokens": self.next_tokens,
            **({"cursors": self.cursors} if self.cursors else {}),  # only incremental runs pay for it
        }

    @classmethod
    def from_metadata(cls, meta: dict, path: Path) -> ShardInfo:
        def ints(d: dict | None) -> dict:
            return {int(k): v for k, v in (d or {}).items()}

        return cls(
            source=meta["source"],
            first=tuple(meta["first"]),
            last=tuple(meta["last"]),
            path=path,
            pages=meta.get("pages", 0),
            records=meta.get("records", 0),
            skipped=meta.get("skipped", []),
            rule_skipped=meta.get("rule_skipped", 0),
            ends=ints(meta.get("ends")),
            totals=ints(meta.get("totals")),
            sizes=ints(meta.get("sizes")),
            next_tokens=ints(meta.get("next_tokens")),
            cursors=dict(meta.get("cursors") or {}),
        )


def shard_name(source: int, first: tuple[int, int], last: tuple[int, int]) -> str:
    return f"s{source:03d}_u{first[0]:07d}_p{first[1]:07d}_u{last[0]:07d}_p{last[1]:07d}.arrow"


def checksum_path(path: Path) -> Path:
    """The shard's SHA-256 sidecar, `<name>.sha256` beside it."""
    return path.with_name(path.name + CHECKSUM_SUFFIX)


class _HashingFile:
    """A binary file that hashes what is written through it (no second read)."""

    closed = False

    def __init__(self, file):
        self.file, self.hash = file, hashlib.sha256()

    def write(self, data) -> int:
        self.hash.update(data)
        return self.file.write(data)

    def tell(self) -> int:
        return self.file.tell()

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        pass  # the underlying file is closed by its owner, after the fsync

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


def write_shard(directory: Path, table, info: ShardInfo) -> Path:
    """Write atomically: a temp name inside `with ipc.new_file` (the footer is written on
    close), fsync, the SHA-256 of the bytes written to the sidecar, then rename to the final
    name (so a finished shard always has its checksum)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    directory.mkdir(parents=True, exist_ok=True)
    final = directory / shard_name(info.source, info.first, info.last)
    temp = directory / f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}.arrow"
    # One record batch per shard, not one per page: faster to write and faster for the reducer
    # to read back (docs/performance.md), for one copy of the shard's data.
    table = table.combine_chunks()
    schema = table.schema.with_metadata({META_KEY: json.dumps(info.metadata()).encode()})
    try:
        with open(temp, "wb") as file:
            hashing = _HashingFile(file)
            with ipc.new_file(pa.PythonFile(hashing, mode="w"), schema) as writer:
                writer.write_table(table.replace_schema_metadata(schema.metadata))
            file.flush()
            os.fsync(file.fileno())
        checksum_path(final).write_text(hashing.hash.hexdigest())
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        if not final.exists():
            checksum_path(final).unlink(missing_ok=True)
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


def verify(path: Path) -> str | None:
    """Why the shard at `path` cannot be trusted (no checksum, or its bytes changed), or None."""
    try:
        expected = checksum_path(path).read_text().strip()
    except FileNotFoundError:
        return "it has no checksum"
    with open(path, "rb") as file:
        actual = hashlib.file_digest(file, "sha256").hexdigest()
    return None if actual == expected else "its content does not match its checksum"


def drop_shard(path: Path, why: str) -> None:
    """Delete a damaged or changed shard (its pages are fetched again), saying which."""
    log.warning("dropping shard %s: %s; its pages will be fetched again", path.name, why)
    path.unlink(missing_ok=True)
    checksum_path(path).unlink(missing_ok=True)


def list_shards(
    directory: Path, source: int | None = None, known: Mapping[str, ShardInfo] | None = None
) -> list[ShardInfo]:
    """Every finished shard (of one source), in row order. Only a complete, renamed shard counts
    as fetched; one whose checksum is missing or does not match is deleted (`drop_shard`), and
    other unreadable files are ignored. `known`: infos already at hand by file name (what the
    pieces reported), taken as they are instead of reading those files again."""
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

        path = directory / entry
        try:
            why = verify(path)
            if why is not None:
                drop_shard(path, why)
                continue
            infos.append(read_info(path))
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
