"""engine/spec.py (parse_spec, spec_to_json) and engine/errors.py, against CONTRACT.md §1.

Every default the contract documents is asserted as a value; every invalid spec asserts the
exact dotted field path reported in `SpecError.details`.
"""

from __future__ import annotations

import copy
import datetime as dt
import json

import pytest

from engine.errors import FieldError, JobFailed, PageFailure, Problems, SpecError
from engine.spec.models import JobSpec, Pagination, parse_spec, spec_to_json

URL = "https://api.example.com/v1/orders"


def one(**source) -> dict:
    """A spec with one source (url defaulted)."""
    return {"sources": [{"url": URL, **source}]}


def errors_of(data) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return [(d.field, d.message) for d in info.value.details]


def fields_of(data) -> list[str]:
    return [f for f, _ in errors_of(data)]


# ------------------------------------------------------------------ defaults


def test_only_url_is_required_and_every_default_is_the_documented_one():
    spec = parse_spec({"sources": [{"url": URL}]})
    assert isinstance(spec, JobSpec)
    assert spec.name == "export"
    (source,) = spec.sources
    assert source.url == URL
    assert source.method == "GET"
    assert source.params == {}
    assert source.headers == {}
    assert source.body is None
    assert source.format == "json"
    assert source.csv.separator == ","
    assert source.csv.encoding == "utf-8"
    assert source.csv.header is True
    assert source.records is None
    assert source.pagination.type == "none"
    assert source.max_pages is None
    assert source.auth is None
    assert source.ids is None
    assert source.windows is None
    # job level
    assert spec.rate_limit is None  # absent: unlimited
    assert spec.concurrency is None  # the service's WORKERS
    assert spec.retry.attempts == 5
    assert spec.retry.backoff == 0.5
    assert spec.retry.max_backoff == 30
    assert list(spec.retry.statuses) == [429, 500, 502, 503, 504]
    assert spec.timeout == 30
    assert spec.on_error == "fail"
    assert spec.columns is None
    assert tuple(spec.filters) == ()
    assert spec.group_by is None
    assert tuple(spec.sort) == ()
    assert spec.distinct is False
    assert spec.limit is None
    assert spec.export.format == "csv"
    assert spec.export.inner == "csv"
    assert spec.export.filename is None
    assert spec.export.csv.separator == ","
    assert spec.export.csv.escape_formulas is False
    assert spec.webhook is None
    assert tuple(spec.deliver) == ()
    # the output file is {filename}.{ext}, filename defaulting to the job name
    assert spec.filename == "export"
    assert spec.output_name == "export.csv"


@pytest.mark.parametrize(
    "kind, expected",
    [
        (
            "page",
            {
                "param": "page",
                "start": 1,
                "size_param": "per_page",
                "size": None,
                "total_pages": None,
                "total_records": None,
                "next": None,
            },
        ),
        (
            "offset",
            {
                "param": "offset",
                "start": 0,
                "size_param": "limit",
                "size": None,
                "total_pages": None,
                "total_records": None,
                "next": None,
            },
        ),
        (
            "cursor",
            {
                "param": "cursor",
                "next": "next_cursor",
                "start": None,
                "size_param": None,
                "size": None,
                "total_pages": None,
                "total_records": None,
            },
        ),
        (
            "next_url",
            {
                "next": "next",
                "param": None,
                "start": None,
                "size_param": None,
                "size": None,
                "total_pages": None,
                "total_records": None,
            },
        ),
        (
            "link",
            {
                "param": None,
                "start": None,
                "size_param": None,
                "size": None,
                "total_pages": None,
                "total_records": None,
                "next": None,
            },
        ),
        (
            "none",
            {
                "param": None,
                "start": None,
                "size_param": None,
                "size": None,
                "total_pages": None,
                "total_records": None,
                "next": None,
            },
        ),
    ],
)
def test_pagination_defaults_per_type(kind, expected):
    pagination = parse_spec(one(pagination={"type": kind})).sources[0].pagination
    assert pagination.type == kind
    assert {k: getattr(pagination, k) for k in expected} == expected


def test_pagination_given_values_override_the_defaults():
    p = (
        parse_spec(
            one(
                pagination={
                    "type": "page",
                    "param": "p",
                    "start": 0,
                    "size_param": "n",
                    "size": 50,
                    "total_pages": "meta.pages",
                }
            )
        )
        .sources[0]
        .pagination
    )
    assert (p.param, p.start, p.size_param, p.size, p.total_pages) == ("p", 0, "n", 50, "meta.pages")
    c = parse_spec(one(pagination={"type": "cursor", "param": "after", "next": "paging.next"})).sources[0].pagination
    assert (c.param, c.next) == ("after", "paging.next")
    # a null field means "use the default"
    n = Pagination.model_validate({"type": "offset", "param": None})
    assert n.param == "offset"


def test_csv_source_options_defaults_and_values():
    src = parse_spec(one(format="csv", csv={"separator": ";", "encoding": "latin-1", "header": False})).sources[0]
    assert (src.csv.separator, src.csv.encoding, src.csv.header) == (";", "latin-1", False)
    assert parse_spec(one(format="csv")).sources[0].csv.null_values == ()
    assert parse_spec(one(format="csv")).sources[0].csv.skip_rows == 0


def test_method_is_case_insensitive():
    assert parse_spec(one(method="post")).sources[0].method == "POST"


def test_distinct_and_sort_shorthands():
    spec = parse_spec({**one(), "distinct": ["a", "b"], "sort": ["a", {"column": "b", "descending": True}]})
    assert spec.distinct == ("a", "b")
    assert [(k.column, k.descending) for k in spec.sort] == [("a", False), ("b", True)]
    assert parse_spec({**one(), "distinct": None}).distinct is False
    assert parse_spec({**one(), "distinct": True}).distinct is True


def test_aggregation_output_names():
    spec = parse_spec(
        {
            **one(),
            "group_by": {
                "keys": ["k"],
                "aggregations": [
                    {"column": "x", "agg": "sum", "as": "total"},
                    {"column": "x", "agg": "mean"},
                    {"agg": "count"},
                ],
            },
        }
    )
    assert [a.output_name for a in spec.group_by.aggregations] == ["total", "x_mean", "count"]


def test_export_filename_and_extension():
    spec = parse_spec({**one(), "name": "orders", "export": {"format": "parquet", "filename": "out 2024.v1"}})
    assert spec.output_name == "out 2024.v1.parquet"
    spec = parse_spec({**one(), "name": "orders", "export": {"format": "zip", "inner": "xlsx"}})
    assert spec.output_name == "orders.zip"
    assert spec.export.inner == "xlsx"


# ------------------------------------------------------------------ source naming


def test_one_unnamed_source_takes_the_job_name():
    spec = parse_spec({"name": "orders", "sources": [{"url": URL}]})
    assert spec.sources[0].name == "orders"


def test_one_unnamed_source_without_job_name_is_export():
    assert parse_spec(one()).sources[0].name == "export"


def test_several_unnamed_sources_are_numbered_from_one():
    spec = parse_spec(
        {
            "name": "orders",
            "export": {"format": "zip"},
            "sources": [{"url": URL}, {"url": URL, "name": "customers"}, {"url": URL}],
        }
    )
    assert [s.name for s in spec.sources] == ["source_1", "customers", "source_3"]


@pytest.mark.parametrize("names", [("a", "a"), ("orders", "Orders")])  # names become file/sheet names
def test_duplicate_source_names_are_rejected(names):
    data = {"export": {"format": "zip"}, "sources": [{"url": URL, "name": n} for n in names]}
    errors = errors_of(data)
    assert [f for f, _ in errors] == ["sources.1.name"]
    assert "duplicate" in errors[0][1]


def test_explicit_name_clashing_with_generated_name_is_rejected():
    data = {"export": {"format": "xlsx"}, "sources": [{"url": URL}, {"url": URL, "name": "source_1"}]}
    assert fields_of(data) == ["sources.1.name"]


# ------------------------------------------------------------------ rate limit


@pytest.mark.parametrize(
    "value, requests, per",
    [
        (10, 10, 1.0),
        (1, 1, 1.0),
        (0.5, 1, 2.0),
        (2.5, 5, 2.0),
        (0.25, 1, 4.0),
    ],
)
def test_bare_rate_limit_means_requests_per_second(value, requests, per):
    rl = parse_spec({**one(), "rate_limit": value}).rate_limit
    assert (rl.requests, rl.per) == (requests, per)
    assert rl.burst is None
    assert rl.effective_burst == requests  # burst defaults to requests


def test_rate_limit_object_with_burst():
    rl = parse_spec({**one(), "rate_limit": {"requests": 10, "per": 60, "burst": 1}}).rate_limit
    assert (rl.requests, rl.per, rl.burst, rl.effective_burst) == (10, 60.0, 1, 1)
    rl = parse_spec({**one(), "rate_limit": {"requests": 10}}).rate_limit
    assert (rl.per, rl.effective_burst) == (1.0, 10)
    # burst == requests is fine
    assert parse_spec({**one(), "rate_limit": {"requests": 3, "burst": 3}}).rate_limit.burst == 3


def test_burst_above_requests_is_rejected():
    errors = errors_of({**one(), "rate_limit": {"requests": 5, "per": 1, "burst": 6}})
    assert errors == [("rate_limit.burst", "must not exceed requests")]


# ------------------------------------------------------------------ invalid specs


def _many(*sources, **job):
    return {"export": {"format": "zip"}, "sources": [{"url": URL, **s} for s in sources], **job}


INVALID = [
    # (id, spec, expected field path)
    ("not-an-object", [], "spec"),
    ("no-sources", {}, "sources"),
    ("empty-sources", {"sources": []}, "sources"),
    ("no-url", {"sources": [{}]}, "sources.0.url"),
    ("ftp-url", one(url="ftp://api.example.com/x"), "sources.0.url"),
    ("url-without-host", one(url="http://"), "sources.0.url"),
    ("method-put", one(method="PUT"), "sources.0.method"),
    ("format-xml", one(format="xml"), "sources.0.format"),
    ("size-zero", one(pagination={"type": "page", "size": 0}), "sources.0.pagination.size"),
    (
        "size-negative-second-source",
        _many({}, {"pagination": {"type": "offset", "size": -1}}),
        "sources.1.pagination.size",
    ),
    ("pagination-type", one(pagination={"type": "scroll"}), "sources.0.pagination.type"),
    ("pagination-type-list", one(pagination={"type": ["page"]}), "sources.0.pagination.type"),
    ("pagination-type-object", one(pagination={"type": {}}), "sources.0.pagination.type"),
    ("pagination-unknown-field", one(pagination={"type": "page", "bogus": 1}), "sources.0.pagination.bogus"),
    ("cursor-with-csv", one(format="csv", pagination={"type": "cursor"}), "sources.0.pagination.type"),
    ("next_url-with-ndjson", one(format="ndjson", pagination={"type": "next_url"}), "sources.0.pagination.type"),
    (
        "total-pages-with-csv",
        one(format="csv", pagination={"type": "page", "total_pages": "t"}),
        "sources.0.pagination.total_pages",
    ),
    ("records-with-csv", one(format="csv", records="data"), "sources.0.records"),
    ("max-pages-zero", one(max_pages=0), "sources.0.max_pages"),
    ("bearer-no-token", one(auth={"type": "bearer"}), "sources.0.auth.token"),
    ("bearer-empty-token", one(auth={"type": "bearer", "token": ""}), "sources.0.auth.token"),
    ("basic-no-password", one(auth={"type": "basic", "username": "u"}), "sources.0.auth.password"),
    ("header-auth-no-value", one(auth={"type": "header", "name": "X-Key"}), "sources.0.auth.value"),
    ("query-auth-no-name", one(auth={"type": "query", "value": "v"}), "sources.0.auth.name"),
    (
        "oauth2-bad-token-url",
        one(auth={"type": "oauth2", "token_url": "nope", "client_id": "a", "client_secret": "b"}),
        "sources.0.auth.token_url",
    ),
    ("auth-unknown-type", one(auth={"type": "digest"}), "sources.0.auth"),
    ("auth-unknown-field", one(auth={"type": "bearer", "token": "t", "extra": 1}), "sources.0.auth.extra"),
    ("param-object", one(params={"a": {"b": 1}}), "sources.0.params.a"),
    ("header-number", one(headers={"X-N": 1}), "sources.0.headers.X-N"),
    ("body-with-get", one(body={"a": 1}), "sources.0.body"),
    ("id-placeholder-without-ids", one(url=URL + "/{id}"), "sources.0.url"),
    ("ids-without-placeholder-or-param", one(ids={"values": [1, 2]}), "sources.0.ids.param"),
    ("ids-two-origins", one(url=URL + "/{id}", ids={"values": [1], "range": {"start": 1, "end": 3}}), "sources.0.ids"),
    ("ids-value-object", one(url=URL + "/{id}", ids={"values": [{"a": 1}]}), "sources.0.ids.values.0"),
    ("empty-id-range", one(url=URL + "/{id}", ids={"range": {"start": 5, "end": 5}}), "sources.0.ids.range"),
    (
        "id-range-beyond-a-machine-integer",
        one(url=URL + "/{id}", ids={"range": {"start": 0, "end": 10**30}}),
        "sources.0.ids.range",
    ),
    ("id-range-wrong-direction", one(url=URL + "/{id}", ids={"range": {"start": 5, "end": 1}}), "sources.0.ids.range"),
    (
        "id-range-step-zero",
        one(url=URL + "/{id}", ids={"range": {"start": 1, "end": 5, "step": 0}}),
        "sources.0.ids.range",
    ),
    ("ids-values-empty", one(url=URL + "/{id}", ids={"values": []}), "sources.0.ids.values"),
    ("ids-column-without-file", one(url=URL + "/{id}", ids={"values": [1], "column": "c"}), "sources.0.ids.column"),
    (
        "windows-end-before-start",
        one(windows={"start": "2024-02-01", "end": "2024-01-01", "days": 7}),
        "sources.0.windows.end",
    ),
    (
        "windows-days-zero",
        one(windows={"start": "2024-01-01", "end": "2024-01-31", "days": 0}),
        "sources.0.windows.days",
    ),
    ("windows-days-missing", one(windows={"start": "2024-01-01", "end": "2024-01-31"}), "sources.0.windows.days"),
    (
        "windows-bad-date",
        one(windows={"start": "2024-13-01", "end": "2024-12-31", "days": 1}),
        "sources.0.windows.start",
    ),
    ("bad-encoding", one(format="csv", csv={"encoding": "no-such-codec"}), "sources.0.csv.encoding"),
    ("csv-separator-two-chars", one(format="csv", csv={"separator": ";;"}), "sources.0.csv.separator"),
    ("source-unknown-field", one(bogus=1), "sources.0.bogus"),
    ("source-name-path", one(name="../etc"), "sources.0.name"),
    ("job-unknown-field", {**one(), "bogus": True}, "bogus"),
    ("job-name-empty", {**one(), "name": ""}, "name"),
    ("rate-limit-zero", {**one(), "rate_limit": 0}, "rate_limit"),
    ("rate-limit-negative", {**one(), "rate_limit": -2}, "rate_limit"),
    ("rate-limit-bool", {**one(), "rate_limit": True}, "rate_limit"),
    ("rate-limit-infinite", {**one(), "rate_limit": float("inf")}, "rate_limit"),
    ("rate-limit-nan", {**one(), "rate_limit": float("nan")}, "rate_limit"),
    ("rate-limit-requests-zero", {**one(), "rate_limit": {"requests": 0}}, "rate_limit.requests"),
    ("rate-limit-unknown-field", {**one(), "rate_limit": {"requests": 1, "window": 2}}, "rate_limit.window"),
    ("concurrency-zero", {**one(), "concurrency": 0}, "concurrency"),
    ("retry-attempts-zero", {**one(), "retry": {"attempts": 0}}, "retry.attempts"),
    ("retry-status-out-of-range", {**one(), "retry": {"statuses": [429, 99]}}, "retry.statuses.1"),
    ("timeout-zero", {**one(), "timeout": 0}, "timeout"),
    ("on-error", {**one(), "on_error": "ignore"}, "on_error"),
    ("column-without-name", {**one(), "columns": [{"source": "x"}]}, "columns.0.name"),
    ("column-source-and-index", {**one(), "columns": [{"name": "a", "source": "x", "column": 1}]}, "columns.0.column"),
    ("column-bad-type", {**one(), "columns": [{"name": "a", "type": "decimal"}]}, "columns.0.type"),
    ("column-negative-index", {**one(), "columns": [{"name": "a", "column": -1}]}, "columns.0.column"),
    ("filter-op", {**one(), "filters": [{"column": "a", "op": "~"}]}, "filters.0.op"),
    ("filter-in-not-list", {**one(), "filters": [{"column": "a", "op": "in", "value": 1}]}, "filters.0.value"),
    (
        "filter-contains-number",
        {**one(), "filters": [{"column": "a", "op": "contains", "value": 3}]},
        "filters.0.value",
    ),
    (
        "filter-gt-without-value",
        {**one(), "filters": [{"column": "a", "op": "is_null"}, {"column": "a", "op": ">"}]},
        "filters.1.value",
    ),
    (
        "aggregation-without-column",
        {**one(), "group_by": {"keys": ["k"], "aggregations": [{"agg": "sum"}]}},
        "group_by.aggregations.0.column",
    ),
    (
        "aggregation-unknown",
        {**one(), "group_by": {"keys": ["k"], "aggregations": [{"column": "x", "agg": "median"}]}},
        "group_by.aggregations.0.agg",
    ),
    ("group-by-no-keys", {**one(), "group_by": {"keys": [], "aggregations": [{"agg": "count"}]}}, "group_by.keys"),
    ("sort-without-column", {**one(), "sort": [{"descending": True}]}, "sort.0.column"),
    ("distinct-string", {**one(), "distinct": "yes"}, "distinct"),
    ("limit-negative", {**one(), "limit": -1}, "limit"),
    ("export-format", {**one(), "export": {"format": "pdf"}}, "export.format"),
    ("export-inner-zip", {**one(), "export": {"format": "zip", "inner": "zip"}}, "export.inner"),
    ("several-sources-with-csv", {"sources": [{"url": URL}, {"url": URL}]}, "export.format"),
    (
        "several-sources-with-parquet",
        {"sources": [{"url": URL}, {"url": URL}], "export": {"format": "parquet"}},
        "export.format",
    ),
    ("filename-with-slash", {**one(), "export": {"filename": "a/b"}}, "export.filename"),
    ("filename-with-dotdot", {**one(), "export": {"filename": "a..b"}}, "export.filename"),
    ("export-csv-separator-empty", {**one(), "export": {"csv": {"separator": ""}}}, "export.csv.separator"),
    ("webhook-file-url", {**one(), "webhook": {"url": "file:///etc/passwd"}}, "webhook.url"),
    ("deliver-s3-http-url", {**one(), "deliver": [{"type": "s3", "url": "http://bucket"}]}, "deliver.0.url"),
    ("deliver-ftp-port-zero", {**one(), "deliver": [{"type": "ftp", "host": "h", "port": 0}]}, "deliver.0.port"),
    ("name-trailing-newline", {**one(), "name": "orders\n"}, "name"),
    ("filename-trailing-newline", {**one(), "export": {"filename": "orders\n"}}, "export.filename"),
    ("source-name-trailing-newline", one(name="orders\n"), "sources.0.name"),
    ("deliver-s3-bucket-newline", {**one(), "deliver": [{"type": "s3", "url": "s3://bucket\n"}]}, "deliver.0.url"),
    (
        "deliver-ftp-verify-without-tls",
        {**one(), "deliver": [{"type": "ftp", "host": "h", "verify": False}]},
        "deliver.0.verify",
    ),
    (
        "deliver-s3-key-without-secret",
        {**one(), "deliver": [{"type": "s3", "url": "s3://b/", "access_key": "AK"}]},
        "deliver.0.secret_key",
    ),
]


@pytest.mark.parametrize("data, path", [pytest.param(d, p, id=i) for i, d, p in INVALID])
def test_invalid_spec_names_the_exact_field(data, path):
    assert path in fields_of(data)
    # ...and only that field: one mistake, one detail
    assert fields_of(data) == [path]


def test_there_are_at_least_30_distinct_invalid_specs():
    assert len({i for i, _, _ in INVALID}) >= 30
    assert len({p for _, _, p in INVALID}) >= 30


@pytest.mark.parametrize(
    "data, path",
    [
        pytest.param(one(pagination={"type": "page", "next": "n"}), "sources.0.pagination.next", id="page-next"),
        pytest.param(
            one(pagination={"type": "offset", "total_pages": "meta.pages"}),
            "sources.0.pagination.total_pages",
            id="offset-total_pages",
        ),
        pytest.param(one(pagination={"type": "link", "param": "p"}), "sources.0.pagination.param", id="link-param"),
    ],
)
def test_field_that_does_not_apply_to_the_pagination_type_is_named(data, path):
    errors = errors_of(data)
    kind = data["sources"][0]["pagination"]["type"]
    field = path.rsplit(".", 1)[1]
    assert any("does not apply" in m and repr(kind) in m and repr(field) in m for _, m in errors), errors
    # the detail names the offending field by its dotted path, like every other field error
    assert [f for f, _ in errors] == [path]


@pytest.mark.parametrize(
    "kind, field",
    [("link", "size"), ("none", "size"), ("next_url", "param"), ("offset", "total_pages"), ("page", "next")],
)
def test_field_that_does_not_apply_to_the_pagination_type_is_rejected(kind, field):
    errors = errors_of(one(pagination={"type": kind, field: 10 if field == "size" else "x"}))
    assert len(errors) == 1
    path, message = errors[0]
    assert path.startswith("sources.0.pagination")
    assert message == f"field {field!r} does not apply to pagination type {kind!r}"
    # a null value for such a field is the same as leaving it out
    parse_spec(one(pagination={"type": kind, field: None}))


def test_unknown_fields_report_unknown_field_at_their_path():
    data = {**one(), "bogus": 1}
    data["sources"][0]["also_bogus"] = 2
    data["export"] = {"format": "csv", "zipped": True}
    errors = errors_of(data)
    assert set(errors) == {
        ("bogus", "unknown field"),
        ("sources.0.also_bogus", "unknown field"),
        ("export.zipped", "unknown field"),
    }


def test_missing_required_field_says_field_required():
    assert errors_of({"sources": [{}]}) == [("sources.0.url", "field required")]


def test_all_coherence_problems_are_reported_in_one_pass():
    data = {
        "sources": [{"url": URL + "/{id}", "body": {"a": 1}}, {"url": URL}],
        "filters": [{"column": "a", "op": "in", "value": "x"}],
        "group_by": {"keys": ["k"], "aggregations": [{"agg": "max"}]},
    }
    assert set(fields_of(data)) == {
        "sources.0.url",
        "sources.0.body",
        "filters.0.value",
        "group_by.aggregations.0.column",
        "export.format",
    }


def test_valid_coherent_specs_pass():
    parse_spec(one(url=URL + "/{id}", ids={"values": [1, "b"]}))
    parse_spec(one(ids={"range": {"start": 10, "end": 0, "step": -2}, "param": "id"}))
    parse_spec(one(ids={"file": "ids.csv", "column": "url"}, url="{id}"))
    parse_spec(one(windows={"start": "2024-01-01", "end": "2024-01-01", "days": 1}))
    parse_spec(one(method="POST", body={"q": 1}))
    parse_spec(one(url="https://${HOST}/x"))  # env reference: checked once resolved
    parse_spec(
        {
            **one(),
            "filters": [{"column": "a", "op": "is_null"}, {"column": "a", "op": "in", "value": [1]}],
            "group_by": {"keys": ["k"], "aggregations": [{"agg": "count"}]},
        }
    )
    parse_spec({"sources": [{"url": URL}, {"url": URL}], "export": {"format": "xlsx"}})


# ------------------------------------------------------------------ round trip

FULL = {
    "name": "orders",
    "sources": [
        {
            "name": "orders",
            "url": URL,
            "method": "GET",
            "params": {"status": "open", "n": 3, "f": 1.5, "b": True},
            "headers": {"Accept": "application/json"},
            "format": "json",
            "records": "data",
            "pagination": {
                "type": "page",
                "param": "page",
                "start": 1,
                "size_param": "per_page",
                "size": 100,
                "total_pages": "meta.total_pages",
            },
            "max_pages": 5000,
            "auth": {"type": "bearer", "token": "${ORDERS_TOKEN}"},
            "windows": {
                "start": "2024-01-01",
                "end": "2024-12-31",
                "days": 7,
                "start_param": "from",
                "end_param": "to",
            },
        },
        {
            "name": "items",
            "url": URL + "/{id}/items",
            "format": "csv",
            "csv": {"separator": ";", "encoding": "latin-1", "header": False, "null_values": ["NA"], "skip_rows": 1},
            "pagination": {"type": "offset", "size": 50},
            "ids": {"range": {"start": 1, "end": 100, "step": 3}},
            "auth": {"type": "basic", "username": "u", "password": "${PW}"},
        },
        {
            "url": URL,
            "method": "post",
            "body": {"query": [1, 2]},
            "pagination": {"type": "cursor"},
            "auth": {
                "type": "oauth2",
                "token_url": "https://auth.example.com/token",
                "client_id": "id",
                "client_secret": "${SECRET}",
                "scope": "read",
            },
            "ids": {"values": [1, "two"], "param": "id"},
        },
        {
            "url": URL,
            "pagination": {"type": "next_url", "next": "links.next"},
            "auth": {"type": "query", "name": "key", "value": "v"},
        },
        {
            "url": "{id}",
            "pagination": {"type": "link"},
            "ids": {"file": "ids.csv", "column": "url"},
            "auth": {"type": "header", "name": "X-Key", "value": "k"},
        },
    ],
    "rate_limit": 2.5,
    "concurrency": 4,
    "retry": {"attempts": 3, "backoff": 0.1, "max_backoff": 5, "statuses": [429, 503]},
    "timeout": 12.5,
    "on_error": "skip",
    "columns": [
        {"name": "revenue", "source": "amount", "type": "float", "order": 1},
        {"name": "first", "column": 0, "on_cast_error": "null"},
        {"name": "category"},
    ],  # group_by's key must be a column `columns` produces
    "filters": [{"column": "revenue", "op": ">", "value": 100}, {"column": "revenue", "op": "in", "value": [1, 2]}],
    "group_by": {
        "keys": ["category"],
        "aggregations": [{"column": "revenue", "agg": "sum", "as": "total"}, {"agg": "count"}],
    },
    "sort": [{"column": "total", "descending": True}, "category"],
    "distinct": ["category"],
    "limit": 10,
    "export": {
        "format": "zip",
        "inner": "parquet",
        "filename": "orders",
        "csv": {"separator": ";", "escape_formulas": True},
    },
    "webhook": {"url": "https://hooks.example.com/done", "secret": "${HOOK_SECRET}"},
    "deliver": [
        {"type": "s3", "url": "s3://bucket/exports/", "endpoint_url": "http://127.0.0.1:9000"},
        {"type": "ftp", "host": "ftp.example.com", "tls": True, "password": "${FTP_PW}"},
    ],
}


@pytest.mark.parametrize(
    "data",
    [one(), FULL, {**one(), "rate_limit": {"requests": 10, "per": 60, "burst": 2}}, {**one(), "distinct": True}],
    ids=["minimal", "full", "rate-object", "distinct"],
)
def test_round_trip(data):
    spec = parse_spec(copy.deepcopy(data))
    as_json = spec_to_json(spec)
    json.dumps(as_json)  # JSON-able
    assert parse_spec(as_json) == spec
    assert spec_to_json(parse_spec(json.loads(json.dumps(as_json)))) == as_json


def test_spec_to_json_normalises_and_keeps_references():
    as_json = spec_to_json(parse_spec(copy.deepcopy(FULL)))
    assert as_json["rate_limit"] == {"requests": 5, "per": 2.0, "burst": None, "budget": None}
    assert as_json["sources"][0]["auth"] == {"type": "bearer", "token": "${ORDERS_TOKEN}"}
    assert as_json["sources"][2]["name"] == "source_3"
    assert as_json["sources"][2]["method"] == "POST"
    assert as_json["sources"][2]["pagination"]["next"] == "next_cursor"
    assert as_json["sources"][0]["windows"]["start"] == "2024-01-01"
    assert as_json["group_by"]["aggregations"][0]["as"] == "total"  # alias, not as_
    assert "as_" not in as_json["group_by"]["aggregations"][0]
    assert as_json["sort"][1] == {"column": "category", "descending": False}
    assert as_json["webhook"]["secret"] == "${HOOK_SECRET}"
    spec = parse_spec(copy.deepcopy(FULL))
    assert spec.sources[0].windows.start == dt.date(2024, 1, 1)


def test_parse_spec_does_not_modify_its_input():
    data = copy.deepcopy(FULL)
    parse_spec(data)
    assert data == FULL


# ------------------------------------------------------------------ errors.py


def test_spec_error_message_and_details():
    err = SpecError([FieldError("sources.0.url", "field required"), FieldError("timeout", "too big")])
    assert str(err) == "sources.0.url: field required (and 1 more)"
    assert [d.as_dict() for d in err.details] == [
        {"field": "sources.0.url", "message": "field required"},
        {"field": "timeout", "message": "too big"},
    ]
    assert isinstance(err, ValueError)
    assert str(SpecError([FieldError("limit", "bad")])) == "limit: bad"
    assert str(SpecError([])) == "spec: invalid"


def test_parse_spec_error_message_names_the_field():
    with pytest.raises(SpecError) as info:
        parse_spec(one(pagination={"type": "page", "size": 0}))
    assert str(info.value).startswith("sources.0.pagination.size: ")


def test_problems_collects_and_raises_once():
    problems = Problems()
    problems.raise_if_any()  # nothing collected: no error
    problems.add("a.b", "bad")
    problems.add("c", "worse")
    with pytest.raises(SpecError) as info:
        problems.raise_if_any()
    assert [(d.field, d.message) for d in info.value.details] == [("a.b", "bad"), ("c", "worse")]


def test_job_failed_and_page_failure_as_dict():
    page = PageFailure(url="https://a.test/x?page=3", status=503, error="HTTP 503", source="orders")
    assert page.as_dict() == {"url": "https://a.test/x?page=3", "status": 503, "error": "HTTP 503"}
    failed = JobFailed("1 page failed", [page])
    assert str(failed) == "1 page failed"
    assert failed.as_dict() == {"message": "1 page failed", "pages": [page.as_dict()]}
    assert JobFailed("x").as_dict() == {"message": "x", "pages": []}


# ------------------------------------------------------------------ prepare: ids files


def _ids_spec(**ids) -> JobSpec:
    return parse_spec(one(url=URL + "/{id}", ids=ids))


def test_prepare_reports_a_missing_ids_column_at_ids_column(tmp_path):
    from engine.spec.prepare import prepare

    (tmp_path / "ids.csv").write_text("id,name\n1,a\n")
    for kwargs in ({"base_dir": tmp_path}, {"id_files": {0: b"id,name\n1,a\n"}}):
        with pytest.raises(SpecError) as info:
            prepare(_ids_spec(file="ids.csv", column="owner"), {}, **kwargs)
        assert [d.field for d in info.value.details] == ["sources.0.ids.column"]
        assert "'owner' not in the file" in info.value.details[0].message


def test_prepare_without_reading_id_files_needs_the_upload(tmp_path):
    from engine.spec.prepare import prepare

    (tmp_path / "ids.csv").write_text("id\n1\n2\n")
    spec = _ids_spec(file=str(tmp_path / "ids.csv"))
    assert prepare(spec, {}).id_values == [["1", "2"]]  # the CLI reads the file
    with pytest.raises(SpecError) as info:  # the service never does
        prepare(spec, {}, read_id_files=False)
    assert [(d.field, d.message) for d in info.value.details] == [
        ("sources.0.ids.file", "the uploaded ids file is missing")
    ]
    assert prepare(spec, {}, id_files={0: b"id\n7\n"}, read_id_files=False).id_values == [["7"]]


def test_prepare_names_the_listed_value_that_is_not_a_url():
    from engine.spec.prepare import prepare

    with pytest.raises(SpecError) as info:
        prepare(parse_spec(one(url="{id}", ids={"values": ["https://ok.example.com/", "nope"]})), {})
    assert [d.field for d in info.value.details] == ["sources.0.ids.values.1"]


def test_csv_infer_types_defaults_to_false():
    assert parse_spec(one(format="csv")).sources[0].csv.infer_types is False
    assert parse_spec(one(format="csv", csv={"infer_types": True})).sources[0].csv.infer_types is True


# Values that have crashed validators (non-finite floats, integers beyond a machine word,
# containers where a string is compared against a set).
EDGE_VALUES = [
    float("inf"),
    float("-inf"),
    float("nan"),
    2**64,
    -(2**63) - 1,
    10**30,
    1e308,
    5e-324,
    -0.0,
    -1,
    "",
    "\x00",
    "inf",
    [],
    {},
    [float("inf")],
    {"": float("nan")},
    None,
    True,
]


def _field_paths(value, prefix=()):
    yield prefix
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _field_paths(child, (*prefix, key))


def _replaced(document, path, value):
    copied = copy.deepcopy(document)
    parent = copied
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return copied


def test_every_field_of_a_full_spec_with_an_edge_value_parses_or_names_a_field():
    crashes = []
    for path in _field_paths(FULL):
        if not path:
            continue
        for value in EDGE_VALUES:
            try:
                parse_spec(_replaced(FULL, path, value))
            except SpecError as exc:
                assert exc.details and all(d.field and d.message for d in exc.details)
            except Exception as exc:  # noqa: BLE001 - the test collects every crash
                crashes.append((".".join(map(str, path)), repr(value), type(exc).__name__))
    assert crashes == []
