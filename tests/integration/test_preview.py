"""`python -m engine preview SPEC` against the local test API: page 1 of each source - records
(at most 20, flattened), typed columns, the records path, a pagination hint for each of the six
styles, elapsed ms - one request per source, nothing written; the outbound guard, the rate
limit, failures, secrets and exit codes."""

from __future__ import annotations

import json
import time
from pathlib import Path

from engine.preview import pagination_hint
from engine.spec.models import Pagination
from tests.conftest import write_spec
from tests.testapi.creds import QUERY_KEY, QUERY_PARAM
from tests.testapi.records import encode_cursor, owner_ids, record

SOURCE_KEYS = {
    "name",
    "status",
    "url",
    "http_status",
    "records_path",
    "records",
    "columns",
    "pagination_hint",
    "elapsed_ms",
}


def preview(cli, tmp_path: Path, spec: dict, env: dict | None = None):
    """Run the CLI on `spec`; returns (the run, its sources by name)."""
    run = cli("preview", str(write_spec(tmp_path / "spec.json", spec)), env=env)
    if run.code == 2:
        return run, {}
    summary = run.summary
    assert set(summary) == {"sources"}, summary
    return run, {s["name"]: s for s in summary["sources"]}


def one(cli, tmp_path: Path, source: dict, env: dict | None = None) -> tuple:
    run, sources = preview(cli, tmp_path, {"name": "p", "sources": [source]}, env)
    return run, sources.get("p")


def types(source: dict) -> dict:
    return {c["name"]: c["type"] for c in source["columns"]}


def flat(i: int) -> dict:
    """The test API's record `i` as the export flattens it."""
    rec = record(i)
    meta = rec.pop("meta")
    return {**rec, "meta.created": meta["created"], "meta.score": meta["score"]}


# ------------------------------------------------------------------ the six pagination styles


def test_page_style_first_page_records_columns_and_hint(api, cli, tmp_path):
    source = {"url": api.url("/items/page", n=45), "pagination": {"type": "page", "size": 10}}
    run, got = one(cli, tmp_path, source)
    assert run.code == 0, run.stderr
    assert set(got) == SOURCE_KEYS and got["status"] == "ok" and got["http_status"] == 200
    assert got["records_path"] == "data"
    assert got["records"] == [flat(i) for i in range(1, 11)]  # nested meta flattened, lists kept
    assert types(got) == {
        "id": "int",
        "name": "string",
        "sku": "string",
        "price": "float",
        "quantity": "int",
        "category": "string",
        "active": "bool",
        "tags": "list",
        "meta.created": "date",
        "meta.score": "int",
        "description": "string",
        "note": "string",
    }
    hint = got["pagination_hint"]
    assert hint["type"] == "page"
    assert hint["evidence"] == {
        "meta.page": 1,
        "meta.per_page": 10,
        "meta.total_pages": 5,
        "meta.total_records": 45,
        "query:page": 1,
        "query:per_page": 10,
    }
    assert hint["suggested"] == {
        "type": "page",
        "param": "page",
        "size_param": "per_page",
        "total_pages": "meta.total_pages",
        "total_records": "meta.total_records",
    }
    Pagination.model_validate(hint["suggested"])  # a usable `pagination` object
    assert isinstance(got["elapsed_ms"], int) and 0 <= got["elapsed_ms"] < 10_000
    log = api.log(path="/items/page")
    assert len(log) == 1 and log[0]["query"] == {"n": "45", "page": "1", "per_page": "10"}  # page 1, once


def test_at_most_20_records_but_columns_from_the_whole_page(api, cli, tmp_path):
    run, got = one(cli, tmp_path, {"url": api.url("/items/page", n=100)})
    assert run.code == 0
    assert [r["id"] for r in got["records"]] == list(range(1, 21))
    # record 25 is the first with a null note: the page's other records count for the types
    assert types(got)["note"] == "string" and len(api.log(path="/items/page")) == 1


def test_cursor_style(api, cli, tmp_path):
    run, got = one(cli, tmp_path, {"url": api.url("/items/cursor", n=45, size=10)})
    assert run.code == 0 and got["records_path"] == "data"
    assert [r["id"] for r in got["records"]] == list(range(1, 11))
    assert got["pagination_hint"] == {
        "type": "cursor",
        "evidence": {"next_cursor": encode_cursor(10)},
        "suggested": {"type": "cursor", "param": "cursor", "next": "next_cursor"},
    }
    Pagination.model_validate(got["pagination_hint"]["suggested"])


def test_next_url_style(api, cli, tmp_path):
    run, got = one(cli, tmp_path, {"url": api.url("/items/next", n=45, size=10)})
    assert run.code == 0 and got["records_path"] == "results"
    assert [r["id"] for r in got["records"]] == list(range(1, 11))
    assert got["pagination_hint"] == {
        "type": "next_url",
        "evidence": {"next": "/items/next?n=45&size=10&offset=10"},
        "suggested": {"type": "next_url", "next": "next"},
    }


def test_link_style_and_a_bare_list(api, cli, tmp_path):
    run, got = one(cli, tmp_path, {"url": api.url("/items/link", n=45, size=10)})
    assert run.code == 0
    assert got["records_path"] == ""  # the body is the list
    assert [r["id"] for r in got["records"]] == list(range(1, 11))
    hint = got["pagination_hint"]
    assert hint["type"] == "link" and hint["suggested"] == {"type": "link"}
    assert set(hint["evidence"]) == {"header:Link"} and "page=2" in hint["evidence"]["header:Link"]


def test_offset_style(api, cli, tmp_path):
    source = {"url": api.url("/items/offset", n=45), "pagination": {"type": "offset", "size": 15}}
    run, got = one(cli, tmp_path, source)
    assert run.code == 0 and got["records_path"] == "items"
    assert [r["id"] for r in got["records"]] == list(range(1, 16))
    assert got["pagination_hint"]["type"] == "offset"
    assert got["pagination_hint"]["evidence"] == {"total": 45, "query:offset": 0, "query:limit": 15}
    assert got["pagination_hint"]["suggested"] == {
        "type": "offset",
        "param": "offset",
        "size_param": "limit",
        "total_records": "total",
    }
    assert api.log(path="/items/offset")[0]["query"] == {"n": "45", "offset": "0", "limit": "15"}


def test_none_style(api, cli, tmp_path):
    run, got = one(cli, tmp_path, {"url": api.url("/items/list", n=5)})
    assert run.code == 0 and len(got["records"]) == 5
    assert got["pagination_hint"] == {"type": "none", "evidence": {}, "suggested": {"type": "none"}}


def test_hints_from_other_shapes():
    graphql = {"data": {"orders": {"edges": [], "pageInfo": {"hasNextPage": True, "endCursor": "Y3Vy"}}}}
    assert pagination_hint(graphql, {}, {}, graphql=True) == {
        "type": "cursor",
        "evidence": {"data.orders.pageInfo.endCursor": "Y3Vy", "data.orders.pageInfo.hasNextPage": True},
        "suggested": {
            "type": "cursor",
            "param": "variables.after",
            "next": "data.orders.pageInfo.endCursor",
            "has_more": "data.orders.pageInfo.hasNextPage",
        },
    }
    hal = {"_embedded": {"items": []}, "_links": {"next": {"href": "https://x.test/items?page=2"}}}
    assert pagination_hint(hal, {}, {})["suggested"] == {"type": "next_url", "next": "_links.next.href"}
    by_header = pagination_hint([], {"X-Total-Count": "240"}, {}, {"page": "1"})
    assert by_header["type"] == "page" and by_header["suggested"]["total_records"] == "header:X-Total-Count"
    assert pagination_hint([], {"X-Total-Count": "240"}, {})["type"] == "offset"
    assert pagination_hint({"data": [], "count": 3}, {}, {})["type"] == "none"
    for hint in (by_header, pagination_hint(hal, {}, {}), pagination_hint(graphql, {}, {}, graphql=True)):
        Pagination.model_validate(hint["suggested"])


# ------------------------------------------------------------------ formats and shapes


def test_csv_source_text_cells_typed_by_what_they_hold(api, cli, tmp_path):
    source = {"url": api.url("/items/csv", n=30), "format": "csv", "pagination": {"type": "page", "size": 10}}
    run, got = one(cli, tmp_path, source)
    assert run.code == 0 and got["records_path"] is None
    assert got["records"][0] == {
        "id": "1",
        "name": "item-1",
        "price": "1.25",
        "category": "games",
        "active": "true",
        "note": "note 1",
    }  # text exactly as written, as the export keeps it
    assert len(got["records"]) == 10 and got["records"][4]["note"] == ""
    assert types(got) == {
        "id": "int",
        "name": "string",
        "price": "float",
        "category": "string",
        "active": "bool",
        "note": "string",
    }
    assert got["pagination_hint"]["type"] == "page"  # no body to read: the request's own page
    assert got["pagination_hint"]["evidence"] == {"query:page": 1, "query:per_page": 10}


def test_ndjson_source(api, cli, tmp_path):
    source = {"url": api.url("/items/ndjson", n=30, per_page=25), "format": "ndjson"}
    run, got = one(cli, tmp_path, source)
    assert run.code == 0 and got["records_path"] is None
    assert got["records"] == [flat(i) for i in range(1, 21)]
    assert types(got)["meta.created"] == "date" and types(got)["tags"] == "list"


def test_deeply_nested_records_flattened_and_a_post_body(api, cli, tmp_path):
    rows = [
        {"id": 1, "a": {"b": {"c": 1.5, "d": "2024-03-01T10:00:00Z"}}, "tags": [{"k": 1}], "none": None},
        {"id": 2, "a": {"b": {"c": 2, "d": "2024-03-02T11:30:00+01:00"}}, "tags": [], "none": None},
    ]
    source = {"url": api.url("/echo"), "method": "POST", "body": {"rows": rows}, "records": "json.rows"}
    run, got = one(cli, tmp_path, source)
    assert run.code == 0 and got["records_path"] == "json.rows"
    assert got["records"] == [
        {"id": 1, "a.b.c": 1.5, "a.b.d": "2024-03-01T10:00:00Z", "tags": [{"k": 1}], "none": None},
        {"id": 2, "a.b.c": 2.0, "a.b.d": "2024-03-02T11:30:00+01:00", "tags": [], "none": None},
    ]
    assert types(got) == {"id": "int", "a.b.c": "float", "a.b.d": "datetime", "tags": "list", "none": "null"}
    assert api.log(path="/echo")[0]["method"] == "POST"


# ------------------------------------------------------------------ fan-out, dependent, incremental


def test_fanout_source_previews_its_first_unit(api, cli, tmp_path):
    source = {
        "url": api.url("/items/by-id") + "/{id}",
        "ids": {"values": [7, 8, 9]},
        "windows": {"start": "2024-01-01", "end": "2024-01-20", "days": 7, "start_param": "from"},
    }
    run, got = one(cli, tmp_path, source)
    assert run.code == 0, got
    assert [r["id"] for r in got["records"]] == owner_ids(7)
    assert got["records"][0]["_fanout_id"] == 7 and got["records"][0]["_fanout_window_start"] == "2024-01-01"
    assert types(got)["_fanout_id"] == "int" and types(got)["_fanout_window_start"] == "date"
    log = api.log()
    assert len(log) == 1 and log[0]["path"] == "/items/by-id/7"
    assert log[0]["query"] == {"from": "2024-01-01", "end": "2024-01-07"}


def test_dependent_source_uses_the_parent_first_record(api, cli, tmp_path):
    spec = {
        "name": "deps",
        "sources": [
            {"name": "owners", "url": api.url("/items/page", n=3), "export": False},
            {"name": "items", "url": api.url("/items/by-id") + "/{id}", "ids": {"from": "owners", "field": "id"}},
        ],
    }
    run, got = preview(cli, tmp_path, spec)
    assert run.code == 0, run.stderr
    assert [s["status"] for s in got.values()] == ["ok", "ok"]
    assert [r["id"] for r in got["items"]["records"]] == owner_ids(1)
    assert got["items"]["records"][0]["owner"] == 1 and got["items"]["url"].endswith("/items/by-id/1")
    assert [e["path"] for e in api.log()] == ["/items/page", "/items/by-id/1"]  # parent first, then one child


def test_dependent_source_of_a_failed_parent_fails(api, cli, tmp_path):
    spec = {
        "name": "deps",
        "sources": [
            {"name": "owners", "url": api.url("/items/page", n=3, fail_all=1), "export": False},
            {"name": "items", "url": api.url("/items/by-id") + "/{id}", "ids": {"from": "owners"}},
        ],
    }
    run, got = preview(cli, tmp_path, spec)
    assert run.code == 1
    assert got["items"]["status"] == "failed" and "'owners'" in got["items"]["error"]
    assert [e["path"] for e in api.log()] == ["/items/page"]


def test_incremental_source_asks_from_its_start(api, cli, tmp_path):
    source = {
        "url": api.url("/echo"),
        "records": "query_list",
        "incremental": {"cursor": "updated_at", "param": "since", "start": "2024-01-01T00:00:00Z"},
    }
    run, got = one(cli, tmp_path, source)
    assert run.code == 0, got
    assert api.log(path="/echo")[0]["query"] == {"since": "2024-01-01T00:00:00Z"}
    assert got["records"] == [{"value": ["since", "2024-01-01T00:00:00Z"]}]


# ------------------------------------------------------------------ guard, rate limit, failures, secrets


def test_outbound_guard_refuses_a_host(api, cli, tmp_path):
    local = api.url("/items/page", n=5).replace("127.0.0.1", "localhost")
    # the spec names a host the list does not hold: invalid, nothing fetched
    run, _ = one(cli, tmp_path, {"url": api.url("/items/page", n=5)}, env={"ALLOWED_SOURCE_HOSTS": "localhost"})
    assert run.code == 2
    assert run.summary["details"][0]["field"] == "sources.0.url"
    assert "ALLOWED_SOURCE_HOSTS" in run.summary["details"][0]["message"]
    assert api.log() == []
    # a redirect hop to it is refused as it is followed
    hop = api.url("/redirect").replace("127.0.0.1", "localhost") + "?to=" + api.url("/items/page")
    run, got = one(cli, tmp_path, {"url": hop}, env={"ALLOWED_SOURCE_HOSTS": "localhost"})
    assert run.code == 1 and got["status"] == "failed"
    assert "ALLOWED_SOURCE_HOSTS" in got["error"]
    assert [e["path"] for e in api.log()] == ["/redirect"]
    run, got = one(cli, tmp_path, {"url": local}, env={"ALLOWED_SOURCE_HOSTS": "localhost"})
    assert run.code == 0 and len(got["records"]) == 5  # the listed host itself is fine


def test_rate_limit_spaces_the_sources_requests(api, cli, tmp_path):
    spec = {
        "name": "limited",
        "rate_limit": {"requests": 1, "per": 0.5},
        "sources": [{"name": f"s{i}", "url": api.url("/items/page", n=5, k=i)} for i in range(3)],
        "export": {"format": "zip"},
    }
    run, got = preview(cli, tmp_path, spec)
    assert run.code == 0 and [s["status"] for s in got.values()] == ["ok"] * 3
    arrivals = sorted(e["t"] for e in api.log())
    assert len(arrivals) == 3  # one request per source
    assert all(b - a >= 0.45 for a, b in zip(arrivals, arrivals[1:])), arrivals


def test_failing_source_is_reported_and_the_others_still_previewed(api, cli, tmp_path):
    spec = {
        "name": "mixed",
        "sources": [
            {"name": "good", "url": api.url("/items/page", n=5)},
            {"name": "bad", "url": api.url("/items/page", n=5, fail_all=1)},
        ],
        "export": {"format": "zip"},
    }
    run, got = preview(cli, tmp_path, spec)
    assert run.code == 1
    assert got["good"]["status"] == "ok" and len(got["good"]["records"]) == 5
    bad = got["bad"]
    assert bad["status"] == "failed" and bad["http_status"] == 500 and "HTTP 500" in bad["error"]
    assert bad["records"] == [] and bad["columns"] == [] and bad["pagination_hint"] is None
    assert len(api.log(path="/items/page")) == 2  # no retries: one request each
    assert "bad: failed" in run.stderr


def test_secrets_are_masked(api, cli, tmp_path):
    spec = {
        "name": "secrets",
        "sources": [
            {
                "name": "right",
                "url": api.url("/auth/query", n=3),
                "auth": {"type": "query", "name": QUERY_PARAM, "value": "${GOOD_KEY}"},
            },
            {
                "name": "wrong",
                "url": api.url("/auth/query", n=3),
                "auth": {"type": "query", "name": QUERY_PARAM, "value": "${BAD_KEY}"},
            },
        ],
        "export": {"format": "zip"},
    }
    run, got = preview(cli, tmp_path, spec, env={"GOOD_KEY": QUERY_KEY, "BAD_KEY": "wrong-key-4711"})
    assert run.code == 1
    assert got["right"]["status"] == "ok" and len(got["right"]["records"]) == 3
    assert got["wrong"]["status"] == "failed" and got["wrong"]["http_status"] == 401
    assert f"{QUERY_PARAM}=***" in got["right"]["url"]
    for secret in (QUERY_KEY, "wrong-key-4711"):
        assert secret not in run.stdout and secret not in run.stderr


# ------------------------------------------------------------------ exit codes, nothing written


def test_invalid_spec_exits_2_naming_the_field(api, cli, tmp_path):
    run, _ = one(cli, tmp_path, {"url": api.url("/items/page"), "pagination": {"type": "page", "size": 0}})
    assert run.code == 2
    assert run.summary["status"] == "invalid"
    assert run.summary["details"][0]["field"] == "sources.0.pagination.size"
    assert "sources.0.pagination.size" in run.stderr and api.log() == []


def test_one_source_object_on_stdin_and_nothing_written(api, cli, tmp_path):
    before = sorted(tmp_path.rglob("*"))
    run = cli("preview", "-", stdin=json.dumps({"url": api.url("/items/page", n=7)}))
    assert run.code == 0, run.stderr
    (got,) = run.summary["sources"]
    assert got["name"] == "export" and [r["id"] for r in got["records"]] == list(range(1, 8))
    assert sorted(tmp_path.rglob("*")) == before  # no work directory, no output, no state


def test_time_limit_fails_late_sources_without_waiting(api):
    """The service's bound (run_preview's `time_limit`): a rate-limit wait that would end past
    it is not waited for, and a request gets at most the time left."""
    from engine.fetch.outbound import OutboundPolicy
    from engine.preview import run_preview
    from engine.spec.models import parse_spec
    from engine.spec.prepare import prepare

    spec = parse_spec(
        {
            "name": "late",
            "rate_limit": {"requests": 1, "per": 60},
            "sources": [
                {"name": "first", "url": api.url("/items/page", n=2)},
                {"name": "second", "url": api.url("/hang")},
            ],
            "export": {"format": "zip"},
        }
    )
    started = time.monotonic()
    first, second = run_preview(prepare(spec, {}), OutboundPolicy(), 1 << 20, time_limit=5)["sources"]
    assert time.monotonic() - started < 2  # the second source's turn comes in 60 s: not waited for
    assert first["status"] == "ok" and second["status"] == "failed"
    assert "time limit (5 s)" in second["error"] and second["http_status"] is None
    assert [e["path"] for e in api.log()] == ["/items/page"]
    hang = parse_spec({"name": "hang", "sources": [{"url": api.url("/hang", s=30)}]})
    started = time.monotonic()
    (got,) = run_preview(prepare(hang, {}), OutboundPolicy(), 1 << 20, time_limit=1)["sources"]
    assert 0.9 < time.monotonic() - started < 3
    assert got["status"] == "failed" and got["error"] == "no answer within 1 s (timeout)"


def test_a_page_a_response_rule_skips_has_no_records_and_is_no_failure(api, cli, tmp_path):
    rule = {"path": "meta.total_records", "equals": 3, "action": "skip"}
    run, got = one(cli, tmp_path, {"url": api.url("/items/page", n=3), "responses": [rule]})
    assert run.code == 0, got
    assert got["status"] == "ok" and got["http_status"] == 200 and "error" not in got
    assert got["records"] == [] and got["columns"] == []
    run, got = one(cli, tmp_path, {"url": api.url("/items/page", n=3)})  # without the rule
    assert run.code == 0 and len(got["records"]) == 3
