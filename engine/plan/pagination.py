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


def addressable_request(pagination: Pagination, url: str, params: dict, page: int, step: int | None) -> PageRequest:
    """Request for page `page` (1-based) of an addressable pagination. `step` is the page size
    used for offsets: the configured size, or the size learned from page 1."""
    params = dict(params)
    kind = pagination.type
    if kind == "page":
        assert pagination.start is not None  # the model's type defaults always set it
        params[pagination.param] = pagination.start + page - 1
    elif kind == "offset":
        assert pagination.start is not None  # the model's type defaults always set it
        params[pagination.param] = pagination.start + (page - 1) * (step or 0)
    if kind in ("page", "offset") and pagination.size is not None:
        params[pagination.size_param] = pagination.size
    return PageRequest(url, params)


def sequential_request(pagination: Pagination, url: str, params: dict, token: str | None) -> PageRequest:
    """Request for the page after `token` (None: the first page). For `next_url` and `link` the
    token is the next URL, requested as given (the source's params are not added again)."""
    if token is None:
        return PageRequest(url, dict(params))
    if pagination.type == "cursor":
        return PageRequest(url, {**params, pagination.param: token})
    return PageRequest(token, {})


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


def total_pages(pagination: Pagination, doc: Any, size: int | None) -> int | None:
    """Pages in the sequence as page 1 tells it; None when unknown (absent or null: keep going)."""
    if doc is None:
        return None
    if pagination.total_pages:
        pages = _as_count(get_path(doc, pagination.total_pages))
        if pages is not None:
            return pages
    if pagination.total_records and size:
        records = _as_count(get_path(doc, pagination.total_records))
        if records is not None:
            return math.ceil(records / size)
    return None


def next_token(pagination: Pagination, doc: Any, links: Mapping[str, Mapping[str, str]], page_url: str) -> str | None:
    """The token of the following page, or None at the end of the sequence."""
    if pagination.type == "cursor":
        assert pagination.next is not None  # the model's type defaults always set it
        value = get_path(doc, pagination.next) if doc is not None else None
        if value is None or value == "" or isinstance(value, (dict, list)):
            return None
        return str(value).lower() if isinstance(value, bool) else str(value)
    if pagination.type == "next_url":
        assert pagination.next is not None  # the model's type defaults always set it
        value = get_path(doc, pagination.next) if doc is not None else None
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
