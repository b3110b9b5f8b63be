"""The engine end to end: real pool processes against the local test API, output checked row
by row (every id exactly once, in order, values round-tripped)."""

from __future__ import annotations

import json

import pytest

from engine.errors import JobFailed
from tests.support.readback import read_export
from tests.testapi.records import drift_record, record

N = 350  # records per dataset: 7 pages of 50
SIZE = 50

PAGINATIONS = {
    "none": ("/items/list", {"n": N}, {"type": "none"}),
    "page": ("/items/page", {"n": N}, {"type": "page", "size": SIZE, "total_pages": "meta.total_pages"}),
    "offset": ("/items/offset", {"n": N}, {"type": "offset", "size": SIZE, "total_records": "total"}),
    "cursor": ("/items/cursor", {"n": N, "size": SIZE}, {"type": "cursor", "param": "cursor", "next": "next_cursor"}),
    "next_url": ("/items/next", {"n": N, "size": SIZE}, {"type": "next_url", "next": "next"}),
    "link": ("/items/link", {"n": N, "size": SIZE}, {"type": "link"}),
}
FORMATS = ["csv", "json", "ndjson", "parquet", "xlsx", "zip"]


def source(api, kind: str, **extra) -> dict:
    path, params, pagination = PAGINATIONS[kind]
    return {"url": api.url(path), "params": {**params, **extra.pop("params", {})}, "pagination": pagination, **extra}


def only_table(rows):
    """The rows of a single-source export (for zip: its one data file)."""
    if isinstance(rows, dict):
        tables = [v for k, v in rows.items() if k != "manifest.json"]
        assert len(tables) == 1
        return tables[0]
    return rows


def as_text(value) -> str:
    """How a value reads back from CSV/XLSX cells."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def check_values(row: dict, fmt: str) -> None:
    expected = record(int(row["id"]))
    flat = {
        "name": expected["name"],
        "price": expected["price"],
        "meta.created": expected["meta"]["created"],
        "meta.score": expected["meta"]["score"],
        "tags": expected["tags"],
        "note": expected["note"],
        "active": expected["active"],
    }
    for key, want in flat.items():
        got = row[key]
        if fmt == "csv":
            assert got == as_text(want), (key, got, want)
        elif fmt == "xlsx":
            if isinstance(want, list):
                assert json.loads(got) == want
            elif want is None:
                assert got is None
            else:
                assert got == want, (key, got, want)
        else:
            assert got == want, (key, got, want)


@pytest.mark.parametrize("kind", list(PAGINATIONS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_pagination_and_format_delivers_each_id_once(api, run_job, kind, fmt):
    result = run_job(
        {"name": f"{kind}-{fmt}", "sources": [source(api, kind)], "concurrency": 4, "export": {"format": fmt}}
    )
    rows = only_table(read_export(result.output, fmt))
    ids = [int(r["id"]) for r in rows]
    assert ids == list(range(1, N + 1))
    assert result.rows == N == result.records
    assert result.pages == (1 if kind == "none" else N // SIZE)
    for row in (rows[0], rows[1], rows[2], rows[4]):  # lists of 1, 2, 0 tags; a null note
        check_values(row, "csv" if fmt == "zip" else fmt)  # the zip holds CSV


def test_page_requests_follow_the_contract(api, run_job):
    run_job({"sources": [source(api, "page")], "concurrency": 3})
    pages = sorted(int(e["query"]["page"]) for e in api.log(path="/items/page"))
    assert pages == list(range(1, N // SIZE + 1))  # no page fetched twice, none past the end
    assert all(e["query"]["per_page"] == str(SIZE) for e in api.log(path="/items/page"))


@pytest.mark.parametrize("kind", ["page", "offset"])
def test_unknown_total_claims_blocks_until_a_short_page(api, run_job, kind):
    n = 1234  # the last page is short
    path = "/items/page" if kind == "page" else "/items/offset"
    spec = {
        "sources": [
            {"url": api.url(path), "params": {"n": n, "hide_total": 1}, "pagination": {"type": kind, "size": 100}}
        ],
        "concurrency": 4,
        "export": {"format": "csv"},
    }
    result = run_job(spec)
    ids = [int(r["id"]) for r in read_export(result.output, "csv")]
    assert ids == list(range(1, n + 1))
    assert result.pages == 13
    # Speculative pages past the end are bounded by what was in flight, and none is in the output.
    assert len(api.log(path=path)) <= 13 + 4


def test_page_size_is_learned_from_page_one_when_not_configured(api, run_job):
    spec = {
        "sources": [
            {"url": api.url("/items/page"), "params": {"n": 430, "hide_total": 1}, "pagination": {"type": "page"}}
        ],
        "export": {"format": "csv"},
    }
    result = run_job(spec)
    assert [int(r["id"]) for r in read_export(result.output, "csv")] == list(range(1, 431))
    assert all("per_page" not in e["query"] for e in api.log(path="/items/page"))


def test_max_pages_wins_over_the_api(api, run_job):
    for kind in ("page", "cursor"):
        api.reset()
        result = run_job({"sources": [{**source(api, kind), "max_pages": 3}], "export": {"format": "csv"}})
        assert [int(r["id"]) for r in read_export(result.output, "csv")] == list(range(1, 3 * SIZE + 1))
        assert len(api.log()) == 3


def test_null_total_means_keep_going(api, run_job):
    spec = {
        "sources": [
            {
                "url": api.url("/items/page"),
                "params": {"n": 260, "null_total": 1},
                "pagination": {"type": "page", "size": 50, "total_pages": "meta.total_pages"},
            }
        ],
        "export": {"format": "csv"},
    }
    result = run_job(spec)
    assert len(read_export(result.output, "csv")) == 260


def test_repeated_cursor_fails_instead_of_looping(api, run_job):
    spec = {"sources": [{**source(api, "cursor"), "params": {"n": N, "size": SIZE, "loop": 1}}]}
    with pytest.raises(JobFailed) as failure:
        run_job(spec)
    assert "repeats a cursor token" in failure.value.message
    assert len(api.log()) <= 3


def test_repeated_next_url_fails_instead_of_looping(api, run_job):
    spec = {"sources": [{**source(api, "next_url"), "params": {"n": N, "size": SIZE, "loop": 1}}]}
    with pytest.raises(JobFailed, match="repeats a next_url token"):
        run_job(spec)


def test_relative_and_absolute_next_urls_are_requested_as_given(api, run_job):
    for absolute in (0, 1):
        api.reset()
        result = run_job(
            {
                "sources": [source(api, "next_url", params={"absolute": absolute, "extra": "x"})],
                "export": {"format": "csv"},
            }
        )
        assert len(read_export(result.output, "csv")) == N
        # the source's params ride along only because the API carried them in its next URL
        assert all(e["query"].get("extra") == "x" for e in api.log())


def test_ndjson_and_csv_sources(api, run_job):
    spec = {
        "sources": [
            {
                "url": api.url("/items/ndjson"),
                "format": "ndjson",
                "params": {"n": 230},
                "pagination": {"type": "page", "size": 100},
            }
        ],
        "export": {"format": "parquet"},
    }
    rows = read_export(run_job(spec).output, "parquet")
    assert [r["id"] for r in rows] == list(range(1, 231))
    assert rows[1]["meta.created"] == record(2)["meta"]["created"]

    spec = {
        "sources": [
            {
                "url": api.url("/items/csv"),
                "format": "csv",
                "params": {"n": 230, "sep": ";", "encoding": "latin-1"},
                "csv": {"separator": ";", "encoding": "latin-1"},
                "pagination": {"type": "page", "size": 100},
            }
        ],
        "export": {"format": "parquet"},
    }
    rows = read_export(run_job(spec).output, "parquet")
    assert [r["id"] for r in rows] == [str(i) for i in range(1, 231)]  # CSV fields stay text...
    spec["sources"][0]["csv"]["infer_types"] = True  # ...unless inferred
    rows = read_export(run_job(spec).output, "parquet")
    assert [r["id"] for r in rows] == list(range(1, 231))
    assert rows[6]["name"] == "café-7"
    assert rows[4]["note"] == ""  # an empty cell stays empty text

    spec = {
        "sources": [
            {
                "url": api.url("/items/csv"),
                "format": "csv",
                "params": {"n": 120, "header": 0},
                "csv": {"header": False},
                "pagination": {"type": "page", "size": 100},
            }
        ],
        "export": {"format": "csv"},
    }
    rows = read_export(run_job(spec).output, "csv")
    assert list(rows[0]) == [f"column_{i}" for i in range(1, 7)] and len(rows) == 120


def test_schema_drift_between_pages_is_reconciled(api, run_job):
    n = 250
    spec = {
        "sources": [
            {
                "url": api.url("/items/drift"),
                "params": {"n": n},
                "pagination": {"type": "page", "size": 50, "total_pages": "meta.total_pages"},
            }
        ],
        "concurrency": 4,
        "export": {"format": "parquet"},
    }
    rows = read_export(run_job(spec).output, "parquet")
    assert [r["id"] for r in rows] == list(range(1, n + 1))
    for row in rows:
        page = (row["id"] - 1) // 50 + 1
        want = drift_record(row["id"], page)
        assert row["amount"] == float(want["amount"])  # int on page 1, float later → float
        assert row["maybe"] == want["maybe"]  # null-typed on page 1 → string
        assert row.get("extra") == want.get("extra")  # absent on odd pages → null


def test_records_path_errors_name_the_problem(api, run_job):
    with pytest.raises(JobFailed, match="holds a dict, not a list"):
        run_job({"sources": [{"url": api.url("/notlist"), "records": "data"}]})
    with pytest.raises(JobFailed, match="not valid JSON"):
        run_job({"sources": [{"url": api.url("/notjson")}], "retry": {"attempts": 2, "backoff": 0.01}})


def test_empty_source_gives_a_valid_empty_file(api, run_job):
    for fmt in ("csv", "json", "parquet"):
        result = run_job({"sources": [{"url": api.url("/empty")}], "export": {"format": fmt}})
        assert result.rows == 0 and result.output.exists()
    assert read_export(result.output, "parquet") == []


def test_several_sources_each_get_their_own_table(api, run_job):
    spec = {
        "name": "multi",
        "sources": [
            {"name": "pages", **source(api, "page")},
            {"name": "cursor", **source(api, "cursor", params={"n": 120})},
        ],
        "export": {"format": "zip", "inner": "ndjson"},
    }
    result = run_job(spec)
    files = read_export(result.output, "zip", inner="ndjson")
    assert [r["id"] for r in files["pages.ndjson"]] == list(range(1, N + 1))
    assert [r["id"] for r in files["cursor.ndjson"]] == list(range(1, 121))
    manifest = files["manifest.json"]
    assert [s["name"] for s in manifest["sources"]] == ["pages", "cursor"]
    assert {f["name"]: f["rows"] for f in manifest["files"]} == {"pages.ndjson": N, "cursor.ndjson": 120}
    assert result.rows_by_source == {"pages": N, "cursor": 120}
