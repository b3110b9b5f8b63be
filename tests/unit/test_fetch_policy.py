"""engine/fetch/client.py policy pieces that need no server: the origin rule for credentials on
redirects, the outbound URL check, and error wording by exception type."""

from __future__ import annotations

import errno

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.http_exceptions import ContentEncodingError

from engine.fetch.client import OutboundGuard, as_fetch_error, should_strip_auth
from engine.fetch.retry import FetchError


@pytest.mark.parametrize(
    "old, new, strip",
    [
        ("https://api.example.com/a", "https://api.example.com/b?x=1", False),  # same origin
        ("https://api.example.com/a", "https://API.example.com:443/b", False),  # same, spelled otherwise
        ("http://api.example.com/a", "https://api.example.com/b", False),  # upgrade on default ports
        ("http://api.example.com:80/a", "https://api.example.com/b", False),
        ("https://api.example.com/a", "http://api.example.com/b", True),  # downgrade
        ("http://api.example.com:8080/a", "https://api.example.com/b", True),  # upgrade, not default port
        ("http://api.example.com/a", "https://api.example.com:8443/b", True),
        ("https://api.example.com/a", "https://api.example.com:8443/b", True),  # port
        ("https://api.example.com/a", "https://cdn.example.com/b", True),  # host
        ("https://api.example.com/a", "https://api.example.com.evil.org/b", True),
    ],
)
def test_should_strip_auth(old, new, strip):
    assert should_strip_auth(old, new) is strip


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.2:8080\\@localhost:8080/x",
        "http://h.example/x\\y",
        "http://user@h.example/x",
        "http://user:pw@h.example/x",
        "ftp://h.example/x",
        "http:///x",
        "http://exämple.com/x",
        "http://h.example:99999/x",
        "not a url",
    ],
)
def test_guard_refuses_confusing_urls(url):
    with pytest.raises(FetchError) as info:
        OutboundGuard().parse(url)
    assert info.value.message == "invalid URL" and not info.value.retryable


def test_guard_applies_the_allowlist_to_the_parsed_host():
    guard = OutboundGuard(("api.example.com", ".example.org"))
    assert guard.parse("https://API.example.com/x").raw_host == "api.example.com"
    guard.parse("https://cdn.example.org/x")
    for url, host in (("https://example.org/x", "example.org"), ("https://evil.com/x", "evil.com")):
        with pytest.raises(FetchError) as info:
            guard.parse(url)
        assert info.value.message == f"host {host!r} is not in ALLOWED_SOURCE_HOSTS"


def test_guard_checks_redirect_targets():
    guard = OutboundGuard(("api.example.com",))
    base = guard.parse("https://api.example.com/v1/a")
    assert str(guard.follow(base, "/v2/b?c=1")) == "https://api.example.com/v2/b?c=1"
    with pytest.raises(FetchError):
        guard.follow(base, "https://other.example.com/")
    with pytest.raises(FetchError):
        guard.follow(base, "https://api.example.com\\@other.example.com/")


_KEY = ConnectionKey("h.example", 443, True, True, None, None, None)


@pytest.mark.parametrize(
    "exc, message, retryable",
    [
        (
            aiohttp.ClientConnectorError(_KEY, ConnectionRefusedError(errno.ECONNREFUSED, "refused")),
            "connection failed (connection refused)",
            True,
        ),
        (
            aiohttp.ClientConnectorError(_KEY, ConnectionResetError(errno.ECONNRESET, "reset")),
            "connection failed (connection reset)",
            True,
        ),
        (
            aiohttp.ClientConnectorDNSError(_KEY, OSError(-2, "Name or service not known")),
            "connection failed (unknown host)",
            True,
        ),
        (aiohttp.ServerDisconnectedError(), "connection failed (remote end closed the connection)", True),
        (TimeoutError(), "no answer within 5 s (timeout)", True),
        (
            aiohttp.ServerTimeoutError("Timeout on reading data from socket http://h.example/?key=s3cr3t"),
            "no answer within 5 s (timeout)",
            True,
        ),
        (aiohttp.InvalidURL("http://h.example/?key=s3cr3t"), "invalid URL", False),
        (aiohttp.ClientSSLError(_KEY, OSError("bad handshake")), "TLS error", True),
    ],
)
def test_errors_are_worded_by_type(exc, message, retryable):
    error = as_fetch_error(exc, 5)
    assert (error.message, error.retryable, error.status) == (message, retryable, None)


def test_body_errors_are_worded_by_their_cause():
    truncated = aiohttp.ClientPayloadError("Response payload is not completed")
    assert as_fetch_error(truncated, 5, 200).message == "body truncated or connection dropped (incomplete read)"
    bad_encoding = aiohttp.ClientPayloadError("payload error")
    bad_encoding.__cause__ = ContentEncodingError("Can not decode content-encoding: gzip")
    error = as_fetch_error(bad_encoding, 5, 200)
    assert error.message == "body truncated or connection dropped (invalid content encoding)"
    assert error.status == 200 and error.retryable
