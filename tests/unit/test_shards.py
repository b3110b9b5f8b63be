"""engine/shards.py: atomic Arrow IPC shards, the ledger read back from the directory, and
schema unification of drifting pages."""

from __future__ import annotations

import hashlib
import os
import random

import pyarrow as pa
import pytest

from engine import shards
from engine.shards import (
    TEMP_PREFIX,
    ShardInfo,
    checksum_path,
    list_shards,
    read_info,
    remove_temp_files,
    shard_name,
    unify,
    verify,
    write_shard,
)


def table(n: int = 3, start: int = 0) -> pa.Table:
    return pa.table({"id": list(range(start, start + n)), "name": [f"n{i}" for i in range(start, start + n)]})


def info(source=0, first=(0, 1), last=(0, 1), **kw) -> ShardInfo:
    return ShardInfo(source=source, first=first, last=last, **kw)


# ------------------------------------------------------------------ write / read


def test_write_shard_name_content_and_no_temp_left(tmp_path):
    directory = tmp_path / "shards"  # created on demand
    path = write_shard(directory, table(), info(2, (3, 1), (3, 7)))
    assert path == directory / "s002_u0000003_p0000001_u0000003_p0000007.arrow"
    assert path.name == shard_name(2, (3, 1), (3, 7))
    assert sorted(os.listdir(directory)) == [path.name, path.name + ".sha256"]  # no temp file left behind
    with pa.memory_map(str(path)) as source:
        back = pa.ipc.open_file(source).read_all()
    assert back.select(["id", "name"]).to_pylist() == table().to_pylist()


def test_write_shard_sets_info_path(tmp_path):
    item = info()
    path = write_shard(tmp_path, table(), item)
    assert item.path == path


def test_metadata_round_trip(tmp_path):
    original = info(
        1,
        (4, 2),
        (5, 3),
        pages=6,
        records=600,
        skipped=[{"unit": 4, "page": 5, "url": "https://a.example.com/x?page=5", "status": 503, "error": "HTTP 503"}],
        ends={5: 3},
        totals={4: 9, 5: 3},
        sizes={4: 100},
        next_tokens={5: "cursor-abc"},
    )
    path = write_shard(tmp_path, table(), original)
    back = read_info(path)
    assert back == ShardInfo(
        source=1,
        first=(4, 2),
        last=(5, 3),
        path=path,
        pages=6,
        records=600,
        skipped=original.skipped,
        ends={5: 3},
        totals={4: 9, 5: 3},
        sizes={4: 100},
        next_tokens={5: "cursor-abc"},
    )
    assert all(isinstance(k, int) for k in back.ends)  # JSON keys come back as ints


def test_write_shard_replaces_an_existing_shard(tmp_path):
    write_shard(tmp_path, table(1), info(records=1))
    path = write_shard(tmp_path, table(5), info(records=5))
    assert read_info(path).records == 5
    assert len(os.listdir(tmp_path)) == 2  # the shard and its checksum
    assert [i.records for i in list_shards(tmp_path)] == [5]


def test_failed_write_leaves_neither_temp_nor_final_file(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(shards.os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_shard(tmp_path, table(), info())
    assert os.listdir(tmp_path) == []


def test_list_shards_in_row_order(tmp_path):
    spans = [
        (0, (0, 1), (0, 4)),
        (0, (0, 5), (0, 12)),
        (0, (1, 1), (1, 1)),
        (0, (2, 1), (10, 1)),
        (0, (12, 1), (12, 3)),
        (1, (0, 1), (0, 2)),
        (3, (0, 1), (0, 1)),
    ]
    shuffled = spans[:]
    random.Random(3).shuffle(shuffled)
    for source, first, last in shuffled:
        write_shard(tmp_path, table(1), info(source, first, last))
    got = [(i.source, i.first, i.last) for i in list_shards(tmp_path)]
    assert got == spans
    assert [(i.first, i.last) for i in list_shards(tmp_path, source=0)] == [
        (first, last) for s, first, last in spans if s == 0
    ]
    assert [i.source for i in list_shards(tmp_path, source=3)] == [3]
    assert list_shards(tmp_path, source=2) == []
    assert all(i.path is not None and i.path.exists() for i in list_shards(tmp_path))


def test_list_shards_of_a_missing_directory(tmp_path):
    assert list_shards(tmp_path / "nope") == []


def test_list_shards_ignores_truncated_and_garbage_files(tmp_path):
    good = write_shard(tmp_path, table(), info(0, (0, 1), (0, 1)))
    truncated = write_shard(tmp_path, table(100), info(0, (0, 2), (0, 2)))
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    (tmp_path / shard_name(0, (0, 3), (0, 3))).write_bytes(b"this is not arrow at all")
    (tmp_path / shard_name(0, (0, 4), (0, 4))).write_bytes(b"")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / f"{TEMP_PREFIX}123-abc.arrow").write_bytes(data)  # an unfinished write
    assert [i.path for i in list_shards(tmp_path)] == [good]


def test_list_shards_ignores_an_arrow_file_that_is_not_a_shard(tmp_path):
    """A readable Arrow file under a shard name but without pageferry's metadata is not a
    finished shard either: it must be ignored, not crash the ledger read (resume)."""
    good = write_shard(tmp_path, table(), info(0, (0, 1), (0, 1)))
    foreign = tmp_path / shard_name(0, (0, 2), (0, 2))
    with pa.OSFile(str(foreign), "wb") as sink:
        with pa.ipc.new_file(sink, table().schema) as writer:
            writer.write_table(table())
    assert [i.path for i in list_shards(tmp_path)] == [good]


def test_remove_temp_files(tmp_path):
    assert remove_temp_files(tmp_path / "missing") == 0
    keep = write_shard(tmp_path, table(), info())
    for name in (f"{TEMP_PREFIX}1-aaaa.arrow", f"{TEMP_PREFIX}2-bbbb.arrow"):
        (tmp_path / name).write_bytes(b"partial")
    (tmp_path / "other.txt").write_text("x")
    assert remove_temp_files(tmp_path) == 2
    assert sorted(os.listdir(tmp_path)) == sorted([keep.name, keep.name + ".sha256", "other.txt"])
    assert remove_temp_files(tmp_path) == 0


# ------------------------------------------------------------------ checksums


def test_write_shard_records_the_sha256_of_the_bytes_written(tmp_path):
    path = write_shard(tmp_path, table(50), info())
    assert checksum_path(path).read_text() == hashlib.sha256(path.read_bytes()).hexdigest()
    assert verify(path) is None


def _change_one_value(path, row: int, new: int) -> None:
    """Rewrite one int64 of the `id` column in place: same size, intact footer and metadata."""
    whole = pa.py_buffer(path.read_bytes())
    ids = pa.ipc.open_file(whole).read_all().column("id").chunk(0)  # zero-copy into `whole`
    at = ids.buffers()[1].address - whole.address + 8 * (ids.offset + row)
    data = bytearray(whole.to_pybytes())
    data[at : at + 8] = new.to_bytes(8, "little", signed=True)
    path.write_bytes(bytes(data))


def test_list_shards_drops_a_shard_whose_value_changed_and_names_it(tmp_path, caplog):
    good = write_shard(tmp_path, table(3, start=100), info(0, (0, 1), (0, 1)))
    changed = write_shard(tmp_path, table(10, start=0), info(0, (0, 2), (0, 2)))
    _change_one_value(changed, 4, 999999)
    with pa.memory_map(str(changed)) as source:  # still readable: only the checksum tells
        assert pa.ipc.open_file(source).read_all().column("id").to_pylist()[3:6] == [3, 999999, 5]
    with caplog.at_level("WARNING", logger="pageferry.shards"):
        assert [i.path for i in list_shards(tmp_path)] == [good]
    assert changed.name in caplog.text
    assert not changed.exists() and not checksum_path(changed).exists()  # deleted: fetched again
    assert [i.path for i in list_shards(tmp_path)] == [good]


def test_list_shards_drops_a_garbled_body_with_an_intact_footer(tmp_path, caplog):
    shard = write_shard(tmp_path, table(200), info(0, (0, 1), (0, 1)))
    data = bytearray(shard.read_bytes())
    for at in range(64, len(data) // 2):
        data[at] ^= 0x5A
    shard.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="pageferry.shards"):
        assert list_shards(tmp_path) == []
    assert shard.name in caplog.text and not shard.exists()


def test_list_shards_drops_a_truncated_shard_and_one_without_checksum(tmp_path):
    truncated = write_shard(tmp_path, table(100), info(0, (0, 1), (0, 1)))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    unchecked = write_shard(tmp_path, table(), info(0, (0, 2), (0, 2)))
    checksum_path(unchecked).unlink()
    assert list_shards(tmp_path) == []
    assert not truncated.exists() and not unchecked.exists()


def test_known_shards_are_not_read_again(tmp_path):
    shard = write_shard(tmp_path, table(), item := info())
    checksum_path(shard).write_text("0" * 64)  # would be dropped if it were verified
    assert list_shards(tmp_path, known={shard.name: item}) == [item]
    assert shard.exists()


# ------------------------------------------------------------------ unify


def test_unify_missing_columns_become_null():
    out = unify([pa.table({"a": [1], "b": ["x"]}), pa.table({"b": ["y"], "c": [1.5]})])
    assert out.column_names == ["a", "b", "c"]
    assert out.to_pylist() == [{"a": 1, "b": "x", "c": None}, {"a": None, "b": "y", "c": 1.5}]


def test_unify_null_column_takes_the_other_type():
    out = unify([pa.table({"a": pa.nulls(2)}), pa.table({"a": [5]})])
    assert out.schema.field("a").type == pa.int64()
    assert out.column("a").to_pylist() == [None, None, 5]


def test_unify_int_and_float_become_float():
    out = unify([pa.table({"a": [1, 2]}), pa.table({"a": [2.5]})])
    assert out.schema.field("a").type == pa.float64()
    assert out.column("a").to_pylist() == [1.0, 2.0, 2.5]


def test_unify_int_beyond_a_double_and_float_become_text():
    # pyarrow's promotion refuses an integer a double cannot hold: the conflicting path takes it
    out = unify([pa.table({"a": [9007199254740993, 1]}), pa.table({"a": [2.5]})])
    assert out.column("a").to_pylist() == ["9007199254740993", "1", "2.5"]  # not 9007199254740992.0
    negative = unify([pa.table({"a": [-(2**60)]}), pa.table({"a": [None, 0.5]})])
    assert negative.column("a").to_pylist() == [str(-(2**60)), None, "0.5"]


def test_unify_incompatible_types_become_text():
    out = unify(
        [pa.table({"a": [1], "b": [1]}), pa.table({"a": ["x"], "b": [2]}), pa.table({"a": pa.nulls(1), "b": [3]})]
    )
    assert out.schema.field("a").type == pa.string()
    assert out.column("a").to_pylist() == ["1", "x", None]
    assert out.schema.field("b").type == pa.int64()  # untouched
    lists = unify([pa.table({"a": [[1, 2]]}), pa.table({"a": ["s"]})])
    assert lists.column("a").to_pylist() == ["[1,2]", "s"]


def test_unify_empty_tables():
    assert unify([]).num_columns == 0
    assert unify([pa.table({}), pa.table({})]).num_columns == 0
    only = pa.table({"a": [3]})
    assert unify([pa.table({}), only, pa.table({})]).to_pylist() == [{"a": 3}]


def test_unify_keeps_row_order():
    parts = [table(3, 0), table(2, 3), table(4, 5)]
    assert unify(parts).column("id").to_pylist() == list(range(9))
