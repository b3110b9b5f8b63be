"""Property-based tests (hypothesis): the spec validator never raises anything but a SpecError
naming fields, accepts every well-formed spec, and the HTTP API never answers 5xx."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config import load_settings
from engine.errors import SpecError
from engine.spec.models import JobSpec, parse_spec
from service import create_app

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=True) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)

FIELDS = [
    "name",
    "sources",
    "rate_limit",
    "concurrency",
    "retry",
    "timeout",
    "on_error",
    "columns",
    "filters",
    "group_by",
    "sort",
    "distinct",
    "limit",
    "export",
    "webhook",
    "deliver",
]
SOURCE_FIELDS = [
    "url",
    "method",
    "params",
    "headers",
    "format",
    "records",
    "pagination",
    "max_pages",
    "auth",
    "ids",
    "windows",
    "csv",
]

BASE = {
    "name": "fuzz",
    "sources": [
        {"url": "https://api.example.com/items", "records": "data", "pagination": {"type": "page", "size": 10}}
    ],
    "rate_limit": {"requests": 5, "per": 1},
    "export": {"format": "csv"},
}


def check_outcome(document) -> None:
    try:
        spec = parse_spec(document)
    except SpecError as exc:
        assert exc.details, "a SpecError names at least one field"
        for detail in exc.details:
            assert isinstance(detail.field, str) and detail.field
            assert isinstance(detail.message, str) and detail.message
        return
    assert isinstance(spec, JobSpec)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_any_json_document_is_accepted_or_a_field_error(document):
    check_outcome(document)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIELDS), json_values)
def test_a_valid_spec_with_one_field_replaced(field, value):
    check_outcome({**BASE, field: value})


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SOURCE_FIELDS), json_values)
def test_a_valid_source_with_one_field_replaced(field, value):
    try:
        parse_spec({**BASE, "sources": [{**BASE["sources"][0], field: value}]})
    except SpecError as exc:
        # the error points into the source, at the replaced field (or inside it)
        assert any(d.field.startswith("sources.0") for d in exc.details), exc.details


# --------------------------------------------------------------- well-formed specs parse

paths = st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), min_size=1, max_size=3).map(".".join)
paginations = st.one_of(
    st.just({"type": "none"}),
    st.builds(
        lambda size, tp: {"type": "page", "size": size, **({"total_pages": tp} if tp else {})},
        st.integers(1, 10_000),
        st.none() | paths,
    ),
    st.builds(lambda size: {"type": "offset", "size": size}, st.integers(1, 10_000)),
    st.builds(lambda nxt: {"type": "cursor", "param": "cursor", "next": nxt}, paths),
    st.builds(lambda nxt: {"type": "next_url", "next": nxt}, paths),
    st.just({"type": "link"}),
)
sources = st.fixed_dictionaries(
    {"url": st.from_regex(r"https://api\.example\.com/[a-z]{1,10}", fullmatch=True)},
    optional={
        "records": paths,
        "pagination": paginations,
        "max_pages": st.integers(1, 100_000),
        "method": st.sampled_from(["GET", "POST"]),
        "params": st.dictionaries(
            st.from_regex(r"[a-z]{1,6}", fullmatch=True),
            st.integers(0, 99) | st.text(st.characters(min_codepoint=48, max_codepoint=122), max_size=8),
            max_size=3,
        ),
    },
)
formats = st.sampled_from(["csv", "json", "ndjson", "xlsx", "parquet", "zip"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(sources, min_size=1, max_size=3),
    formats,
    st.none() | st.integers(1, 1000),
    st.none() | st.integers(1, 64),
    st.sampled_from(["fail", "skip"]),
)
def test_well_formed_specs_are_accepted(srcs, fmt, rate, concurrency, on_error):
    named = [{**s, "name": f"s{i}"} for i, s in enumerate(srcs)]
    if len(named) > 1 and fmt not in ("zip", "xlsx"):
        fmt = "zip"
    document = {"sources": named, "export": {"format": fmt}, "on_error": on_error}
    if rate is not None:
        document["rate_limit"] = rate
    if concurrency is not None:
        document["concurrency"] = concurrency
    spec = parse_spec(document)
    assert len(spec.sources) == len(srcs) and spec.export.format == fmt


# --------------------------------------------------------------- the HTTP API never 5xx


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz-data")
    app = create_app(load_settings({"DATA_DIR": str(data), "MAX_FILE_SIZE": "1"}), run_tasks=False)
    return app.test_client()


ids = st.one_of(
    st.from_regex(r"task_[0-9a-f]{12}", fullmatch=True),
    st.text(max_size=30),
    st.sampled_from(["../../etc/passwd", "..%2F..%2Fetc", "task_", "TASK_0123456789AB", "%00", "."]),
)
endpoints = st.one_of(
    st.sampled_from(
        [
            "/api/export/inputs",
            "/api/export/bulk-inputs",
            "/api/export/inputs-list",
            "/api/export/inputs-clear",
            "/api/export/configure",
            "/api/export/start",
            "/api/export/tasks",
            "/api/export/schedules",
            "/healthz",
            "/metrics",
            "/",
        ]
    ),
    ids.map(lambda i: f"/api/export/status/{i}"),
    ids.map(lambda i: f"/api/export/download/{i}"),
    ids.map(lambda i: f"/api/export/cancel/{i}"),
    st.text(max_size=20).map(lambda t: "/api/export/" + t),
)
bodies = st.one_of(
    st.none(),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.just(b"{"),
    st.just(b'{"sources": [{"url": 5}]}'),
)
content_types = st.sampled_from(
    [
        None,
        "application/json",
        "text/plain",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
        "application/json; charset=latin-1",
    ]
)


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    endpoints,
    bodies,
    content_types,
    st.none() | st.text(max_size=20),
    st.dictionaries(st.sampled_from(["limit", "status", "token"]), st.text(max_size=10), max_size=2),
)
def test_http_api_never_answers_5xx(client, method, path, body, content_type, profile, query):
    headers = {}
    if content_type:
        headers["Content-Type"] = content_type
    if profile is not None:
        headers["X-Profile"] = profile.encode("utf-8", "replace").decode("latin-1", "replace")
    try:
        response = client.open(path, method=method, data=body, headers=headers, query_string=query)
    except ValueError:
        return  # the test client refused to build the request (e.g. a header it can't encode)
    assert response.status_code < 500, (method, path, body, response.status_code, response.data[:300])
    if path.startswith("/api/") and response.status_code >= 400:
        error = response.get_json()
        assert isinstance(error, dict) and {"error", "message", "details"} <= set(error), response.data[:300]
