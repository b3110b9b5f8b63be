"""engine/pagination.py against the contract §1 pagination table and the "Details that
clients rely on" (next_url/link requested as given)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict
from pydantic import ValidationError

from engine.plan.pagination import (
    PageRequest,
    addressable_request,
    is_last_addressable,
    is_sequential,
    next_token,
    sequential_request,
    set_path,
    total_pages,
)
from engine.spec.models import Pagination

URL = "https://api.example.com/v1/orders"
BASE = {"status": "open"}


def pag(**fields) -> Pagination:
    return Pagination.model_validate(fields)


# ------------------------------------------------------------------ addressable requests


def test_page_requests_with_defaults():
    p = pag(type="page")
    assert addressable_request(p, URL, BASE, 1, None) == PageRequest(URL, {"status": "open", "page": 1})
    assert addressable_request(p, URL, BASE, 5, None) == PageRequest(URL, {"status": "open", "page": 5})


def test_page_requests_with_size_and_custom_params():
    p = pag(type="page", param="p", start=0, size_param="n", size=25)
    assert addressable_request(p, URL, BASE, 1, 25).params == {"status": "open", "p": 0, "n": 25}
    assert addressable_request(p, URL, BASE, 3, 25).params == {"status": "open", "p": 2, "n": 25}


def test_page_without_size_sends_no_size_param():
    request = addressable_request(pag(type="page"), URL, {}, 2, 40)  # 40 was learned, not configured
    assert request.params == {"page": 2}


def test_offset_requests_with_configured_size():
    p = pag(type="offset", size=50)
    assert addressable_request(p, URL, BASE, 1, 50).params == {"status": "open", "offset": 0, "limit": 50}
    assert addressable_request(p, URL, BASE, 2, 50).params == {"status": "open", "offset": 50, "limit": 50}
    assert addressable_request(p, URL, BASE, 4, 50).params == {"status": "open", "offset": 150, "limit": 50}


def test_offset_with_start_and_custom_params():
    p = pag(type="offset", param="skip", size_param="take", start=10, size=5)
    assert addressable_request(p, URL, {}, 3, 5).params == {"skip": 20, "take": 5}


def test_offset_without_size_uses_the_learned_step():
    p = pag(type="offset")
    # page 1: nothing learned yet; no size parameter is sent
    assert addressable_request(p, URL, {}, 1, None).params == {"offset": 0}
    # page 1 returned 30 records: later pages step by 30
    assert addressable_request(p, URL, {}, 2, 30).params == {"offset": 30}
    assert addressable_request(p, URL, {}, 5, 30).params == {"offset": 120}


def test_addressable_request_does_not_mutate_the_source_params():
    params = {"a": 1}
    addressable_request(pag(type="page", size=10), URL, params, 3, 10)
    assert params == {"a": 1}


def test_none_pagination_is_the_url_and_params_as_given():
    assert addressable_request(pag(), URL, BASE, 1, None) == PageRequest(URL, BASE)


# ------------------------------------------------------------------ sequential requests


def test_is_sequential():
    assert [t for t in ("none", "page", "offset", "cursor", "next_url", "link") if is_sequential(pag(type=t))] == [
        "cursor",
        "next_url",
        "link",
    ]


def test_cursor_requests():
    p = pag(type="cursor")
    assert sequential_request(p, URL, BASE, None) == PageRequest(URL, {"status": "open"})
    assert sequential_request(p, URL, BASE, "abc") == PageRequest(URL, {"status": "open", "cursor": "abc"})
    custom = pag(type="cursor", param="after", next="paging.next")
    assert sequential_request(custom, URL, {}, "X1").params == {"after": "X1"}


@pytest.mark.parametrize("kind", ["next_url", "link"])
def test_next_url_and_link_are_requested_as_given(kind):
    p = pag(type=kind)
    first = sequential_request(p, URL, BASE, None)
    assert first == PageRequest(URL, {"status": "open"})
    nxt = "https://api.example.com/v1/orders?page=2&sig=abc"
    # the source's params are not added again
    assert sequential_request(p, URL, BASE, nxt) == PageRequest(nxt, {})


# ------------------------------------------------------------------ next_token


def test_cursor_next_token():
    p = pag(type="cursor")
    assert next_token(p, {"next_cursor": "abc"}, {}, URL) == "abc"
    deep = pag(type="cursor", next="paging.cursors.after")
    assert next_token(deep, {"paging": {"cursors": {"after": "Z"}}}, {}, URL) == "Z"


@pytest.mark.parametrize(
    "doc",
    [
        {"next_cursor": None},
        {"next_cursor": ""},
        {},
        {"other": "x"},
        {"next_cursor": {"a": 1}},
        {"next_cursor": [1]},
        None,
    ],
)
def test_cursor_end_of_sequence(doc):
    assert next_token(pag(type="cursor"), doc, {}, URL) is None


@pytest.mark.parametrize("value, token", [(123, "123"), (0, "0"), (1.5, "1.5"), (True, "true"), (False, "false")])
def test_cursor_scalars_are_stringified(value, token):
    assert next_token(pag(type="cursor"), {"next_cursor": value}, {}, URL) == token


def test_next_url_absolute_and_relative():
    p = pag(type="next_url")
    page_url = "https://api.example.com/v1/orders?page=1"
    assert next_token(p, {"next": "https://other.example.com/x?p=2"}, {}, page_url) == "https://other.example.com/x?p=2"
    assert next_token(p, {"next": "/v2/orders?p=2"}, {}, page_url) == "https://api.example.com/v2/orders?p=2"
    assert next_token(p, {"next": "?page=2"}, {}, page_url) == "https://api.example.com/v1/orders?page=2"
    assert next_token(p, {"next": "items?page=2"}, {}, page_url) == "https://api.example.com/v1/items?page=2"
    nested = pag(type="next_url", next="links.next")
    assert next_token(nested, {"links": {"next": " /n?c=1 "}}, {}, page_url) == "https://api.example.com/n?c=1"


@pytest.mark.parametrize("doc", [{"next": None}, {"next": ""}, {"next": "   "}, {}, {"next": 5}, None])
def test_next_url_end_of_sequence(doc):
    assert next_token(pag(type="next_url"), doc, {}, URL) is None


def test_link_header_next():
    p = pag(type="link")
    links = {
        "next": {"url": "https://api.example.com/v1/orders?page=2", "rel": "next"},
        "last": {"url": "https://api.example.com/v1/orders?page=9", "rel": "last"},
    }
    assert next_token(p, None, links, URL) == "https://api.example.com/v1/orders?page=2"
    relative = {"next": {"url": "/v1/orders?page=3", "rel": "next"}}
    assert (
        next_token(p, None, relative, "https://api.example.com/v1/orders?page=2")
        == "https://api.example.com/v1/orders?page=3"
    )


def test_link_without_next_ends():
    p = pag(type="link")
    assert next_token(p, None, {}, URL) is None
    assert next_token(p, None, {"prev": {"url": URL, "rel": "prev"}}, URL) is None
    # a body field called "next" is not a Link header
    assert next_token(p, {"next": "https://x.example.com"}, {}, URL) is None


@pytest.mark.parametrize("kind", ["none", "page", "offset"])
def test_addressable_types_have_no_token(kind):
    assert next_token(pag(type=kind), {"next": "x", "next_cursor": "y"}, {"next": {"url": URL}}, URL) is None


# ------------------------------------------------------------------ total_pages


def test_total_pages_from_a_path():
    p = pag(type="page", total_pages="meta.total_pages")
    assert total_pages(p, {"meta": {"total_pages": 12}}, None) == 12
    assert total_pages(p, {"meta": {"total_pages": "7"}}, None) == 7
    assert total_pages(p, {"meta": {"total_pages": 3.0}}, None) == 3


def test_total_pages_from_total_records_and_size():
    p = pag(type="page", total_records="meta.count")
    assert total_pages(p, {"meta": {"count": 250}}, 100) == 3
    assert total_pages(p, {"meta": {"count": 200}}, 100) == 2
    assert total_pages(p, {"meta": {"count": 0}}, 100) == 0
    assert total_pages(p, {"meta": {"count": 250}}, None) is None  # no size: unknown
    o = pag(type="offset", total_records="total")
    assert total_pages(o, {"total": 101}, 10) == 11


@pytest.mark.parametrize("value", [None, "many", "", True, [3], {"n": 3}, -1, float("nan")])
def test_total_pages_unknown_values(value):
    p = pag(type="page", total_pages="meta.total_pages", total_records="meta.count")
    assert total_pages(p, {"meta": {"total_pages": value, "count": value}}, 10) is None


def test_total_pages_absent_or_not_configured():
    p = pag(type="page", total_pages="meta.total_pages")
    assert total_pages(p, {"meta": {}}, 10) is None
    assert total_pages(p, {}, 10) is None
    assert total_pages(p, None, 10) is None
    assert total_pages(pag(type="page"), {"meta": {"total_pages": 5}}, 10) is None


def test_total_pages_falls_back_to_total_records():
    p = pag(type="page", total_pages="meta.pages", total_records="meta.count")
    assert total_pages(p, {"meta": {"pages": None, "count": 45}}, 10) == 5
    assert total_pages(p, {"meta": {"pages": 2, "count": 45}}, 10) == 2


# ------------------------------------------------------------------ stop rules


@pytest.mark.parametrize("kind", ["page", "offset"])
def test_short_page_stops(kind):
    p = pag(type=kind, size=100)
    assert is_last_addressable(p, 3, 99, 100, None, None) is True
    assert is_last_addressable(p, 3, 100, 100, None, None) is False


@pytest.mark.parametrize("kind", ["page", "offset"])
def test_empty_page_stops(kind):
    assert is_last_addressable(pag(type=kind), 4, 0, None, None, None) is True
    assert is_last_addressable(pag(type=kind, size=10), 4, 0, 10, None, None) is True


def test_without_a_size_a_full_looking_page_continues():
    assert is_last_addressable(pag(type="page"), 1, 37, None, None, None) is False


@pytest.mark.parametrize("kind", ["page", "offset"])
def test_total_reached_stops(kind):
    p = pag(type=kind, size=10)
    assert is_last_addressable(p, 4, 10, 10, 5, None) is False
    assert is_last_addressable(p, 5, 10, 10, 5, None) is True
    assert is_last_addressable(p, 6, 10, 10, 5, None) is True
    assert is_last_addressable(p, 1, 10, 10, 0, None) is True


@pytest.mark.parametrize("kind", ["page", "offset"])
def test_max_pages_stops(kind):
    p = pag(type=kind, size=10)
    assert is_last_addressable(p, 2, 10, 10, None, 3) is False
    assert is_last_addressable(p, 3, 10, 10, None, 3) is True


def test_max_pages_wins_over_a_larger_total():
    p = pag(type="page", size=10)
    assert is_last_addressable(p, 5, 10, 10, 100, 5) is True
    assert is_last_addressable(p, 4, 10, 10, 100, 5) is False


def test_none_pagination_is_one_request():
    assert is_last_addressable(pag(), 1, 1000, None, None, None) is True
    assert is_last_addressable(pag(), 1, 0, None, None, 10) is True


# ------------------------------------------------------------------ parameters inside a JSON body


def test_set_path_creates_nested_objects_and_copies_only_the_way_down():
    doc = {"filter": {"status": "open"}, "page": {"size": 20}}
    out = set_path(doc, "page.number", 3)
    assert out == {"filter": {"status": "open"}, "page": {"size": 20, "number": 3}}
    assert doc == {"filter": {"status": "open"}, "page": {"size": 20}}  # the original is untouched
    assert out["filter"] is doc["filter"]  # siblings are shared, not copied
    assert set_path({}, "a.b.c", 1) == {"a": {"b": {"c": 1}}}
    assert set_path(None, "cursor", "x") == {"cursor": "x"}
    assert set_path({"page": 5}, "page.number", 2) == {"page": {"number": 2}}  # a scalar on the way is replaced


def test_page_parameters_go_into_the_body_at_their_dotted_paths():
    p = pag(type="page", param="page.number", size_param="page.size", size=10, **{"in": "body"})
    body = {"filter": {"n": 95}, "page": {"size": 999}}
    first = addressable_request(p, URL, BASE, 1, 10, body, in_body=True)
    third = addressable_request(p, URL, BASE, 3, 10, body, in_body=True)
    assert first == PageRequest(URL, BASE, {"filter": {"n": 95}, "page": {"size": 10, "number": 1}})
    assert third.body == {"filter": {"n": 95}, "page": {"size": 10, "number": 3}}
    assert third.params == BASE  # nothing leaks into the query
    assert body == {"filter": {"n": 95}, "page": {"size": 999}}


def test_offset_parameters_in_the_body_step_by_the_learned_size():
    p = pag(type="offset", param="range.offset", size_param="range.limit", **{"in": "body"})
    assert addressable_request(p, URL, {}, 1, None, {"q": "x"}, in_body=True).body == {"q": "x", "range": {"offset": 0}}
    assert addressable_request(p, URL, {}, 4, 25, {"q": "x"}, in_body=True).body == {"q": "x", "range": {"offset": 75}}


def test_a_body_without_in_body_keeps_the_parameters_in_the_query():
    p = pag(type="page", size=10)
    request = addressable_request(p, URL, {}, 2, 10, {"q": "x"}, in_body=False)
    assert request == PageRequest(URL, {"page": 2, "per_page": 10}, {"q": "x"})


def test_cursor_in_graphql_variables():
    p = pag(type="cursor", param="variables.after", size_param="variables.first", size=50, **{"in": "body"})
    body = {"query": "query($first: Int, $after: String) { items }", "variables": {"owner": 7}}
    first = sequential_request(p, URL, {}, None, body, in_body=True)
    assert first.body == {"query": body["query"], "variables": {"owner": 7, "first": 50}}
    assert "after" not in first.body["variables"]
    later = sequential_request(p, URL, {}, "Y3Vy", body, in_body=True)
    assert later.body == {"query": body["query"], "variables": {"owner": 7, "first": 50, "after": "Y3Vy"}}
    assert later.url == URL and later.params == {}
    assert body == {"query": body["query"], "variables": {"owner": 7}}


def test_next_url_resends_the_body():
    p = pag(type="next_url")
    nxt = "https://api.example.com/v1/search?page=2"
    assert sequential_request(p, URL, BASE, nxt, {"q": "x"}, in_body=False) == PageRequest(nxt, {}, {"q": "x"})


# ------------------------------------------------------------------ has_more and values from headers


GRAPHQL_PAGE = "data.items.pageInfo"


@pytest.mark.parametrize(
    "has_next, token",
    [(True, "c2"), (False, None), ("false", None), ("true", "c2"), (None, "c2"), (0, None), (1, "c2")],
)
def test_has_more_false_ends_the_sequence_whatever_the_cursor(has_next, token):
    p = pag(
        type="cursor", param="variables.after", next=f"{GRAPHQL_PAGE}.endCursor", has_more=f"{GRAPHQL_PAGE}.hasNextPage"
    )
    info = {"endCursor": "c2"} if has_next is None else {"hasNextPage": has_next, "endCursor": "c2"}
    assert next_token(p, {"data": {"items": {"pageInfo": info}}}, {}, URL) == token


def test_has_more_true_with_no_cursor_still_ends():
    p = pag(type="cursor", next="meta.cursor", has_more="meta.more")
    assert next_token(p, {"meta": {"more": True, "cursor": None}}, {}, URL) is None


def test_totals_from_response_headers_case_insensitively():
    headers = CIMultiDict({"x-total-pages": "7", "X-Total-Count": "95"})
    pages = pag(type="page", total_pages="header:X-Total-Pages")
    records = pag(type="offset", total_records="header:x-total-count")
    assert pages.from_header("total_pages") == "X-Total-Pages"
    assert total_pages(pages, [{"id": 1}], 10, headers) == 7
    assert total_pages(records, [{"id": 1}], 10, headers) == 10
    # the body is not read for a header value, and a missing or bad header means unknown
    assert total_pages(pages, {"X-Total-Pages": 3}, 10, CIMultiDict()) is None
    assert total_pages(pages, [], 10, None) is None
    assert total_pages(pages, [], 10, CIMultiDict({"X-Total-Pages": "lots"})) is None


def test_next_cursor_and_next_url_from_response_headers():
    cursor = pag(type="cursor", next="header:X-Next-Cursor")
    assert next_token(cursor, [{"id": 1}], {}, URL, CIMultiDict({"x-next-cursor": "abc"})) == "abc"
    assert next_token(cursor, {"X-Next-Cursor": "body"}, {}, URL, CIMultiDict()) is None
    link = pag(type="next_url", next="header:X-Next-Url")
    headers = CIMultiDict({"X-Next-Url": "/v1/orders?cursor=abc"})
    assert next_token(link, [], {}, URL, headers) == "https://api.example.com/v1/orders?cursor=abc"


@pytest.mark.parametrize("value", ["header:", "header:  ", "header:X Total", "header:X:Y"])
def test_header_values_need_a_header_name(value):
    with pytest.raises(ValidationError, match="header name"):
        pag(type="page", total_pages=value)
