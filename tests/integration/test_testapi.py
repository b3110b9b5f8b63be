"""Tests of the local test API itself (tests/testapi/): shapes, determinism, faults, log."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import date
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
import requests

try:
    import tests.testapi  # noqa: F401
except ImportError:  # run as plain `pytest` without the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.testapi import creds, faults  # noqa: E402
from tests.testapi.client import TestAPI  # noqa: E402
from tests.testapi.records import (  # noqa: E402
    BAD_UTF8,
    CSV_COLUMNS,
    csv_row,
    dataset,
    decode_cursor,
    drift_record,
    encode_cursor,
    events,
    owner_records,
    record,
    records,
)

pytest_plugins = ["tests.testapi.fixtures"]


@pytest.fixture
def http():
    s = requests.Session()
    s.trust_env = False  # never go through a proxy for 127.0.0.1
    yield s
    s.close()


def ids(recs):
    return [r["id"] for r in recs]


# ---------------------------------------------------------------- records


def test_record_shape():
    r = record(10)
    assert r == {
        "id": 10,
        "name": "item-10",
        "sku": "SKU-00000010",
        "price": 12.5,
        "quantity": 10,
        "category": "music",
        "active": True,
        "tags": ["sale"],
        "meta": {"created": "2020-01-11", "score": 10},
        "description": "Test record 10 for pageferry.",
        "note": None,
    }
    assert record(3)["active"] is False and record(3)["tags"] == []
    assert record(11)["tags"] == ["eco", "green"]
    assert record(4)["price"] == 5.0 and isinstance(record(4)["price"], float)
    sizes = [len(json.dumps(record(i), separators=(",", ":"))) for i in (1, 99, 12345, 999_999)]
    assert all(200 <= s <= 250 for s in sizes), sizes
    assert records(5, 8) == [record(5), record(6), record(7)]
    record(1)["tags"].append("x")
    assert record(1)["tags"] == ["green"]  # fresh objects every call


# ---------------------------------------------------------------- pagination shapes


def test_page_walk_and_meta(api, http):
    got, page = [], 1
    while True:
        body = http.get(api.url("/items/page", page=page, per_page=100, n=250)).json()
        assert body["meta"] == {"page": page, "per_page": 100, "total_pages": 3, "total_records": 250}
        got += body["data"]
        if len(body["data"]) < 100:
            break
        page += 1
    assert page == 3 and got == dataset(250)
    assert http.get(api.url("/items/page", page=4, per_page=100, n=250)).json()["data"] == []
    assert http.get(api.url("/items/page", page=2, per_page=10, n=250, hide_total=1)).json()["meta"] == {
        "page": 2,
        "per_page": 10,
    }
    meta = http.get(api.url("/items/page", per_page=10, n=250, null_total=1)).json()["meta"]
    assert meta == {"page": 1, "per_page": 10, "total_pages": None, "total_records": None}
    default = http.get(api.url("/items/page")).json()
    assert ids(default["data"]) == list(range(1, 101)) and default["meta"]["total_records"] == 1000
    assert http.get(api.url("/items/page", n=0)).json() == {
        "data": [],
        "meta": {"page": 1, "per_page": 100, "total_pages": 0, "total_records": 0},
    }


def test_offset(api, http):
    got, offset = [], 0
    while True:
        body = http.get(api.url("/items/offset", offset=offset, limit=40, n=100)).json()
        assert body["total"] == 100
        got += body["items"]
        if len(body["items"]) < 40:
            break
        offset += 40
    assert got == dataset(100)
    assert "total" not in http.get(api.url("/items/offset", n=5, hide_total=1)).json()


def test_cursor(api, http):
    got, cursor, requests_made = [], None, 0
    while True:
        body = http.get(api.url("/items/cursor", size=25, n=100, cursor=cursor)).json()
        requests_made += 1
        got += body["data"]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert got == dataset(100) and requests_made == 4  # no trailing empty page
    assert decode_cursor(encode_cursor(1234)) == 1234
    # loop=1: the same cursor forever
    first = http.get(api.url("/items/cursor", size=10, n=100, loop=1)).json()
    c = first["next_cursor"]
    for _ in range(3):
        body = http.get(api.url("/items/cursor", size=10, n=100, loop=1, cursor=c)).json()
        assert body["next_cursor"] == c and ids(body["data"]) == list(range(11, 21))
    assert http.get(api.url("/items/cursor", cursor="!!nope")).status_code == 400
    assert http.get(api.url("/items/cursor", n=0)).json() == {"data": [], "next_cursor": None}


def test_next_url_relative_and_absolute(api, http):
    for absolute in (0, 1):
        url, got, hops = api.url("/items/next", size=30, n=100, absolute=absolute, delay_ms=1), [], 0
        while url:
            body = http.get(url).json()
            got += body["results"]
            nxt = body["next"]
            if nxt:
                assert nxt.startswith(api.base_url if absolute else "/items/next?")
                assert "delay_ms=1" in nxt  # other params carried along
                url = nxt if absolute else api.base_url + nxt
            else:
                url = None
            hops += 1
        assert got == dataset(100) and hops == 4
    a = http.get(api.url("/items/next", size=10, n=100, loop=1)).json()["next"]
    b = http.get(api.base_url + a).json()
    assert b["next"] == a and ids(b["results"]) == list(range(11, 21))


def test_link_header(api, http):
    url, got, pages = api.url("/items/link", size=40, n=100), [], 0
    while url:
        resp = http.get(url)
        body = resp.json()
        assert isinstance(body, list)
        got += body
        pages += 1
        assert resp.links["last"]["url"].endswith("page=3")
        assert resp.links["first"]["url"].startswith(api.base_url)
        url = resp.links.get("next", {}).get("url")
    assert got == dataset(100) and pages == 3
    last = http.get(api.url("/items/link", size=40, n=100, page=3))
    assert "next" not in last.links and "prev" in last.links


def test_list_ndjson_drift(api, http):
    assert http.get(api.url("/items/list", n=7)).json() == dataset(7)
    resp = http.get(api.url("/items/ndjson", page=2, per_page=3, n=8))
    assert resp.headers["Content-Type"].startswith("application/x-ndjson")
    assert resp.content.endswith(b"\n")
    assert [json.loads(line) for line in resp.text.splitlines()] == records(4, 7)
    assert http.get(api.url("/items/ndjson", page=9, per_page=3, n=8)).content == b""
    p1 = http.get(api.url("/items/drift", page=1, per_page=2, n=10)).json()["data"]
    p2 = http.get(api.url("/items/drift", page=2, per_page=2, n=10)).json()["data"]
    p3 = http.get(api.url("/items/drift", page=3, per_page=2, n=10)).json()["data"]
    assert "extra" not in p1[0] and "extra" in p2[0] and "extra" not in p3[0]
    assert isinstance(p1[0]["amount"], int) and isinstance(p2[0]["amount"], float)
    assert p1[0]["maybe"] is None and isinstance(p3[0]["maybe"], str)
    assert p2 == [drift_record(3, 2), drift_record(4, 2)]


def test_csv(api, http):
    resp = http.get(api.url("/items/csv", page=1, per_page=10, n=25))
    assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
    rows = list(csv.reader(io.StringIO(resp.content.decode())))
    assert rows[0] == list(CSV_COLUMNS) and rows[1:] == [csv_row(i) for i in range(1, 11)]
    assert rows[5][5] == ""  # null note -> empty cell
    semi = http.get(api.url("/items/csv", page=2, per_page=10, n=25, sep=";", header=0)).text
    rows = list(csv.reader(io.StringIO(semi), delimiter=";"))
    assert rows == [csv_row(i) for i in range(11, 21)]
    latin = http.get(api.url("/items/csv", per_page=10, n=25, encoding="latin-1"))
    assert b"caf\xe9-7" in latin.content
    with pytest.raises(UnicodeDecodeError):
        latin.content.decode("utf-8")
    assert list(csv.reader(io.StringIO(latin.content.decode("latin-1"))))[7] == csv_row(7, accents=True)
    bad = http.get(api.url("/items/csv", per_page=10, n=25, bad_utf8=1)).content
    assert BAD_UTF8 + b"-3" in bad
    with pytest.raises(UnicodeDecodeError):
        bad.decode("utf-8")


def test_by_id_and_events(api, http):
    body = http.get(api.url("/items/by-id/7", k=5, per_page=2, page=2)).json()
    assert body["data"] == owner_records(7, 5)[2:4] and ids(body["data"]) == [7003, 7004]
    assert body["meta"]["total_records"] == 5 and body["data"][0]["owner"] == 7
    assert http.get(api.url("/items/by-id", id=7, k=5, per_page=2, page=2)).json() == body
    assert http.get(api.url("/items/by-id/42")).json()["data"] == owner_records(42)
    assert http.get(api.url("/items/by-id/abc")).status_code == 400
    ev = http.get(api.url("/events", **{"from": "2024-02-27", "to": "2024-03-01"})).json()["data"]
    assert [e["day"] for e in ev] == ["2024-02-27", "2024-02-28", "2024-02-29", "2024-03-01"]
    assert ev == events(date(2024, 2, 27), date(2024, 3, 1)) and ev[0]["id"] == 20240227
    assert http.get(api.url("/events", start="2024-01-01", end="2024-01-07")).json()["data"] == events(
        date(2024, 1, 1), date(2024, 1, 7)
    )
    assert http.get(api.url("/events", **{"from": "2024-01-02", "to": "2024-01-01"})).json()["data"] == []
    assert http.get(api.url("/events", **{"from": "nope", "to": "2024-01-01"})).status_code == 400


def test_misc_endpoints_and_errors(api, http):
    r = http.get(api.url("/notjson"))
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert r.text.startswith("<html>")
    assert http.get(api.url("/notlist")).json() == {"data": {"a": 1}}
    assert http.get(api.url("/empty")).json() == {"data": []}
    r = http.get(api.url("/items/page", page=0))
    assert r.status_code == 400 and r.headers["X-Bad-Param"] == "page"
    assert http.get(api.url("/items/page", per_page="x")).status_code == 400
    assert http.get(api.url("/nope")).status_code == 404
    e = http.post(api.url("/echo", a=1), json={"x": [1, 2]}, headers={"X-Test": "yes"}).json()
    assert e["method"] == "POST" and e["path"] == "/echo" and e["query"] == {"a": "1"}
    assert e["json"] == {"x": [1, 2]} and e["headers"]["X-Test"] == "yes"


# ---------------------------------------------------------------- determinism


def test_determinism(api, http):
    u = api.url("/items/page", page=3, per_page=50, n=1000)
    a, b = http.get(u).content, http.get(u).content
    assert a == b
    # parameter order and delay/fault params don't change the body
    assert http.get(api.base_url + "/items/page?n=1000&per_page=50&page=3&delay_ms=1").content == a
    for path in ("/items/cursor", "/items/next", "/items/link", "/items/csv", "/items/ndjson"):
        u = api.url(path, n=300, size=70, per_page=70, page=2)
        assert http.get(u).content == http.get(u).content
    # and across server processes
    with TestAPI() as other:
        assert http.get(other.url("/items/page", page=3, per_page=50, n=1000)).content == a
        assert (
            http.get(other.url("/items/csv", n=30, encoding="latin-1")).content
            == http.get(api.url("/items/csv", n=30, encoding="latin-1")).content
        )


# ---------------------------------------------------------------- faults


@pytest.mark.parametrize("kind", ["500", "503", "429"])
def test_status_faults_then_success(api, http, kind):
    u = api.url("/items/page", page=1, per_page=5, n=20, fail_rate=1, fault=kind, retry_after=2)
    r = http.get(u)
    assert r.status_code == int(kind)
    if kind in ("429", "503"):
        assert r.headers["Retry-After"] == "2"
    r = http.get(u)
    assert r.status_code == 200 and r.json()["data"] == records(1, 6)
    log = api.log()
    assert [(e["status"], e["fault"], e["attempt"]) for e in log] == [(int(kind), kind, 0), (200, None, 1)]


def test_429_retry_after_forms(api, http):
    r = http.get(api.url("/items/page", fail_rate=1, fault="429"))
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    r = http.get(api.url("/items/page", page=2, fail_rate=1, fault="429", retry_after=5, retry_after_date=1))
    when = parsedate_to_datetime(r.headers["Retry-After"]).timestamp()
    assert 3 <= when - time.time() <= 6.5
    r = http.get(api.url("/items/page", page=3, fail_rate=1, fault="503"))
    assert r.status_code == 503 and "Retry-After" not in r.headers


def test_truncate_drop_badjson_slow(api, http):
    full = http.get(api.url("/items/page", per_page=20, n=100)).content
    u = api.url("/items/page", per_page=20, n=100, fail_rate=1, fault="truncate")
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        http.get(u)
    assert http.get(u).content == full

    u = api.url("/items/page", page=2, per_page=20, n=100, fail_rate=1, fault="drop")
    with pytest.raises(requests.exceptions.ConnectionError):
        http.get(u)
    assert http.get(u).json()["data"] == records(21, 41)

    u = api.url("/items/page", page=3, per_page=20, n=100, fail_rate=1, fault="badjson")
    r = http.get(u)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(r.content) > 0
    with pytest.raises(ValueError):
        r.json()
    assert http.get(u).json()["data"] == records(41, 61)

    u = api.url("/items/page", page=4, per_page=20, n=100, fail_rate=1, fault="slow", slow_ms=400)
    t0 = time.monotonic()
    assert http.get(u).status_code == 200
    assert time.monotonic() - t0 >= 0.39
    t0 = time.monotonic()
    assert http.get(u).status_code == 200
    assert time.monotonic() - t0 < 0.3

    log = api.log()
    assert [(e["fault"], e["status"]) for e in log[1:]] == [
        ("truncate", 200),
        (None, 200),
        ("drop", None),
        (None, 200),
        ("badjson", 200),
        (None, 200),
        ("slow", 200),
        (None, 200),
    ]


def test_fail_rate_is_deterministic_and_predictable(api, http):
    common = dict(per_page=10, n=400, fail_rate=0.3, seed=7)
    urls = {p: api.url("/items/page", page=p, **common) for p in range(1, 41)}
    statuses = {p: http.get(u).status_code for p, u in urls.items()}
    expected_fail = {
        p
        for p in urls
        if faults.is_failing(faults.fault_key("/items/page", {"page": str(p), "per_page": "10", "n": "400"}), 0.3, 7)
    }
    assert {p for p, s in statuses.items() if s == 500} == expected_fail
    assert 3 <= len(expected_fail) <= 25
    assert all(http.get(u).status_code == 200 for u in urls.values())  # 2nd attempt succeeds
    api.reset()  # counters reset: the same keys fail again
    assert {p for p, u in urls.items() if http.get(u).status_code == 500} == expected_fail


def test_fail_times_fail_all_mixed(api, http):
    u = api.url("/items/offset", n=10, fail_rate=1, fail_times=2, fault="503")
    assert [http.get(u).status_code for _ in range(3)] == [503, 503, 200]
    u = api.url("/items/offset", n=11, fail_all=1, fault="500")
    assert [http.get(u).status_code for _ in range(4)] == [500] * 4
    # mixed cycles through the kinds, predictable per key and attempt
    key = faults.fault_key("/items/list", {"n": "3"})
    u = api.url("/items/list", n=3, fail_all=1, fault="mixed")
    seen = []
    for attempt in range(6):
        kind = faults.decide(key, {"fail_all": "1", "fault": "mixed"}, attempt)
        seen.append(kind)
        try:
            r = http.get(u)
            outcome = str(r.status_code) if r.status_code != 200 else "badjson"
        except requests.exceptions.ChunkedEncodingError:
            outcome = "truncate"
        except requests.exceptions.ConnectionError:
            outcome = "drop"
        assert outcome == kind
    assert sorted(seen) == sorted(faults.MIXED_CYCLE)
    assert [e["fault"] for e in api.log(path="/items/list")] == seen
    assert http.get(api.url("/items/page", fault="nope", fail_rate=1)).status_code == 400


def test_delay_does_not_block(api, http):
    u = api.url("/items/page", per_page=1, delay_ms=300)
    t0 = time.monotonic()
    results = []

    def fetch():
        with requests.Session() as s:
            s.trust_env = False
            results.append(s.get(u, timeout=5).status_code)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    assert results == [200] * 4 and 0.29 <= elapsed < 1.1  # serial would be >= 1.2 s
    assert api.stats()["inflight_peak"] == 4


# ---------------------------------------------------------------- log, reset, stats


def test_log_and_reset(api, http):
    t0 = time.time()
    http.get(api.url("/items/page", page=1, n=5))
    http.get(api.url("/items/offset", offset=3, n=5))
    http.get(api.url("/nope"))
    log = api.log()
    assert [e["path"] for e in log] == ["/items/page", "/items/offset", "/nope"]  # /_log not logged
    assert log[0]["query"] == {"page": "1", "n": "5"} and log[0]["method"] == "GET"
    assert [e["status"] for e in log] == [200, 200, 404]
    assert all(e["fault"] is None for e in log)
    assert t0 - 1 <= log[0]["t"] <= log[1]["t"] <= log[2]["t"] <= time.time()
    assert all(e["t_done"] >= e["t"] for e in log)
    assert api.log(since=2)[0]["path"] == "/nope"
    stats = api.stats()
    assert stats["requests"] == 3 and stats["by_status"] == {"200": 2, "404": 1}
    api.reset()
    assert api.log() == []


def test_in_flight_request_is_logged_on_arrival(api, http):
    def slow():
        with requests.Session() as s:
            s.trust_env = False
            s.get(api.url("/items/page", delay_ms=600), timeout=5)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.2)
    entry = api.log()[0]
    assert entry["status"] is None and entry["t_done"] is None
    t.join()
    assert api.log()[0]["status"] == 200


# ---------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "path,kwargs",
    [
        ("/auth/bearer", {"headers": {"Authorization": f"Bearer {creds.BEARER_TOKEN}"}}),
        ("/auth/header", {"headers": {"X-Api-Key": creds.API_KEY}}),
        ("/auth/query", {"params": {"api_key": creds.QUERY_KEY}}),
        ("/auth/basic", {"auth": (creds.BASIC_USER, creds.BASIC_PASSWORD)}),
    ],
)
def test_static_auth(api, http, path, kwargs):
    u = api.url(path, page=2, per_page=3, n=10)
    denied = http.get(u)
    assert denied.status_code == 401 and denied.json()["error"] == "unauthorized"
    assert "WWW-Authenticate" in denied.headers
    wrong = {
        k: ({kk: vv + "x" for kk, vv in v.items()} if isinstance(v, dict) else (v[0], v[1] + "x"))
        for k, v in kwargs.items()
    }
    assert http.get(u, **wrong).status_code == 401
    ok = http.get(u, **kwargs)
    assert ok.status_code == 200 and ok.json()["data"] == records(4, 7)


def test_oauth2_token_expiry(api, http):
    token_url = api.url("/oauth/token", ttl=1)
    assert http.post(
        token_url, data={"grant_type": "client_credentials", "client_id": "client-1", "client_secret": "wrong"}
    ).json() == {"error": "invalid_client", "message": "wrong client_id or client_secret"}
    r = http.post(
        token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": creds.OAUTH_CLIENT_ID,
            "client_secret": creds.OAUTH_CLIENT_SECRET,
        },
    )
    tok = r.json()
    assert r.status_code == 200 and tok["token_type"] == "bearer" and tok["expires_in"] == 1
    u = api.url("/auth/oauth2", per_page=2, n=4)
    assert http.get(u).status_code == 401
    assert http.get(u, headers={"Authorization": "Bearer bogus"}).status_code == 401
    auth = {"Authorization": f"Bearer {tok['access_token']}"}
    ok = http.get(u, headers=auth)
    assert ok.status_code == 200 and ok.json()["data"] == records(1, 3)
    time.sleep(1.1)
    expired = http.get(u, headers=auth)
    assert expired.status_code == 401 and expired.json()["error"] == "invalid_token"
    # basic-auth client credentials, default ttl
    tok2 = http.post(
        api.url("/oauth/token"),
        data={"grant_type": "client_credentials"},
        auth=(creds.OAUTH_CLIENT_ID, creds.OAUTH_CLIENT_SECRET),
    ).json()
    assert tok2["expires_in"] == 3600 and tok2["access_token"] != tok["access_token"]
    auth2 = {"Authorization": f"Bearer {tok2['access_token']}"}
    assert http.get(u, headers=auth2).status_code == 200
    assert api.tokens_issued() == 2 and api.stats()["tokens_issued"] == 2
    assert [e.get("token_n") for e in api.log(path="/oauth/token") if e["status"] == 200] == [1, 2]
    assert http.get(api.url("/oauth/token")).status_code == 405
    api.reset()
    assert api.tokens_issued() == 0
    assert http.get(u, headers=auth2).status_code == 401  # reset forgets tokens


# ---------------------------------------------------------------- hostile


def test_redirects(api, http):
    with pytest.raises(requests.exceptions.TooManyRedirects):
        http.get(api.url("/redirect-loop"))
    r = http.get(api.url("/redirect", to="/empty"))
    assert r.json() == {"data": []} and r.history[0].status_code == 302


def test_hang_times_out(api, http):
    t0 = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.get(api.url("/hang"), timeout=1)
    assert time.monotonic() - t0 < 2
    assert api.log()[0]["path"] == "/hang"


def test_huge_can_be_aborted(api, http):
    t0 = time.monotonic()
    with http.get(api.url("/huge", mb=64), stream=True, timeout=5) as r:
        assert "Content-Length" not in r.headers and r.headers.get("Transfer-Encoding") == "chunked"
        got = 0
        for chunk in r.iter_content(65536):
            got += len(chunk)
            if got >= 512 * 1024:
                break
    assert time.monotonic() - t0 < 3
    with http.get(api.url("/huge", mb=0.25, cl=1), stream=True, timeout=5) as r:
        assert r.headers["Content-Length"] == str(256 * 1024)
        body = r.content
    assert len(body) == 256 * 1024 and json.loads(body)["data"][:3] == [0, 0, 0]


# ---------------------------------------------------------------- process management


def test_ready_line_and_start_classmethod():
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.testapi.server", "--port", "0", "--host", "127.0.0.1"],
        cwd=str(Path(__file__).resolve().parents[2]),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY ") and int(line.split()[1]) > 0
        proc.terminate()
        proc.wait(5)
        assert proc.stdout.read() == ""  # exactly one line
    finally:
        proc.kill()
        proc.wait(5)
        proc.stdout.close()
    api = TestAPI.start()
    try:
        assert api.running and api.base_url.startswith("http://127.0.0.1:")
        assert api.url("/items/page", page=2, hide_total=True) == api.base_url + "/items/page?page=2&hide_total=1"
        api.warm([api.url("/items/page", page=1, per_page=1000, n=2000)])
        assert api.stats()["cache"]["entries"] >= 1 and api.log() == []
    finally:
        api.stop()
    assert not api.running


def test_server_dies_with_its_parent(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from tests.testapi.client import TestAPI
        api = TestAPI.start()
        print(api.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(parent.stdout.readline())
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not _alive(server_pid):
            break
        time.sleep(0.1)
    else:
        os.kill(server_pid, signal.SIGKILL)
        pytest.fail("test API outlived its parent")


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for a non-reaping init counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
