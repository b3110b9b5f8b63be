"""Request bodies, GraphQL and values from response headers, end to end in real pool processes
against the local test API (tests/testapi/bodies_api.py; its arrival log, which records each
posted body, is the judge):

- a JSON `body` on a POST, with the pagination parameter at a dotted path inside it
  (`pagination.in: body`) for page numbers, offsets and cursors: every record exactly once, in
  order, with exactly the requests needed; `{id}` from an ids fan-out and `${NAME}` from the
  environment substituted in the body, the secret masked in every error;
- GraphQL: `graphql: {query, variables}` posts `{"query", "variables"}`, the cursor goes in
  `variables.<name>`, `has_more` ends the sequence; a 200 with a non-empty `errors` list fails
  the page (and the job) naming its first message;
- `total_pages`, `total_records` and `next` read from a response header (`header:X-Total-Pages`);
- the spec refuses the combinations that cannot work, naming the field.
"""

from __future__ import annotations

import json

import pytest

from engine.errors import JobFailed, SpecError
from engine.plan.fanout import ID_COLUMN
from engine.spec.models import parse_spec
from tests.conftest import write_spec
from tests.support.readback import all_bytes_under, flat, read_export
from tests.testapi.bodies_api import SEARCH_KEY
from tests.testapi.records import decode_cursor, owner_records, record

GRAPHQL_QUERY = (
    "query Items($first: Int, $after: String, $n: Int) {"
    " items(first: $first, after: $after, n: $n) { nodes { id name } pageInfo { hasNextPage endCursor } } }"
)
COMPACT_QUERY = (
    "query($owner:Int,$k:Int,$first:Int,$after:String){items(owner:$owner,k:$k,first:$first,after:$after)"
    "{nodes{id}pageInfo{hasNextPage endCursor}}}"
)
PAGE_INFO = "data.items.pageInfo"


def expected(n: int) -> list[dict]:
    return [flat(record(i)) for i in range(1, n + 1)]


def posted(api, path: str) -> list[dict]:
    """The bodies posted to `path`, in arrival order (every entry checked to be a POST)."""
    log = api.log(path=path)
    assert all(e["method"] == "POST" for e in log), log
    return [e["json"] for e in log]


def max_overlap(log: list[dict]) -> int:
    """The most requests the API was answering at one moment."""
    edges = sorted([(e["t"], 1) for e in log] + [(e["t_done"], -1) for e in log])
    busy = peak = 0
    for _, step in edges:
        busy += step
        peak = max(peak, busy)
    return peak


def search_source(api, body: dict, pagination: dict, **more) -> dict:
    return {
        "url": api.url("/search"),
        "method": "POST",
        "body": body,
        "records": "data",
        "pagination": {"in": "body", **pagination},
        **more,
    }


def graphql_source(api, variables: dict, path: str = "/graphql", **more) -> dict:
    return {
        "url": api.url(path),
        "graphql": {"query": GRAPHQL_QUERY, "variables": variables},
        "records": "data.items.nodes",
        "pagination": {
            "type": "cursor",
            "param": "variables.after",
            "size_param": "variables.first",
            "size": 10,
            "next": f"{PAGE_INFO}.endCursor",
            "has_more": f"{PAGE_INFO}.hasNextPage",
        },
        **more,
    }


def job(*sources: dict, **more) -> dict:
    return {"sources": list(sources), "concurrency": 4, "export": {"format": "ndjson"}, **more}


# ====================================================================== POST bodies


@pytest.mark.parametrize("total", [True, False], ids=["total-in-body", "short-page"])
def test_page_numbers_in_the_body_every_record_once_in_order(api, run_job, total):
    pagination = {"type": "page", "param": "page.number", "size_param": "page.size", "size": 10}
    if total:
        pagination["total_pages"] = "meta.total_pages"
    body = {"filter": {"n": 95, "status": "open"}, "page": {"size": 500}}
    result = run_job(job(search_source(api, body, pagination)))
    assert read_export(result.output, "ndjson") == expected(95)
    bodies = posted(api, "/search")
    numbers = sorted(b["page"]["number"] for b in bodies)
    assert numbers[:10] == list(range(1, 11)) and len(set(numbers)) == len(numbers)  # each page once
    # the rest of the body rides along unchanged; the configured size replaces the body's own
    assert all(b["filter"] == {"n": 95, "status": "open"} and b["page"]["size"] == 10 for b in bodies)
    assert all(e["query"] == {} for e in api.log(path="/search"))  # nothing went into the query
    if total:
        assert len(bodies) == 10 and result.requests == 10 and result.pages == 10
    else:
        # no total: processes may claim a page past the end before the short page 10 is seen;
        # such pages are discarded (the rows above are exact)
        assert all(n > 10 for n in numbers[10:]) and len(bodies) <= 18


def test_offsets_in_the_body_with_the_total_from_the_body(api, run_job):
    pagination = {
        "type": "offset",
        "param": "page.offset",
        "size_param": "page.limit",
        "size": 10,
        "total_records": "meta.total_records",
    }
    result = run_job(job(search_source(api, {"filter": {"n": 100}}, pagination)))
    assert read_export(result.output, "ndjson") == expected(100)
    bodies = posted(api, "/search")
    # page 10 is full: only the total says there is no page 11
    assert sorted(b["page"]["offset"] for b in bodies) == list(range(0, 100, 10))
    assert all(b["page"]["limit"] == 10 for b in bodies) and result.requests == 10


def test_cursor_in_the_body_follows_the_chain_in_order(api, run_job):
    pagination = {
        "type": "cursor",
        "param": "page.after",
        "size_param": "page.size",
        "size": 10,
        "next": "meta.next_cursor",
    }
    result = run_job(job(search_source(api, {"filter": {"n": 95}}, pagination)))
    assert read_export(result.output, "ndjson") == expected(95)
    bodies = posted(api, "/search")
    assert "after" not in bodies[0]["page"]  # the first page carries no cursor
    assert [decode_cursor(b["page"]["after"]) for b in bodies[1:]] == list(range(10, 100, 10))
    assert all(b["page"]["size"] == 10 and b["filter"] == {"n": 95} for b in bodies)
    assert len(bodies) == 10 and result.requests == 10


def test_a_retried_post_sends_the_same_body_again(api, run_job):
    # flaky=1: the API answers 503 to the first request with each body, so every page is
    # refused once and must be retried carrying exactly the body it first sent.
    pagination = {"type": "page", "param": "page.number", "size_param": "page.size", "size": 10}
    source = search_source(api, {"filter": {"n": 50}}, {**pagination, "total_pages": "meta.total_pages"})
    source["params"] = {"flaky": 1}
    result = run_job(job(source, retry={"attempts": 3, "backoff": 0.01}))
    assert read_export(result.output, "ndjson") == expected(50)
    log = api.log(path="/search")
    tries: dict[int, list[int]] = {}
    for e in log:
        tries.setdefault(e["json"]["page"]["number"], []).append(e["status"])
    assert tries == {page: [503, 200] for page in range(1, 6)}
    assert len(log) == 10 and result.retries == 5 and result.pages == 5


def test_ids_fan_out_substitutes_each_id_into_the_body(api, run_job):
    owners = [7, 3, 12]
    body = {"filter": {"owner": "{id}", "k": 25, "label": "owner {id}"}}
    pagination = {
        "type": "page",
        "param": "page.number",
        "size_param": "page.size",
        "size": 10,
        "total_pages": "meta.total_pages",
    }
    source = search_source(api, body, pagination, ids={"values": owners})
    source["url"] = api.url("/search")  # no {id} in the URL: the body carries it
    result = run_job(job(source))
    rows = read_export(result.output, "ndjson")
    assert rows == [{ID_COLUMN: owner, **flat(r)} for owner in owners for r in owner_records(owner, 25)]
    bodies = posted(api, "/search")
    # `"{id}"` alone keeps the id's type (the API refuses a string owner); inside text it is text
    got = sorted((b["filter"]["owner"], b["filter"]["label"], b["page"]["number"]) for b in bodies)
    assert got == sorted((o, f"owner {o}", p) for o in owners for p in (1, 2, 3))
    assert result.requests == 9


def test_env_secret_in_the_body_is_resolved_and_masked_in_errors(api, cli, run_job, tmp_path):
    pagination = {"type": "page", "param": "page.number", "size_param": "page.size", "size": 10}
    body = {"filter": {"n": 30}, "key": "${SEARCH_KEY}"}
    spec = {**job(search_source(api, body, pagination), retry={"attempts": 2, "backoff": 0.01}), "name": "search"}
    spec["export"] = {"format": "zip", "inner": "ndjson"}

    ok = cli("run", str(write_spec(tmp_path / "ok.json", spec)), "-o", "ok.zip", env={"SEARCH_KEY": SEARCH_KEY})
    assert ok.code == 0, ok.stderr
    assert ok.summary["rows"] == 30
    files = read_export(tmp_path / "ok.zip", "zip", inner="ndjson")
    assert files["search.ndjson"] == expected(30)
    assert files["manifest.json"]["spec"]["sources"][0]["body"]["key"] in ("${SEARCH_KEY}", "***")
    assert {b["key"] for b in posted(api, "/search")} == {SEARCH_KEY}  # the value did travel

    wrong = "Wr0ng-b0dy-K3Y-5150"  # the API echoes a wrong key in its 403 answer
    bad = cli("run", str(write_spec(tmp_path / "bad.json", spec)), "-o", "bad.zip", env={"SEARCH_KEY": wrong})
    assert bad.code == 1, bad.stderr
    summary = bad.summary
    assert summary["status"] == "failed" and "HTTP 403" in summary["error"] and "***" in summary["error"]
    assert summary["failed_pages"][0]["status"] == 403 and "/search" in summary["failed_pages"][0]["url"]
    with pytest.raises(JobFailed) as info:
        run_job(spec, env={"SEARCH_KEY": wrong})
    assert "unknown search key '***'" in info.value.message
    shown = {
        "cli stdout": bad.stdout.encode(),
        "cli stderr": bad.stderr.encode(),
        "JobFailed": json.dumps(info.value.as_dict()).encode(),
        **all_bytes_under(tmp_path),
    }
    shown["ok stdout"], shown["ok stderr"] = ok.stdout.encode(), ok.stderr.encode()
    leaks = [(name, s) for name, data in shown.items() for s in (wrong, SEARCH_KEY) if s.encode() in data]
    assert not leaks


def test_post_body_pagination_through_the_cli(api, cli, tmp_path):
    pagination = {
        "type": "page",
        "param": "page.number",
        "size_param": "page.size",
        "size": 25,
        "total_pages": "meta.total_pages",
    }
    spec = job(search_source(api, {"filter": {"n": 240}}, pagination))
    run = cli("run", str(write_spec(tmp_path / "s.json", spec)), "-o", "out.ndjson", "--workers", "2")
    assert run.code == 0, run.stderr
    assert run.summary["rows"] == 240 and run.summary["requests"] == 10 and run.summary["pages"] == 10
    assert read_export(tmp_path / "out.ndjson", "ndjson") == expected(240)
    assert sorted(b["page"]["number"] for b in posted(api, "/search")) == list(range(1, 11))


# ====================================================================== GraphQL


def test_graphql_cursor_pagination_stops_on_has_more(api, run_job):
    result = run_job(job(graphql_source(api, {"n": 95})))
    assert read_export(result.output, "ndjson") == expected(95)
    bodies = posted(api, "/graphql")
    # the API's last page still has an endCursor: only hasNextPage=false ends the sequence
    assert len(bodies) == 10 and result.requests == 10
    assert all(
        b["query"] == GRAPHQL_QUERY and b["variables"]["first"] == 10 and b["variables"]["n"] == 95 for b in bodies
    )
    assert "after" not in bodies[0]["variables"]
    assert [decode_cursor(b["variables"]["after"]) for b in bodies[1:]] == list(range(10, 100, 10))
    log = api.log(path="/graphql")
    assert all(e["query"] == {} for e in log)  # a GraphQL POST puts nothing in the query string


def test_graphql_ids_fan_out_each_id_in_the_variables(api, run_job):
    owners = [4, 9]
    source = graphql_source(api, {"owner": "{id}", "k": 23}, ids={"values": owners})
    # minified, as clients send it: `{id}` here is a selection set, not the fan-out's mark
    source["graphql"]["query"] = COMPACT_QUERY
    result = run_job(job(source))
    rows = read_export(result.output, "ndjson")
    assert rows == [{ID_COLUMN: owner, **flat(r)} for owner in owners for r in owner_records(owner, 23)]
    bodies = posted(api, "/graphql")
    assert sorted(b["variables"]["owner"] for b in bodies) == [4, 4, 4, 9, 9, 9] and result.requests == 6
    assert {b["query"] for b in bodies} == {COMPACT_QUERY}


def test_graphql_page_numbers_in_the_variables_with_the_total(api, run_job):
    # no `size`: the page size (the query's `first`) is learned from page 1, and with it the
    # total number of pages from totalCount; size_param's default is never sent, so it need not
    # be a variable
    source = graphql_source(api, {"first": 10, "n": 100})
    source["pagination"] = {"type": "page", "param": "variables.page", "total_records": "data.items.totalCount"}
    result = run_job(job(source))
    assert read_export(result.output, "ndjson") == expected(100)
    bodies = posted(api, "/graphql")
    assert sorted(b["variables"]["page"] for b in bodies) == list(range(1, 11))  # page 10 is full: no 11
    assert all(set(b["variables"]) == {"first", "n", "page"} for b in bodies) and result.requests == 10


def test_graphql_through_the_cli(api, cli, tmp_path):
    spec = job(graphql_source(api, {"n": 57}))
    run = cli("run", str(write_spec(tmp_path / "g.json", spec)), "-o", "g.ndjson")
    assert run.code == 0, run.stderr
    assert run.summary["rows"] == 57 and run.summary["requests"] == 6
    assert read_export(tmp_path / "g.ndjson", "ndjson") == expected(57)


@pytest.mark.parametrize("mode", ["data-null", "partial"])
def test_graphql_errors_fail_the_job_naming_the_first_message(api, run_job, mode):
    # page 3 answers 200 with an `errors` list (beside its data, with fail_mode=partial)
    params = {"fail_page": 3, **({"fail_mode": "partial"} if mode == "partial" else {})}
    source = graphql_source(api, {"n": 95}, path="/graphql")
    source["url"] = api.url("/graphql", **params)
    with pytest.raises(JobFailed) as info:
        run_job(job(source, retry={"attempts": 2, "backoff": 0.01}))
    error = info.value
    assert "items resolver failed on page 3" in error.message, error.message
    assert error.pages and error.pages[0].status == 200 and "/graphql" in error.pages[0].url
    assert "items resolver failed on page 3" in error.pages[0].error
    # the sequence stopped at the failed page: nothing after page 3 was asked for
    afters = [b["variables"].get("after") for b in posted(api, "/graphql")]
    assert {decode_cursor(a) if a else 0 for a in afters} <= {0, 10, 20}


def test_graphql_errors_fail_the_cli_run(api, cli, tmp_path):
    source = graphql_source(api, {"n": 40, "failPage": 1})
    run = cli("run", str(write_spec(tmp_path / "g.json", job(source))), "-o", "g.ndjson")
    assert run.code == 1, run.stderr
    summary = run.summary
    assert summary["status"] == "failed" and "items resolver failed on page 1" in summary["error"]
    assert summary["failed_pages"][0]["status"] == 200
    assert not (tmp_path / "g.ndjson").exists()


def test_graphql_query_errors_fail_on_the_first_page(api, run_job):
    source = graphql_source(api, {"n": 10})
    source["graphql"]["query"] = "query { things { id } }"  # the API knows no such field
    with pytest.raises(JobFailed) as info:
        run_job(job(source, retry={"attempts": 1}))
    assert "Cannot query field" in info.value.message


def test_graphql_empty_errors_list_is_not_an_error(api, run_job):
    source = graphql_source(api, {"n": 35})
    source["url"] = api.url("/graphql", empty_errors=1)
    result = run_job(job(source))
    assert read_export(result.output, "ndjson") == expected(35) and result.requests == 4


# ====================================================================== values from headers


def test_total_pages_from_a_header_plans_pages_in_parallel(api, run_job):
    # 100 records, pages of 10: page 10 is full, so only the header's total says it is the
    # last; each page takes 150 ms, so with the total known the pages are asked side by side.
    source = {
        "url": api.url("/header-totals", n=100, delay_ms=150),
        "pagination": {"type": "page", "size": 10, "total_pages": "header:X-Total-Pages"},
    }
    result = run_job(job(source))
    assert read_export(result.output, "ndjson") == expected(100)
    log = api.log(path="/header-totals")
    assert sorted(int(e["query"]["page"]) for e in log) == list(range(1, 11))
    assert result.requests == 10 and result.pages == 10
    assert max_overlap(log) >= 3, log


def test_total_records_from_a_header_for_offsets(api, run_job):
    source = {
        "url": api.url("/header-totals", n=100),
        "pagination": {"type": "offset", "size": 10, "total_records": "header:x-total-count"},
    }
    result = run_job(job(source))
    assert read_export(result.output, "ndjson") == expected(100)
    assert sorted(int(e["query"]["offset"]) for e in api.log(path="/header-totals")) == list(range(0, 100, 10))
    assert result.requests == 10


@pytest.mark.parametrize("kind", ["cursor", "next_url"])
def test_next_page_from_a_header(api, run_job, kind):
    if kind == "cursor":
        pagination = {"type": "cursor", "next": "header:X-Next-Cursor", "size_param": "size", "size": 10}
        url = api.url("/header-cursor", n=95)
    else:
        pagination = {"type": "next_url", "next": "header:X-Next-Url"}
        url = api.url("/header-cursor", n=95, size=10)
    result = run_job(job({"url": url, "pagination": pagination}))
    assert read_export(result.output, "ndjson") == expected(95)
    log = api.log(path="/header-cursor")
    cursors = [e["query"].get("cursor") for e in log]
    assert cursors[0] is None and [decode_cursor(c) for c in cursors[1:]] == list(range(10, 100, 10))
    assert all(e["query"]["size"] == "10" and e["query"]["n"] == "95" for e in log)
    assert len(log) == 10 and result.requests == 10


# ====================================================================== combinations refused


BAD = {
    "body-with-get": ({"method": "GET", "body": {"q": 1}}, "sources.0.body", "POST"),
    "body-default-method": ({"body": {"q": 1}}, "sources.0.body", "POST"),
    "body-not-an-object": ({"method": "POST", "body": [1, 2]}, "sources.0.body", "JSON object"),
    "in-body-without-body": (
        {"method": "POST", "pagination": {"type": "page", "in": "body", "param": "page.number"}},
        "sources.0.pagination.in",
        "body",
    ),
    "graphql-and-body": (
        {"graphql": {"query": "{ items }"}, "body": {"q": 1}},
        "sources.0.body",
        "graphql",
    ),
    "graphql-get": ({"method": "GET", "graphql": {"query": "{ items }"}}, "sources.0.method", "POST"),
    "graphql-param-not-a-variable": (
        {"graphql": {"query": "{ items }"}, "pagination": {"type": "cursor", "param": "after"}},
        "sources.0.pagination.param",
        "variables.",
    ),
    "graphql-in-query": (
        {
            "graphql": {"query": "{ items }"},
            "pagination": {"type": "cursor", "param": "variables.after", "in": "query"},
        },
        "sources.0.pagination.in",
        "variables",
    ),
    "in-with-next-url": (
        {"method": "POST", "body": {}, "pagination": {"type": "next_url", "in": "body"}},
        "sources.0.pagination.in",
        "does not apply",
    ),
    "header-without-name": (
        {"pagination": {"type": "page", "total_pages": "header:"}},
        "sources.0.pagination.total_pages",
        "header name",
    ),
    "has-more-on-pages": (
        {"pagination": {"type": "page", "has_more": "meta.more"}},
        "sources.0.pagination.has_more",
        "does not apply",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_combinations_that_cannot_work_are_refused_naming_the_field(case):
    fields, field, words = BAD[case]
    with pytest.raises(SpecError) as info:
        parse_spec({"sources": [{"url": "https://api.example.com/search", **fields}]})
    by_field = {d.field: d.message for d in info.value.details}
    assert field in by_field, info.value.details
    assert words in by_field[field], by_field


def test_validate_names_the_field_of_a_body_on_a_get(cli, tmp_path):
    spec = {"sources": [{"url": "https://api.example.com/search", "body": {"q": 1}}]}
    run = cli("validate", str(write_spec(tmp_path / "s.json", spec)))
    assert run.code == 2
    assert "sources.0.body" in run.stdout + run.stderr


def test_the_search_api_refuses_paging_in_the_query(api, run_job):
    # The guard the tests above rely on: pagination sent in the query instead of the body
    # cannot pass by accident.
    source = search_source(api, {"filter": {"n": 30}}, {"type": "page", "size": 10})
    source["pagination"]["in"] = "query"
    with pytest.raises(JobFailed) as info:
        run_job(job(source, retry={"attempts": 1}))
    assert "HTTP 400" in info.value.message and "not the query" in info.value.message
    assert {e["status"] for e in api.log(path="/search")} == {400}
