"""Pagination styles (the table in docs/spec.md), as pure functions of the spec and a response.
*Addressable* styles (`none`, `page`, `offset`) know page k's request up front, so pages are
fetched in parallel; *sequential* ones (`cursor`, `next_url`, `link`) take page k+1's request
from page k's response.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

from engine.spec.models import Pagination

SEQUENTIAL = ("cursor", "next_url", "link")


def get_path(doc: Any, path: str) -> Any:
    """Follow a dotted path (`meta.total`, `result.items`, `items.0.id`); None when absent.
    (Defined here rather than in `engine.fetch.records`, so the coordinator's planner can import
    this module without pyarrow; `engine.fetch.records` re-exports it.)"""
    node = doc
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.lstrip("-").isdigit():
            index = int(part)
            node = node[index] if -len(node) <= index < len(node) else None
        else:
            return None
        if node is None:
            return None
    return node


def is_sequential(pagination: Pagination) -> bool:
    return pagination.type in SEQUENTIAL


@dataclass(frozen=True)
class PageRequest:
    url: str
    params: dict
    body: Any = None  # the JSON body to send (None: the source's own, or none)
    headers: Mapping[str, str] | None = None  # headers beside the source's (incremental `header:` bounds)


def set_path(doc: Any, path: str, value: Any) -> dict:
    """A copy of the JSON object `doc` with `value` at the dotted `path` (objects on the way
    are copied, or created when absent; nothing else is copied)."""
    head, _, rest = path.partition(".")
    out = dict(doc) if isinstance(doc, dict) else {}
    out[head] = set_path(out.get(head), rest, value) if rest else value
    return out


def _put(request: PageRequest, name: str | None, value: Any, in_body: bool) -> PageRequest:
    if name is None:
        return request
    if in_body:
        return PageRequest(request.url, request.params, set_path(request.body or {}, name, value), request.headers)
    return PageRequest(request.url, {**request.params, name: value}, request.body, request.headers)


def addressable_request(
    pagination: Pagination,
    url: str,
    params: dict,
    page: int,
    step: int | None,
    body: Any = None,
    in_body: bool = False,
    headers: Mapping[str, str] | None = None,
) -> PageRequest:
    """Request for page `page` (1-based) of an addressable pagination. `step` is the page size
    used for offsets: the configured size, or the size learned from page 1. `in_body`: the
    parameters are dotted paths inside the JSON `body` (`pagination.in: body`)."""
    request = PageRequest(url, dict(params), body, headers)
    kind = pagination.type
    if kind == "page":
        assert pagination.start is not None  # the model's type defaults always set it
        request = _put(request, pagination.param, pagination.start + page - 1, in_body)
    elif kind == "offset":
        assert pagination.start is not None  # the model's type defaults always set it
        request = _put(request, pagination.param, pagination.start + (page - 1) * (step or 0), in_body)
    if kind in ("page", "offset") and pagination.size is not None:
        request = _put(request, pagination.size_param, pagination.size, in_body)
    return request


def sequential_request(
    pagination: Pagination,
    url: str,
    params: dict,
    token: str | None,
    body: Any = None,
    in_body: bool = False,
    headers: Mapping[str, str] | None = None,
) -> PageRequest:
    """Request for the page after `token` (None: the first page). For `next_url` and `link` the
    token is the next URL, requested as given (the source's params are not added again)."""
    request = PageRequest(url, dict(params), body, headers)
    if pagination.type == "cursor" and pagination.size is not None:
        request = _put(request, pagination.size_param, pagination.size, in_body)
    if token is None:
        return request
    if pagination.type == "cursor":
        return _put(request, pagination.param, token, in_body)
    return PageRequest(token, {}, body, headers)


def _as_count(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(number) or number < 0:
        return None
    return int(number)


def _value(pagination: Pagination, field_name: str, doc: Any, headers: Mapping[str, str] | None) -> Any:
    """A pagination value from the body (a dotted path) or from a response header (`header:Name`)."""
    header = pagination.from_header(field_name)
    if header is not None:
        return (headers or {}).get(header)  # aiohttp's headers are case-insensitive
    path = getattr(pagination, field_name)
    return get_path(doc, path) if path and doc is not None else None


def total_pages(
    pagination: Pagination, doc: Any, size: int | None, headers: Mapping[str, str] | None = None
) -> int | None:
    """Pages in the sequence as page 1 tells it; None when unknown (absent or null: keep going)."""
    if pagination.total_pages:
        pages = _as_count(_value(pagination, "total_pages", doc, headers))
        if pages is not None:
            return pages
    if pagination.total_records and size:
        records = _as_count(_value(pagination, "total_records", doc, headers))
        if records is not None:
            return math.ceil(records / size)
    return None


def _no_more(pagination: Pagination, doc: Any) -> bool:
    """`has_more` (a dotted path to a boolean) says the sequence ends here."""
    if not pagination.has_more or doc is None:
        return False
    value = get_path(doc, pagination.has_more)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value == 0  # a 0/1 flag, read like the string "0"
    return value is False or (isinstance(value, str) and value.strip().lower() in ("false", "0", ""))


def next_token(
    pagination: Pagination,
    doc: Any,
    links: Mapping[str, Mapping[str, str]],
    page_url: str,
    headers: Mapping[str, str] | None = None,
) -> str | None:
    """The token of the following page, or None at the end of the sequence."""
    if pagination.type == "cursor":
        assert pagination.next is not None  # the model's type defaults always set it
        if _no_more(pagination, doc):
            return None
        value = _value(pagination, "next", doc, headers)
        if value is None or value == "" or isinstance(value, (dict, list)):
            return None
        return str(value).lower() if isinstance(value, bool) else str(value)
    if pagination.type == "next_url":
        assert pagination.next is not None  # the model's type defaults always set it
        value = _value(pagination, "next", doc, headers)
        if not isinstance(value, str) or not value.strip():
            return None
        return urljoin(page_url, value.strip())
    if pagination.type == "link":
        target = (links.get("next") or {}).get("url")
        return urljoin(page_url, target) if target else None
    return None


def is_last_addressable(
    pagination: Pagination, page: int, records: int, size: int | None, pages_total: int | None, max_pages: int | None
) -> bool:
    """Stop rule for `none`/`page`/`offset`: one page for none; otherwise a short or empty page,
    the total reached, or `max_pages` (a configured maximum always wins)."""
    if pagination.type == "none":
        return True
    if records == 0 or (size is not None and records < size):
        return True
    if pages_total is not None and page >= pages_total:
        return True
    return max_pages is not None and page >= max_pages
