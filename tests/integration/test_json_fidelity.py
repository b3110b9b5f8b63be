"""JSON records keep their values through the engine's native read of a shard's pages
(engine/fetch/records.py `packed_to_table`): time-like strings stay the text they are, an integer
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
