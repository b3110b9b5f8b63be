"""Incremental loading: records that change between runs (changes-since endpoints).

Endpoints are registered in `ROUTES` (path -> async handler(request, q, entry)); `reset()` is
called by `POST /_reset`. Documented in tests/testapi/README.md.

One mutable dataset per server, made on first use (or by `/changes/_setup`) and restored to
its defaults by `POST /_reset`. Record `i` (ids `1..n`, default `n` = 100):

    {"id": i, "owner": i % owners, "name": "item-<i>", "rev": 1, "version": i,
     "updated_at": start + i * step}

`start` defaults to `2024-01-01T00:00:00Z`, `step` to 60 seconds, `owners` to 3; times are
written `YYYY-MM-DDTHH:MM:SSZ`. `version` is a global counter: every touch takes the next one.

- `GET|POST /changes?since=T&min_version=V&owner=K&sort=S&page=P&per_page=N`: the records
  with `updated_at >= since` (inclusive; an ISO-8601 time, `Z` or an offset, naive = UTC),
  `version >= min_version` (inclusive) and `owner == K`, each filter only when given, sorted
  by `(updated_at, id)` (`sort=version`: by `version`), paged like `/items/page` (`page` from
  1, `per_page` default 100): `{"data": [...], "meta": {"page", "per_page", "total_pages",
  "total_records"}}`. `since` may also come from the JSON body of a POST (`since` or
  `filter.since`; `min_version` likewise) or, when no `since` is given anywhere, from the
  `If-Modified-Since` header (an HTTP date). The bounds used are added to the request's
  `/_log` entry as `"bounds": {"since", "min_version", "owner", "from"}` (`from`: `query`,
  `body` or `header`). A bad value is a 400.
- `POST /changes/_touch` `{"ids": [..], "at": T}`: each listed record (a new one for an id
  that does not exist) gets `updated_at = at` (default: the latest `updated_at` in the
  dataset plus `step`), `rev + 1`, `name = "item-<i>-r<rev>"` and the next `version`, in
  list order. Answers `{"touched": [records]}`.
- `POST /changes/_setup` `{"n", "start", "step", "owners"}`: a fresh dataset (any field may be
  left out). Answers `{"records": n}`.
- `POST /changes/_fail` `{"page": P, "status": 500, "owner": K}`: every later request for page
  `P` of `/changes` (of owner `K` only, when given) answers `status` (`{"error": "injected"}`);
  `{"page": null}` stops it.
- `GET /changes/_records`: `{"data": [every record, by id]}`.
"""

from __future__ import annotations

import datetime as dt
import math
from email.utils import parsedate_to_datetime

import orjson
from aiohttp import web

DEFAULTS = {"n": 100, "start": "2024-01-01T00:00:00Z", "step": 60.0, "owners": 3}


class _Bad(Exception):
    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name, self.message = name, message


def _time(text: str, name: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise _Bad(name, f"not an ISO-8601 time: {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _text(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Dataset:
    def __init__(self, n: int, start: str, step: float, owners: int):
        self.step = step
        self.owners = max(1, owners)
        self.version = 0
        self.records: dict[int, dict] = {}
        origin = _time(start, "start")
        for i in range(1, n + 1):
            self.version += 1
            self.records[i] = {
                "id": i,
                "owner": i % self.owners,
                "name": f"item-{i}",
                "rev": 1,
                "version": self.version,
                "updated_at": _text(origin + dt.timedelta(seconds=i * step)),
            }

    def latest(self) -> dt.datetime:
        if not self.records:
            return _time(DEFAULTS["start"], "start")
        return max(_time(r["updated_at"], "updated_at") for r in self.records.values())

    def touch(self, ids: list[int], at: dt.datetime | None) -> list[dict]:
        moment = at or self.latest() + dt.timedelta(seconds=self.step)
        touched = []
        for i in ids:
            old = self.records.get(i) or {"owner": i % self.owners, "rev": 0}
            self.version += 1
            rev = old["rev"] + 1
            record = {
                "id": i,
                "owner": old["owner"],
                "name": f"item-{i}-r{rev}" if rev > 1 else f"item-{i}",
                "rev": rev,
                "version": self.version,
                "updated_at": _text(moment),
            }
            self.records[i] = record
            touched.append(record)
        return touched


_DATA: Dataset | None = None
_FAIL: dict = {}


def dataset() -> Dataset:
    global _DATA
    if _DATA is None:
        _DATA = Dataset(DEFAULTS["n"], DEFAULTS["start"], DEFAULTS["step"], DEFAULTS["owners"])
    return _DATA


def _json(status: int, body) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), headers={"Content-Type": "application/json"})


def _int(value, name: str, default: int | None, minimum: int = 0) -> int | None:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise _Bad(name, f"not an integer: {value!r}") from None
    if number < minimum:
        raise _Bad(name, f"must be >= {minimum}, got {number}")
    return number


def _number(value, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _Bad(name, f"not a number: {value!r}") from None
    if math.isnan(number):
        raise _Bad(name, "not a number: NaN")
    return number


async def _body(request) -> dict:
    if request.method != "POST" or not request.can_read_body:
        return {}
    raw = await request.read()
    if not raw:
        return {}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _Bad("body", "not valid JSON") from None
    return doc if isinstance(doc, dict) else {}


def _from_body(body: dict, name: str):
    inner = body.get("filter")
    if isinstance(inner, dict) and inner.get(name) is not None:
        return inner[name]
    return body.get(name)


async def changes(request, q, entry) -> web.Response:
    try:
        body = await _body(request)
        page = _int(q.get("page", body.get("page")), "page", 1, 1) or 1
        per_page = _int(q.get("per_page", body.get("per_page")), "per_page", 100, 1) or 100
        if _FAIL.get("page") == page and _FAIL.get("owner") in (None, q.get("owner", body.get("owner"))):
            return _json(_FAIL.get("status", 500), {"error": "injected", "message": f"page {page} fails"})
        origin = "query"
        since_text = q.get("since")
        if since_text is None and _from_body(body, "since") is not None:
            since_text, origin = str(_from_body(body, "since")), "body"
        since = _time(since_text, "since") if since_text else None
        modified = request.headers.get("If-Modified-Since")
        if since is None and modified:
            try:
                since = parsedate_to_datetime(modified)
            except (TypeError, ValueError):
                raise _Bad("If-Modified-Since", f"not an HTTP date: {modified!r}") from None
            if since.tzinfo is None:
                since = since.replace(tzinfo=dt.UTC)
            since_text, origin = modified, "header"
        raw_version = q.get("min_version")
        if raw_version is None and _from_body(body, "min_version") is not None:
            raw_version, origin = _from_body(body, "min_version"), "body"
        min_version = _number(raw_version, "min_version")
        owner = _int(q.get("owner", body.get("owner")), "owner", None)
    except _Bad as bad:
        response = _json(400, {"error": "bad_parameter", "message": f"{bad.name}: {bad.message}"})
        response.headers["X-Bad-Param"] = bad.name
        return response
    entry["bounds"] = {"since": since_text, "min_version": raw_version, "owner": owner, "from": origin}
    rows = [
        r
        for r in dataset().records.values()
        if (since is None or _time(r["updated_at"], "updated_at") >= since)
        and (min_version is None or r["version"] >= min_version)
        and (owner is None or r["owner"] == owner)
    ]
    if q.get("sort") == "version":
        rows.sort(key=lambda r: r["version"])
    else:
        rows.sort(key=lambda r: (_time(r["updated_at"], "updated_at"), r["id"]))
    total = len(rows)
    chunk = rows[(page - 1) * per_page : page * per_page]
    meta = {"page": page, "per_page": per_page, "total_pages": math.ceil(total / per_page), "total_records": total}
    return _json(200, {"data": chunk, "meta": meta})


async def touch(request, q, entry) -> web.Response:
    try:
        body = await _body(request)
        ids = body.get("ids") or []
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise _Bad("ids", "must be a list of integers")
        at = _time(body["at"], "at") if body.get("at") else None
    except _Bad as bad:
        return _json(400, {"error": "bad_parameter", "message": f"{bad.name}: {bad.message}"})
    return _json(200, {"touched": dataset().touch(ids, at)})


async def setup(request, q, entry) -> web.Response:
    global _DATA
    try:
        body = await _body(request)
        settings = {**DEFAULTS, **{k: v for k, v in body.items() if k in DEFAULTS}}
        n = _int(settings["n"], "n", 100) or 0
        step = _number(settings["step"], "step") or 0.0
        _DATA = Dataset(n, str(settings["start"]), step, _int(settings["owners"], "owners", 3, 1) or 1)
    except _Bad as bad:
        return _json(400, {"error": "bad_parameter", "message": f"{bad.name}: {bad.message}"})
    return _json(200, {"records": len(_DATA.records)})


async def fail(request, q, entry) -> web.Response:
    body = await _body(request)
    _FAIL.clear()
    if body.get("page") is not None:
        _FAIL.update(page=int(body["page"]), status=int(body.get("status", 500)))
        if body.get("owner") is not None:
            _FAIL["owner"] = str(body["owner"])
    return _json(200, {"fail": dict(_FAIL) or None})


async def all_records(request, q, entry) -> web.Response:
    return _json(200, {"data": [dataset().records[i] for i in sorted(dataset().records)]})


ROUTES: dict = {
    "/changes": changes,
    "/changes/_touch": touch,
    "/changes/_setup": setup,
    "/changes/_fail": fail,
    "/changes/_records": all_records,
}


def reset() -> None:
    """Forget all per-run state (called by `POST /_reset`): the default dataset, no failing page."""
    global _DATA
    _DATA = None
    _FAIL.clear()
