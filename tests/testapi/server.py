"""pageferry's local test API: a fast, deterministic paginated HTTP server.

Run as a separate process::

    python -m tests.testapi.server --port 0 --host 127.0.0.1

It prints exactly one line, ``READY <port>``, to stdout once it listens, and exits on
SIGTERM/SIGINT or within ~0.5 s of its parent process dying. Endpoints, parameters and
bodies are documented in ``tests/testapi/README.md``.

Design: one aiohttp low-level ``web.Server`` on a single event loop, one handler that
dispatches on the path (no router), access log off, bodies rendered with orjson and kept
in an LRU cache of rendered bytes keyed by the path and the query parameters that
determine the body (budget 512 MiB, ``--cache-mb``; ``POST /_warm`` pre-renders pages).
Every request except the control endpoints (``/_log``, ``/_reset``, ``/_stats``,
``/_health``, ``/_warm``) is logged on arrival.

Throughput (2-core build machine shared with other jobs, Python 3.11, aiohttp 3.14.5,
no uvloop; ``python -m tests.testapi.bench``: an aiohttp client in a separate process,
8 keep-alive connections issuing GETs back to back for 4-5 s):

- 100-record page (``/items/page?page=1&per_page=100&n=1000``, 23 KB), cached:
  **~3,500-4,600 requests/s** (85-105 MB/s) when the machine is otherwise idle; the
  server spends ~190-225 us of CPU per request (psutil cpu_times / requests), so one core
  saturates around 4,500-5,000 req/s -- beyond ~3,500 the client is the bottleneck.
- 1,000-record page (240 KB), cached: ~1,900 req/s (~440 MB/s), ~230 us CPU/request.
- First request for a page (rendered, then cached): ~0.3-0.7 ms CPU for 100 records,
  ~3-4 ms for 1,000 records. Benchmarks should warm up (``POST /_warm`` or one untimed
  pass): 1,000 x 1,000-record pages cost the server ~4.4 s CPU cold, ~0.25 s warm;
  2,000 x 100-record pages ~1.1 s cold, ~0.5 s warm.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import csv
import hashlib
import io
import os
import signal
import sys
import time
import traceback
from collections import OrderedDict
from datetime import date
from email.utils import formatdate
from urllib.parse import urlencode

import orjson
from aiohttp import BasicAuth, web

from . import bodies_api, creds, faults, incremental_api, parents_api, ratelimit_api, rules_api
from .records import (
    BAD_UTF8,
    CSV_COLUMNS,
    csv_row,
    decode_cursor,
    drift_record,
    encode_cursor,
    events,
    offset_range,
    owner_ids,
    owner_record,
    page_range,
    record,
    total_pages,
)

JSON = "application/json"
NDJSON = "application/x-ndjson"
MAX_EVENT_DAYS = 200_000


class BadParam(Exception):
    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


def _int(q, name: str, default: int, minimum: int | None = None) -> int:
    v = q.get(name)
    if v is None or v == "":
        return default
    try:
        x = int(v)
    except ValueError:
        raise BadParam(name, f"not an integer: {v!r}") from None
    if minimum is not None and x < minimum:
        raise BadParam(name, f"must be >= {minimum}, got {x}")
    return x


def _float(q, name: str, default: float) -> float:
    v = q.get(name)
    if v is None or v == "":
        return default
    try:
        return float(v)
    except ValueError:
        raise BadParam(name, f"not a number: {v!r}") from None


def _flag(q, name: str) -> bool:
    return q.get(name, "0").lower() not in ("", "0", "false", "no")


def _json(status: int, obj, headers: dict | None = None) -> web.Response:
    h = {"Content-Type": JSON}
    if headers:
        h.update(headers)
    return web.Response(status=status, body=orjson.dumps(obj), headers=h)


def _error(status: int, error: str, message: str = "", headers: dict | None = None) -> web.Response:
    body = {"error": error}
    if message:
        body["message"] = message
    return _json(status, body, headers)


def _with(items, **repl) -> str:
    """Re-encode query ``items`` (order kept) with some values replaced/added."""
    out = []
    seen = set()
    for k, v in items:
        if k in repl:
            if k in seen:
                continue
            seen.add(k)
            v = str(repl[k])
        out.append((k, v))
    for k, v in repl.items():
        if k not in seen:
            out.append((k, str(v)))
    return urlencode(out)


# ------------------------------------------------------------------ renderers
# A renderer takes (query, request) and returns a cacheable tuple
# (status, body bytes, headers dict). Renderers are pure functions of the cache key.

Rendered = tuple  # (int, bytes, dict)


def _paging(q):
    return _int(q, "page", 1, 1), _int(q, "per_page", 100, 1), _int(q, "n", 1000, 0)


def _page_meta(q, page: int, per: int, total: int) -> dict:
    meta = {"page": page, "per_page": per}
    if _flag(q, "hide_total"):
        return meta
    if _flag(q, "null_total"):
        meta["total_pages"] = None
        meta["total_records"] = None
    else:
        meta["total_pages"] = total_pages(total, per)
        meta["total_records"] = total
    return meta


def render_page(q, request) -> Rendered:
    page, per, n = _paging(q)
    data = [record(i) for i in page_range(page, per, n)]
    return 200, orjson.dumps({"data": data, "meta": _page_meta(q, page, per, n)}), {"Content-Type": JSON}


def render_offset(q, request) -> Rendered:
    offset, limit, n = _int(q, "offset", 0, 0), _int(q, "limit", 100, 1), _int(q, "n", 1000, 0)
    body = {"items": [record(i) for i in offset_range(offset, limit, n)]}
    if not _flag(q, "hide_total"):
        body["total"] = n
    return 200, orjson.dumps(body), {"Content-Type": JSON}


def render_cursor(q, request) -> Rendered:
    size, n = _int(q, "size", 100, 1), _int(q, "n", 1000, 0)
    cursor = q.get("cursor", "")
    try:
        offset = decode_cursor(cursor) if cursor else 0
    except ValueError:
        raise BadParam("cursor", f"invalid cursor {cursor!r}") from None
    data = [record(i) for i in offset_range(offset, size, n)]
    if _flag(q, "loop"):
        nxt = encode_cursor(size)
    else:
        nxt = encode_cursor(offset + size) if offset + size < n else None
    return 200, orjson.dumps({"data": data, "next_cursor": nxt}), {"Content-Type": JSON}


def _base(request) -> str:
    return f"{request.scheme}://{request.host}"


def render_next(q, request) -> Rendered:
    size, n, offset = _int(q, "size", 100, 1), _int(q, "n", 1000, 0), _int(q, "offset", 0, 0)
    data = [record(i) for i in offset_range(offset, size, n)]
    if _flag(q, "loop"):
        nxt_off = size
    else:
        nxt_off = offset + size if offset + size < n else None
    nxt = None
    if nxt_off is not None:
        nxt = f"{request.path}?{_with(q.items(), offset=nxt_off)}"
        if _flag(q, "absolute"):
            nxt = _base(request) + nxt
    return 200, orjson.dumps({"results": data, "next": nxt}), {"Content-Type": JSON}


def render_link(q, request) -> Rendered:
    page, size, n = _int(q, "page", 1, 1), _int(q, "size", 100, 1), _int(q, "n", 1000, 0)
    last = max(1, total_pages(n, size))
    data = [record(i) for i in page_range(page, size, n)]
    base = _base(request) + request.path + "?"
    items = list(q.items())
    links = [f'<{base}{_with(items, page=1)}>; rel="first"']
    if page > 1:
        links.append(f'<{base}{_with(items, page=min(page - 1, last))}>; rel="prev"')
    if page < last:
        links.append(f'<{base}{_with(items, page=page + 1)}>; rel="next"')
    links.append(f'<{base}{_with(items, page=last)}>; rel="last"')
    return 200, orjson.dumps(data), {"Content-Type": JSON, "Link": ", ".join(links)}


def render_list(q, request) -> Rendered:
    n = _int(q, "n", 1000, 0)
    return 200, orjson.dumps([record(i) for i in range(1, n + 1)]), {"Content-Type": JSON}


def render_ndjson(q, request) -> Rendered:
    page, per, n = _paging(q)
    lines = [orjson.dumps(record(i)) for i in page_range(page, per, n)]
    body = b"\n".join(lines) + b"\n" if lines else b""
    return 200, body, {"Content-Type": NDJSON}


def render_csv(q, request) -> Rendered:
    page, per, n = _paging(q)
    sep = q.get("sep", ",")
    if len(sep) != 1:
        raise BadParam("sep", f"must be one character, got {sep!r}")
    enc = q.get("encoding", "utf-8")
    try:
        codecs.lookup(enc)
    except LookupError:
        raise BadParam("encoding", f"unknown encoding {enc!r}") from None
    accents = _flag(q, "accents") or codecs.lookup(enc).name == "iso8859-1"
    bad = _flag(q, "bad_utf8")
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=sep, lineterminator="\n")
    if q.get("header", "1") not in ("0", "false", "no"):
        w.writerow(CSV_COLUMNS)
    for i in page_range(page, per, n):
        row = csv_row(i, accents)
        if bad and i % 10 == 3:
            row[5] = f"\x00BAD\x00-{i}"
        w.writerow(row)
    try:
        body = buf.getvalue().encode(enc)
    except UnicodeEncodeError as exc:
        raise BadParam("encoding", f"cannot encode the page in {enc}: {exc}") from None
    if bad:
        body = body.replace("\x00BAD\x00".encode(enc), BAD_UTF8)
    return 200, body, {"Content-Type": f"text/csv; charset={enc}"}


def render_drift(q, request) -> Rendered:
    page, per, n = _paging(q)
    data = [drift_record(i, page) for i in page_range(page, per, n)]
    return 200, orjson.dumps({"data": data, "meta": _page_meta(q, page, per, n)}), {"Content-Type": JSON}


def render_by_id(q, request) -> Rendered:
    path = request.path
    if path.startswith("/items/by-id/"):
        raw = path[len("/items/by-id/") :]
        name = "{id}"
    else:
        raw = q.get("id", "")
        name = "id"
    try:
        owner = int(raw)
    except ValueError:
        raise BadParam(name, f"owner id must be an integer, got {raw!r}") from None
    page, per = _int(q, "page", 1, 1), _int(q, "per_page", 100, 1)
    k = _int(q, "k", 3, 0)
    ids = owner_ids(owner, k)
    data = [owner_record(owner, ids[i - 1]) for i in page_range(page, per, k)]
    return 200, orjson.dumps({"data": data, "meta": _page_meta(q, page, per, k)}), {"Content-Type": JSON}


def _date(q, *names) -> date:
    for name in names:
        v = q.get(name)
        if v:
            try:
                return date.fromisoformat(v[:10])
            except ValueError:
                raise BadParam(name, f"not a YYYY-MM-DD date: {v!r}") from None
    raise BadParam(names[0], "missing")


def render_events(q, request) -> Rendered:
    start, end = _date(q, "from", "start"), _date(q, "to", "end")
    if (end - start).days > MAX_EVENT_DAYS:
        raise BadParam("to", f"window longer than {MAX_EVENT_DAYS} days")
    return 200, orjson.dumps({"data": events(start, end)}), {"Content-Type": JSON}


def render_static(body: bytes, ctype: str = JSON):
    def render(q, request) -> Rendered:
        return 200, body, {"Content-Type": ctype}

    return render


# ------------------------------------------------------------------ state


class LRU:
    """LRU cache of rendered responses with a byte budget."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.d: OrderedDict = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key):
        v = self.d.get(key)
        if v is None:
            self.misses += 1
        else:
            self.hits += 1
            self.d.move_to_end(key)
        return v

    def put(self, key, value) -> None:
        size = len(value[1]) + 200
        if size > self.max_bytes // 4:
            return
        self.d[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self.d.popitem(last=False)
            self.bytes -= len(old[1]) + 200


class State:
    def __init__(self, cache_mb: int):
        self.cache = LRU(cache_mb * 1024 * 1024)
        self.started = time.time()
        self.epoch = 0
        self.reset()

    def reset(self) -> None:
        self.log: list[dict] = []
        self.attempts: dict[str, int] = {}
        self.tokens: dict[str, float] = {}
        self.tokens_issued = 0
        self.epoch += 1
        self.inflight_peak = getattr(self, "inflight", 0)
        self.inflight = getattr(self, "inflight", 0)


STATE: State  # set in serve()
TASKS: set = set()  # tasks running a logged request (cancelled at shutdown)


# ------------------------------------------------------------------ handlers

NOT_JSON = b"<html><head><title>Not JSON</title></head><body><p>This is not JSON.</p></body></html>\n"

# path -> (renderer, embeds_urls). embeds_urls: the body/headers contain URLs built
# from the Host header and the full query, so the cache key must include both.
CACHED = {
    "/items/page": (render_page, False),
    "/items/offset": (render_offset, False),
    "/items/cursor": (render_cursor, False),
    "/items/next": (render_next, True),
    "/items/link": (render_link, True),
    "/items/list": (render_list, False),
    "/items/ndjson": (render_ndjson, False),
    "/items/csv": (render_csv, False),
    "/items/drift": (render_drift, False),
    "/items/by-id": (render_by_id, False),
    "/events": (render_events, False),
    "/notlist": (render_static(b'{"data":{"a":1}}'), False),
    "/empty": (render_static(b'{"data":[]}'), False),
    "/notjson": (render_static(NOT_JSON, "text/html; charset=utf-8"), False),
}


def _respond(r: Rendered) -> web.Response:
    return web.Response(status=r[0], body=r[1], headers=r[2])


def cached(request, path: str, q, renderer, embeds_urls: bool, key_path: str | None = None) -> web.Response:
    if embeds_urls:
        key = (key_path or path, request.host, request.query_string)
    else:
        key = (key_path or path, tuple(sorted((k, v) for k, v in q.items() if k not in faults.COMMON_PARAMS)))
    cache = STATE.cache
    r = cache.get(key)
    if r is None:
        r = renderer(q, request)
        cache.put(key, r)
    return _respond(r)


def _bearer(request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


def _unauthorized(message: str, scheme: str = 'Bearer realm="testapi"', error: str = "unauthorized"):
    return _error(401, error, message, {"WWW-Authenticate": scheme})


def check_auth(request, q, kind: str) -> web.Response | None:
    """None when authorized, else the 401 response."""
    if kind == "bearer":
        if _bearer(request) != creds.BEARER_TOKEN:
            return _unauthorized("missing or wrong bearer token")
    elif kind == "header":
        if request.headers.get(creds.API_KEY_HEADER) != creds.API_KEY:
            return _unauthorized(f"missing or wrong {creds.API_KEY_HEADER} header", "ApiKey")
    elif kind == "query":
        if q.get(creds.QUERY_PARAM) != creds.QUERY_KEY:
            return _unauthorized(f"missing or wrong {creds.QUERY_PARAM} query parameter", "ApiKey")
    elif kind == "basic":
        auth = request.headers.get("Authorization", "")
        try:
            ba = BasicAuth.decode(auth) if auth[:6].lower() == "basic " else None
        except ValueError:
            ba = None
        if ba is None or (ba.login, ba.password) != (creds.BASIC_USER, creds.BASIC_PASSWORD):
            return _unauthorized("missing or wrong basic credentials", 'Basic realm="testapi"')
    elif kind == "oauth2":
        token = _bearer(request)
        if not token:
            return _unauthorized("missing bearer token", 'Bearer realm="testapi"', "invalid_token")
        expiry = STATE.tokens.get(token)
        if expiry is None:
            return _unauthorized("unknown token", 'Bearer error="invalid_token"', "invalid_token")
        if time.monotonic() >= expiry:
            return _unauthorized("token expired", 'Bearer error="invalid_token"', "invalid_token")
    return None


async def oauth_token(request, q, entry) -> web.Response:
    if request.method != "POST":
        return _error(405, "method_not_allowed", "POST client credentials here")
    form = await request.post()
    cid, secret = form.get("client_id"), form.get("client_secret")
    auth = request.headers.get("Authorization", "")
    if auth[:6].lower() == "basic ":
        try:
            ba = BasicAuth.decode(auth)
            cid, secret = ba.login, ba.password
        except ValueError:
            return _error(401, "invalid_client", "malformed basic credentials")
    grant = form.get("grant_type", "client_credentials")
    if grant != "client_credentials":
        return _error(400, "unsupported_grant_type", f"grant_type {grant!r}")
    if cid != creds.OAUTH_CLIENT_ID or secret != creds.OAUTH_CLIENT_SECRET:
        return _error(401, "invalid_client", "wrong client_id or client_secret")
    ttl = _float(q, "ttl", float(form.get("ttl") or 3600))
    STATE.tokens_issued += 1
    nth = STATE.tokens_issued
    token = "at-" + hashlib.sha256(f"{STATE.epoch}:{nth}:{time.time()}".encode()).hexdigest()[:24]
    STATE.tokens[token] = time.monotonic() + ttl
    entry["token_n"] = nth
    body = {"access_token": token, "token_type": "bearer", "expires_in": int(ttl) if ttl == int(ttl) else ttl}
    if form.get("scope"):
        body["scope"] = form.get("scope")
    return _json(200, body, {"Cache-Control": "no-store"})


async def echo(request, q, entry) -> web.Response:
    raw = await request.read()
    try:
        parsed = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        parsed = None
    return _json(
        200,
        {
            "method": request.method,
            "path": request.path,
            "query": dict(q),
            "query_list": [[k, v] for k, v in q.items()],
            "headers": {str(k): v for k, v in request.headers.items()},
            "body": raw.decode("utf-8", "replace"),
            "json": parsed,
        },
    )


async def huge(request, q, entry) -> web.StreamResponse:
    mb = _float(q, "mb", 64.0)
    chunk_kb = _int(q, "chunk_kb", 64, 1)
    chunk_ms = _float(q, "chunk_ms", 10.0)
    total = max(12, int(mb * 1024 * 1024))
    head, tail = b'{"data":[', b"0]}"
    fill = total - len(head) - len(tail)
    unit = b"0," * (chunk_kb * 512)
    resp = web.StreamResponse(status=200, headers={"Content-Type": JSON})
    if _flag(q, "cl"):
        resp.content_length = total
    else:
        resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        await resp.write(head)
        while fill > 0:
            await asyncio.sleep(chunk_ms / 1000.0)
            if fill >= len(unit):
                await resp.write(unit)
                fill -= len(unit)
            else:
                await resp.write(b"0," * (fill // 2) + b" " * (fill % 2))
                fill = 0
        await resp.write(tail)
    except ConnectionError:
        pass
    return resp


async def redirect_loop(request, q, entry) -> web.Response:
    return web.Response(
        status=302, headers={"Location": request.path_qs, "Content-Type": JSON}, body=b'{"redirect":"loop"}'
    )


async def redirect(request, q, entry) -> web.Response:
    status = _int(q, "status", 302)
    if status not in (301, 302, 303, 307, 308):
        raise BadParam("status", "must be a redirect status")
    to = q.get("to", "/items/page")
    return web.Response(status=status, headers={"Location": to, "Content-Type": JSON}, body=b'{"redirect":true}')


async def hang(request, q, entry) -> web.Response:
    await asyncio.sleep(_float(q, "s", 3600.0))
    return _json(200, {"hung": True})


AUTH_KINDS = {
    "/auth/bearer": "bearer",
    "/auth/header": "header",
    "/auth/query": "query",
    "/auth/basic": "basic",
    "/auth/oauth2": "oauth2",
}

SPECIAL = {
    "/oauth/token": oauth_token,
    "/echo": echo,
    "/huge": huge,
    "/redirect-loop": redirect_loop,
    "/redirect": redirect,
    "/hang": hang,
}
EXTENSIONS = (incremental_api, parents_api, bodies_api, rules_api, ratelimit_api)
for _extension in EXTENSIONS:
    SPECIAL.update(_extension.ROUTES)


async def dispatch(request, path: str, q, entry) -> web.StreamResponse:
    route = CACHED.get(path)
    if route is not None:
        return cached(request, path, q, route[0], route[1])
    if path.startswith("/items/by-id/"):
        return cached(request, path, q, render_by_id, False)
    kind = AUTH_KINDS.get(path)
    if kind is not None:
        denied = check_auth(request, q, kind)
        if denied is not None:
            return denied
        return cached(request, path, q, render_page, False, key_path="/items/page")
    fn = SPECIAL.get(path)
    if fn is not None:
        return await fn(request, q, entry)
    return _error(404, "not_found", f"no endpoint {path}")


async def apply_fault(fault: str, request, path: str, q, entry) -> web.StreamResponse | None:
    if fault in ("500", "503"):
        headers = {}
        if fault == "503" and "retry_after" in q:
            headers["Retry-After"] = q["retry_after"]
        return _error(int(fault), "injected", f"injected {fault}", headers)
    if fault == "429":
        ra = q.get("retry_after", "1")
        if _flag(q, "retry_after_date"):
            value = formatdate(time.time() + _float(q, "retry_after", 1.0), usegmt=True)
        else:
            value = ra
        return _error(429, "rate_limited", "injected 429", {"Retry-After": value})
    if fault == "slow":
        await asyncio.sleep(_float(q, "slow_ms", 3000.0) / 1000.0)
        return await dispatch(request, path, q, entry)
    if fault == "drop":
        if request.transport is not None:
            request.transport.close()
        return None
    normal = await dispatch(request, path, q, entry)
    body = getattr(normal, "body", None)
    if not isinstance(body, (bytes, bytearray)):
        # streaming endpoints can't be truncated meaningfully: drop instead
        if request.transport is not None:
            request.transport.close()
        return None
    headers = {k: v for k, v in normal.headers.items() if k.lower() != "content-length"}
    if fault == "badjson":
        return web.Response(status=200, body=bytes(body[: len(body) // 2]), headers=headers)
    # truncate: full Content-Length, half the body, then close the connection
    resp = web.StreamResponse(status=normal.status, headers=headers)
    resp.content_length = len(body)
    await resp.prepare(request)
    try:
        await resp.write(bytes(body[: len(body) // 2]))
    except ConnectionError:
        pass
    if request.transport is not None:
        request.transport.close()
    return resp


class _Dropped(web.Response):
    """Returned after the transport is closed: aiohttp's write fails and is ignored."""


async def handle(request: web.BaseRequest) -> web.StreamResponse:
    path = request.path
    control = CONTROL.get(path)
    if control is not None:
        return await control(request)
    state = STATE
    q = request.query
    entry = {
        "t": time.time(),
        "method": request.method,
        "path": path,
        "query": dict(q),
        "status": None,
        "fault": None,
        "attempt": None,
        "t_done": None,
    }
    state.log.append(entry)
    task = asyncio.current_task()
    TASKS.add(task)
    state.inflight += 1
    if state.inflight > state.inflight_peak:
        state.inflight_peak = state.inflight
    try:
        try:
            fault = None
            if "fail_rate" in q or "fail_all" in q:
                key = faults.fault_key(path, q.items())
                attempt = state.attempts.get(key, 0)
                state.attempts[key] = attempt + 1
                entry["attempt"] = attempt
                try:
                    fault = faults.decide(key, q, attempt)
                except ValueError as exc:
                    raise BadParam("fault", str(exc)) from None
                entry["fault"] = fault
            delay = q.get("delay_ms")
            if delay:
                await asyncio.sleep(_float(q, "delay_ms", 0.0) / 1000.0)
            if fault is not None:
                resp = await apply_fault(fault, request, path, q, entry)
            else:
                resp = await dispatch(request, path, q, entry)
        except BadParam as exc:
            resp = _error(400, "bad_parameter", exc.message, None)
            resp.headers["X-Bad-Param"] = exc.name
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as exc:  # a bug in the test API: say so loudly, don't look like a fault
            traceback.print_exc()
            resp = _error(500, "testapi_bug", f"{type(exc).__name__}: {exc}")
        if resp is None:  # dropped
            return _Dropped(status=599)
        entry["status"] = resp.status
        return resp
    finally:
        TASKS.discard(task)
        state.inflight -= 1
        entry["t_done"] = time.time()


# ------------------------------------------------------------------ control


async def ctl_log(request) -> web.Response:
    since = _int(request.query, "since", 0, 0)
    return _json(200, {"requests": STATE.log[since:], "count": len(STATE.log), "tokens_issued": STATE.tokens_issued})


async def ctl_reset(request) -> web.Response:
    if request.method != "POST":
        return _error(405, "method_not_allowed", "POST /_reset")
    STATE.reset()
    for extension in EXTENSIONS:
        extension.reset()
    return _json(200, {"ok": True})


async def ctl_stats(request) -> web.Response:
    by_path: dict[str, int] = {}
    by_status: dict[str, int] = {}
    by_fault: dict[str, int] = {}
    for e in STATE.log:
        by_path[e["path"]] = by_path.get(e["path"], 0) + 1
        s = "null" if e["status"] is None else str(e["status"])
        by_status[s] = by_status.get(s, 0) + 1
        if e["fault"]:
            by_fault[e["fault"]] = by_fault.get(e["fault"], 0) + 1
    c = STATE.cache
    return _json(
        200,
        {
            "requests": len(STATE.log),
            "by_path": by_path,
            "by_status": by_status,
            "faults": by_fault,
            "tokens_issued": STATE.tokens_issued,
            "inflight": STATE.inflight,
            "inflight_peak": STATE.inflight_peak,
            "cache": {"entries": len(c.d), "bytes": c.bytes, "hits": c.hits, "misses": c.misses},
            "uptime": time.time() - STATE.started,
            "pid": os.getpid(),
        },
    )


class _WarmRequest:
    """Just enough of a request for the renderers and the cache key."""

    def __init__(self, real, target: str):
        from yarl import URL

        url = URL(target)
        self.path = url.path
        self.query = url.query
        self.query_string = url.raw_query_string
        self.host = real.host
        self.scheme = real.scheme
        self.headers = {}


async def ctl_warm(request) -> web.Response:
    """POST {"paths": ["/items/page?page=1&per_page=1000&n=1000000", ...]}: pre-render into the cache."""
    if request.method != "POST":
        return _error(405, "method_not_allowed", "POST /_warm")
    try:
        paths = orjson.loads(await request.read())["paths"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return _error(400, "bad_request", 'body must be {"paths": [...]}')
    t0 = time.perf_counter()
    done = 0
    for target in paths:
        fake = _WarmRequest(request, target)
        route = CACHED.get(fake.path)
        if route is None and fake.path.startswith("/items/by-id/"):
            route = (render_by_id, False)
        if route is None:
            return _error(400, "not_cacheable", f"cannot warm {target!r}")
        try:
            cached(fake, fake.path, fake.query, route[0], route[1])
        except BadParam as exc:
            return _error(400, "bad_parameter", f"{target}: {exc.message}")
        done += 1
        if done % 50 == 0:
            await asyncio.sleep(0)  # stay responsive
    return _json(200, {"warmed": done, "seconds": time.perf_counter() - t0, "cache_bytes": STATE.cache.bytes})


async def ctl_health(request) -> web.Response:
    return _json(200, {"ok": True})


CONTROL = {"/_log": ctl_log, "/_reset": ctl_reset, "/_stats": ctl_stats, "/_health": ctl_health, "/_warm": ctl_warm}


# ------------------------------------------------------------------ main


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    is_parent = os.getppid() == parent_pid
    while not stop.is_set():
        await asyncio.sleep(0.5)
        if is_parent and os.getppid() != parent_pid:  # re-parented: the parent died
            stop.set()
            return
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            stop.set()
            return
        except PermissionError:
            pass


async def serve(host: str, port: int, parent_pid: int | None, cache_mb: int) -> None:
    global STATE
    STATE = State(cache_mb)
    loop = asyncio.get_running_loop()
    server = web.Server(handle, handler_cancellation=True, access_log=None)
    runner = web.ServerRunner(server, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = runner.addresses[0][1]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = None
    if parent_pid:
        watcher = asyncio.create_task(_watch_parent(parent_pid, stop))
    sys.stdout.write(f"READY {bound}\n")
    sys.stdout.flush()
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
    for task in list(TASKS):  # /hang, /huge, delays: don't make shutdown wait for them
        task.cancel()
    await asyncio.sleep(0.01)
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.testapi.server", description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = pick a free port (printed as READY <port>)")
    ap.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="exit when this process dies (default: the launching parent; 0 disables)",
    )
    ap.add_argument("--cache-mb", type=int, default=512, help="rendered-body cache budget in MiB")
    args = ap.parse_args(argv)
    parent = os.getppid() if args.parent_pid is None else args.parent_pid
    try:
        asyncio.run(serve(args.host, args.port, parent, args.cache_mb))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
