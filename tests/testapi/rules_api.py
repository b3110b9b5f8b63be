"""Answers for response rules: missing children, "busy" bodies in a 200, error bodies to quote,
a GraphQL error.

Endpoints are registered in `ROUTES` (path -> async handler(request, q, entry)); `reset()` is
called by `POST /_reset`. Records come from `tests.testapi.records`, so tests compute what to
expect without the server. A bad parameter answers **400** `{"error": "bad_parameter",
"message": ...}`.

`GET /rules/children?id=N&page=P&per_page=S&k=K`
    Owner N's records (`records.owner_records(N, k)`, `k` default 3), paged like
    `/items/by-id`: `{"data": [...], "meta": {"page", "per_page", "total_pages",
    "total_records"}}` (`per_page` default 100). `missing=2,5`: those owners do not exist - every
    page of theirs answers **404** `{"error": "not_found", "message": "no owner N"}`.
    `gone_page=G`: pages G and later of every owner answer that 404 too.

`GET /rules/feed?cursor=C&size=S&n=N&gone_after=G`
    Cursor pages of records `1..n` as `/items/cursor` (`{"data": [...], "next_cursor": ...}`,
    cursors `records.encode_cursor(offset)`, `size` default 100). `gone_after=G`: the pages after
    the G-th (offset >= G * size) answer **404** `{"error": "not_found", "message": "cursor
    expired"}`.

`GET /rules/busy?page=P&per_page=S&n=N&busy=B&code=RATE_LIMITED&status=200`
    `/items/page`'s pages, except that the first `B` requests (default 1) for each page answer
    `status` (default 200) with `{"error": {"code": "<code>", "message": "slow down"}}` - a JSON
    body with no list of records. Requests are counted per page (`page`, `per_page`, `n`, `code`);
    `/_reset` forgets the counts. `only_page=K`: only page K is busy.

`GET /rules/fail?status=S&lead=L&pad=P`
    Answers `status` (default 403) with a text body: `L` dots (default 0), then
    `denied: <the Authorization header as sent> may not read this`, then `P` repetitions of
    `"\\n\\t lorem ipsum"` (default 40) - whitespace a quote collapses, a credential it must mask,
    and more text than it may quote.

`GET|POST /rules/graphql`
    Always **200** `{"data": null, "errors": [{"message": "Cannot query field \\"nope\\" on type
    \\"Query\\".", "locations": [...]}, {"message": "second problem"}]}`.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from .records import (
    decode_cursor,
    encode_cursor,
    offset_range,
    owner_ids,
    owner_record,
    page_range,
    record,
    total_pages,
)

GRAPHQL_MESSAGE = 'Cannot query field "nope" on type "Query".'
BUSY_BODY_MESSAGE = "slow down"

_busy_seen: dict[tuple, int] = {}


def reset() -> None:
    """Forget all per-run state (called by `POST /_reset`)."""
    _busy_seen.clear()


def _json(status: int, obj) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(obj), headers={"Content-Type": "application/json"})


class _Bad(Exception):
    pass


def _int(q, name: str, default: int, minimum: int = 0) -> int:
    raw = q.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _Bad(f"{name}: not an integer: {raw!r}") from None
    if value < minimum:
        raise _Bad(f"{name}: must be >= {minimum}")
    return value


def _guarded(handler):
    async def run(request, q, entry) -> web.Response:
        try:
            return await handler(request, q, entry)
        except _Bad as exc:
            return _json(400, {"error": "bad_parameter", "message": str(exc)})

    return run


def _meta(page: int, per: int, total: int) -> dict:
    return {"page": page, "per_page": per, "total_pages": total_pages(total, per), "total_records": total}


@_guarded
async def children(request, q, entry) -> web.Response:
    owner = _int(q, "id", -1)
    page, per, k = _int(q, "page", 1, 1), _int(q, "per_page", 100, 1), _int(q, "k", 3)
    missing = {int(v) for v in q.get("missing", "").split(",") if v.strip().lstrip("-").isdigit()}
    gone = _int(q, "gone_page", 0)
    if owner in missing or (gone and page >= gone):
        return _json(404, {"error": "not_found", "message": f"no owner {owner}"})
    ids = owner_ids(owner, k)
    data = [owner_record(owner, ids[i - 1]) for i in page_range(page, per, k)]
    return _json(200, {"data": data, "meta": _meta(page, per, k)})


@_guarded
async def feed(request, q, entry) -> web.Response:
    size, n, gone = _int(q, "size", 100, 1), _int(q, "n", 1000), _int(q, "gone_after", 0)
    cursor = q.get("cursor", "")
    try:
        offset = decode_cursor(cursor) if cursor else 0
    except ValueError:
        raise _Bad(f"cursor: invalid cursor {cursor!r}") from None
    if gone and offset >= gone * size:
        return _json(404, {"error": "not_found", "message": "cursor expired"})
    data = [record(i) for i in offset_range(offset, size, n)]
    following = encode_cursor(offset + size) if offset + size < n else None
    return _json(200, {"data": data, "next_cursor": following})


@_guarded
async def busy(request, q, entry) -> web.Response:
    page, per, n = _int(q, "page", 1, 1), _int(q, "per_page", 100, 1), _int(q, "n", 1000)
    code = q.get("code", "RATE_LIMITED")
    key = (page, per, n, code)
    seen = _busy_seen.get(key, 0)
    _busy_seen[key] = seen + 1
    only = _int(q, "only_page", 0)
    if seen < _int(q, "busy", 1) and only in (0, page):
        return _json(_int(q, "status", 200, 100), {"error": {"code": code, "message": BUSY_BODY_MESSAGE}})
    return _json(200, {"data": [record(i) for i in page_range(page, per, n)], "meta": _meta(page, per, n)})


@_guarded
async def fail(request, q, entry) -> web.Response:
    status = _int(q, "status", 403, 100)
    text = "." * _int(q, "lead", 0)
    text += f"denied: {request.headers.get('Authorization', '')} may not read this"
    text += "\n\t lorem ipsum" * _int(q, "pad", 40)
    return web.Response(status=status, text=text, content_type="text/plain")


async def graphql(request, q, entry) -> web.Response:
    await request.read()
    errors = [
        {"message": GRAPHQL_MESSAGE, "locations": [{"line": 1, "column": 3}]},
        {"message": "second problem"},
    ]
    return _json(200, {"data": None, "errors": errors})


ROUTES: dict = {
    "/rules/children": children,
    "/rules/feed": feed,
    "/rules/busy": busy,
    "/rules/fail": fail,
    "/rules/graphql": graphql,
}
