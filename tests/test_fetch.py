"""engine/fetch.py with `responses` (no server, one process): one page through the retry loop,
the job's gate (limiter, semaphore, cancellation, sleep) replaced by recording fakes."""
from __future__ import annotations

import threading

import pytest
import requests
import responses

from engine.auth import Auth, HeaderValueAuth
from engine.fetch import MAX_REDIRECTS, FetchError, Gate, HttpClient, PageFetcher, SourceRequestSpec
from engine.spec import CsvSourceOptions, Retry

URL = "https://api.example.com/v1/orders"
OTHER = "https://files.example.net/v1/orders"


class FakeLimiter:
    def __init__(self, may_send: bool = True):
        self.may_send = may_send
        self.acquired = 0
        self.answered_tickets: list = []
        self.pauses: list[float] = []

    def acquire(self, wait):
        if not self.may_send:
            return False, None
        self.acquired += 1
        return True, self.acquired

    def answered(self, ticket):
        self.answered_tickets.append(ticket)

    def pause(self, seconds):
        self.pauses.append(seconds)


class Harness:
    def __init__(self, retry: Retry | None = None, max_body: int = 1 << 20, allowed_hosts: tuple = (),
                 cancelled: bool = False, sleep_cancels: bool = False, may_send: bool = True):
        self.limiter = FakeLimiter(may_send)
        self.sleeps: list[float] = []
        self.requests = 0
        self.retries = 0
        self.bytes = 0
        self.semaphore = threading.Semaphore(1)

        def sleep(seconds: float) -> bool:
            self.sleeps.append(seconds)
            return sleep_cancels

        self.gate = Gate(limiter=self.limiter, semaphore=self.semaphore, cancelled=lambda: cancelled,
                         sleep=sleep, on_request=self._on_request, on_retry=self._on_retry, on_bytes=self._on_bytes)
        self.client = HttpClient(max_body, allowed_hosts)
        self.fetcher = PageFetcher(self.client, self.gate, retry or Retry(), timeout=5)

    def _on_request(self):
        self.requests += 1

    def _on_retry(self):
        self.retries += 1

    def _on_bytes(self, n):
        self.bytes += n

    def fetch(self, url=URL, params=None, auth: Auth | None = None, fmt="json", records=None, headers=None,
              method="GET", body=None):
        source = SourceRequestSpec(method=method, headers=headers or {}, body=body, fmt=fmt, records=records,
                                   csv=CsvSourceOptions(), auth=auth or Auth())
        return self.fetcher.fetch(source, url, params or {})


@pytest.fixture
def rs():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def urls(rs) -> list[str]:
    return [call.request.url for call in rs.calls]


# ------------------------------------------------------------------ success

def test_success_parses_the_page(rs):
    body = b'{"data": [{"id": 1, "a": {"b": 2}}, {"id": 2, "a": {"b": 3}}], "meta": {"pages": 4}}'
    rs.add("GET", URL, body=body, content_type="application/json")
    h = Harness()
    out = h.fetch(params={"page": 3, "status": "open"}, records="data")
    assert out.error is None and not out.cancelled
    assert out.attempts == 1
    assert out.parsed.records == 2
    assert out.parsed.table.to_pylist() == [{"id": 1, "a.b": 2}, {"id": 2, "a.b": 3}]
    assert out.parsed.doc["meta"] == {"pages": 4}
    assert out.response.status == 200
    assert urls(rs) == [URL + "?page=3&status=open"]
    assert rs.calls[0].request.headers["User-Agent"] == "pageferry/1.0"
    assert h.requests == 1 and h.retries == 0 and h.sleeps == []
    assert h.bytes == len(body) == len(out.response.body)
    assert h.limiter.acquired == 1 and h.limiter.answered_tickets == [1]


def test_headers_and_auth_are_sent(rs):
    rs.add("GET", URL, json=[])
    Harness().fetch(headers={"Accept": "application/json"}, auth=HeaderValueAuth("Authorization", "Bearer tk"))
    sent = rs.calls[0].request.headers
    assert sent["Accept"] == "application/json" and sent["Authorization"] == "Bearer tk"


def test_post_body_is_json(rs):
    rs.add("POST", URL, json={"items": [{"a": 1}]},
           match=[responses.matchers.json_params_matcher({"query": {"since": "2024-01-01"}})])
    out = Harness().fetch(method="POST", body={"query": {"since": "2024-01-01"}})
    assert out.error is None and out.parsed.records == 1


def test_semaphore_is_released_after_each_attempt(rs):
    rs.add("GET", URL, status=500)
    rs.add("GET", URL, json=[])
    h = Harness()
    h.fetch()
    assert h.semaphore.acquire(blocking=False)  # not leaked


# ------------------------------------------------------------------ retries

def test_500_then_200_is_retried(rs):
    rs.add("GET", URL, status=500)
    rs.add("GET", URL, json=[{"a": 1}])
    h = Harness(Retry(attempts=5, backoff=0.5, max_backoff=30))
    out = h.fetch()
    assert out.error is None and out.parsed.records == 1
    assert out.attempts == 2
    assert h.retries == 1  # on_retry called once
    assert len(h.sleeps) == 1 and 0.25 <= h.sleeps[0] <= 0.5  # first backoff, jittered
    assert h.limiter.pauses == []  # only a 429 pauses the job
    assert len(rs.calls) == 2 and h.requests == 2


def test_backoff_grows_between_attempts(rs):
    rs.add("GET", URL, status=503)
    h = Harness(Retry(attempts=4, backoff=1, max_backoff=100))
    out = h.fetch()
    assert out.attempts == 4 and out.error.status == 503
    assert len(h.sleeps) == 3
    for n, delay in enumerate(h.sleeps):
        assert 2 ** n / 2 <= delay <= 2 ** n


def test_404_is_not_retried(rs):
    rs.add("GET", URL, status=404, json={"error": "no such order"})
    h = Harness()
    out = h.fetch()
    assert out.parsed is None
    assert out.attempts == 1 and len(rs.calls) == 1
    assert out.error.status == 404 and out.error.retryable is False
    assert "HTTP 404" in out.error.message
    assert "no such order" in out.error.message  # a short hint from the body
    assert h.retries == 0 and h.sleeps == []


def test_429_with_retry_after_waits_and_pauses_the_job(rs):
    rs.add("GET", URL, status=429, headers={"Retry-After": "3"})
    rs.add("GET", URL, json=[])
    h = Harness(Retry(backoff=0.01, max_backoff=0.02))
    out = h.fetch()
    assert out.error is None and out.attempts == 2
    assert len(h.sleeps) == 1 and h.sleeps[0] >= 3
    assert len(h.limiter.pauses) == 1 and h.limiter.pauses[0] >= 3


def test_retry_after_on_a_retried_5xx_is_honoured_without_pausing(rs):
    rs.add("GET", URL, status=503, headers={"Retry-After": "7"})
    rs.add("GET", URL, json=[])
    h = Harness(Retry(backoff=0.01, max_backoff=0.02))
    h.fetch()
    assert h.sleeps[0] >= 7
    assert h.limiter.pauses == []


def test_retry_statuses_are_configurable(rs):
    rs.add("GET", URL, status=418)
    rs.add("GET", URL, json=[])
    out = Harness(Retry(statuses=(418,))).fetch()
    assert out.error is None and out.attempts == 2
    rs.replace("GET", URL, status=500)
    out = Harness(Retry(statuses=(418,))).fetch()
    assert out.attempts == 1 and out.error.status == 500 and out.error.retryable is False


def test_attempts_counts_every_try_including_the_first(rs):
    rs.add("GET", URL, status=502)
    h = Harness(Retry(attempts=3))
    out = h.fetch()
    assert len(rs.calls) == 3
    assert out.attempts == 3
    assert out.error.status == 502 and "HTTP 502" in out.error.message
    assert h.retries == 2 and len(h.sleeps) == 2


def test_one_attempt_means_no_retry(rs):
    rs.add("GET", URL, status=503)
    out = Harness(Retry(attempts=1)).fetch()
    assert len(rs.calls) == 1 and out.attempts == 1


def test_connection_error_is_retryable_and_has_no_url(rs):
    error = requests.ConnectionError(
        "HTTPSConnectionPool(host='api.example.com', port=443): Max retries exceeded with url: "
        "/v1/orders?api_key=s3cr3t (Caused by NewConnectionError('Failed to establish a new connection: "
        "[Errno 111] Connection refused'))")
    rs.add("GET", URL, body=error)
    h = Harness(Retry(attempts=3))
    out = h.fetch(params={"api_key": "s3cr3t"})
    assert out.attempts == 3 and len(h.sleeps) == 2
    assert out.error.retryable is True and out.error.status is None
    assert out.error.message == "connection failed (connection refused)"
    assert "api.example.com" not in out.error.message and "s3cr3t" not in out.error.message
    assert "/v1/orders" not in out.error.message


def test_connection_error_then_success(rs):
    rs.add("GET", URL, body=requests.ConnectionError("Connection reset by peer"))
    rs.add("GET", URL, json=[{"a": 1}])
    out = Harness().fetch()
    assert out.error is None and out.attempts == 2


def test_timeout_is_retryable(rs):
    rs.add("GET", URL, body=requests.ReadTimeout("read timed out for https://api.example.com/v1/orders"))
    out = Harness(Retry(attempts=2)).fetch()
    assert out.attempts == 2 and out.error.retryable is True
    assert "timeout" in out.error.message and "api.example.com" not in out.error.message


def test_invalid_json_is_retried_then_fails(rs):
    rs.add("GET", URL, body=b"<html>gateway hiccup</html>", status=200)
    h = Harness(Retry(attempts=3))
    out = h.fetch()
    assert len(rs.calls) == 3 and out.attempts == 3
    assert out.parsed is None
    assert "not valid JSON" in out.error.message
    assert out.error.retryable is True


def test_invalid_json_then_valid(rs):
    rs.add("GET", URL, body=b'{"data": [1, 2', status=200)
    rs.add("GET", URL, json={"data": [1, 2]})
    out = Harness().fetch()
    assert out.error is None and out.attempts == 2 and out.parsed.records == 2


def test_records_path_error_is_not_retried(rs):
    rs.add("GET", URL, json={"items": []})
    out = Harness().fetch(records="data")
    assert out.attempts == 1 and out.error.retryable is False and "'data'" in out.error.message


# ------------------------------------------------------------------ body size

def test_body_over_max_body_with_content_length(rs):
    rs.add("GET", URL, body=b"x" * 5000, auto_calculate_content_length=True)
    out = Harness(Retry(attempts=3), max_body=1000).fetch()
    assert out.attempts == 1  # not retried
    assert out.error.retryable is False
    assert "MAX_FILE_SIZE" in out.error.message and "5000" in out.error.message


def test_body_over_max_body_streamed_without_content_length(rs):
    rs.add("GET", URL, body=b"x" * 5000)
    out = Harness(Retry(attempts=3), max_body=1000).fetch()
    assert out.attempts == 1
    assert out.error.retryable is False
    assert "MAX_FILE_SIZE" in out.error.message


def test_body_at_max_body_is_fine(rs):
    body = b'[' + b'1,' * 49 + b'1]'
    rs.add("GET", URL, body=body)
    out = Harness(max_body=len(body)).fetch()
    assert out.error is None and out.parsed.records == 50


# ------------------------------------------------------------------ redirects

def test_redirect_followed_and_each_hop_charged(rs):
    rs.add("GET", URL, status=302, headers={"Location": "/v2/orders?page=1"})
    rs.add("GET", "https://api.example.com/v2/orders", json=[{"a": 1}])
    h = Harness()
    out = h.fetch(params={"page": 1})
    assert out.error is None and out.parsed.records == 1
    assert urls(rs) == [URL + "?page=1", "https://api.example.com/v2/orders?page=1"]
    assert h.limiter.acquired == 2  # one rate-limit slot per hop
    assert h.limiter.answered_tickets == [1, 2]
    assert h.requests == 2
    assert out.attempts == 1
    assert out.response.url == "https://api.example.com/v2/orders?page=1"


def test_303_after_post_becomes_get(rs):
    rs.add("POST", URL, status=303, headers={"Location": "https://api.example.com/result/1"})
    rs.add("GET", "https://api.example.com/result/1", json=[])
    out = Harness().fetch(method="POST", body={"q": 1})
    assert out.error is None
    assert [c.request.method for c in rs.calls] == ["POST", "GET"]
    assert rs.calls[1].request.body is None


def test_redirect_loop_fails(rs):
    rs.add("GET", URL, status=302, headers={"Location": URL})
    h = Harness(Retry(attempts=3))
    out = h.fetch()
    assert out.error.message == f"more than {MAX_REDIRECTS} redirects"
    assert "more than 10 redirects" in out.error.message
    assert out.error.retryable is False and out.attempts == 1
    assert len(rs.calls) == MAX_REDIRECTS + 1
    assert h.limiter.acquired == MAX_REDIRECTS + 1


def test_redirect_outside_allowed_hosts_is_refused(rs):
    rs.add("GET", URL, status=302, headers={"Location": "https://evil.example.org/steal"})
    rs.add("GET", "https://evil.example.org/steal", json=[{"stolen": True}])
    h = Harness(allowed_hosts=("api.example.com",))
    out = h.fetch()
    assert out.parsed is None
    assert out.error.retryable is False
    assert "evil.example.org" in out.error.message and "ALLOWED_SOURCE_HOSTS" in out.error.message
    assert urls(rs) == [URL]  # the other host was never asked


def test_redirect_within_allowed_hosts_is_followed(rs):
    rs.add("GET", URL, status=301, headers={"Location": "https://cdn.example.com/x"})
    rs.add("GET", "https://cdn.example.com/x", json=[])
    out = Harness(allowed_hosts=("api.example.com", ".example.com")).fetch()
    assert out.error is None


def test_start_url_outside_allowed_hosts_is_refused(rs):
    out = Harness(allowed_hosts=("other.example.com",)).fetch()
    assert "ALLOWED_SOURCE_HOSTS" in out.error.message and len(rs.calls) == 0


def test_authorization_dropped_on_cross_host_redirect(rs):
    rs.add("GET", URL, status=302, headers={"Location": "https://api.example.com/v1/moved"})
    rs.add("GET", "https://api.example.com/v1/moved", status=307, headers={"Location": OTHER})
    rs.add("GET", OTHER, json=[])
    out = Harness().fetch(auth=HeaderValueAuth("Authorization", "Bearer t0ken"), headers={"Accept": "text/csv"})
    assert out.error is None
    sent = [c.request.headers for c in rs.calls]
    assert sent[0]["Authorization"] == "Bearer t0ken"
    assert sent[1]["Authorization"] == "Bearer t0ken"  # same host: kept
    assert "Authorization" not in sent[2]              # other host: dropped
    assert sent[2]["Accept"] == "text/csv"              # harmless headers still apply


def test_custom_credentials_and_cookies_dropped_on_cross_host_redirect(rs):
    rs.add("GET", URL, status=302, headers={"Location": OTHER})
    rs.add("GET", OTHER, json=[])
    out = Harness().fetch(auth=HeaderValueAuth("X-Api-Key", "k3y-secret"),
                          headers={"Cookie": "session=abc", "X-Tenant": "t1", "Accept": "application/json"})
    assert out.error is None
    first, second = (c.request.headers for c in rs.calls)
    assert first["X-Api-Key"] == "k3y-secret" and first["Cookie"] == "session=abc"
    assert {"X-Api-Key", "Cookie", "X-Tenant"}.isdisjoint(second) and second["Accept"] == "application/json"


# ------------------------------------------------------------------ auth refresh

class RefreshingAuth(Auth):
    refreshable = True

    def __init__(self):
        self.refreshed = 0

    def apply(self, headers, params):
        headers["Authorization"] = f"Bearer token-{self.refreshed}"

    def on_unauthorized(self):
        self.refreshed += 1
        return True


def test_refreshable_auth_refreshed_once_on_401(rs):
    rs.add("GET", URL, status=401)
    rs.add("GET", URL, json=[{"a": 1}])
    auth = RefreshingAuth()
    h = Harness()
    out = h.fetch(auth=auth)
    assert out.error is None and out.attempts == 2
    assert auth.refreshed == 1
    assert [c.request.headers["Authorization"] for c in rs.calls] == ["Bearer token-0", "Bearer token-1"]


def test_401_without_refreshable_auth_is_not_retried(rs):
    rs.add("GET", URL, status=401)
    out = Harness().fetch(auth=HeaderValueAuth("Authorization", "Bearer bad"))
    assert out.attempts == 1 and out.error.status == 401 and out.error.retryable is False


# ------------------------------------------------------------------ cancellation

def test_cancelled_before_start_sends_nothing(rs):
    rs.add("GET", URL, json=[])
    h = Harness(cancelled=True)
    out = h.fetch()
    assert out.cancelled is True
    assert out.attempts == 0 and out.parsed is None
    assert len(rs.calls) == 0 and h.limiter.acquired == 0


def test_cancelled_while_waiting_for_the_limiter_sends_nothing(rs):
    rs.add("GET", URL, json=[])
    h = Harness(may_send=False)
    out = h.fetch()
    assert out.cancelled is True and len(rs.calls) == 0
    assert h.semaphore.acquire(blocking=False)  # the slot was given back


def test_cancelled_during_backoff(rs):
    rs.add("GET", URL, status=503)
    h = Harness(Retry(attempts=5), sleep_cancels=True)
    out = h.fetch()
    assert out.cancelled is True
    assert len(rs.calls) == 1 and len(h.sleeps) == 1


# ------------------------------------------------------------------ HttpClient directly

def test_fetch_error_fields():
    err = FetchError("HTTP 503", retryable=True, status=503, retry_after=2.0)
    assert (err.message, err.retryable, err.status, err.retry_after) == ("HTTP 503", True, 503, 2.0)
    assert str(err) == "HTTP 503"


def test_client_exposes_link_header(rs):
    rs.add("GET", URL, json=[], headers={"Link": '<https://api.example.com/v1/orders?page=2>; rel="next"'})
    client = HttpClient(1 << 20)
    response = client.send("GET", URL, {}, {}, None, 5, lambda: None)
    assert response.links["next"]["url"] == "https://api.example.com/v1/orders?page=2"
    client.close()
