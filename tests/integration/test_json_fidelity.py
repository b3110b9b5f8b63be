"""JSON records keep their values through the engine's native read of a shard's pages
(engine/fetch/records.py `PackedReader`): time-like strings stay the text they are, an integer
a double cannot hold stays exact, and records that disagree on a type become text - as the
Python path has always made them."""

from __future__ import annotations

import pytest

from tests.support.readback import read_export
from tests.support.scripted_server import Reply, ScriptedServer

CASES = {
    "time-like strings": [
        [
            {"id": 1, "day": "2020-01-06", "at": "2020-01-06T10:00:00Z", "meta": {"seen": "2021-02-03 04:05:06"}},
            {"id": 2, "day": "2020-01-07", "at": "2020-01-07T11:30:00.250Z", "meta": {"seen": "10:00"}},
        ],
        [{"id": 3, "day": "2020-01-08", "at": "2020-01-08T00:00:00+02:00", "meta": {"seen": "2020-01-08"}}],
    ],
    "integers beyond a double": [
        [{"id": 1, "big": 9007199254740993, "mix": 2.5}, {"id": 2, "big": 9007199254740995, "mix": 9007199254740993}],
        [{"id": 3, "big": 18446744073709551615, "mix": 1}],
    ],
    "an integer beyond a double, then floats": [[{"id": 1, "v": 9007199254740993}], [{"id": 2, "v": 2.5}]],
    "types that disagree": [
        [{"id": 1, "code": "01067", "flag": 1}, {"id": 2, "code": 7, "flag": "yes"}],
        [{"id": 3, "code": None, "flag": True}],
    ],
}
EXPECTED = {
    "time-like strings": [
        {"id": "1", "day": "2020-01-06", "at": "2020-01-06T10:00:00Z", "meta.seen": "2021-02-03 04:05:06"},
        {"id": "2", "day": "2020-01-07", "at": "2020-01-07T11:30:00.250Z", "meta.seen": "10:00"},
        {"id": "3", "day": "2020-01-08", "at": "2020-01-08T00:00:00+02:00", "meta.seen": "2020-01-08"},
    ],
    "integers beyond a double": [
        {"id": "1", "big": "9007199254740993", "mix": "2.5"},
        {"id": "2", "big": "9007199254740995", "mix": "9007199254740993"},  # not 9007199254740992.0
        {"id": "3", "big": "18446744073709551615", "mix": "1"},
    ],
    "an integer beyond a double, then floats": [{"id": "1", "v": "9007199254740993"}, {"id": "2", "v": "2.5"}],
    "types that disagree": [
        {"id": "1", "code": "01067", "flag": "1"},
        {"id": "2", "code": "7", "flag": "yes"},
        {"id": "3", "code": "", "flag": "true"},
    ],
}


@pytest.fixture
def server(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    srv = ScriptedServer()
    yield srv
    srv.close()


@pytest.mark.parametrize("case", sorted(CASES))
def test_json_values_are_exported_as_the_api_wrote_them(server, run_job, tmp_path, case):
    pages = CASES[case]
    for number, records in enumerate(pages, start=1):
        following = server.url(f"/p{number + 1}") if number < len(pages) else None
        server.add("GET", f"/p{number}", Reply.json({"data": records, "next": following}))
    spec = {
        "name": "json-fidelity",
        "sources": [{"url": server.url("/p1"), "records": "data", "pagination": {"type": "next_url", "next": "next"}}],
        "export": {"format": "csv"},
    }
    result = run_job(spec, output=tmp_path / "out.csv")
    assert read_export(result.output, "csv") == EXPECTED[case]


def test_shards_with_an_integer_beyond_a_double_and_floats_become_text(tmp_path):
    """Across shards the reducer's relaxed concat would make int + float a float, rounding
    9007199254740993 to 9007199254740992.0: that column becomes text instead."""
    import pyarrow as pa

    from engine.export.reduce import scan_source
    from engine.shards import ShardInfo, write_shard

    first = write_shard(tmp_path, pa.table({"id": [1], "v": [9007199254740993]}), ShardInfo(0, (0, 1), (0, 1)))
    second = write_shard(tmp_path, pa.table({"id": [2], "v": [2.5]}), ShardInfo(0, (0, 2), (0, 2)))
    rows = scan_source([str(first), str(second)]).collect().to_dicts()
    assert rows == [{"id": 1, "v": "9007199254740993"}, {"id": 2, "v": "2.5"}]
    small = write_shard(tmp_path, pa.table({"id": [3], "v": [7]}), ShardInfo(0, (0, 3), (0, 3)))
    rows = scan_source([str(small), str(second)]).collect().to_dicts()
    assert rows == [{"id": 3, "v": 7.0}, {"id": 2, "v": 2.5}]  # exact as a float: promoted as before
