"""Preview: the first page of each source, fetched and read as a run would - nothing written.

`run_preview(prepared, ...)` returns `{"sources": [...]}`, one object per source, in spec
order: the records found (at most `PREVIEW_RECORDS`, flattened as the export flattens them),
their columns with an inferred type, the records path, a pagination hint, the time taken
(docs/preview.md). The CLI's `preview` prints it; the service's `POST /api/export/preview`
answers it.

One event loop, the engine's own HTTP client (so the outbound policy checks every connection
and redirect hop), the source's auth, and page 1 of the first fan-out unit built exactly as
the pool workers build it. Every request, redirect hops included, takes a ticket from a
limiter with the spec's `rate_limit`; a preview sends one request per source (no retries:
it shows what the API answers now). Dependent sources (`ids.from`) run after their parent,
with the value(s) of the parent's first previewed record(s).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import re
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from engine.fetch.auth import DictTokenStore, make_auth
from engine.fetch.client import HttpClient, with_query
from engine.fetch.outbound import OutboundPolicy
from engine.fetch.page import Gate, PageFetcher, PageOutcome, SourceRequestSpec
from engine.fetch.ratelimit import SharedLimiterState
from engine.plan.fanout import FanOut, plain_value  # plain_value: a parent's value as a run uses it
from engine.plan.pagination import (
    PageRequest,
    addressable_request,
    is_sequential,
    sequential_request,
)
from engine.run.incremental import SourceBounds
from engine.spec.models import Source, dependency_order
from engine.spec.prepare import PreparedJob
from engine.spec.redact import Redactor

__all__ = ["PREVIEW_RECORDS", "as_job_document", "pagination_hint", "run_preview"]

log = logging.getLogger("pageferry.preview")

PREVIEW_RECORDS = 20
DEFAULT_LANES = 8  # sources previewed at once without a spec `concurrency`
EVIDENCE_TEXT = 300  # characters of a text value shown as evidence


def as_job_document(document: Any) -> tuple[Any, bool]:
    """A job spec, or one source object (`{"url": ...}` without `sources`) wrapped as a
    one-source spec. Returns (the spec document, whether it was wrapped)."""
    if isinstance(document, dict) and "sources" not in document and "url" in document:
        return {"sources": [document]}, True
    return document, False


# ---------------------------------------------------------------- running


class _LocalMemory:
    """`SharedLimiterState`'s primitives for one process: a preview's limiter is its own."""

    @staticmethod
    def RawArray(code: str, size: int) -> Any:  # noqa: N802 - multiprocessing's name
        return ((ctypes.c_double if code == "d" else ctypes.c_longlong) * size)()

    @staticmethod
    def Lock() -> Any:  # noqa: N802 - multiprocessing's name
        return threading.Lock()


class _Run:
    """What the sources of one preview share: client, limiter, concurrency, the deadline."""

    def __init__(self, prepared: PreparedJob, policy: OutboundPolicy, max_body: int, time_limit: float | None):
        spec = prepared.resolved
        self.prepared = prepared
        self.redactor: Redactor = prepared.redactor
        self.lanes = max(1, min(spec.concurrency or DEFAULT_LANES, len(spec.sources)))
        self.client = HttpClient(max_body, policy, lanes=self.lanes)
        rl = spec.rate_limit
        self.limiter = SharedLimiterState(_LocalMemory, rl.requests if rl else None).rate_limiter(
            rl.requests if rl else None, rl.per if rl else 1.0, rl.effective_burst if rl else None
        )
        self.semaphore = threading.BoundedSemaphore(self.lanes)
        self.tokens = DictTokenStore({}, threading.Lock())
        self.time_limit = time_limit
        self.deadline = time.monotonic() + time_limit if time_limit is not None else None
        self.late = False  # a wait would have ended past the deadline
        # A preview shows what the API answers now: one attempt per request.
        self.retry = spec.retry.model_copy(update={"attempts": 1})

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    async def sleep(self, seconds: float) -> bool:
        """The gate's sleep: True (give up) when it would end past the deadline."""
        if self.deadline is not None and time.monotonic() + seconds > self.deadline:
            self.late = True
            return True
        await asyncio.sleep(seconds)
        return False


def run_preview(prepared: PreparedJob, policy: OutboundPolicy, max_body: int, time_limit: float | None = None) -> dict:
    """Preview every source of a prepared job: `{"sources": [...]}` (see the module doc).
    `policy`: where it may connect (the same as a run's); `max_body`: MAX_FILE_SIZE in bytes;
    `time_limit`: seconds for the whole preview (None: no limit; each request still has the
    spec's `timeout`)."""
    return asyncio.run(_preview_all(_Run(prepared, policy, max_body, time_limit)))


async def _preview_all(run: _Run) -> dict:
    spec = run.prepared.resolved
    results: list[dict | None] = [None] * len(spec.sources)
    firsts: dict[str, list[dict] | None] = {}  # source name -> its first records (flattened)
    try:
        for wave in dependency_order(spec):
            done = await asyncio.gather(*(_guarded(run, i, firsts) for i in wave))
            for i, (result, records) in zip(wave, done):
                results[i] = result
                firsts[spec.sources[i].name] = records
    finally:
        await run.client.close()
    return {"sources": results}


async def _guarded(run: _Run, index: int, firsts: dict) -> tuple[dict, list[dict] | None]:
    """`_preview_source`, with an unexpected error reported as that source's failure (its type
    only: library text may quote a secret) instead of failing the whole preview."""
    started = time.monotonic()
    try:
        return await _preview_source(run, index, firsts)
    except Exception as exc:  # noqa: BLE001 - reported, and logged for the operator
        log.error("preview of source %d failed: %s", index, type(exc).__name__, exc_info=exc)
        name = run.prepared.resolved.sources[index].name
        failed = {**_empty_result(name), "elapsed_ms": round((time.monotonic() - started) * 1000)}
        return {**failed, "error": f"internal error ({type(exc).__name__})"}, None


def _empty_result(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "status": "failed",
        "url": None,
        "http_status": None,
        "records_path": None,
        "records": [],
        "columns": [],
        "pagination_hint": None,
        "elapsed_ms": 0,
    }


def _child_fanout(source: Source, parent: list[dict] | None) -> tuple[FanOut | None, str | None]:
    """The fan-out of a dependent source over the values of its parent's first previewed
    records (as many as one `batch` takes), read as a run reads them: the flattened column
    `ids.field`, nulls skipped; (None, why) when there are none."""
    ids = source.ids
    assert ids is not None and ids.from_ is not None  # a dependent source
    if parent is None:
        return None, f"its parent source {ids.from_!r} could not be previewed"
    values = []
    for row in parent:
        value = row.get(ids.field)
        if isinstance(value, (dict, list)):
            return None, f"column {ids.field!r} of {ids.from_!r} holds lists or objects, not single values"
        if value is not None:
            values.append(plain_value(value))
        if len(values) >= ids.batch:
            break
    if not values:
        return None, f"the first page of {ids.from_!r} has no value in column {ids.field!r} (ids.field)"
    return FanOut(source, values), None


def _first_request(source: Source, fanout: FanOut) -> tuple[PageRequest, dict]:
    """Page 1 of the first unit, as the pool workers build it; and the unit's columns."""
    unit = fanout.unit(0)
    url, params = fanout.request_base(unit)
    base = PageRequest(url, params, fanout.body_base(unit), None)
    if source.incremental is not None:
        # page 1 asks for changes since `incremental.start`: no saved state is read
        base = SourceBounds(source, None).apply(base, unit)
    pagination = source.pagination
    if is_sequential(pagination):
        request = sequential_request(pagination, base.url, base.params, None, base.body, source.in_body, base.headers)
    else:
        request = addressable_request(
            pagination, base.url, base.params, 1, pagination.size, base.body, source.in_body, base.headers
        )
    return request, fanout.columns(unit)


async def _preview_source(run: _Run, index: int, firsts: dict) -> tuple[dict, list[dict] | None]:
    """One source's preview object, and its first records (flattened) for dependent sources
    (None when it failed)."""
    started = time.monotonic()
    spec = run.prepared.resolved
    source = spec.sources[index]
    result = _empty_result(source.name)

    def failed(message: str) -> tuple[dict, None]:
        result["error"] = run.redactor.text(message)
        result["elapsed_ms"] = round((time.monotonic() - started) * 1000)
        return result, None

    if source.parent is not None:
        fanout, why = _child_fanout(source, firsts.get(source.parent))
        if fanout is None:
            return failed(f"not previewed: {why}")
    else:
        fanout = run.prepared.fanouts[index]
    request, unit_columns = _first_request(source, fanout)
    auth = make_auth(source.auth, run.tokens, f"oauth2:preview:{index}", spec.timeout, run.client, run.redactor.add)
    shown = with_query(request.url, auth.shown_params(request.params))
    result["url"] = run.redactor.url(shown)
    remaining = run.remaining()
    if remaining is not None and remaining <= 0:
        return failed(f"not previewed: the preview's time limit ({run.time_limit:g} s) ran out")
    # rounded: the timeout is named in the error message
    timeout = spec.timeout if remaining is None else max(0.1, round(min(spec.timeout, remaining), 1))
    gate = Gate(limiter=run.limiter, semaphore=run.semaphore, cancelled=run.expired, sleep=run.sleep)
    fetcher = PageFetcher(run.client, gate, run.retry, timeout)
    request_spec = SourceRequestSpec.for_source(source, auth, run.redactor.text)
    outcome = await fetcher.fetch(request_spec, request.url, request.params, request.body, request.headers)
    if outcome.response is not None:
        result["http_status"] = outcome.response.status
    if outcome.cancelled:
        if run.late:
            return failed(
                f"not previewed: the rate limit allows its request only after the preview's "
                f"time limit ({run.time_limit:g} s)"
            )
        return failed(f"not previewed: the preview's time limit ({run.time_limit:g} s) ran out")
    if outcome.error is not None:
        if outcome.error.status is not None:
            result["http_status"] = outcome.error.status
        return failed(outcome.error.message)
    return _read_page(run, source, outcome, unit_columns, request, auth, result, started)


def _read_page(
    run: _Run,
    source: Source,
    outcome: PageOutcome,
    unit_columns: dict,
    request: PageRequest,
    auth: Any,
    result: dict,
    started: float,
) -> tuple[dict, list[dict]]:
    parsed, response = outcome.parsed, outcome.response
    assert response is not None  # fetched without an error
    rows: list[dict] = []
    columns: list[dict] = []
    doc = None
    if parsed is not None:  # else a `skip` response rule matched: no records, as a run takes it
        dependent_need = max(
            [s.ids.batch for s in run.prepared.resolved.sources if s.ids is not None and s.ids.from_ == source.name]
            or [0]
        )
        table = parsed.table
        rows = table.slice(0, max(PREVIEW_RECORDS, dependent_need)).to_pylist()
        if source.format == "json":
            doc = parsed.doc
            result["records_path"] = _records_path(doc, source.records)
        columns = [{"name": name, "type": _value_type(value)} for name, value in unit_columns.items()]
        columns += [
            {"name": name, "type": column_type(table.column(name).type, table.column(name).to_pylist(), source.format)}
            for name in table.column_names
            if name not in unit_columns
        ]
    shown = [{**_json_values(unit_columns), **row} for row in rows[:PREVIEW_RECORDS]]
    params = dict(parse_qsl(urlsplit(request.url).query, keep_blank_values=True))
    params.update({str(k): v for k, v in request.params.items()})
    hint = pagination_hint(
        doc,
        response.headers,
        response.links,
        params,
        result["records_path"],
        graphql=source.graphql is not None,
    )
    for key, value in hint["evidence"].items():
        if isinstance(value, str) and value.startswith(("http://", "https://", "/")):
            hint["evidence"][key] = run.redactor.url(auth.without_credentials(value))
    result.update(
        status="ok",
        records=run.redactor.data(shown),
        columns=columns,
        pagination_hint=run.redactor.data(hint),
        elapsed_ms=round((time.monotonic() - started) * 1000),
    )
    return result, rows


def _records_path(doc: Any, given: str | None) -> str:
    """The path `find_records` took the records from: the given `records`, the one list-valued
    top-level key, or "" for a body that is itself the list."""
    if given:
        return given
    if isinstance(doc, dict):
        return next(key for key, value in doc.items() if isinstance(value, list))
    return ""


def _json_values(columns: dict) -> dict:
    """Fan-out columns as JSON shows them (a window's first day as an ISO date)."""
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in columns.items()}


# ---------------------------------------------------------------- column types

_INT = re.compile(r"[+-]?\d+\Z")
_FLOAT = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?\Z")
_BOOL = frozenset({"true", "false"})
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?\Z")


def _value_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if hasattr(value, "hour"):
        return "datetime"
    if hasattr(value, "isoformat"):
        return "date"
    return "string"


def _text_type(values: list, fmt: str) -> str:
    """A text column's type by what every non-empty value looks like: dates and datetimes
    (ISO 8601) in any format; integers, decimals and true/false too in CSV, whose cells are
    all text (the type `columns[].type` could cast them to)."""
    texts = [v for v in values if isinstance(v, str) and v.strip()]
    if not texts:
        return "null" if all(v is None for v in values) else "string"
    if fmt == "csv":
        if all(_INT.match(t) for t in texts):
            return "int"
        if all(_FLOAT.match(t) for t in texts):
            return "float"
        if all(t.lower() in _BOOL for t in texts):
            return "bool"
    if all(_DATE.match(t) for t in texts):
        return "date"
    if all(_DATE.match(t) or _DATETIME.match(t) for t in texts):
        return "datetime"
    return "string"


def column_type(arrow_type: Any, values: list, fmt: str = "json") -> str:
    """One of string, int, float, bool, date, datetime, list, object, null - from the column's
    Arrow type (as the export reads the page), text classified by `_text_type`."""
    import pyarrow as pa

    types = pa.types
    if types.is_null(arrow_type):
        return "null"
    if types.is_boolean(arrow_type):
        return "bool"
    if types.is_integer(arrow_type):
        return "int"
    if types.is_floating(arrow_type) or types.is_decimal(arrow_type):
        return "float"
    if types.is_timestamp(arrow_type):
        return "datetime"
    if types.is_date(arrow_type):
        return "date"
    if types.is_list(arrow_type) or types.is_large_list(arrow_type) or types.is_fixed_size_list(arrow_type):
        return "list"
    if types.is_struct(arrow_type) or types.is_map(arrow_type):
        return "object"
    if types.is_string(arrow_type) or types.is_large_string(arrow_type):
        return _text_type(values, fmt)
    return "string"


# ---------------------------------------------------------------- pagination hint

_NEXT_URL_KEYS = frozenset({"next", "next_url", "nextUrl", "next_page_url", "nextPageUrl", "next_link", "nextLink"})
_CURSOR_KEYS = {  # body key -> the query parameter that usually carries it back
    "next_cursor": "cursor",
    "nextCursor": "cursor",
    "cursor": "cursor",
    "after": "after",
    "endCursor": "after",
    "end_cursor": "after",
    "next_page_token": "page_token",
    "nextPageToken": "pageToken",
    "next_token": "next_token",
    "nextToken": "nextToken",
    "continuation_token": "continuation_token",
    "continuationToken": "continuationToken",
}
_HAS_MORE_KEYS = frozenset({"has_more", "hasMore", "hasNextPage", "has_next_page", "has_next"})
_PAGE_KEYS = frozenset({"page", "current_page", "currentPage", "page_number", "pageNumber"})
_PAGE_SIZE_KEYS = frozenset({"per_page", "perPage", "page_size", "pageSize"})
_TOTAL_PAGES_KEYS = frozenset({"total_pages", "totalPages", "last_page", "lastPage", "page_count", "pageCount"})
_OFFSET_KEYS = frozenset({"offset", "skip"})
_LIMIT_KEYS = frozenset({"limit"})
_TOTAL_KEYS = frozenset(
    {"total", "total_records", "totalRecords", "total_count", "totalCount", "total_results", "totalResults"}
)
_HEADERS = {  # response header -> what it tells
    "X-Total-Count": "total",
    "X-Total": "total",
    "X-Total-Pages": "total_pages",
    "X-Page": "page",
    "X-Current-Page": "page",
    "X-Per-Page": "size",
    "X-Next-Cursor": "cursor",
}
_MAX_DEPTH = 5


def _looks_like_url(value: Any) -> bool:
    return isinstance(value, str) and (value.startswith(("http://", "https://", "/", "?")) or "?" in value)


def _walk(doc: Any, records_path: str | None) -> list[tuple[str, str, Any]]:
    """(dotted path, key, value) of every field of the JSON objects in `doc` (breadth first,
    so the shallowest field wins), lists (the records) not entered."""
    found: list[tuple[str, str, Any]] = []
    queue: list[tuple[Any, str, int]] = [(doc, "", 0)]
    while queue:
        node, prefix, depth = queue.pop(0)
        if not isinstance(node, dict) or depth >= _MAX_DEPTH:
            continue
        for key, value in node.items():
            path = f"{prefix}{key}"
            if path == records_path or isinstance(value, list) or "." in str(key):
                continue  # the records; a key with a dot no dotted path can name
            found.append((path, str(key), value))
            if isinstance(value, dict):
                queue.append((value, path + ".", depth + 1))
    return found


def _shown(value: Any) -> Any:
    if isinstance(value, str) and len(value) > EVIDENCE_TEXT:
        return value[:EVIDENCE_TEXT] + "…"
    return value


def pagination_hint(
    doc: Any,
    headers: Mapping[str, str] | None,
    links: Mapping[str, Mapping[str, str]] | None,
    query: Mapping[str, Any] | None = None,
    records_path: str | None = None,
    graphql: bool = False,
) -> dict:
    """Which pagination style page 1 suggests, the values that gave it away and a `pagination`
    object to start from: `{"type", "evidence", "suggested"}`. First match wins: a `Link`
    header (link); a URL-valued next field (next_url); a cursor field (cursor); page numbers,
    page sizes or page totals (page); offsets or limits (offset); a total alone (offset, or
    page when the request itself sent a page number); else none. `evidence` keys are body
    paths, `header:<Name>` or `query:<name>` (the request's own parameters)."""
    headers = headers or {}
    links = links or {}
    query = query or {}
    fields = _walk(doc, records_path) if isinstance(doc, dict) else []
    suggested: dict[str, Any]

    rels = {rel: link.get("url") for rel, link in links.items() if rel in ("next", "prev", "first", "last")}
    if rels:
        if rels.get("next"):
            shown = {"header:Link": rels["next"]}
        else:  # the last page: no next, but the other relations show the style
            shown = {f"header:Link rel={rel}": url for rel, url in rels.items()}
        return {"type": "link", "evidence": shown, "suggested": {"type": "link"}}

    for path, key, value in fields:
        if key in _NEXT_URL_KEYS and (value is None or _looks_like_url(value)):
            suggested = {"type": "next_url", "next": path}
            return {"type": "next_url", "evidence": {path: _shown(value)}, "suggested": suggested}
        if key in _NEXT_URL_KEYS and isinstance(value, dict) and _looks_like_url(value.get("href")):
            href = f"{path}.href"
            return {
                "type": "next_url",
                "evidence": {href: _shown(value["href"])},
                "suggested": {"type": "next_url", "next": href},
            }

    has_more = next(((p, v) for p, k, v in fields if k in _HAS_MORE_KEYS and isinstance(v, bool)), None)
    cursor = next(
        (
            (p, k, v)
            for p, k, v in fields
            if (k in _CURSOR_KEYS or k == "next")
            and (v is None or (isinstance(v, (str, int)) and not isinstance(v, bool) and not _looks_like_url(v)))
        ),
        None,
    )
    header_cursor = next((h for h, what in _HEADERS.items() if what == "cursor" and h in headers), None)
    if cursor is not None or header_cursor is not None:
        if cursor is not None:
            path, key, value = cursor
            evidence: dict[str, Any] = {path: _shown(value)}
            param = _CURSOR_KEYS.get(key, "cursor")
            next_at = path
        else:
            assert header_cursor is not None
            evidence = {f"header:{header_cursor}": _shown(headers[header_cursor])}
            param, next_at = "cursor", f"header:{header_cursor}"
        suggested = {"type": "cursor", "param": f"variables.{param}" if graphql else param}
        suggested["next"] = next_at
        if has_more is not None:
            evidence[has_more[0]] = has_more[1]
            suggested["has_more"] = has_more[0]
        return {"type": "cursor", "evidence": evidence, "suggested": suggested}

    def first(keys: frozenset[str]) -> tuple[str, Any] | None:
        return next(((p, v) for p, k, v in fields if k in keys and _is_count(v)), None)

    def header(what: str) -> tuple[str, Any] | None:
        name = next((h for h, w in _HEADERS.items() if w == what and h in headers), None)
        return (f"header:{name}", headers[name]) if name is not None else None

    page = first(_PAGE_KEYS) or header("page")
    size = first(_PAGE_SIZE_KEYS) or header("size")
    pages_total = first(_TOTAL_PAGES_KEYS) or header("total_pages")
    offset = first(_OFFSET_KEYS)
    limit = first(_LIMIT_KEYS)
    total = first(_TOTAL_KEYS) or header("total")
    query_page = next((k for k in ("page", "page_number", "pageNumber") if k in query), None)
    query_size = next((k for k in ("per_page", "page_size", "pageSize", "perPage") if k in query), None)
    query_offset = next((k for k in ("offset", "skip") if k in query), None)
    query_limit = "limit" if "limit" in query else None

    def seen(*found: tuple[str, Any] | None) -> dict:
        return {path: _shown(value) for path, value in (f for f in found if f is not None)}

    def asked(*names: str | None) -> dict:
        return {f"query:{name}": _shown(query[name]) for name in names if name is not None}

    if page or size or pages_total or (total and query_page and not offset and not limit):
        suggested = {"type": "page", "param": "page"}
        size_key = size[0].rsplit(".", 1)[-1] if size and not size[0].startswith("header:") else query_size
        if size_key:
            suggested["size_param"] = size_key
        if pages_total:
            suggested["total_pages"] = pages_total[0]
        if total:
            suggested["total_records"] = total[0]
        evidence = {**seen(page, size, pages_total, total), **asked(query_page, query_size)}
        return {"type": "page", "evidence": evidence, "suggested": suggested}
    if offset or limit or total:
        offset_key = offset[0].rsplit(".", 1)[-1] if offset else query_offset or "offset"
        suggested = {"type": "offset", "param": offset_key, "size_param": "limit"}
        if total:
            suggested["total_records"] = total[0]
        evidence = {**seen(offset, limit, total), **asked(query_offset, query_limit)}
        return {"type": "offset", "evidence": evidence, "suggested": suggested}
    if query_page:
        suggested = {"type": "page", "param": query_page}
        if query_size:
            suggested["size_param"] = query_size
        return {"type": "page", "evidence": asked(query_page, query_size), "suggested": suggested}
    if query_offset:
        suggested = {"type": "offset", "param": query_offset, "size_param": "limit"}
        return {"type": "offset", "evidence": asked(query_offset, query_limit), "suggested": suggested}
    return {"type": "none", "evidence": {}, "suggested": {"type": "none"}}


def _is_count(value: Any) -> bool:
    """A number, or a numeric string (APIs send both); null counts too (a total not known)."""
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, str) and value.strip().isdigit()
