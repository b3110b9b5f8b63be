"""engine/fetch/page.py + engine/fetch/client.py against a real scripted HTTP server on
127.0.0.1 (one process, tests/support/scripted_server.py): one page through the retry loop on
an event loop, the job's gate (limiter, semaphore, cancellation, sleep) replaced by recording
fakes. Backoff sleeps are recorded, not slept."""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import json
import socket
import ssl
import time

import pytest

from engine.fetch.auth import Auth, HeaderValueAuth, QueryAuth
from engine.fetch.client import MAX_REDIRECTS, HttpClient, should_strip_auth
from engine.fetch.outbound import OutboundPolicy, host_matches
from engine.fetch.page import FetchError, Gate, PageFetcher, SourceRequestSpec
from engine.spec.models import CsvSourceOptions, Retry
from tests.support.scripted_server import Reply, ScriptedServer

PATH = "/v1/orders"
SECRET = "s3cr3t-Tok3n-9f8e7d"


class FakeLimiter:
    def __init__(self, may_send: bool = True):
        self.may_send = may_send
        self.acquired = 0
        self.answered_tickets: list = []
        self.pauses: list[float] = []

    async def acquire_async(self, wait):
        if not self.may_send:
            return False, None
        self.acquired += 1
        return True, self.acquired

    def answered(self, ticket):
        self.answered_tickets.append(ticket)

    def settle(self, ticket, signal=None, heard=False, refused=False):
        """The API's quota headers on an answer (engine/fetch/ratelimit.py); not under test here."""

    def pause(self, seconds):
        self.pauses.append(seconds)


class CheckedSemaphore:
    """The job's concurrency gate with one slot. These tests run one page at a time, so a slot
    that is not free when asked for was leaked: fail at once instead of waiting forever."""

    def __init__(self):
        self._free = True

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        if self._free:
            self._free = False
            return True
        if blocking:
            raise AssertionError("semaphore slot leaked: acquired while already held")
        raise AssertionError("semaphore slot leaked: busy while no page is under way")

    def release(self) -> None:
        assert not self._free, "semaphore released more often than acquired"
        self._free = True


class Harness:
    def __init__(
        self,
        retry: Retry | None = None,
        max_body: int = 1 << 20,
        allowed_hosts: tuple = (),
        cancelled: bool = False,
        sleep_cancels: bool = False,
        may_send: bool = True,
        timeout: float = 5,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.limiter = FakeLimiter(may_send)
        self.sleeps: list[float] = []
        self.requests = 0
        self.retries = 0
        self.bytes = 0
        self.semaphore = CheckedSemaphore()

        async def sleep(seconds: float) -> bool:
            self.sleeps.append(seconds)
            return sleep_cancels

        self.gate = Gate(
            limiter=self.limiter,
            semaphore=self.semaphore,
            cancelled=lambda: cancelled,
            sleep=sleep,
            on_request=self._on_request,
            on_retry=self._on_retry,
            on_bytes=self._on_bytes,
        )
        self.client = HttpClient(max_body, OutboundPolicy(allowed_hosts), ssl_context=ssl_context)
        self.fetcher = PageFetcher(self.client, self.gate, retry or Retry(), timeout=timeout)
        _CLIENTS.append(self)

    def _on_request(self):
        self.requests += 1

    def _on_retry(self, error):
        self.retries += 1

    def _on_bytes(self, n):
        self.bytes += n

    def fetch(
        self,
        url,
        params=None,
        auth: Auth | None = None,
        fmt="json",
        records=None,
        headers=None,
        method="GET",
        body=None,
    ):
        source = SourceRequestSpec(
            method=method,
            headers=headers or {},
            body=body,
            fmt=fmt,
            records=records,
            csv=CsvSourceOptions(),
            auth=auth or Auth(),
        )
        return run(self.fetcher.fetch(source, url, params or {}))

    def close(self):
        run(self.client.close())


_CLIENTS: list[Harness] = []
_LOOP: list[asyncio.AbstractEventLoop] = []


def run(coroutine):
    """On the test's event loop (one per test, like a fetch process)."""
    return _LOOP[0].run_until_complete(coroutine)


@pytest.fixture(autouse=True)
def loop():
    _LOOP[:] = [asyncio.new_event_loop()]
    yield _LOOP[0]
    while _CLIENTS:
        _CLIENTS.pop().close()
    _LOOP[0].close()


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    """The client reads proxies from the environment: the local server must be reached directly."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def _scripted_server():
    """A loopback server for one test; closes the test's clients first, then checks that every
    request it got was scripted."""
    srv = ScriptedServer()
    yield srv
    while _CLIENTS:
        _CLIENTS.pop().close()
    srv.close()
    assert not srv.unscripted, [r.target for r in srv.unscripted]


server = pytest.fixture(_scripted_server, name="server")


@pytest.fixture
def url(server):
    return server.url(PATH)


@pytest.fixture
def refused_url():
    """A port with nothing listening: bound (so nobody else takes it) but never listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}{PATH}"
    sock.close()


def targets(server) -> list[str]:
    return [r.target for r in server.requests()]


# ------------------------------------------------------------------ success


def test_success_parses_the_page(server, url):
    body = b'{"data": [{"id": 1, "a": {"b": 2}}, {"id": 2, "a": {"b": 3}}], "meta": {"pages": 4}}'
    server.add("GET", PATH, Reply(200, {"Content-Type": "application/json"}, body))
    h = Harness()
    out = h.fetch(url, params={"page": 3, "status": "open"}, records="data")
    assert out.error is None and not out.cancelled
    assert out.attempts == 1
    assert out.parsed.records == 2
    assert out.parsed.table.to_pylist() == [{"id": 1, "a.b": 2}, {"id": 2, "a.b": 3}]
    assert out.parsed.doc["meta"] == {"pages": 4}
    assert out.response.status == 200 and out.response.body == body
    assert targets(server) == [PATH + "?page=3&status=open"]
    assert server.requests()[0].headers["User-Agent"] == "pageferry/1.0"
    assert h.requests == 1 and h.retries == 0 and h.sleeps == []
    assert h.bytes == len(body) == len(out.response.body)
    assert h.limiter.acquired == 1 and h.limiter.answered_tickets == [1]


def test_keep_alive_connection_is_reused_across_pages(server, url):
    server.add("GET", PATH, *[Reply.json([{"id": 1}]) for _ in range(3)])
    h = Harness()
    outs = [h.fetch(url, params={"page": p}) for p in (1, 2, 3)]
    assert [o.parsed.records for o in outs] == [1, 1, 1]
    assert len({r.client for r in server.requests()}) == 1


def test_closed_keep_alive_connection_is_not_reused(server, url):
    server.add("GET", PATH, Reply.json([{"id": 1}], headers={"Connection": "close"}), Reply.json([{"id": 2}]))
    h = Harness()
    outs = [h.fetch(url, params={"page": p}) for p in (1, 2)]
    assert [o.parsed.table.to_pylist() for o in outs] == [[{"id": 1}], [{"id": 2}]]
    assert [o.attempts for o in outs] == [1, 1]
    assert len({r.client for r in server.requests()}) == 2


@pytest.fixture
def tls_server(tmp_path):
    from tests.support.delivery_servers import self_signed_certificate

    cert, key = self_signed_certificate(tmp_path)
    srv = ScriptedServer(tls=(cert, key))
    yield srv, cert
    while _CLIENTS:
        _CLIENTS.pop().close()
    srv.close()


def test_https_pages_over_a_trusted_certificate_share_one_connection(tls_server):
    srv, cert = tls_server
    srv.add("GET", PATH, Reply.json([{"id": 1}]), Reply.json([{"id": 2}]))
    h = Harness(ssl_context=ssl.create_default_context(cafile=str(cert)))  # trust the test's own CA
    outs = [h.fetch(srv.url(PATH), params={"page": p}) for p in (1, 2)]
    assert [o.parsed.table.to_pylist() for o in outs] == [[{"id": 1}], [{"id": 2}]]
    assert len({r.client for r in srv.requests()}) == 1


def test_https_untrusted_certificate_fails_without_retrying(tls_server):
    srv, _ = tls_server
    h = Harness(Retry(attempts=3))
    out = h.fetch(srv.url(PATH))
    assert out.error.message == "TLS certificate not trusted" and not out.error.retryable
    assert out.attempts == 1 and h.sleeps == [] and srv.requests() == []


def test_query_params_are_encoded_and_appended(server):
    server.add("GET", PATH, Reply.json([]))
    out = Harness().fetch(server.url(PATH + "?fixed=1"), params={"q": "a b&c=d", "tag": ["x", "y"]})
    assert out.error is None
    assert targets(server) == [PATH + "?fixed=1&q=a+b%26c%3Dd&tag=x&tag=y"]


def test_headers_and_auth_are_sent(server, url):
    server.add("GET", PATH, Reply.json([]))
    Harness().fetch(url, headers={"Accept": "application/json"}, auth=HeaderValueAuth("Authorization", "Bearer tk"))
    sent = server.requests()[0].headers
    assert sent["Accept"] == "application/json" and sent["Authorization"] == "Bearer tk"


def test_post_body_is_json(server, url):
    server.add("POST", PATH, Reply.json({"items": [{"a": 1}]}))
    out = Harness().fetch(url, method="POST", body={"query": {"since": "2024-01-01"}}, records="items")
    assert out.error is None and out.parsed.records == 1
    (sent,) = server.requests()
    assert sent.method == "POST"
    assert json.loads(sent.body) == {"query": {"since": "2024-01-01"}}
    assert sent.headers["Content-Type"] == "application/json"
    assert int(sent.headers["Content-Length"]) == len(sent.body)


def test_semaphore_is_released_after_each_attempt(server, url):
    server.add("GET", PATH, Reply(500), Reply.json([]))
    h = Harness()
    out = h.fetch(url)
    assert out.attempts == 2  # the second attempt could take the slot: the first gave it back
    assert h.semaphore.acquire(blocking=False)  # not leaked


def test_gzip_encoded_body_is_decoded(server, url):
    doc = {"data": [{"id": n, "text": "x" * 50} for n in range(200)]}
    server.add("GET", PATH, Reply.json(doc, gzipped=True))
    h = Harness()
    out = h.fetch(url, records="data")
    assert out.error is None and out.parsed.records == 200
    assert out.parsed.doc == doc
    assert "gzip" in server.requests()[0].headers["Accept-Encoding"]
    assert h.bytes == len(json.dumps(doc))  # decoded bytes


def test_gzip_body_counts_decoded_size_against_max_body(server, url):
    compressed = gzip.compress(b"[" + b"0," * 500_000 + b"0]")
    assert len(compressed) < 10_000
    server.add("GET", PATH, Reply(200, {"Content-Encoding": "gzip"}, compressed))
    out = Harness(Retry(attempts=3), max_body=100_000).fetch(url)
    assert out.attempts == 1 and out.error.retryable is False
    assert "MAX_FILE_SIZE" in out.error.message


def test_link_header_is_parsed_into_links(server, url):
    link = f'<{server.url(PATH + "?page=2")}>; rel="next", <{server.url(PATH + "?page=9")}>; rel="last"'
    server.add("GET", PATH, Reply.json([], headers={"Link": link}))
    client = HttpClient(1 << 20)

    async def no_ticket():
        return None

    try:
        response = run(client.send("GET", url, {}, {}, None, 5, no_ticket, lambda ticket: None))
    finally:
        run(client.close())
    assert response.status == 200
    assert response.links["next"]["url"] == server.url(PATH + "?page=2")
    assert response.links["last"]["url"] == server.url(PATH + "?page=9")


# ------------------------------------------------------------------ retries


def test_500_then_200_is_retried(server, url):
    server.add("GET", PATH, Reply(500), Reply.json([{"a": 1}]))
    h = Harness(Retry(attempts=5, backoff=0.5, max_backoff=30))
    out = h.fetch(url)
    assert out.error is None and out.parsed.records == 1
    assert out.attempts == 2
    assert h.retries == 1  # on_retry called once
    assert len(h.sleeps) == 1 and 0.25 <= h.sleeps[0] <= 0.5  # first backoff, jittered
    assert h.limiter.pauses == []  # only a 429 pauses the job
    assert len(server.requests()) == 2 and h.requests == 2


def test_backoff_grows_between_attempts(server, url):
    server.add("GET", PATH, Reply(503))
    h = Harness(Retry(attempts=4, backoff=1, max_backoff=100))
    out = h.fetch(url)
    assert out.attempts == 4 and out.error.status == 503
    assert len(server.requests()) == 4
    assert len(h.sleeps) == 3
    for n, delay in enumerate(h.sleeps):
        assert 2**n / 2 <= delay <= 2**n


def test_404_is_not_retried(server, url):
    server.add("GET", PATH, Reply.json({"error": "no such order"}, status=404))
    h = Harness()
    out = h.fetch(url)
    assert out.parsed is None
    assert out.attempts == 1 and len(server.requests()) == 1
    assert out.error.status == 404 and out.error.retryable is False
    assert "HTTP 404" in out.error.message
    assert "no such order" in out.error.message  # a short hint from the body
    assert h.retries == 0 and h.sleeps == []


def test_429_with_retry_after_seconds_waits_and_pauses_the_job(server, url):
    server.add("GET", PATH, Reply(429, {"Retry-After": "3"}), Reply.json([]))
    h = Harness(Retry(backoff=0.01, max_backoff=0.02))
    out = h.fetch(url)
    assert out.error is None and out.attempts == 2
    assert len(server.requests()) == 2
    assert len(h.sleeps) == 1 and h.sleeps[0] >= 3
    assert len(h.limiter.pauses) == 1 and h.limiter.pauses[0] >= 3


def test_429_with_retry_after_http_date_waits_and_pauses_the_job(server, url):
    when = email.utils.formatdate(time.time() + 10, usegmt=True)
    server.add("GET", PATH, Reply(429, {"Retry-After": when}), Reply.json([]))
    h = Harness(Retry(backoff=0.01, max_backoff=0.02))
    out = h.fetch(url)
    assert out.error is None and out.attempts == 2
    assert len(h.sleeps) == 1 and 8.5 <= h.sleeps[0] <= 10.5
    assert len(h.limiter.pauses) == 1 and 8.5 <= h.limiter.pauses[0] <= 10.5


def test_retry_after_on_a_503_is_honoured_and_pauses_the_job(server, url):
    server.add("GET", PATH, Reply(503, {"Retry-After": "7"}), Reply.json([]))
    h = Harness(Retry(backoff=0.01, max_backoff=0.02))
    out = h.fetch(url)
    assert out.error is None and out.attempts == 2
    assert h.sleeps[0] >= 7
    assert h.limiter.pauses == [7.0]  # contract: a 429/503 with Retry-After pauses the whole job


def test_retry_statuses_are_configurable(server, url):
    server.add("GET", PATH, Reply(418), Reply.json([]))
    out = Harness(Retry(statuses=(418,))).fetch(url)
    assert out.error is None and out.attempts == 2
    server.replace("GET", PATH, Reply(500))
    out = Harness(Retry(statuses=(418,))).fetch(url)
    assert out.attempts == 1 and out.error.status == 500 and out.error.retryable is False
    assert len(server.requests()) == 3


def test_attempts_counts_every_try_including_the_first(server, url):
    server.add("GET", PATH, Reply(502))
    h = Harness(Retry(attempts=3))
    out = h.fetch(url)
    assert len(server.requests()) == 3
    assert out.attempts == 3
    assert out.error.status == 502 and "HTTP 502" in out.error.message
    assert h.retries == 2 and len(h.sleeps) == 2


def test_one_attempt_means_no_retry(server, url):
    server.add("GET", PATH, Reply(503))
    out = Harness(Retry(attempts=1)).fetch(url)
    assert len(server.requests()) == 1 and out.attempts == 1 and out.error.retryable is True


# ------------------------------------------------------------------ broken connections


def test_connection_refused_is_retryable_and_has_no_url(refused_url):
    h = Harness(Retry(attempts=3))
    out = h.fetch(refused_url, params={"api_key": SECRET})
    assert out.attempts == 3 and len(h.sleeps) == 2
    assert out.error.retryable is True and out.error.status is None
    assert out.error.message == "connection failed (connection refused)"
    assert SECRET not in out.error.message and "127.0.0.1" not in out.error.message
    assert PATH not in out.error.message
    assert h.limiter.answered_tickets == []  # nothing answered


def test_dropped_connection_is_retryable(server, url):
    server.add("GET", PATH, Reply(drop=True))
    out = Harness(Retry(attempts=2)).fetch(url)
    assert out.attempts == 2 and len(server.requests()) == 2
    assert out.error.retryable is True and out.error.status is None
    assert out.error.message in (
        "connection failed (remote end closed the connection)",
        "connection failed (connection aborted)",
        "connection failed (connection reset)",
    )


def test_dropped_connection_then_success(server, url):
    server.add("GET", PATH, Reply(drop=True), Reply.json([{"a": 1}]))
    out = Harness().fetch(url)
    assert out.error is None and out.attempts == 2 and out.parsed.records == 1
    assert len(server.requests()) == 2


def test_truncated_body_is_retryable(server, url):
    server.add("GET", PATH, Reply.json([{"a": 1}, {"a": 2}], truncate=100))
    out = Harness(Retry(attempts=2)).fetch(url)
    assert out.attempts == 2 and len(server.requests()) == 2
    assert out.error.retryable is True and out.error.status == 200
    assert out.error.message == "body truncated or connection dropped (incomplete read)"


def test_truncated_body_then_success(server, url):
    server.add("GET", PATH, Reply.json([{"a": 1}, {"a": 2}], truncate=100), Reply.json([{"a": 1}, {"a": 2}]))
    out = Harness().fetch(url)
    assert out.error is None and out.attempts == 2 and out.parsed.records == 2


def test_read_timeout_is_retryable(server, url):
    server.add("GET", PATH, Reply.json([], delay=3))
    h = Harness(Retry(attempts=2), timeout=0.3)
    started = time.monotonic()
    out = h.fetch(url)
    elapsed = time.monotonic() - started
    assert out.attempts == 2 and len(server.requests()) == 2
    assert out.error.retryable is True and out.error.status is None
    assert out.error.message == "no answer within 0.3 s (timeout)"
    assert elapsed < 2.5  # gave up on each attempt long before the server answered


def test_body_slower_than_the_timeout_is_retryable(server, url):
    # Every piece arrives well within the read timeout, the whole body does not.
    server.add("GET", PATH, Reply(200, {}, b" " * 10, chunked=True, repeat=20, chunk_delay=0.1))
    out = Harness(Retry(attempts=1), timeout=0.5).fetch(url)
    assert out.error.retryable is True and out.error.status == 200
    assert out.error.message == "body not complete within 0.5 s (timeout)"


# ------------------------------------------------------------------ bodies


def test_invalid_json_is_retried_then_fails(server, url):
    server.add("GET", PATH, Reply(200, {}, b"<html>gateway hiccup</html>"))
    h = Harness(Retry(attempts=3))
    out = h.fetch(url)
    assert len(server.requests()) == 3 and out.attempts == 3
    assert out.parsed is None
    assert "not valid JSON" in out.error.message
    assert out.error.retryable is True


def test_invalid_json_then_valid(server, url):
    server.add("GET", PATH, Reply(200, {}, b'{"data": [1, 2'), Reply.json({"data": [1, 2]}))
    out = Harness().fetch(url, records="data")
    assert out.error is None and out.attempts == 2 and out.parsed.records == 2


def test_records_path_error_is_not_retried(server, url):
    server.add("GET", PATH, Reply.json({"items": []}))
    out = Harness().fetch(url, records="data")
    assert out.attempts == 1 and out.error.retryable is False and "'data'" in out.error.message


# A body far larger than the socket buffers: the server can only send all of it if the client reads it.
BIG_PIECE, BIG_PIECES = b"x" * 65536, 1024  # 64 MiB


def test_body_over_max_body_with_content_length(server, url):
    server.add("GET", PATH, Reply(200, {}, BIG_PIECE, repeat=BIG_PIECES))
    out = Harness(Retry(attempts=3), max_body=1000).fetch(url)
    assert out.attempts == 1  # not retried
    assert out.error.retryable is False and out.error.status == 200
    assert "MAX_FILE_SIZE" in out.error.message and str(len(BIG_PIECE) * BIG_PIECES) in out.error.message
    (rec,) = server.requests()
    assert rec.finished.wait(5)
    assert rec.client_closed and not rec.completed  # the client hung up instead of reading on
    assert rec.bytes_sent < len(BIG_PIECE) * BIG_PIECES


def test_body_over_max_body_streamed_without_content_length(server, url):
    server.add("GET", PATH, Reply(200, {}, BIG_PIECE, repeat=BIG_PIECES, chunked=True))
    out = Harness(Retry(attempts=3), max_body=100_000).fetch(url)
    assert out.attempts == 1
    assert out.error.retryable is False and out.error.status == 200
    assert "MAX_FILE_SIZE" in out.error.message
    (rec,) = server.requests()
    assert rec.finished.wait(5)
    assert rec.client_closed and not rec.completed
    assert rec.bytes_sent < len(BIG_PIECE) * BIG_PIECES


def test_body_at_max_body_is_fine(server, url):
    body = b"[" + b"1," * 49 + b"1]"
    server.add("GET", PATH, Reply(200, {}, body))
    out = Harness(max_body=len(body)).fetch(url)
    assert out.error is None and out.parsed.records == 50


def test_chunked_body_at_max_body_is_fine(server, url):
    server.add("GET", PATH, Reply(200, {}, b"[" + b" " * 8998 + b"]", chunked=True))
    out = Harness(max_body=9000).fetch(url)
    assert out.error is None and out.parsed.records == 0 and len(out.response.body) == 9000


# ------------------------------------------------------------------ redirects


def test_redirect_followed_and_each_hop_charged(server, url):
    server.add("GET", PATH, Reply.redirect("/v2/orders?page=1"))
    server.add("GET", "/v2/orders", Reply.json([{"a": 1}]))
    h = Harness()
    out = h.fetch(url, params={"page": 1})
    assert out.error is None and out.parsed.records == 1
    assert targets(server) == [PATH + "?page=1", "/v2/orders?page=1"]
    assert h.limiter.acquired == 2  # one rate-limit slot per hop
    assert h.limiter.answered_tickets == [1, 2]
    assert h.requests == 2
    assert out.attempts == 1
    assert out.response.url == server.url("/v2/orders?page=1")


def test_303_after_post_becomes_get(server, url):
    server.add("POST", PATH, Reply.redirect("/result/1", status=303))
    server.add("GET", "/result/1", Reply.json([]))
    out = Harness().fetch(url, method="POST", body={"q": 1})
    assert out.error is None
    first, second = server.requests()
    assert [first.method, second.method] == ["POST", "GET"]
    assert json.loads(first.body) == {"q": 1}
    assert second.body == b"" and second.headers.get("Content-Length") in (None, "0")
    assert "Content-Type" not in second.headers


def test_307_after_post_keeps_method_and_body(server, url):
    server.add("POST", PATH, Reply.redirect("/v2/orders", status=307))
    server.add("POST", "/v2/orders", Reply.json([]))
    out = Harness().fetch(url, method="POST", body={"q": 1})
    assert out.error is None
    assert [(r.method, json.loads(r.body)) for r in server.requests()] == [("POST", {"q": 1})] * 2


def test_redirect_loop_fails(server, url):
    server.add("GET", PATH, Reply.redirect(url))
    h = Harness(Retry(attempts=3))
    out = h.fetch(url)
    assert MAX_REDIRECTS == 10
    assert out.error.message == "more than 10 redirects"
    assert out.error.retryable is False and out.attempts == 1
    assert len(server.requests()) == MAX_REDIRECTS + 1
    assert h.limiter.acquired == MAX_REDIRECTS + 1


def test_redirect_outside_allowed_hosts_is_refused(server, url):
    server.add("GET", PATH, Reply.redirect(server.url("/steal", host="127.0.0.2")))
    server.add("GET", "/steal", Reply.json([{"stolen": True}]))
    h = Harness(allowed_hosts=("127.0.0.1",))
    out = h.fetch(url)
    assert out.parsed is None
    assert out.error.retryable is False and out.attempts == 1
    assert "'127.0.0.2'" in out.error.message and "ALLOWED_SOURCE_HOSTS" in out.error.message
    assert targets(server) == [PATH]  # the other host was never asked
    assert h.limiter.acquired == 1


def test_redirect_within_allowed_hosts_is_followed(server, url):
    server.add("GET", PATH, Reply.redirect(server.url("/x", host="localhost"), status=301))
    server.add("GET", "/x", Reply.json([]))
    out = Harness(allowed_hosts=("127.0.0.1", "localhost")).fetch(url)
    assert out.error is None
    assert [r.host for r in server.requests()] == ["127.0.0.1", "localhost"]


@pytest.mark.parametrize("suffix", ["*.example.com", ".example.com"])  # the older form is still read
def test_allowed_hosts_suffix_entries_match_subdomains_only(suffix):
    allowed = ("api.example.com", suffix)
    assert host_matches("cdn.example.com", allowed)
    assert host_matches("API.example.com", allowed)
    assert not host_matches("example.com.evil.org", allowed)
    assert not host_matches("evilexample.com", allowed)
    assert host_matches("anything.org", ())


def test_start_url_outside_allowed_hosts_is_refused(server, url):
    out = Harness(allowed_hosts=("localhost",)).fetch(url)
    assert "ALLOWED_SOURCE_HOSTS" in out.error.message and out.error.retryable is False
    assert server.requests() == []


def test_authorization_dropped_on_cross_host_redirect(server, url):
    server.add("GET", PATH, Reply.redirect("/v1/moved"))
    server.add("GET", "/v1/moved", Reply.redirect(server.url("/v1/other", host="localhost"), status=307))
    server.add("GET", "/v1/other", Reply.json([]))
    out = Harness().fetch(url, auth=HeaderValueAuth("Authorization", "Bearer t0ken"), headers={"Accept": "text/csv"})
    assert out.error is None
    recs = server.requests()
    assert [r.host for r in recs] == ["127.0.0.1", "127.0.0.1", "localhost"]
    sent = [r.headers for r in recs]
    assert sent[0]["Authorization"] == "Bearer t0ken"
    assert sent[1]["Authorization"] == "Bearer t0ken"  # same host: kept
    assert "Authorization" not in sent[2]  # other host: dropped
    assert sent[2]["Accept"] == "text/csv"  # harmless headers still apply


def test_custom_credentials_and_cookies_dropped_on_cross_host_redirect(server, url):
    server.add("GET", PATH, Reply.redirect(server.url("/v1/other", host="localhost")))
    server.add("GET", "/v1/other", Reply.json([]))
    out = Harness().fetch(
        url,
        auth=HeaderValueAuth("X-Api-Key", "k3y-secret"),
        headers={"Cookie": "session=abc", "X-Tenant": "t1", "Accept": "application/json"},
    )
    assert out.error is None
    first, second = (r.headers for r in server.requests())
    assert first["X-Api-Key"] == "k3y-secret" and first["Cookie"] == "session=abc" and first["X-Tenant"] == "t1"
    assert not any(name in second for name in ("X-Api-Key", "Cookie", "X-Tenant"))
    assert second["Accept"] == "application/json"


def test_custom_credentials_and_cookies_kept_on_same_host_redirect(server, url):
    server.add("GET", PATH, Reply.redirect("/v1/moved", status=308))
    server.add("GET", "/v1/moved", Reply.json([]))
    out = Harness().fetch(
        url,
        auth=HeaderValueAuth("X-Api-Key", "k3y-secret"),
        headers={"Cookie": "session=abc", "X-Tenant": "t1", "Accept": "application/json"},
    )
    assert out.error is None
    for sent in (r.headers for r in server.requests()):
        assert (sent["X-Api-Key"], sent["Cookie"], sent["X-Tenant"], sent["Accept"]) == (
            "k3y-secret",
            "session=abc",
            "t1",
            "application/json",
        )


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


def test_refreshable_auth_refreshed_once_on_401(server, url):
    server.add("GET", PATH, Reply(401), Reply.json([{"a": 1}]))
    auth = RefreshingAuth()
    h = Harness()
    out = h.fetch(url, auth=auth)
    assert out.error is None and out.attempts == 2
    assert auth.refreshed == 1
    assert [r.headers["Authorization"] for r in server.requests()] == ["Bearer token-0", "Bearer token-1"]


def test_401_without_refreshable_auth_is_not_retried(server, url):
    server.add("GET", PATH, Reply(401))
    out = Harness().fetch(url, auth=HeaderValueAuth("Authorization", "Bearer bad"))
    assert out.attempts == 1 and out.error.status == 401 and out.error.retryable is False
    assert len(server.requests()) == 1


# ------------------------------------------------------------------ cancellation


def test_cancelled_before_start_sends_nothing(server, url):
    server.add("GET", PATH, Reply.json([]))
    h = Harness(cancelled=True)
    out = h.fetch(url)
    assert out.cancelled is True
    assert out.attempts == 0 and out.parsed is None
    assert server.requests() == [] and h.limiter.acquired == 0


def test_cancelled_while_waiting_for_the_limiter_sends_nothing(server, url):
    server.add("GET", PATH, Reply.json([]))
    h = Harness(may_send=False)
    out = h.fetch(url)
    assert out.cancelled is True and out.parsed is None
    assert server.requests() == []
    assert h.semaphore.acquire(blocking=False)  # the slot was given back


def test_cancelled_during_backoff(server, url):
    server.add("GET", PATH, Reply(503))
    h = Harness(Retry(attempts=5), sleep_cancels=True)
    out = h.fetch(url)
    assert out.cancelled is True
    assert len(server.requests()) == 1 and len(h.sleeps) == 1


# ------------------------------------------------------------------ no URL in any error


def _case_refused(server, refused):
    return Harness(Retry(attempts=1)), refused


def _case_drop(server, refused):
    server.add("GET", PATH, Reply(drop=True))
    return Harness(Retry(attempts=1)), server.url(PATH)


def _case_truncated(server, refused):
    server.add("GET", PATH, Reply.json([1, 2, 3], truncate=50))
    return Harness(Retry(attempts=1)), server.url(PATH)


def _case_timeout(server, refused):
    server.add("GET", PATH, Reply.json([], delay=2))
    return Harness(Retry(attempts=1), timeout=0.2), server.url(PATH)


def _case_invalid_json(server, refused):
    server.add("GET", PATH, Reply(200, {}, f"<html>{SECRET}</html>".encode()))
    return Harness(Retry(attempts=1)), server.url(PATH)


def _case_bad_gzip(server, refused):
    server.add("GET", PATH, Reply(200, {"Content-Encoding": "gzip"}, b"definitely not gzip"))
    return Harness(Retry(attempts=1)), server.url(PATH)


def _case_too_big(server, refused):
    server.add("GET", PATH, Reply(200, {}, b"x" * 5000))
    return Harness(Retry(attempts=1), max_body=1000), server.url(PATH)


def _case_too_big_chunked(server, refused):
    server.add("GET", PATH, Reply(200, {}, b"x" * 5000, chunked=True, repeat=2))
    return Harness(Retry(attempts=1), max_body=1000), server.url(PATH)


def _case_redirect_loop(server, refused):
    server.add("GET", PATH, Reply.redirect(server.url(PATH + f"?api_key={SECRET}")))
    return Harness(Retry(attempts=1)), server.url(PATH)


def _case_host_refused(server, refused):
    server.add("GET", PATH, Reply.redirect(server.url(f"/steal?api_key={SECRET}", host="127.0.0.2")))
    return Harness(Retry(attempts=1), allowed_hosts=("127.0.0.1",)), server.url(PATH)


def _case_http_500(server, refused):
    server.add("GET", PATH, Reply(500, {}, b"internal error"))
    return Harness(Retry(attempts=1)), server.url(PATH)


LEAK_CASES = {
    f.__name__[len("_case_") :]: f
    for f in (
        _case_refused,
        _case_drop,
        _case_truncated,
        _case_timeout,
        _case_invalid_json,
        _case_bad_gzip,
        _case_too_big,
        _case_too_big_chunked,
        _case_redirect_loop,
        _case_host_refused,
        _case_http_500,
    )
}


@pytest.mark.parametrize("case", sorted(LEAK_CASES))
def test_error_messages_never_contain_the_url(case, server, refused_url):
    h, url = LEAK_CASES[case](server, refused_url)
    out = h.fetch(url, params={"api_key": SECRET, "page": 7})
    assert out.error is not None and out.parsed is None
    message = out.error.message
    port = url.split(":")[2].split("/")[0]
    for fragment in (SECRET, "api_key", PATH, "page=", "http://", "127.0.0.1", port):
        assert fragment not in message, (case, message)
    assert str(out.error) == message


# ------------------------------------------------------------------ FetchError


def test_fetch_error_fields():
    err = FetchError("HTTP 503", retryable=True, status=503, retry_after=2.0)
    assert (err.message, err.retryable, err.status, err.retry_after) == ("HTTP 503", True, 503, 2.0)
    assert str(err) == "HTTP 503"


# ------------------------------------------------------------------ credentials stay with their origin


other_server = pytest.fixture(_scripted_server, name="other_server")


def _credentialed_fetch(h: Harness, first_url: str):
    return h.fetch(
        first_url,
        params={"page": 1},
        auth=QueryAuth("api_key", SECRET),
        headers={"Authorization": "Bearer t0ken", "X-Api-Key": "k3y-secret", "Accept": "text/csv"},
    )


@pytest.mark.parametrize("change", ["host", "port", "scheme https to http"])
def test_redirect_to_another_origin_drops_every_credential(change, server, other_server, tls_server):
    tls, cert = tls_server
    first, target = {
        "host": (server, (server, "localhost")),
        "port": (server, (other_server, None)),
        "scheme https to http": (tls, (server, None)),
    }[change]
    landing, host = target
    # The Location even echoes the query credential: it is taken out.
    first.add("GET", PATH, Reply.redirect(landing.url(f"/v1/other?page=2&api_key={SECRET}", host=host)))
    landing.add("GET", "/v1/other", Reply.json([{"id": 1}]))
    h = Harness(ssl_context=ssl.create_default_context(cafile=str(cert)))
    out = _credentialed_fetch(h, first.url(PATH))
    assert out.error is None and out.parsed.records == 1
    sent_first = first.requests(PATH)[0]
    assert sent_first.headers["Authorization"] == "Bearer t0ken" and sent_first.headers["X-Api-Key"] == "k3y-secret"
    assert f"api_key={SECRET}" in sent_first.query
    (second,) = landing.requests("/v1/other")
    assert "Authorization" not in second.headers and "X-Api-Key" not in second.headers
    assert second.query == "page=2" and SECRET not in second.target
    assert second.headers["Accept"] == "text/csv"  # harmless headers still apply


def test_same_origin_redirect_keeps_every_credential(server):
    server.add("GET", PATH, Reply.redirect("/v1/other?page=2", status=307))
    server.add("GET", "/v1/other", Reply.json([{"id": 1}]))
    out = _credentialed_fetch(Harness(), server.url(PATH))
    assert out.error is None
    (second,) = server.requests("/v1/other")
    assert second.headers["Authorization"] == "Bearer t0ken" and second.headers["X-Api-Key"] == "k3y-secret"
    assert second.query == f"page=2&api_key={SECRET}"


def test_credentials_stay_dropped_after_leaving_the_origin(server, other_server):
    server.add("GET", PATH, Reply.redirect(other_server.url("/bounce")))
    other_server.add("GET", "/bounce", Reply.redirect(server.url("/v1/back")))
    server.add("GET", "/v1/back", Reply.json([]))
    out = _credentialed_fetch(Harness(), server.url(PATH))
    assert out.error is None
    (back,) = server.requests("/v1/back")
    assert "Authorization" not in back.headers and SECRET not in back.target


def test_http_to_https_upgrade_on_default_ports_keeps_credentials():
    assert not should_strip_auth("http://api.example.com/a", "https://api.example.com/b")
    assert not should_strip_auth("http://api.example.com:80/a", "https://api.example.com:443/b")


# ------------------------------------------------------------------ URLs refused before any connection


@pytest.fixture
def server_2():
    """A server on 127.0.0.2: what a confused parser would connect to."""
    srv = ScriptedServer(host="127.0.0.2")
    srv.add("GET", "/x", Reply.json([{"id": 1}]))
    yield srv
    while _CLIENTS:
        _CLIENTS.pop().close()
    srv.close()


@pytest.mark.parametrize(
    "shape", ["backslash before @", "userinfo", "userinfo without password", "backslash in the path"]
)
def test_confusing_urls_are_refused_without_connecting(shape, server_2):
    port = server_2.port
    bad = {
        "backslash before @": f"http://127.0.0.2:{port}\\@localhost:{port}/x",
        "userinfo": f"http://user:pw@127.0.0.2:{port}/x",
        "userinfo without password": f"http://user@127.0.0.2:{port}/x",
        "backslash in the path": f"http://127.0.0.2:{port}/x\\..\\y",
    }[shape]
    h = Harness(Retry(attempts=3))
    out = h.fetch(bad)
    assert out.error.message == "invalid URL" and out.error.retryable is False
    assert out.attempts == 1 and h.sleeps == []
    assert server_2.requests() == [] and h.limiter.acquired == 0


def test_redirect_to_a_confusing_url_is_refused(server, server_2):
    server.add("GET", PATH, Reply.redirect(f"http://127.0.0.2:{server_2.port}\\@localhost:{server.port}/x"))
    out = Harness(Retry(attempts=2)).fetch(server.url(PATH))
    assert out.error.message == "invalid URL" and out.attempts == 1
    assert server_2.requests() == [] and targets(server) == [PATH]


def test_resolved_addresses_pass_the_guard_hook(server):
    from engine.fetch.client import OutboundGuard

    class NoLoopback(OutboundGuard):
        def check_address(self, host, address):
            self.seen = (host, address)
            if address.startswith("127."):
                raise FetchError("address refused", retryable=False)

    guard = NoLoopback()
    h = Harness()
    h.client.guard = guard
    out = h.fetch(server.url(PATH, host="localhost"))
    assert out.error.message == "address refused" and server.requests() == []
    assert guard.seen[0] == "localhost"
    out = h.fetch(server.url(PATH))  # an address literal is checked without resolving
    assert out.error.message == "address refused" and server.requests() == []


# ------------------------------------------------------------------ proxies, content encodings


def test_proxy_from_the_environment_gets_the_absolute_form(monkeypatch, server):
    proxy = ScriptedServer()  # records what it is asked for, and answers itself
    try:
        proxy.add("GET", PATH, Reply.json([{"id": 7}]))
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url())
        out = Harness().fetch("http://api.example.invalid/v1/orders", params={"page": 2})
        assert out.error is None and out.parsed.table.to_pylist() == [{"id": 7}]
        (rec,) = proxy.requests()
        assert rec.target == "http://api.example.invalid/v1/orders?page=2"
        assert rec.headers["Host"] == "api.example.invalid"

        monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # bypassed: straight to the server
        server.add("GET", PATH, Reply.json([{"id": 8}]))
        out = Harness().fetch(server.url(PATH))
        assert out.error is None and targets(server) == [PATH] and len(proxy.requests()) == 1
    finally:
        proxy.close()


def _zstd_compress(data: bytes) -> bytes:
    try:
        from backports import zstd
    except ImportError:
        from compression import zstd
    return zstd.compress(data)


@pytest.mark.parametrize("encoding", ["br", "zstd"])
def test_brotli_and_zstd_bodies_are_decoded(encoding, server, url):
    import brotli

    doc = {"data": [{"id": n, "text": "y" * 40} for n in range(300)]}
    raw = json.dumps(doc).encode()
    body = brotli.compress(raw) if encoding == "br" else _zstd_compress(raw)
    server.add("GET", PATH, Reply(200, {"Content-Type": "application/json", "Content-Encoding": encoding}, body))
    h = Harness()
    out = h.fetch(url, records="data")
    assert out.error is None and out.parsed.table.to_pylist() == doc["data"]
    assert encoding in server.requests()[0].headers["Accept-Encoding"]
    assert h.bytes == len(raw)


@pytest.mark.parametrize("header", ["Host", "Content-Length", "Transfer-Encoding", "Connection"])
def test_spec_headers_cannot_override_framing(header, server, url):
    server.add("GET", PATH, Reply.json([]))
    value = {"Host": "evil.example", "Content-Length": "5", "Transfer-Encoding": "chunked", "Connection": "close"}[
        header
    ]
    out = Harness().fetch(url, headers={header: value})
    assert out.error is None
    assert server.requests()[0].headers.get(header) != value


# ------------------------------------------------------------------ the OAuth2 token request


def _oauth2(token_url: str, client: HttpClient):
    import threading

    from engine.fetch.auth import DictTokenStore, OAuth2ClientCredentials
    from engine.spec.models import OAuth2Auth

    spec = OAuth2Auth(type="oauth2", token_url=token_url, client_id="cid", client_secret="Cl1ent-S3cret")
    return OAuth2ClientCredentials(spec, DictTokenStore({}, threading.Lock()), "oauth2:test:0", 5, client)


def test_oauth2_token_through_the_client(server, url):
    server.add("POST", "/oauth/token", Reply.json({"access_token": "tok-1", "expires_in": 3600}))
    server.add("GET", PATH, Reply.json([{"id": 1}]))
    h = Harness()
    out = h.fetch(url, auth=_oauth2(server.url("/oauth/token"), h.client))
    assert out.error is None and out.attempts == 1
    token_request, page = server.requests()
    assert token_request.headers["Authorization"].startswith("Basic ")
    assert token_request.body == b"grant_type=client_credentials"
    assert page.headers["Authorization"] == "Bearer tok-1"


def test_oauth2_token_endpoint_redirect_is_not_followed(server, other_server, url):
    server.add("POST", "/oauth/token", Reply.redirect(other_server.url("/steal"), status=307))
    other_server.add("POST", "/steal", Reply.json({"access_token": "stolen"}))
    h = Harness(Retry(attempts=3))
    out = h.fetch(url, auth=_oauth2(server.url("/oauth/token?tenant=" + SECRET), h.client))
    assert out.parsed is None and out.attempts == 0
    message = out.error.message
    assert "token endpoint" in message and "/oauth/token" in message and "307" in message
    assert SECRET not in message and not out.error.retryable
    assert other_server.requests() == []
    assert [r.path for r in server.requests()] == ["/oauth/token"]


def test_oauth2_token_endpoint_outside_allowed_hosts_is_refused(server, url):
    h = Harness(allowed_hosts=("127.0.0.1",))
    out = h.fetch(url, auth=_oauth2(server.url("/oauth/token", host="127.0.0.2"), h.client))
    assert "ALLOWED_SOURCE_HOSTS" in out.error.message and "token endpoint" in out.error.message
    assert server.requests() == []
