"""An API with its own quota that says so in rate-limit headers, and one that asks for a pause.

Endpoints are registered in `ROUTES` (path -> async handler(request, q, entry)); `reset()` is
called by `POST /_reset` (it forgets every quota and stall). Bodies are `/items/page`'s:
`{"data": [records.record(i) ...], "meta": {"page", "per_page", "total_pages", "total_records"}}`
for `page`, `per_page` (default 100) and `n` (default 1000). A bad parameter answers **400**
`{"error": "bad_parameter", "message": ...}`.

`GET /quota/items?page=P&per_page=S&n=N&limit=L&window=W&kind=fixed|sliding&reset=...&names=...`
    At most `limit` requests (default 20) in `window` seconds (default 2), counted as they
    arrive; a request over the quota answers **429** `{"error": "rate_limited"}` with
    `Retry-After` (whole seconds, rounded up) and is not counted. `kind=fixed` (default): windows
    of `window` seconds starting at multiples of `window` on the server's clock (Unix time), and
    the reset is the window's end; `kind=sliding`: the last `window` seconds, and the reset is
    when the oldest counted request leaves them (when `Remaining` rises again). Every answer,
    429s included, carries `…-Limit: L`, `…-Remaining: <left after this request>` and
    `…-Reset`, named `X-RateLimit-*` (`names=x`, default) or `RateLimit-*` (`names=ietf`).
    `reset=delta` (default): seconds until the reset, three decimals; `reset=ceil`: whole
    seconds, rounded up; `reset=floor`: whole seconds, rounded down (the quota resets up to a
    second later than said); `reset=epoch`: the Unix time of the reset, whole seconds, rounded up.
    Quotas are kept per `key` (default `default`); the log entry also holds `"remaining"`.

`GET /quota/stall?page=P&per_page=S&n=N&stall_page=K&retry_after=R`
    The first request for page `K` (default 2) answers **503** `{"error": "unavailable"}` with
    `Retry-After: R` (default 1); every other request answers normally. `/_reset` forgets it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from .records import page_range, record, total_pages

KINDS = ("fixed", "sliding")
RESETS = ("delta", "ceil", "floor", "epoch")
NAMES = {"x": "X-RateLimit-", "ietf": "RateLimit-"}


@dataclass
class _Quota:
    window_index: int = -1  # fixed: the window being counted
    count: int = 0  # fixed: requests counted in it
    arrivals: deque = field(default_factory=deque)  # sliding: arrival times counted


_quotas: dict[str, _Quota] = {}
_stalled: set[tuple] = set()


def reset() -> None:
    """Forget all per-run state (called by `POST /_reset`)."""
    _quotas.clear()
    _stalled.clear()


class _Bad(Exception):
    pass


def _json(status: int, obj, headers: dict | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(obj), headers={"Content-Type": "application/json", **(headers or {})}
    )


def _number(q, name: str, default: float, kind=int, minimum: float = 0):
    raw = q.get(name)
    if raw in (None, ""):
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise _Bad(f"{name}: not a number: {raw!r}") from None
    if value < minimum:
        raise _Bad(f"{name}: must be >= {minimum}")
    return value


def _choice(q, name: str, allowed) -> str:
    value = q.get(name) or next(iter(allowed))
    if value not in allowed:
        raise _Bad(f"{name}: one of {', '.join(allowed)}")
    return value


def _page(q) -> dict:
    page, per, n = _number(q, "page", 1, minimum=1), _number(q, "per_page", 100, minimum=1), _number(q, "n", 1000)
    data = [record(i) for i in page_range(page, per, n)]
    return {
        "data": data,
        "meta": {"page": page, "per_page": per, "total_pages": total_pages(n, per), "total_records": n},
    }


def count(quota: _Quota, kind: str, limit: int, window: float, now: float) -> tuple[bool, int, float]:
    """Count one arrival at `now`: (allowed, remaining after it, when the quota resets)."""
    if kind == "fixed":
        index = math.floor(now / window)
        if index != quota.window_index:
            quota.window_index, quota.count = index, 0
        allowed = quota.count < limit
        quota.count += allowed
        return allowed, limit - quota.count, (index + 1) * window
    arrivals = quota.arrivals
    while arrivals and arrivals[0] <= now - window:
        arrivals.popleft()
    allowed = len(arrivals) < limit
    if allowed:
        arrivals.append(now)
    return allowed, limit - len(arrivals), (arrivals[0] + window) if arrivals else now


async def items(request, q, entry) -> web.Response:
    try:
        limit, window = _number(q, "limit", 20, minimum=1), _number(q, "window", 2.0, float, 0.001)
        kind, style, names = _choice(q, "kind", KINDS), _choice(q, "reset", RESETS), _choice(q, "names", NAMES)
        body = _page(q)
    except _Bad as exc:
        return _json(400, {"error": "bad_parameter", "message": str(exc)})
    now = time.time()
    allowed, remaining, reset_at = count(
        _quotas.setdefault(q.get("key", "default"), _Quota()), kind, limit, window, now
    )
    entry["remaining"] = remaining
    if style == "delta":
        reset = f"{max(0.0, reset_at - now):.3f}"
    elif style in ("ceil", "floor"):
        rounded = math.ceil if style == "ceil" else math.floor
        reset = str(rounded(max(0.0, reset_at - now)))
    else:
        reset = str(math.ceil(reset_at))
    prefix = NAMES[names]
    headers = {f"{prefix}Limit": str(limit), f"{prefix}Remaining": str(remaining), f"{prefix}Reset": reset}
    if not allowed:
        headers["Retry-After"] = str(max(1, math.ceil(reset_at - now)))
        return _json(429, {"error": "rate_limited"}, headers)
    return _json(200, body, headers)


async def stall(request, q, entry) -> web.Response:
    try:
        body = _page(q)
        stall_page = _number(q, "stall_page", 2, minimum=1)
        retry_after = q.get("retry_after", "1")
    except _Bad as exc:
        return _json(400, {"error": "bad_parameter", "message": str(exc)})
    key = (body["meta"]["page"], body["meta"]["per_page"], body["meta"]["total_records"])
    if key[0] == stall_page and key not in _stalled:
        _stalled.add(key)
        return _json(503, {"error": "unavailable"}, {"Retry-After": retry_after})
    return _json(200, body)


ROUTES: dict = {"/quota/items": items, "/quota/stall": stall}
