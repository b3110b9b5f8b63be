"""Issue 4, engine side: the breadth of sources, end to end in real pool processes against the
local test API (whose arrival log is the judge).

- fan-out: ids (values, range, CSV file column, `ids.param`, whole URLs) and date windows, each
  unit paginated on its own, all under the job's one rate limit, with `_fanout_id` /
  `_fanout_window_start` columns;
- auth: bearer, header, query, basic, oauth2 (one token per job shared by its processes,
  refreshed on expiry/401, token endpoint errors worded clearly), on every page and retry;
- `${NAME}` secrets: resolved from the job's environment, never shown anywhere (`***`);
- several sources in one job: one table each (zip file / xlsx sheet), per-source progress.
"""

from __future__ import annotations

import base64
import bisect
import collections
import csv
import datetime as dt
import json
import os
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from engine.errors import JobFailed
from engine.plan.fanout import ID_COLUMN, WINDOW_COLUMN
from engine.run.engine import new_job_id
from engine.spec.models import parse_spec
from engine.spec.prepare import prepare
from tests.conftest import write_spec
from tests.support.readback import all_bytes_under, flat, read_export, xlsx_sheets
from tests.testapi import creds
from tests.testapi.records import event, owner_records, record


def max_in_window(times: list[float], per: float) -> int:
    times = sorted(times)
    return max(bisect.bisect_left(times, t + per) - i for i, t in enumerate(times))


def paged(size: int, total: bool = True) -> dict:
    pagination = {"type": "page", "size": size}
    if total:
        pagination["total_pages"] = "meta.total_pages"
    return pagination


def data_requests(api, path_prefix: str) -> list[dict]:
    return [e for e in api.log() if e["path"].startswith(path_prefix)]


def reference_windows(start: dt.date, end: dt.date, days: int) -> list[tuple[dt.date, dt.date]]:
    """Independent of engine.plan.fanout: list every day, cut the list into chunks of `days`."""
    every_day = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
    return [(chunk[0], chunk[-1]) for chunk in (every_day[i : i + days] for i in range(0, len(every_day), days))]


def run_with_runner(engine, tmp_path: Path, spec: dict, env: dict | None = None):
    """Like the `run_job` fixture, but returns the JobRunner too (for its progress())."""
    parsed = parse_spec(spec)
    prepared = prepare(parsed, env if env is not None else os.environ, (), base_dir=tmp_path)
    job_id = new_job_id("test")
    options = engine.options(job_id, tmp_path / "work" / job_id, tmp_path / "out" / parsed.output_name)
    runner = engine.runner(prepared, options)
    return runner, runner.run()


# ====================================================================== auth

WRONG = {
    "bearer": {"type": "bearer", "token": "Wr0ng-Bearer-T0ken-4242"},
    "header": {"type": "header", "name": creds.API_KEY_HEADER, "value": "Wr0ng-Api-K3y-4242"},
    "query": {"type": "query", "name": creds.QUERY_PARAM, "value": "Wr0ng-Query-K3y-4242"},
    "basic": {"type": "basic", "username": creds.BASIC_USER, "password": "Wr0ng-Passw0rd-4242"},
}


def right_auth(api, kind: str) -> dict:
    return {
        "bearer": {"type": "bearer", "token": creds.BEARER_TOKEN},
        "header": {"type": "header", "name": creds.API_KEY_HEADER, "value": creds.API_KEY},
        "query": {"type": "query", "name": creds.QUERY_PARAM, "value": creds.QUERY_KEY},
        "basic": {"type": "basic", "username": creds.BASIC_USER, "password": creds.BASIC_PASSWORD},
        "oauth2": {
            "type": "oauth2",
            "token_url": api.url("/oauth/token"),
            "client_id": creds.OAUTH_CLIENT_ID,
            "client_secret": creds.OAUTH_CLIENT_SECRET,
        },
    }[kind]


def secret_forms(value: str, username: str | None = None) -> list[str]:
    """How a secret could show up: as is, URL-encoded, base64 (alone and as Basic credentials)."""
    forms = {value, quote(value, safe=""), quote(value), quote_plus(value), base64.b64encode(value.encode()).decode()}
    if username is not None:
        forms.add(base64.b64encode(f"{username}:{value}".encode()).decode())
    return sorted(forms)


@pytest.mark.parametrize("kind", ["bearer", "header", "query", "basic", "oauth2"])
def test_each_auth_kind_succeeds_on_every_page_and_every_retry(api, run_job, kind):
    # fail_rate=1: every page's first try is a 500, so each page is fetched twice - the
    # retry must carry the credentials as well (the API checks them after the fault).
    spec = {
        "name": f"auth-{kind}",
        "sources": [
            {
                "url": api.url(f"/auth/{kind}"),
                "params": {"n": 95, "fail_rate": 1, "fault": 500},
                "pagination": paged(10),
                "auth": right_auth(api, kind),
            }
        ],
        "concurrency": 4,
        "retry": {"attempts": 3, "backoff": 0.01},
        "export": {"format": "ndjson"},
    }
    result = run_job(spec)
    rows = read_export(result.output, "ndjson")
    assert [r["id"] for r in rows] == list(range(1, 96))
    assert rows[0] == flat(record(1))
    log = data_requests(api, "/auth/")
    assert len(log) == 20 and result.retries == 10
    assert sorted(e["status"] for e in log) == [200] * 10 + [500] * 10  # never a 401
    if kind == "oauth2":
        assert api.tokens_issued() == 1


@pytest.mark.parametrize("kind", ["bearer", "header", "query", "basic"])
def test_wrong_credentials_fail_clearly_without_the_secret(api, run_job, kind):
    auth = WRONG[kind]
    secret = auth.get("token") or auth.get("value") or auth.get("password")
    spec = {
        "sources": [{"url": api.url(f"/auth/{kind}"), "params": {"n": 50}, "pagination": paged(10), "auth": auth}],
        "retry": {"attempts": 3, "backoff": 0.01},
    }
    with pytest.raises(JobFailed) as info:
        run_job(spec)
    error = info.value
    assert "HTTP 401" in error.message and f"/auth/{kind}" in error.message
    assert error.pages and error.pages[0].status == 401
    shown = " ".join([str(error), repr(error), json.dumps(error.as_dict())])
    for form in secret_forms(secret, creds.BASIC_USER if kind == "basic" else None):
        assert form not in shown, (form, shown)
    if kind == "query":
        assert f"{creds.QUERY_PARAM}=***" in error.message
    # 401 is not retried: one request per page tried
    assert all(e["status"] == 401 for e in data_requests(api, "/auth/"))


def test_oauth2_short_lived_tokens_are_refreshed_and_shared(api, run_job):
    # 40 pages of 250 ms, two processes, two requests each in flight: ~3-5 s of fetching
    # against tokens that live 1 s.
    spec = {
        "sources": [
            {
                "url": api.url("/auth/oauth2"),
                "params": {"n": 400, "delay_ms": 250},
                "pagination": paged(10),
                "auth": {**right_auth(api, "oauth2"), "token_url": api.url("/oauth/token", ttl=1)},
            }
        ],
        "concurrency": 4,
        "retry": {"attempts": 5, "backoff": 0.01},
        "export": {"format": "ndjson"},
    }
    result = run_job(spec, workers=2)
    assert [r["id"] for r in read_export(result.output, "ndjson")] == list(range(1, 401))
    pages = data_requests(api, "/auth/oauth2")
    span = max(e["t"] for e in pages) - min(e["t"] for e in pages)
    assert span > 3.0, "the job must outlive several tokens"
    issued = api.tokens_issued()
    assert issued > 1  # refreshed...
    assert issued <= len(pages) // 4  # ...but not fetched per request
    assert issued <= span / 0.5 + 3  # ~one per lifetime (+ 401 refreshes), job-wide
    # every 401 (a token that expired in flight) was followed by a successful retry
    assert sum(e["status"] == 200 for e in pages) == 40


def test_oauth2_token_is_fetched_once_per_job_for_all_processes(api, run_job):
    spec = {
        "sources": [
            {
                "url": api.url("/auth/oauth2"),
                "params": {"n": 300, "delay_ms": 30},
                "pagination": paged(10),
                "auth": right_auth(api, "oauth2"),
            }
        ],
        "concurrency": 8,
        "export": {"format": "ndjson"},
    }
    result = run_job(spec, workers=2)
    assert result.rows == 300
    assert api.tokens_issued() == 1
    assert len(data_requests(api, "/auth/oauth2")) == 30


def test_oauth2_wrong_client_credentials_fail_naming_the_token_endpoint(api, run_job):
    auth = {**right_auth(api, "oauth2"), "client_secret": "Wr0ng-Client-S3cret-4242"}
    spec = {
        "sources": [{"url": api.url("/auth/oauth2"), "params": {"n": 50}, "pagination": paged(10), "auth": auth}],
        "concurrency": 4,
    }
    with pytest.raises(JobFailed) as info:
        run_job(spec)
    message = info.value.message
    assert "token endpoint" in message and "/oauth/token" in message
    assert "401" in message and "invalid_client" in message
    assert "attempt" not in message or "0 attempts" not in message
    shown = " ".join([str(info.value), repr(info.value), json.dumps(info.value.as_dict())])
    for form in secret_forms(auth["client_secret"], auth["client_id"]):
        assert form not in shown
    assert not data_requests(api, "/auth/oauth2")  # no data request went out without a token


def test_oauth2_token_endpoint_hiccup_is_retried(api, run_job):
    # The token endpoint answers 503 once, then works: a transient error, not a failed job.
    auth = {**right_auth(api, "oauth2"), "token_url": api.url("/oauth/token", fail_rate=1, fault=503)}
    spec = {
        "sources": [{"url": api.url("/auth/oauth2"), "params": {"n": 30}, "pagination": paged(10), "auth": auth}],
        "retry": {"attempts": 3, "backoff": 0.01},
    }
    result = run_job(spec)
    assert result.rows == 30
    assert [e["status"] for e in api.log(path="/oauth/token")] == [503, 200]


# ====================================================================== ids fan-out


def test_ids_range_at_5_per_second_every_id_once_with_its_column(api, run_job):
    spec = {
        "name": "owners",
        "sources": [
            {
                "url": api.url("/items/by-id/{id}"),
                "ids": {"range": {"start": 1, "end": 100}},
                "auth": {"type": "header", "name": creds.API_KEY_HEADER, "value": creds.API_KEY},
            }
        ],
        "rate_limit": 5,
        "concurrency": 4,
        "export": {"format": "parquet"},
    }
    result = run_job(spec)
    rows = read_export(result.output, "parquet")
    expected = [{ID_COLUMN: owner, **r} for owner in range(1, 100) for r in owner_records(owner)]
    assert [{k: row[k] for k in (ID_COLUMN, "id", "owner", "name")} for row in rows] == [
        {k: row[k] for k in (ID_COLUMN, "id", "owner", "name")} for row in expected
    ]
    assert list(rows[0])[0] == ID_COLUMN
    log = data_requests(api, "/items/by-id/")
    assert sorted(e["path"] for e in log) == sorted(f"/items/by-id/{i}" for i in range(1, 100))
    times = sorted(e["t"] for e in log)
    assert max_in_window(times, 1.0) <= 5
    # 5 per window, back to back: 99 requests need 19 windows after the first burst.
    ideal_span = (-(-len(times) // 5) - 1) * 1.0
    assert ideal_span / (times[-1] - times[0]) >= 0.85


def test_ids_values_keep_their_order_and_type(api, run_job):
    spec = {
        "sources": [{"url": api.url("/items/by-id/{id}"), "params": {"k": 2}, "ids": {"values": [30, 10, 20]}}],
        "export": {"format": "ndjson"},
    }
    rows = read_export(run_job(spec).output, "ndjson")
    assert rows == [{ID_COLUMN: owner, **flat(r)} for owner in (30, 10, 20) for r in owner_records(owner, 2)]
    assert sorted(e["path"] for e in data_requests(api, "/items/by-id/")) == [
        "/items/by-id/10",
        "/items/by-id/20",
        "/items/by-id/30",
    ]


def test_ids_param_sends_each_value_as_a_query_parameter(api, run_job):
    spec = {
        "sources": [
            {"url": api.url("/items/by-id"), "params": {"k": 2}, "ids": {"values": ["7", "3", "12"], "param": "id"}}
        ],
        "export": {"format": "ndjson"},
    }
    rows = read_export(run_job(spec).output, "ndjson")
    assert rows == [{ID_COLUMN: str(owner), **flat(r)} for owner in (7, 3, 12) for r in owner_records(owner, 2)]
    log = data_requests(api, "/items/by-id")
    assert sorted(e["query"]["id"] for e in log) == ["12", "3", "7"]
    assert all(e["query"]["k"] == "2" for e in log)


@pytest.mark.parametrize("total", [True, False], ids=["total-known", "short-page"])
def test_each_id_is_paginated_on_its_own(api, run_job, total):
    # 25 records per owner, pages of 10: 3 pages each (10, 10, 5).
    owners = [5, 9, 2, 14, 7, 11]
    spec = {
        "sources": [
            {
                "url": api.url("/items/by-id/{id}"),
                "params": {"k": 25},
                "ids": {"values": owners},
                "pagination": paged(10, total),
            }
        ],
        "concurrency": 4,
        "export": {"format": "ndjson"},
    }
    result = run_job(spec)
    rows = read_export(result.output, "ndjson")
    assert rows == [{ID_COLUMN: owner, **flat(r)} for owner in owners for r in owner_records(owner, 25)]
    log = data_requests(api, "/items/by-id/")
    fetched = collections.Counter((int(e["path"].rsplit("/", 1)[1]), int(e["query"]["page"])) for e in log)
    needed = {(owner, page) for owner in owners for page in (1, 2, 3)}
    assert all(fetched[key] == 1 for key in needed), fetched  # every page of every id, once
    # with no total, a process may have claimed a page past an id's end before the short page
    # was seen: such pages are discarded (the rows above are exact), and only a few are asked
    beyond = [key for key in fetched if key not in needed]
    assert all(page > 3 for _, page in beyond) and len(beyond) <= (0 if total else 4 * len(owners)), beyond
    assert result.pages == 18


# ====================================================================== date windows


def test_weekly_windows_over_a_year(api, run_job):
    start, end = dt.date(2024, 1, 1), dt.date(2024, 12, 31)
    spec = {
        "sources": [
            {
                "url": api.url("/events"),
                "windows": {
                    "start": "2024-01-01",
                    "end": "2024-12-31",
                    "days": 7,
                    "start_param": "from",
                    "end_param": "to",
                },
            }
        ],
        "concurrency": 4,
        "export": {"format": "parquet"},
    }
    rows = read_export(run_job(spec).output, "parquet")
    windows = reference_windows(start, end, 7)
    assert len(windows) == 53 and windows[-1] == (dt.date(2024, 12, 30), dt.date(2024, 12, 31))
    # one request per window, with its from/to
    log = data_requests(api, "/events")
    assert sorted((e["query"]["from"], e["query"]["to"]) for e in log) == [
        (a.isoformat(), b.isoformat()) for a, b in windows
    ]
    # every day exactly once, in order, tagged with its window's first day
    window_of = {a + dt.timedelta(days=i): a for a, b in windows for i in range((b - a).days + 1)}
    assert [r["day"] for r in rows] == [d.isoformat() for d in sorted(window_of)]
    assert len(rows) == 366
    for row in rows:
        day = dt.date.fromisoformat(row["day"])
        assert row[WINDOW_COLUMN] == window_of[day]  # a date, not text
        assert {k: v for k, v in row.items() if k != WINDOW_COLUMN} == event(day)


def test_one_day_windows_with_default_parameter_names(api, run_job):
    start, end = dt.date(2024, 2, 25), dt.date(2024, 3, 5)  # over the leap day
    spec = {
        "sources": [{"url": api.url("/events"), "windows": {"start": str(start), "end": str(end), "days": 1}}],
        "export": {"format": "ndjson"},
    }
    rows = read_export(run_job(spec).output, "ndjson")
    days = [start + dt.timedelta(days=i) for i in range(10)]
    assert rows == [{WINDOW_COLUMN: d.isoformat(), **event(d)} for d in days]
    assert sorted((e["query"]["start"], e["query"]["end"]) for e in data_requests(api, "/events")) == [
        (d.isoformat(), d.isoformat()) for d in days
    ]


# ====================================================================== several sources


def multi_source_spec(api, fmt: str) -> dict:
    return {
        "name": "multi",
        "sources": [
            {
                "name": "owners",
                "url": api.url("/items/by-id/{id}"),
                "params": {"k": 4},
                "ids": {"range": {"start": 1, "end": 11}},
                "pagination": paged(2),
            },
            {
                "name": "events",
                "url": api.url("/events"),
                "windows": {"start": "2024-03-01", "end": "2024-03-31", "days": 10},
            },
            {"name": "items", "url": api.url("/items/page"), "params": {"n": 75}, "pagination": paged(20)},
        ],
        "concurrency": 4,
        "export": {"format": fmt, "inner": "ndjson"},
    }


def check_multi_tables(tables: dict[str, list[dict]]) -> None:
    owners = tables["owners"]
    assert [(r[ID_COLUMN], r["id"]) for r in owners] == [
        (o, r["id"]) for o in range(1, 11) for r in owner_records(o, 4)
    ]
    events_ = tables["events"]
    march = [dt.date(2024, 3, 1) + dt.timedelta(days=i) for i in range(31)]
    assert [r["day"] for r in events_] == [d.isoformat() for d in march]
    assert [str(r[WINDOW_COLUMN])[:10] for r in events_] == ["2024-03-01"] * 10 + ["2024-03-11"] * 10 + [
        "2024-03-21"
    ] * 10 + ["2024-03-31"]
    assert [int(r["id"]) for r in tables["items"]] == list(range(1, 76))
    assert ID_COLUMN not in tables["items"][0] and WINDOW_COLUMN not in tables["items"][0]


def expected_progress() -> list[dict]:
    return [
        {"name": "owners", "pages_done": 20, "pages_total": 20, "rows": 40},
        {"name": "events", "pages_done": 4, "pages_total": 4, "rows": 31},
        {"name": "items", "pages_done": 4, "pages_total": 4, "rows": 75},
    ]


def test_several_sources_zip_one_file_each_with_progress(api, engine, tmp_path):
    runner, result = run_with_runner(engine, tmp_path, multi_source_spec(api, "zip"))
    files = read_export(result.output, "zip", inner="ndjson")
    assert sorted(files) == ["events.ndjson", "items.ndjson", "manifest.json", "owners.ndjson"]
    check_multi_tables({name.rsplit(".", 1)[0]: rows for name, rows in files.items() if name != "manifest.json"})
    manifest = files["manifest.json"]
    assert [(s["name"], s["pages"], s["records"]) for s in manifest["sources"]] == [
        ("owners", 20, 40),
        ("events", 4, 31),
        ("items", 4, 75),
    ]
    assert result.rows_by_source == {"owners": 40, "events": 31, "items": 75}
    assert runner.progress()["sources"] == expected_progress()


def test_several_sources_xlsx_one_sheet_each_with_progress(api, engine, tmp_path):
    runner, result = run_with_runner(engine, tmp_path, multi_source_spec(api, "xlsx"))
    sheets = xlsx_sheets(result.output)
    assert list(sheets) == ["owners", "events", "items"]
    check_multi_tables(sheets)
    assert runner.progress()["sources"] == expected_progress()


# ====================================================================== the CLI: ids files, secrets


def test_cli_reads_ids_files_relative_to_the_spec_including_whole_urls(api, cli, tmp_path):
    # The spec and its CSV sit in their own directory; the CLI runs elsewhere (tmp_path).
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    owners = list(range(1, 501))
    urls = [api.url(f"/items/by-id/{o}", k=1) if o % 2 else api.url("/items/by-id", id=o, k=1) for o in owners]
    with open(spec_dir / "ids.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["owner", "url"])
        writer.writerows(zip(owners, urls))
    spec = {
        "name": "from-file",
        "sources": [
            {"name": "by_url", "url": "{id}", "ids": {"file": "ids.csv", "column": "url"}},
            {
                "name": "by_owner",
                "url": api.url("/items/by-id/{id}"),
                "params": {"k": 2},
                "ids": {"file": "ids.csv", "column": "owner"},
            },
        ],
        "concurrency": 8,
        "export": {"format": "zip", "inner": "csv"},
    }
    run = cli("run", str(write_spec(spec_dir / "spec.json", spec)), "-o", "out.zip", "--quiet")
    assert run.code == 0, run.stderr
    assert run.summary["rows"] == 500 + 1000
    files = read_export(tmp_path / "out.zip", "zip", inner="csv")
    by_url = files["by_url.csv"]
    assert [(r[ID_COLUMN], int(r["owner"]), int(r["id"])) for r in by_url] == [
        (url, o, o * 1000 + 1) for o, url in zip(owners, urls)
    ]
    by_owner = files["by_owner.csv"]
    assert [(r[ID_COLUMN], int(r["id"])) for r in by_owner] == [(str(o), o * 1000 + j) for o in owners for j in (1, 2)]
    # every URL of the file fetched exactly once (plus the by_owner source's own requests)
    log = data_requests(api, "/items/by-id")
    from_file = sorted(
        api.base_url + e["path"] + "?" + "&".join(f"{k}={v}" for k, v in e["query"].items())
        for e in log
        if e["query"].get("k") == "1"
    )
    assert len(log) == 1000
    assert from_file == sorted(urls)


def test_missing_variable_exits_2_naming_field_and_variable(api, cli, tmp_path):
    spec = write_spec(
        tmp_path / "spec.json",
        {"sources": [{"url": api.url("/auth/bearer"), "auth": {"type": "bearer", "token": "${PF_TEST_UNSET_TOKEN}"}}]},
    )
    for command in ("run", "validate"):
        run = cli(command, str(spec))
        assert run.code == 2, run.stderr
        assert "sources.0.auth.token" in run.stderr and "PF_TEST_UNSET_TOKEN" in run.stderr
        assert run.summary["status"] == "invalid"
        assert run.summary["details"][0]["field"] == "sources.0.auth.token"
        assert "PF_TEST_UNSET_TOKEN" in run.summary["details"][0]["message"]
    assert not data_requests(api, "/")


CANARY = "S3CR3T-LEAK-CANARY-9f2b/x+y=z"  # '/', '+' and '=' change under URL encoding


def leak_spec(api, failing: bool) -> dict:
    """Bearer, query (a harmless-looking parameter name, with next_url pagination whose next
    URLs carry the key along) and basic auth, all holding the canary from the environment."""
    sources = [
        {
            "name": "bearer",
            "url": api.url("/items/page"),
            "params": {"n": 40},
            "pagination": paged(10),
            "auth": {"type": "bearer", "token": "${PF_CANARY}"},
        },
        {
            "name": "query",
            "url": api.url("/items/next"),
            "params": {"n": 40, "size": 10},
            "pagination": {"type": "next_url", "next": "next"},
            "auth": {"type": "query", "name": "key", "value": "${PF_CANARY}"},
        },
        {
            "name": "basic",
            "url": api.url("/items/page"),
            "params": {"n": 40},
            "pagination": paged(10),
            "auth": {"type": "basic", "username": "someone", "password": "${PF_CANARY}"},
        },
    ]
    if failing:
        # ...and one source per auth kind that the API refuses, late, so the others have left
        # shards (and next URLs) in the work directory by then.
        sources += [
            {
                "name": "bad_bearer",
                "url": api.url("/auth/bearer"),
                "params": {"delay_ms": 1500},
                "auth": {"type": "bearer", "token": "${PF_CANARY}"},
            },
            {
                "name": "bad_query",
                "url": api.url("/auth/query"),
                "params": {"delay_ms": 1500},
                "auth": {"type": "query", "name": "key", "value": "${PF_CANARY}"},
            },
            {
                "name": "bad_basic",
                "url": api.url("/auth/basic"),
                "params": {"delay_ms": 1500},
                "auth": {"type": "basic", "username": "someone", "password": "${PF_CANARY}"},
            },
            # a key passed as an ordinary parameter: a value from the environment is a secret too
            {"name": "bad_param", "url": api.url("/auth/header"), "params": {"delay_ms": 1500, "sig": "${PF_CANARY}"}},
        ]
    return {
        "name": "leak",
        "sources": sources,
        "concurrency": 8,
        "retry": {"attempts": 2, "backoff": 0.01},
        "export": {"format": "zip", "inner": "ndjson"},
    }


def test_secrets_never_leak_through_the_cli(api, cli, tmp_path):
    env = {"PF_CANARY": CANARY, "LOG_LEVEL": "DEBUG"}
    forms = secret_forms(CANARY, "someone")
    ok = cli("run", str(write_spec(tmp_path / "ok.json", leak_spec(api, False))), "-o", "ok.zip", env=env)
    assert ok.code == 0, ok.stderr
    assert ok.summary["rows"] == 120
    files = read_export(tmp_path / "ok.zip", "zip", inner="ndjson")
    assert files["manifest.json"]["spec"]["sources"][0]["auth"] == {"type": "bearer", "token": "***"}
    assert files["manifest.json"]["spec"]["sources"][1]["auth"]["value"] == "***"
    assert files["manifest.json"]["spec"]["sources"][2]["auth"]["password"] == "***"
    # the credentials did travel: the query key rode along on every /items/next request
    assert {e["query"].get("key") for e in api.log(path="/items/next")} == {CANARY}

    bad = cli("run", str(write_spec(tmp_path / "bad.json", leak_spec(api, True))), "-o", "bad.zip", env=env)
    assert bad.code == 1, bad.stderr
    summary = bad.summary
    assert summary["status"] == "failed" and "HTTP 401" in summary["error"]
    # `fail` stops at the first refused page: whichever of the four came back first is listed.
    failed = {p["url"].split("?")[0].rsplit("/", 1)[1]: p["url"] for p in summary["failed_pages"]}
    assert failed and set(failed) <= {"bearer", "query", "basic", "header"}, summary["failed_pages"]
    assert all("key=***" in url for name, url in failed.items() if name == "query")
    assert all("sig=***" in url for name, url in failed.items() if name == "header")
    workdir = Path(summary["workdir"])
    if not workdir.is_absolute():
        workdir = tmp_path / workdir
    shards = list((workdir / "shards").glob("*.arrow"))
    assert shards, "the failed job must have left shards behind for this check to mean something"
    assert any(b"next_tokens" in p.read_bytes() and b"/items/next" in p.read_bytes() for p in shards)

    # `skip` lists every refused page, each URL with its credential masked, in the manifest.
    skipping = {**leak_spec(api, True), "on_error": "skip"}
    partial = cli("run", str(write_spec(tmp_path / "skip.json", skipping)), "-o", "skip.zip", env=env)
    assert partial.code == 0, partial.stderr
    assert partial.summary["partial"] is True and partial.summary["rows"] == 120
    manifest = read_export(tmp_path / "skip.zip", "zip", inner="ndjson")["manifest.json"]
    skipped = {p["url"].split("?")[0].rsplit("/", 1)[1]: p["url"] for p in manifest["skipped_pages"]}
    assert set(skipped) == {"bearer", "query", "basic", "header"}, manifest["skipped_pages"]
    assert "key=***" in skipped["query"] and "sig=***" in skipped["header"]

    texts = {
        "ok stdout": ok.stdout.encode(),
        "ok stderr": ok.stderr.encode(),
        "bad stdout": bad.stdout.encode(),
        "bad stderr": bad.stderr.encode(),
        "skip stdout": partial.stdout.encode(),
        "skip stderr": partial.stderr.encode(),
        **all_bytes_under(tmp_path),
    }
    assert len(texts) > 8
    leaks = [(name, form) for name, data in texts.items() for form in forms if form.encode() in data]
    assert not leaks
