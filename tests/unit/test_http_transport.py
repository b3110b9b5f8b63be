"""engine/http.py's own request path (plain pooled sockets, http.client's response parser with
a lean header parser) must put the same bytes on the wire and read the same headers as the
stdlib / urllib3 would; anything unusual must go to urllib3 unchanged."""
from __future__ import annotations

import http.client
import io
import random
from urllib.parse import urlencode

import pytest

from engine.fetch.transport import (HttpClient, _parse_headers, _request_head, encode_query, host_allowed,  # noqa: F401
                         with_query)


class _Capture:
    """A socket stand-in that records what http.client sends."""

    def __init__(self):
        self.sent = b""

    def sendall(self, data):
        self.sent += bytes(data)

    def makefile(self, *a, **k):  # never read in these tests
        raise AssertionError("no response expected")

    def close(self):
        pass


def _stdlib_request(method, target, host, port, headers, body):
    conn = http.client.HTTPConnection(host, port)
    conn.sock = _Capture()
    conn.request(method, target, body=body, headers=headers)
    return conn.sock.sent


@pytest.mark.parametrize("method,headers,body", [
    ("GET", {"User-Agent": "pageferry/1.0", "Accept-Encoding": "gzip, deflate"}, None),
    ("GET", {"User-Agent": "x", "Accept-Encoding": "gzip", "Authorization": "Bearer t0k"}, None),
    ("POST", {"User-Agent": "x", "Accept-Encoding": "gzip", "Content-Type": "application/json"}, b'{"a":1}'),
    ("POST", {"User-Agent": "x", "Accept-Encoding": "gzip"}, None),
    ("PUT", {"Accept-Encoding": "gzip", "Host": "api.example.com", "X-Num": 5}, b"[]"),
    ("GET", {"X-Only": "v"}, None),
])
@pytest.mark.parametrize("port", [80, 8080])
def test_request_bytes_are_what_http_client_sends(method, headers, body, port):
    host = "api.example.com" if port == 80 else f"api.example.com:{port}"
    ours = _request_head(method, "/v1/items?page=2&n=10", host, headers, body) + (body or b"")
    assert ours == _stdlib_request(method, "/v1/items?page=2&n=10", "api.example.com", port, headers, body)


@pytest.mark.parametrize("headers", [{"X-Evil": "a\r\nInjected: 1"}, {"X\nY": "v"}, {"X-Uni": "\u2603"}])
def test_headers_http_client_refuses_are_refused(headers):
    with pytest.raises((ValueError, UnicodeError)):
        _request_head("GET", "/", "h", headers, None)


@pytest.mark.parametrize("block", [
    b"Content-Type: application/json\r\nContent-Length: 12\r\n\r\n",
    b"Link: <http://h/a?page=2>; rel=\"next\"\r\nlink: <http://h/a?page=9>; rel=\"last\"\r\n\r\n",
    b"X-Spaces:    padded value  \r\nX-Empty:\r\n\r\n",
    b"Folded: first\r\n  second line\r\nOther: 1\r\n\r\n",
    b"Not a header line\r\nContent-Length: 3\r\n\r\n",
    b"\r\n",
])
def test_header_parser_reads_what_the_stdlib_reads(block):
    ours = _parse_headers(io.BytesIO(block))
    theirs = http.client.parse_headers(io.BytesIO(block))
    assert ours.items() == theirs.items()
    for name in ("content-type", "Content-Length", "LINK", "x-spaces", "x-empty", "folded", "other", "absent"):
        assert ours.get(name) == theirs.get(name)
        assert ours.get_all(name) == theirs.get_all(name)


def test_query_encoding_matches_urlencode():
    rng = random.Random(7)
    alphabet = "aZ09_.-~ &=+%/?é#"
    for _ in range(2000):
        params = {}
        for _ in range(rng.randint(1, 4)):
            key = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 5)))
            value = rng.choice([rng.randint(-5, 10 ** 6), "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))),
                                True, None, 1.5, ["a", "b"]])
            params[key] = value
        assert encode_query(params) == urlencode(params, doseq=True), params
    assert with_query("http://h/p?x=1", {"page": 2}) == "http://h/p?x=1&page=2"


@pytest.mark.parametrize("url,direct", [
    ("http://127.0.0.1:8000/items/page?page=1&n=5", True),
    ("https://API.example.com/v1/items", True),
    ("http://h/items/page?q=%2F", True),
    ("http://h/items page?x=1", False),          # urllib3 percent-encodes the space
    ("http://h/items?q=%2f", False),             # ... and upper-cases escapes
    ("http://h/a/../b", False),                  # ... and removes dot segments
    ("http://user:pw@h/a", False),               # credentials in the URL
    ("http://h/a#frag?x=1", False),              # a fragment
    ("http://bücher.example/a", False),          # IDNA host
    ("ftp://h/a", False),
])
def test_only_urls_urllib3_would_send_unchanged_take_the_direct_path(url, direct, monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "no_proxy",
                 "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    client = HttpClient(1 << 20)
    assert (client._direct(url) is not None) is direct
    client.close()


def test_direct_path_host_header_and_target():
    client = HttpClient(1 << 20)
    (key, target, host) = client._direct("http://127.0.0.1:8000/items/page?page=1")
    assert key == ("http", "127.0.0.1", 8000) and target == "/items/page?page=1" and host == "127.0.0.1:8000"
    (key, target, host) = client._direct("https://Example.com/?a=1")
    assert key == ("https", "example.com", 443) and target == "/?a=1" and host == "example.com"
    (key, target, host) = client._direct("http://[::1]:81/x")
    assert key == ("http", "::1", 81) and host == "[::1]:81"
    client.close()


def test_a_proxy_from_the_environment_takes_the_urllib3_path(monkeypatch):
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    client = HttpClient(1 << 20)
    assert client._direct("http://api.example.com/items") is None
    client.close()
