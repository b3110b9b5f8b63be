"""Parent -> child sources: a list of parents and the children of each parent.

Endpoints are registered in `ROUTES` (path -> async handler(request, q, entry)); `reset()` is
called by `POST /_reset`. Both endpoints are pure functions of their query (no state), and
the expected data is computed with the functions below (`parent_order`, `parent_record`,
`children_of`), so tests need no server to know what a run must produce.

`GET /parents?page=P&per_page=S&n=N&order=asc|desc&null_every=K`
    Parents `1..n` (default 1000), in ascending order or, `order=desc`, descending (so rows in
    the parents' order are not rows sorted by id). Paginated like `/items/page`:
    `{"data": [...], "meta": {"page", "per_page", "total_pages", "total_records"}}`
    (`per_page` default 100). A parent:
    `{"id": 7, "code": "P-00007", "name": "parent-7", "account": {"id": 1000007}}`;
    `null_every=K`: every parent whose id is a multiple of K has `"account": {"id": null}`;
    `links=1`: each parent also has `"href"`, the absolute URL of its children
    (`http://<host>/children?ids=7`).

`GET /children?ids=1,2,3&k=K&vary=0|1&page=P&per_page=S`
    The children of each listed parent, parents in the order given (a parent listed twice
    answers twice). `ids`: comma-separated parent ids - integers, codes (`P-00007`) or
    account ids (from 1,000,000 a value is an `account.id`: parent `value - 1000000`);
    anything else is `400 bad_parameter` (`X-Bad-Param: ids`). Parent `p` has `k` children
    (default 2), or with
    `vary=1` `p % 4` of them (none for multiples of 4). A child:
    `{"id": p*100 + j, "parent_id": p, "name": "child-p-j", "amount": p + j / 4}` (j = 1..).
    Without `per_page` every child is on one page; with it, pages as `/parents` (meta included).
    The child endpoint takes its ids as a query parameter: use it as
    `"url": ".../children?ids={id}"` (one parent or a batch) or `"url": ".../children"` with
    `"ids": {"param": "ids"}`. For a path form, `/items/by-id/{id}` answers an owner's records.
"""

from __future__ import annotations

import math

import orjson
from aiohttp import web

ACCOUNT_BASE = 1_000_000  # account ids: parent id + this


def parent_order(n: int, order: str = "asc") -> list[int]:
    """Parent ids in the order `/parents` lists them."""
    ids = list(range(1, n + 1))
    return ids[::-1] if order == "desc" else ids


def parent_record(i: int, null_every: int = 0) -> dict:
    account = None if null_every and i % null_every == 0 else ACCOUNT_BASE + i
    return {"id": i, "code": f"P-{i:05d}", "name": f"parent-{i}", "account": {"id": account}}


def child_count(parent: int, k: int = 2, vary: bool = False) -> int:
    return parent % 4 if vary else k


def children_of(parent: int, k: int = 2, vary: bool = False) -> list[dict]:
    return [
        {"id": parent * 100 + j, "parent_id": parent, "name": f"child-{parent}-{j}", "amount": parent + j / 4}
        for j in range(1, child_count(parent, k, vary) + 1)
    ]


def _json(status: int, body, headers: dict | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), headers={"Content-Type": "application/json", **(headers or {})}
    )


def _bad(name: str, message: str) -> web.Response:
    return _json(400, {"error": "bad_parameter", "message": message}, {"X-Bad-Param": name})


def _int(q, name: str, default: int, minimum: int) -> int:
    raw = q.get(name)
    if raw in (None, ""):
        return default
    value = int(raw)  # ValueError: answered as 400 by the caller
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}")
    return value


def _page(rows: list, page: int, per_page: int) -> tuple[list, dict]:
    total = len(rows)
    meta = {"page": page, "per_page": per_page, "total_pages": math.ceil(total / per_page), "total_records": total}
    return rows[(page - 1) * per_page : page * per_page], meta


async def parents(request, q, entry) -> web.Response:
    try:
        page, per_page = _int(q, "page", 1, 1), _int(q, "per_page", 100, 1)
        n, null_every = _int(q, "n", 1000, 0), _int(q, "null_every", 0, 0)
    except ValueError as exc:
        return _bad("page", str(exc))
    order = q.get("order", "asc")
    if order not in ("asc", "desc"):
        return _bad("order", "asc or desc")
    ids, meta = _page(parent_order(n, order), page, per_page)
    data = [parent_record(i, null_every) for i in ids]
    if q.get("links", "0") not in ("", "0", "false"):
        for row in data:
            row["href"] = f"{request.scheme}://{request.host}/children?ids={row['id']}"
    return _json(200, {"data": data, "meta": meta})


def _parent_of(text: str) -> int:
    text = text.strip()
    if text.startswith("P-"):
        text = text[2:]
    value = int(text)
    if value >= ACCOUNT_BASE:
        value -= ACCOUNT_BASE
    if value < 1:
        raise ValueError(text)
    return value


async def children(request, q, entry) -> web.Response:
    raw = q.get("ids", "")
    try:
        listed = [_parent_of(part) for part in raw.split(",")]
    except ValueError:
        return _bad("ids", f"not a list of parent ids: {raw[:100]!r}")
    entry["parents"] = len(listed)
    try:
        k, page = _int(q, "k", 2, 0), _int(q, "page", 1, 1)
        per_page = _int(q, "per_page", 0, 1) if q.get("per_page") else None
    except ValueError as exc:
        return _bad("k", str(exc))
    vary = q.get("vary", "0") not in ("", "0", "false")
    rows = [child for parent in listed for child in children_of(parent, k, vary)]
    if per_page is None:
        return _json(200, {"data": rows})
    data, meta = _page(rows, page, per_page)
    return _json(200, {"data": data, "meta": meta})


ROUTES: dict = {"/parents": parents, "/children": children}


def reset() -> None:
    """Forget all per-run state (called by `POST /_reset`); these endpoints keep none."""
