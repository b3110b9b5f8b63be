"""Incremental loading end to end: the real CLI (`python -m engine run ... --state`) against
the test API's changes-since endpoint (tests/testapi/incremental_api.py: 100 records, record
`i` updated at 2024-01-01 00:00Z + i minutes, owner `i % 3`, version `i`)."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from tests.conftest import write_spec

START = "2024-01-01T00:00:00Z"


def control(api, path: str, body: dict) -> dict:
    response = requests.post(api.base_url + path, json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def records(api) -> list[dict]:
    return requests.get(api.base_url + "/changes/_records", timeout=10).json()["data"]


def minute(m: int) -> str:
    """The test API's time of record `m` (before any touch)."""
    return f"2024-01-01T{m // 60:02d}:{m % 60:02d}:00Z"


def spec(api, name: str = "changes", size: int = 20, **incremental) -> dict:
    return {
        "name": name,
        "sources": [
            {
                "name": "changes",
                "url": api.url("/changes"),
                "params": {"per_page": size},
                "pagination": {
                    "type": "page",
                    "size_param": "per_page",
                    "size": size,
                    "total_pages": "meta.total_pages",
                },
                "incremental": {"cursor": "updated_at", "param": "since", "start": START, "lookback": 0, **incremental},
            }
        ],
        "retry": {"attempts": 1},
        "export": {"format": "ndjson"},
    }


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def changes_log(api, since: int = 0) -> list[dict]:
    return [e for e in api.log(since=since) if e["path"] == "/changes"]


def run(cli, tmp_path: Path, document: dict, out: str, *extra: str):
    spec_path = write_spec(tmp_path / "spec.json", document)
    return cli("run", str(spec_path), "-o", str(tmp_path / out), "--quiet", *extra)


def state_file(tmp_path: Path, name: str = "changes") -> Path:
    return tmp_path / ".pageferry" / "state" / f"{name}.json"


def test_second_run_outputs_exactly_the_records_changed_within_the_lookback(api, cli, tmp_path):
    document = spec(api, lookback=300)
    first = run(cli, tmp_path, document, "first.ndjson")
    assert first.code == 0, first.stderr
    assert first.summary["rows"] == 100 and first.summary["state"] == {"changes": {"cursor": minute(100)}}
    assert {e["query"]["since"] for e in changes_log(api)} == {START}  # the first run asks from `start`
    saved = json.loads(state_file(tmp_path).read_text())
    assert saved["name"] == "changes" and saved["state"] == {"changes": {"cursor": minute(100)}}

    touched = control(api, "/changes/_touch", {"ids": [3, 50]})["touched"]
    assert {r["updated_at"] for r in touched} == {minute(101)}
    seen = len(api.log())
    second = run(cli, tmp_path, document, "second.ndjson")
    assert second.code == 0, second.stderr
    # 01:40 less 300 s: the records changed since 01:35, each once, in the API's order
    expected = [r for r in records(api) if r["updated_at"] >= minute(95)]
    expected.sort(key=lambda r: (r["updated_at"], r["id"]))
    assert [r["id"] for r in expected] == [95, 96, 97, 98, 99, 100, 3, 50]
    assert rows(tmp_path / "second.ndjson") == expected
    assert {e["query"]["since"] for e in changes_log(api, seen)} == {minute(95)}
    assert second.summary["state"] == {"changes": {"cursor": minute(101)}}

    third = run(cli, tmp_path, document, "third.ndjson")  # nothing changed: the lookback again
    assert third.code == 0, third.stderr
    assert [r["id"] for r in rows(tmp_path / "third.ndjson")] == [96, 97, 98, 99, 100, 3, 50]
    assert third.summary["state"] == {"changes": {"cursor": minute(101)}}


def test_a_failed_run_keeps_the_state(api, cli, tmp_path):
    document = spec(api, size=5, lookback=300)
    assert run(cli, tmp_path, document, "first.ndjson").code == 0
    before = state_file(tmp_path).read_bytes()
    control(api, "/changes/_touch", {"ids": [3, 50]})
    control(api, "/changes/_fail", {"page": 2})
    failed = run(cli, tmp_path, document, "failed.ndjson")
    assert failed.code == 1 and failed.summary["status"] == "failed", failed.stderr
    assert "state" not in failed.summary
    assert state_file(tmp_path).read_bytes() == before  # untouched: the next run asks from it again
    control(api, "/changes/_fail", {"page": None})
    seen = len(api.log())
    again = run(cli, tmp_path, document, "again.ndjson")
    assert again.code == 0, again.stderr
    assert {e["query"]["since"] for e in changes_log(api, seen)} == {minute(95)}
    assert [r["id"] for r in rows(tmp_path / "again.ndjson")] == [95, 96, 97, 98, 99, 100, 3, 50]
    assert again.summary["state"] == {"changes": {"cursor": minute(101)}}


def test_resume_of_an_interrupted_incremental_run_uses_the_bounds_it_started_with(api, cli, tmp_path):
    document = spec(api, size=3, lookback=300)
    assert run(cli, tmp_path, document, "first.ndjson").code == 0
    control(api, "/changes/_touch", {"ids": [3, 50]})
    control(api, "/changes/_fail", {"page": 3})
    failed = run(cli, tmp_path, document, "out.ndjson")
    assert failed.code == 1, failed.stderr
    workdir = tmp_path / failed.summary["workdir"]
    # Meanwhile the state moves on (another run, or a reset): the resumed run must not notice.
    state_file(tmp_path).write_text(json.dumps({"state": {"changes": {"cursor": "2030-01-01T00:00:00Z"}}}))
    control(api, "/changes/_fail", {"page": None})
    seen = len(api.log())
    resumed = run(cli, tmp_path, document, "out.ndjson", "--resume", str(workdir))
    assert resumed.code == 0, resumed.stderr
    asked = changes_log(api, seen)
    pages = {e["query"]["page"] for e in asked}
    assert "3" in pages and "1" not in pages  # page 1 (at least) came from the shards
    assert {e["query"]["since"] for e in asked} == {minute(95)}  # not 2029-12-31T23:55
    assert [r["id"] for r in rows(tmp_path / "out.ndjson")] == [95, 96, 97, 98, 99, 100, 3, 50]
    # saved merged with what the file held by then: the later cursor wins
    assert resumed.summary["state"] == {"changes": {"cursor": "2030-01-01T00:00:00Z"}}


def test_units_keep_their_own_cursors(api, cli, tmp_path):
    document = spec(api)
    document["sources"][0]["ids"] = {"values": [0, 1, 2], "param": "owner"}
    first = run(cli, tmp_path, document, "first.ndjson")
    assert first.code == 0, first.stderr
    # owner k holds the ids i with i % 3 == k: its last ones are 99, 100 and 98
    units = {"0": minute(99), "1": minute(100), "2": minute(98)}
    assert first.summary["state"] == {"changes": {"cursor": minute(100), "units": units}}

    control(api, "/changes/_touch", {"ids": [4]})  # owner 1 only
    seen = len(api.log())
    second = run(cli, tmp_path, document, "second.ndjson")
    assert second.code == 0, second.stderr
    asked = {e["query"]["owner"]: e["query"]["since"] for e in changes_log(api, seen)}
    assert asked == {"0": minute(99), "1": minute(100), "2": minute(98)}
    got = [(r["_fanout_id"], r["id"]) for r in rows(tmp_path / "second.ndjson")]
    assert got == [(0, 99), (1, 100), (1, 4), (2, 98)]
    units["1"] = minute(101)
    assert second.summary["state"] == {"changes": {"cursor": minute(101), "units": units}}


def test_with_on_error_skip_only_units_without_a_skipped_page_advance(api, cli, tmp_path):
    document = {**spec(api, size=10), "on_error": "skip"}
    document["sources"][0]["ids"] = {"values": [0, 1, 2], "param": "owner"}
    control(api, "/changes/_fail", {"page": 2, "owner": 1})
    first = run(cli, tmp_path, document, "first.ndjson")
    assert first.code == 0 and first.summary["partial"] is True, first.stderr
    assert first.summary["state"] == {"changes": {"cursor": minute(99), "units": {"0": minute(99), "2": minute(98)}}}
    control(api, "/changes/_fail", {"page": None})
    seen = len(api.log())
    second = run(cli, tmp_path, document, "second.ndjson")
    assert second.code == 0 and second.summary["partial"] is False, second.stderr
    asked = {(e["query"]["owner"], e["query"]["since"]) for e in changes_log(api, seen)}
    assert asked == {("0", minute(99)), ("1", START), ("2", minute(98))}  # owner 1 starts over
    assert [r["id"] for r in rows(tmp_path / "second.ndjson") if r["owner"] == 1] == list(range(1, 101, 3))
    assert second.summary["state"]["changes"]["units"] == {"0": minute(99), "1": minute(100), "2": minute(98)}


def test_a_numeric_cursor_subtracts_lookback_units(api, cli, tmp_path):
    document = spec(api, cursor="version", param="min_version", start=0, lookback=2)
    document["sources"][0]["params"]["sort"] = "version"
    state = tmp_path / "custom" / "versions.json"
    first = run(cli, tmp_path, document, "first.ndjson", "--state", str(state))
    assert first.code == 0 and first.summary["state"] == {"changes": {"cursor": 100}}, first.stderr
    assert {e["query"]["min_version"] for e in changes_log(api)} == {"0"}
    assert json.loads(state.read_text())["state"] == {"changes": {"cursor": 100}}
    assert not state_file(tmp_path).exists()  # --state FILE replaces the default place
    control(api, "/changes/_touch", {"ids": [10, 20]})  # versions 101, 102
    seen = len(api.log())
    second = run(cli, tmp_path, document, "second.ndjson", "--state", str(state))
    assert second.code == 0, second.stderr
    assert {e["query"]["min_version"] for e in changes_log(api, seen)} == {"98"}
    assert [(r["id"], r["version"]) for r in rows(tmp_path / "second.ndjson")] == [
        (98, 98),
        (99, 99),
        (100, 100),
        (10, 101),
        (20, 102),
    ]
    assert second.summary["state"] == {"changes": {"cursor": 102}}


def test_the_bound_can_travel_in_a_header_or_in_the_body(api, cli, tmp_path):
    header = spec(api, name="by-header", param="header:If-Modified-Since", lookback=300)
    body = spec(api, name="by-body", param="filter.since", lookback=300)
    body["sources"][0].update(method="POST", body={"filter": {"kind": "all"}})
    for document in (header, body):
        assert run(cli, tmp_path, document, "first.ndjson").code == 0
    control(api, "/changes/_touch", {"ids": [7]})
    seen = len(api.log())
    for document in (header, body):
        second = run(cli, tmp_path, document, f"{document['name']}.ndjson")
        assert second.code == 0, second.stderr
        assert [r["id"] for r in rows(tmp_path / f"{document['name']}.ndjson")] == [95, 96, 97, 98, 99, 100, 7]
        assert second.summary["state"] == {"changes": {"cursor": minute(101)}}
    bounds = [(e["bounds"]["from"], e["bounds"]["since"]) for e in changes_log(api, seen)]
    assert bounds == [("header", "Mon, 01 Jan 2024 01:35:00 GMT"), ("body", minute(95))]


def test_a_spec_without_incremental_keeps_no_state_and_a_bad_state_file_is_refused(api, cli, tmp_path):
    plain = spec(api)
    del plain["sources"][0]["incremental"]
    done = run(cli, tmp_path, plain, "plain.ndjson")
    assert done.code == 0 and done.summary["rows"] == 100, done.stderr
    assert "state" not in done.summary and not (tmp_path / ".pageferry" / "state").exists()
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    seen = len(api.log())
    refused = run(cli, tmp_path, spec(api), "x.ndjson", "--state", str(bad))
    assert refused.code == 2 and refused.summary["details"][0]["field"] == "--state"
    assert changes_log(api, seen) == []  # refused before anything is fetched
