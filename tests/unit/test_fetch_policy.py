"""engine/fetch/client.py policy pieces that need no server: the origin rule for credentials on
redirects, the outbound URL check, and error wording by exception type."""

from __future__ import annotations

import errno
import pickle

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.http_exceptions import ContentEncodingError

from engine.fetch.client import OutboundGuard, as_fetch_error, should_strip_auth
from engine.fetch.outbound import OutboundPolicy
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
    guard = OutboundGuard(OutboundPolicy(("api.example.com", "*.example.org")))
    assert guard.parse("https://API.example.com/x").raw_host == "api.example.com"
    guard.parse("https://cdn.example.org/x")
    for url, host in (("https://example.org/x", "example.org"), ("https://evil.com/x", "evil.com")):
        with pytest.raises(FetchError) as info:
            guard.parse(url)
        assert info.value.message == f"host {host!r} is not in ALLOWED_SOURCE_HOSTS"


def test_guard_checks_redirect_targets():
    guard = OutboundGuard(OutboundPolicy(("api.example.com",)))
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


def test_outbound_policy_entries_names_suffixes_addresses_and_ranges():
    from engine.fetch.outbound import OutboundRefused

    policy = OutboundPolicy(
        ("api.example.com", "*.example.org", ".old.example", "10.0.0.0/8", "[fd00::1]", "127.0.0.2")
    )
    for host in ("api.example.com", "cdn.example.org", "a.old.example"):
        policy.check_host(host)
        policy.check_address(host, "127.0.0.1")  # a listed name: whatever it resolves to
    policy.check_host("unlisted.example.net")  # may resolve into a listed range: decided when it connects
    policy.check_address("unlisted.example.net", "10.1.2.3")
    policy.check_address("fd00::1", "fd00::1")
    policy.check_address("::ffff:127.0.0.2", "::ffff:127.0.0.2")  # the IPv4-mapped form of a listed address
    for host, address in (
        ("unlisted.example.net", "127.0.0.1"),
        ("example.org", "192.0.2.1"),
        ("11.0.0.1", "11.0.0.1"),
    ):
        with pytest.raises(OutboundRefused):
            policy.check_address(host, address)
    names_only = OutboundPolicy(("api.example.com",))
    with pytest.raises(OutboundRefused, match="is not in ALLOWED_SOURCE_HOSTS"):
        names_only.check_host("evil.example.com")
    assert pickle.loads(pickle.dumps(policy)) == policy  # travels to the pool processes


def test_public_only_policy_refuses_internal_addresses_and_allows_public_ones():
    from engine.fetch.outbound import OutboundRefused

    policy = OutboundPolicy(public_only=True)
    for address in (
        "127.0.0.2",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "::ffff:10.0.0.1",
        "::127.0.0.1",
        "2002:7f00:1::1",
    ):
        with pytest.raises(OutboundRefused):
            policy.check_address("h.example", address)
    for address in ("93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"):
        policy.check_address("h.example", address)
