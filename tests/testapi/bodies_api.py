"""Request bodies, GraphQL and values from headers: endpoints whose paging is not in the query.

Endpoints are registered in `ROUTES` (path -> async handler(request, q, entry)); `reset()` is
called by `POST /_reset`. Records are `records.record(i)`, so tests compute what to expect
without the server. The log entry of `/search` and `/graphql` also holds `"json"`: the request
body as parsed (or null), so a test can check what was posted, page by page.

## `POST /search` - a search API paged through its JSON body

Strict on purpose, so that parameters sent in the query instead of the body cannot pass:
a method other than POST, a `Content-Type` other than `application/json`, a body that is not
a JSON object, or any query parameter other than `flaky` (below), `delay_ms` and the fault
parameters (which work as everywhere) answers **400** `{"error": "<what is wrong>"}`.

```json
{"filter": {"n": 95},                        // the dataset: ids 1..n (default 1000), or
 "filter": {"owner": 7, "k": 25},            //   owner 7's records (records.owner_records; k default 3)
 "page": {"number": 2, "size": 10},          // page mode: 1-based page number, size (default 100)
 "page": {"offset": 10, "limit": 10},        //   or offset mode
 "page": {"after": "<cursor>", "size": 10},  //   or cursor mode (absent/null after: the first page)
 "key": "..."}                               // optional; when present it must be SEARCH_KEY
```

Query `flaky=1`: the first request with a given body (compared as JSON) answers **503**
`{"error": "flaky: ..."}`, every later one answers normally (`/_reset` forgets the bodies), so a
retry that does not resend its body shows. Modes cannot be mixed (400). `filter.owner` must
be a JSON integer (a string is 400: a fan-out id substituted into a body keeps its type).
Without `page`: page 1 of 100. A wrong `key` answers **403**
`{"error": "unknown search key '<the key as sent>'"}` (echoed on purpose: a client must mask it
in its own error messages). Answer:

```json
{"data": [records of ids offset+1 .. min(offset+size, total)],
 "meta": {"offset": O, "size": S, "page": O // S + 1, "total_pages": ceil(total / S),
          "total_records": total, "next_cursor": "<cursor of offset O+S>" | null}}
```

`next_cursor` (every mode) is null once the page reaches the end; cursors are
`records.encode_cursor(offset)`. Past the end `data` is `[]`.

## `POST /graphql` - a GraphQL endpoint with cursor connections

Posted `{"query": "...", "variables": {...}}` (`application/json`; anything else, a GET, or a
query parameter other than the ones below, `delay_ms` and the fault parameters, is **400**
`{"error": ...}`). The query text is not parsed; it must mention `items`, otherwise the
answer is 200 with `{"data": null, "errors": [{"message": "Cannot query field ... on type
\\"Query\\""}]}` like a real server. Variables: `first` (page size, default 100), `after`
(cursor, absent/null = the start) or `page` (1-based page number, not with `after`), `n`
(dataset size, default 1000) or `owner` (a JSON integer) with `k` (default 3). Answer:

```json
{"data": {"items": {"nodes": [records], "totalCount": total,
                    "pageInfo": {"hasNextPage": bool, "endCursor": "<cursor>" | null}}}}
```

`endCursor` is the cursor after the last node - **also on the last page** (as GraphQL servers
do), so only `hasNextPage` says the end was reached; it is null only when `nodes` is empty.

Errors: variable `failPage` (or query `fail_page=K`) makes page K (`after // first + 1`)
answer **200** `{"data": null, "errors": [{"message": "items resolver failed on page K",
"path": ["items"]}, {"message": "second error on page K"}]}`; with query `fail_mode=partial` the
same errors come beside the page's normal `data`. Query `empty_errors=1` adds `"errors": []` to
every successful answer (an empty list is no error).

## Values in headers

- `GET /header-totals?page=P&per_page=S&n=N` (or `offset=O&limit=L`): the body is a bare JSON
  list of records (ids as `/items/page` or `/items/offset`), the totals only in headers:
  `X-Total-Count: N`, `X-Total-Pages: ceil(N / S)`. `hide_total=1` omits both.
- `GET /header-cursor?cursor=C&size=S&n=N`: a bare JSON list of records (as `/items/cursor`);
  the next cursor only in the header `X-Next-Cursor`, and the next page's URL (relative, every
  other query parameter kept) in `X-Next-Url`; both absent on the last page.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web

from .records import decode_cursor, encode_cursor, offset_range, owner_records, record

SEARCH_KEY = "s3arch-b0dy-KEY-7781"  # the one key /search accepts (tests/integration/test_bodies_graphql.py)
# The only query parameters /search takes: the common test API ones (delay, faults) and flaky.
SEARCH_QUERY = frozenset(
    {"delay_ms", "fail_rate", "fault", "fail_times", "fail_all", "seed", "retry_after", "retry_after_date"}
    | {"slow_ms", "flaky"}
)
GRAPHQL_QUERY = (SEARCH_QUERY - {"flaky"}) | {"fail_page", "fail_mode", "empty_errors"}
MAX_SIZE = 10_000
_FLAKY_SEEN: set[bytes] = set()  # /search?flaky=1: bodies answered once with a 503


class _Refused(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status


def _json(status: int, doc: Any, headers: dict | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(doc), headers={"Content-Type": "application/json", **(headers or {})}
    )


def _whole(value: Any, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    """A JSON integer (not a bool, not a string) within bounds."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Refused(f"{name} must be a JSON integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise _Refused(f"{name} out of range: {value}")
    return value


def _query_int(q, name: str, default: int, minimum: int) -> int:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _Refused(f"{name}: not an integer: {raw!r}") from None
    if value < minimum:
        raise _Refused(f"{name} must be >= {minimum}")
    return value


async def _posted_json(request, entry) -> dict:
    """The request's JSON object body, recorded in the log entry; refused unless a JSON POST."""
    raw = await request.read()
    try:
        doc = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        doc = None
    entry["json"] = doc
    if request.method != "POST":
        raise _Refused(f"{request.path} takes a POST with a JSON body, not a {request.method}")
    if request.content_type != "application/json":
        raise _Refused(f"Content-Type must be application/json, not {request.content_type!r}")
    if not isinstance(doc, dict):
        raise _Refused("the body must be a JSON object")
    return doc


class _Dataset:
    """Ids 1..n, or one owner's records (`records.owner_records`)."""

    def __init__(self, spec: dict, where: str):
        if not isinstance(spec, dict):
            raise _Refused(f"{where} must be a JSON object")
        if "owner" in spec:
            self.owner: int | None = _whole(spec.get("owner"), f"{where}.owner", 0, 0)
            self.total = _whole(spec.get("k"), f"{where}.k", 3, 0, MAX_SIZE)
        else:
            self.owner = None
            self.total = _whole(spec.get("n"), f"{where}.n", 1000, 0, 10_000_000)

    def slice(self, offset: int, size: int) -> list[dict]:
        if self.owner is None:
            return [record(i) for i in offset_range(offset, size, self.total)]
        return owner_records(self.owner, self.total)[offset : offset + size]


def _cursor_offset(cursor: Any, name: str) -> int:
    if cursor is None or cursor == "":
        return 0
    if not isinstance(cursor, str):
        raise _Refused(f"{name} must be a string cursor")
    try:
        return decode_cursor(cursor)
    except ValueError:
        raise _Refused(f"{name}: invalid cursor {cursor!r}") from None


def _window(page: Any) -> tuple[int, int]:
    """(offset, size) from the body's `page` object, in whichever of its three modes."""
    if page is None:
        return 0, 100
    if not isinstance(page, dict):
        raise _Refused("page must be a JSON object")
    modes = [
        m
        for m, keys in (("number", ("number",)), ("offset", ("offset", "limit")), ("after", ("after",)))
        if any(k in page for k in keys)
    ]
    if len(modes) > 1:
        raise _Refused(f"page mixes modes: {', '.join(modes)}")
    if modes == ["offset"]:
        if "size" in page:
            raise _Refused("page: offset mode takes limit, not size")
        return _whole(page.get("offset"), "page.offset", 0, 0), _whole(
            page.get("limit"), "page.limit", 100, 1, MAX_SIZE
        )
    size = _whole(page.get("size"), "page.size", 100, 1, MAX_SIZE)
    if modes == ["after"]:
        return _cursor_offset(page.get("after"), "page.after"), size
    return (_whole(page.get("number"), "page.number", 1, 1) - 1) * size, size


async def search(request, q, entry) -> web.Response:
    try:
        doc = await _posted_json(request, entry)
        in_query = sorted(set(q.keys()) - SEARCH_QUERY)
        if in_query:
            raise _Refused(f"/search takes its parameters in the body, not the query ({', '.join(in_query)})")
        unknown = sorted(set(doc) - {"filter", "page", "key"})
        if unknown:
            raise _Refused(f"unknown body field(s): {', '.join(unknown)}")
        if "key" in doc and doc["key"] != SEARCH_KEY:
            raise _Refused(f"unknown search key {doc['key']!r}", 403)
        dataset = _Dataset(doc.get("filter") or {}, "filter")
        offset, size = _window(doc.get("page"))
    except _Refused as exc:
        return _json(exc.status, {"error": exc.message})
    if q.get("flaky", "0") not in ("", "0"):
        seen = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        if seen not in _FLAKY_SEEN:
            _FLAKY_SEEN.add(seen)
            return _json(503, {"error": "flaky: the first request with this body fails, try again"})
    more = offset + size < dataset.total
    meta = {
        "offset": offset,
        "size": size,
        "page": offset // size + 1,
        "total_pages": math.ceil(dataset.total / size),
        "total_records": dataset.total,
        "next_cursor": encode_cursor(offset + size) if more else None,
    }
    return _json(200, {"data": dataset.slice(offset, size), "meta": meta})


async def graphql(request, q, entry) -> web.Response:
    try:
        doc = await _posted_json(request, entry)
        in_query = sorted(set(q.keys()) - GRAPHQL_QUERY)
        if in_query:
            raise _Refused(f"/graphql takes its variables in the body, not the query ({', '.join(in_query)})")
        query = doc.get("query")
        if not isinstance(query, str) or not query.strip():
            raise _Refused("a GraphQL request needs a query (a non-empty string)")
        variables = doc.get("variables") or {}
        if not isinstance(variables, dict):
            raise _Refused("variables must be a JSON object")
        if "items" not in query:
            return _json(200, {"data": None, "errors": [{"message": 'Cannot query field on type "Query"'}]})
        dataset = _Dataset(variables, "variables")
        first = _whole(variables.get("first"), "variables.first", 100, 1, MAX_SIZE)
        if variables.get("page") is not None and variables.get("after") is not None:
            raise _Refused("variables: give page or after, not both")
        if variables.get("page") is not None:
            offset = (_whole(variables.get("page"), "variables.page", 1, 1) - 1) * first
        else:
            offset = _cursor_offset(variables.get("after"), "variables.after")
        fail_page = _whole(variables.get("failPage"), "variables.failPage", 0, 0) or _query_int(q, "fail_page", 0, 0)
    except _Refused as exc:
        return _json(exc.status, {"error": exc.message})
    nodes = dataset.slice(offset, first)
    page_info = {
        "hasNextPage": offset + first < dataset.total,
        "endCursor": encode_cursor(offset + len(nodes)) if nodes else None,
    }
    answer: dict[str, Any] = {"data": {"items": {"nodes": nodes, "totalCount": dataset.total, "pageInfo": page_info}}}
    page = offset // first + 1
    if fail_page and page == fail_page:
        errors = [
            {"message": f"items resolver failed on page {page}", "path": ["items"]},
            {"message": f"second error on page {page}"},
        ]
        answer = {**(answer if q.get("fail_mode") == "partial" else {"data": None}), "errors": errors}
    elif q.get("empty_errors", "0") not in ("", "0"):
        answer["errors"] = []
    return _json(200, answer)


async def header_totals(request, q, entry) -> web.Response:
    try:
        n = _query_int(q, "n", 1000, 0)
        if "offset" in q or "limit" in q:
            offset, size = _query_int(q, "offset", 0, 0), _query_int(q, "limit", 100, 1)
        else:
            size = _query_int(q, "per_page", 100, 1)
            offset = (_query_int(q, "page", 1, 1) - 1) * size
    except _Refused as exc:
        return _json(exc.status, {"error": exc.message})
    headers = {}
    if q.get("hide_total", "0") in ("", "0"):
        headers = {"X-Total-Count": str(n), "X-Total-Pages": str(math.ceil(n / size))}
    return _json(200, [record(i) for i in offset_range(offset, size, n)], headers)


async def header_cursor(request, q, entry) -> web.Response:
    try:
        n, size = _query_int(q, "n", 1000, 0), _query_int(q, "size", 100, 1)
        offset = _cursor_offset(q.get("cursor"), "cursor")
    except _Refused as exc:
        return _json(exc.status, {"error": exc.message})
    headers = {}
    if offset + size < n:
        following = encode_cursor(offset + size)
        rest = [(k, v) for k, v in q.items() if k != "cursor"]
        headers = {
            "X-Next-Cursor": following,
            "X-Next-Url": f"{request.path}?{urlencode([*rest, ('cursor', following)])}",
        }
    return _json(200, [record(i) for i in offset_range(offset, size, n)], headers)


ROUTES: dict = {
    "/search": search,
    "/graphql": graphql,
    "/header-totals": header_totals,
    "/header-cursor": header_cursor,
}


def reset() -> None:
    """Forget all per-run state (called by `POST /_reset`): the bodies `flaky=1` has seen."""
    _FLAKY_SEEN.clear()
