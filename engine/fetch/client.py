"""pageferry's HTTP policy over one aiohttp session per fetch process.

aiohttp speaks HTTP (keep-alive pool, decompression, proxies, TLS); this layer decides what is
sent where: every hop's URL checked, redirects followed by hand (each hop takes its own rate
ticket), credentials kept to their origin, bodies bounded, and errors worded by exception
type - never library text, which may quote a URL with a secret in it.
"""

from __future__ import annotations

import asyncio
import errno
import re
import ssl
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.compression_utils import HAS_BROTLI, HAS_ZSTD
from aiohttp.http_exceptions import ContentEncodingError, DecompressSizeError, TransferEncodingError
from aiohttp.resolver import DefaultResolver
from multidict import CIMultiDictProxy
from yarl import URL

from engine.fetch.outbound import OutboundPolicy, OutboundRefused, is_address
from engine.fetch.retry import FetchError

__all__ = ["MAX_REDIRECTS", "FetchError", "HttpClient", "OutboundGuard", "Response", "should_strip_auth"]

MAX_REDIRECTS = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
SAFE_CROSS_ORIGIN_HEADERS = frozenset({"accept", "accept-encoding", "accept-language", "user-agent", "content-type"})
NOT_FROM_SPEC = frozenset({"host", "content-length", "transfer-encoding", "connection"})  # aiohttp frames
USER_AGENT = "pageferry/1.0"
ACCEPT_ENCODING = ", ".join(["gzip", "deflate"] + ["br"] * HAS_BROTLI + ["zstd"] * HAS_ZSTD)
CHUNK = 1 << 16

Ticket = Any


@dataclass(slots=True)
class Response:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: str
    links: dict[str, dict[str, str]]  # RFC 8288 Link header by rel: {"next": {"url": ..., "rel": ...}}


def should_strip_auth(old_url: str | URL, new_url: str | URL) -> bool:
    """Whether a redirect from `old_url` to `new_url` must drop credentials: it leaves the
    origin (scheme, host, port). Like `requests.Session.should_strip_auth`, the one exception
    is the upgrade http → https on the default ports."""
    old = old_url if isinstance(old_url, URL) else URL(old_url)
    new = new_url if isinstance(new_url, URL) else URL(new_url)
    if old.raw_host != new.raw_host:
        return True
    if (old.scheme, old.port, new.scheme, new.port) == ("http", 80, "https", 443):
        return False
    return old.scheme != new.scheme or old.port != new.port


def invalid_url() -> FetchError:
    return FetchError("invalid URL", retryable=False)


class OutboundGuard:
    """What may be asked for, by one `OutboundPolicy` (engine/fetch/outbound.py). `check_url`:
    every URL and hop, parsed once by yarl (aiohttp's own parser), so the host checked is the
    host connected to; an address literal is checked there. `check_address`: every address a
    host name resolves to (see `CheckedResolver`), on every connection - a name that resolves
    somewhere else next time (DNS rebinding) is caught when it connects. The environment's
    proxies are the operator's: their own addresses are not refused."""

    def __init__(self, policy: OutboundPolicy | None = None, proxy_hosts: frozenset[str] = frozenset()):
        self.policy = policy or OutboundPolicy()
        self.proxy_hosts = frozenset(h.lower() for h in proxy_hosts)
        self._passed: set[str] = set()  # hosts already checked

    def parse(self, raw: str) -> URL:
        if "\\" in raw:
            raise invalid_url()
        try:
            url = URL(raw)
        except (ValueError, TypeError):
            raise invalid_url() from None
        self.check_url(url)
        return url

    def follow(self, base: URL, location: str) -> URL:
        """The target of a redirect's `Location`, checked."""
        if "\\" in location:
            raise invalid_url()
        try:
            url = base.join(URL(location))
        except (ValueError, TypeError):
            raise invalid_url() from None
        self.check_url(url)
        return url

    def check_url(self, url: URL) -> None:
        if url.scheme not in ("http", "https") or url.raw_user is not None or url.raw_password is not None:
            raise invalid_url()
        host = url.raw_host
        if host in self._passed:
            return
        try:
            if not host or not (url.host or "").isascii():
                raise invalid_url()
        except UnicodeError:  # a punycode label that does not decode
            raise invalid_url() from None
        if is_address(host):  # connected to without resolving: checked here
            self.check_address(host, host)
        else:
            try:
                self.policy.check_host(host)
            except OutboundRefused as exc:
                raise FetchError(str(exc), retryable=False) from None
        if len(self._passed) < 1024:
            self._passed.add(host)

    def check_address(self, host: str, address: str) -> None:
        """Raise a FetchError to refuse connecting to `address` (resolved from `host`)."""
        try:
            self.policy.check_address(host, address)
        except OutboundRefused as exc:
            raise FetchError(str(exc), retryable=False) from None


def proxy_hosts(proxies: Mapping[str, str]) -> frozenset[str]:
    """The hosts of the environment's proxies (`urllib.request.getproxies()`)."""
    hosts = set()
    for scheme, value in proxies.items():
        if scheme == "no":  # no_proxy: a list of hosts, not a proxy
            continue
        try:
            host = URL(value if "://" in value else f"http://{value}").raw_host
        except (ValueError, TypeError):
            continue
        if host:
            hosts.add(host.lower())
    return frozenset(hosts)


class CheckedResolver(AbstractResolver):
    """aiohttp's default resolver, with every resolved address passed to the guard."""

    def __init__(self, guard: OutboundGuard):
        self._guard = guard
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[ResolveResult]:
        # family 0 is AF_UNSPEC; aiohttp always passes the connector's own.
        results = await self._inner.resolve(host, port, family)  # type: ignore[arg-type]
        if host.lower() in self._guard.proxy_hosts:  # the environment's proxy: the operator's
            return results
        # Only checked addresses are connected to; none left: the first refusal is the error.
        allowed, refusal = [], None
        for result in results:
            try:
                self._guard.check_address(host, result["host"])
            except FetchError as exc:
                refusal = refusal or exc
            else:
                allowed.append(result)
        if not allowed and refusal is not None:
            raise refusal
        return allowed

    async def close(self) -> None:
        await self._inner.close()


_PLAIN = re.compile(r"[A-Za-z0-9_.~-]*\Z")


def encode_query(params: Mapping[str, Any]) -> str:
    """`urlencode(params, doseq=True)`, without its per-character quoting when every key and
    value is a plain str or int made only of characters it would leave alone anyway."""
    parts = []
    for key, value in params.items():
        if (
            type(key) is str
            and _PLAIN.match(key)
            and (type(value) is int or (type(value) is str and _PLAIN.match(value)))
        ):
            parts.append(f"{key}={value}")
        else:
            return urlencode(params, doseq=True)
    return "&".join(parts)


def with_query(url: str, params: Mapping[str, Any]) -> str:
    if not params:
        return url
    return f"{url}{'&' if '?' in url else '?'}{encode_query(params)}"


class HttpClient:
    """One per fetch process, used from its one event loop. The aiohttp session is opened on
    first use, on that loop."""

    def __init__(
        self,
        max_body: int,
        policy: OutboundPolicy | None = None,
        lanes: int = 16,
        ssl_context: ssl.SSLContext | None = None,
        guard: OutboundGuard | None = None,
    ):
        self.max_body = max_body
        self.lanes = max(lanes, 1)
        # None: aiohttp's own verifying context (the system trust store), built once at import.
        self.ssl_context = ssl_context
        self._env_proxies = urllib.request.getproxies()
        self.guard = guard or OutboundGuard(policy, proxy_hosts(self._env_proxies))
        self._proxies: dict[tuple[str, str | None], str | None] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self.lanes + 2,
            ssl=self.ssl_context if self.ssl_context is not None else True,
            resolver=CheckedResolver(self.guard),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=True,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING},
        )
        # aiohttp re-sends an idempotent request once, silently, when the connection drops
        # before the answer: a send without a rate-limit ticket. Retries are ours (as in
        # aiohttp's own test client, which turns it off the same way).
        self._session._retry_connection = False
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def send(
        self,
        method: str,
        url: str,
        params: Mapping[str, Any],
        headers: Mapping[str, str],
        data: bytes | None,
        timeout: float,
        before_send: Callable[[], Awaitable[Ticket]],
        answered: Callable[[Ticket], None],
        credentials: Mapping[str, Any] | None = None,
        follow_redirects: bool = True,
    ) -> Response:
        """One request, redirects followed here. `before_send()` is awaited right before every
        hop is sent (its rate-limit ticket); `answered(ticket)` runs when that hop's response
        headers arrive. `credentials`: query parameters that are credentials (kept to their
        origin, like the credential headers)."""
        session = self._session or self._open()
        raw = with_query(url, {**params, **credentials} if credentials else params)
        target = self.guard.parse(raw)
        sent = {k: v for k, v in headers.items() if k.lower() not in NOT_FROM_SPEC}
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._send_once(session, method, target, raw, sent, data, timeout, before_send, answered)
            status = response.status
            location = response.headers.get("Location") if status in REDIRECT_STATUSES else None
            if not follow_redirects or not location:
                return response
            following = self.guard.follow(target, location)
            if should_strip_auth(target, following):
                sent = {k: v for k, v in sent.items() if k.lower() in SAFE_CROSS_ORIGIN_HEADERS}
                if credentials:
                    following = following.without_query_params(*credentials)
                credentials = None
            elif credentials:
                missing = {k: v for k, v in credentials.items() if k not in following.query}
                if missing:
                    following = following.extend_query(missing)
            if status == 303 or (status in (301, 302) and method == "POST"):
                method, data = "GET", None
                sent = {k: v for k, v in sent.items() if k.lower() != "content-type"}
            target, raw = following, str(following)
        raise FetchError(f"more than {MAX_REDIRECTS} redirects", retryable=False)

    async def _send_once(
        self,
        session: aiohttp.ClientSession,
        method: str,
        target: URL,
        raw: str,
        headers: dict[str, str],
        data: bytes | None,
        timeout: float,
        before_send: Callable[[], Awaitable[Ticket]],
        answered: Callable[[Ticket], None],
    ) -> Response:
        proxy = self._proxy(target) if self._env_proxies else None
        ticket = await before_send()
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            resp = await session.request(
                method,
                target,
                headers=headers,
                data=data,
                proxy=proxy,
                allow_redirects=False,
                timeout=self._timeout(timeout),
            )
        except _TRANSPORT_ERRORS as exc:
            raise as_fetch_error(exc, timeout) from None
        answered(ticket)
        try:
            body = await self._read_body(resp, deadline, timeout)
        except BaseException as exc:
            resp.close()  # a half-read connection cannot be reused
            if isinstance(exc, _TRANSPORT_ERRORS):
                raise as_fetch_error(exc, timeout, resp.status) from None
            raise
        resp.release()
        links: dict[str, dict[str, str]] = {}
        if "Link" in resp.headers:
            links = {str(rel): {k: str(v) for k, v in link.items()} for rel, link in resp.links.items()}
        return Response(resp.status, resp.headers, body, raw, links)

    async def _read_body(self, resp: aiohttp.ClientResponse, deadline: float, timeout: float) -> bytes:
        """The decoded body, counted against MAX_FILE_SIZE as it streams in (a compressed
        body is never inflated whole first), complete within `timeout` of the send."""
        status, limit = resp.status, self.max_body
        declared = resp.content_length
        if declared is not None and declared > limit:
            raise FetchError(f"body of {declared} bytes exceeds MAX_FILE_SIZE ({limit} bytes)", False, status)
        loop = asyncio.get_running_loop()
        if declared is not None and "Content-Encoding" not in resp.headers:
            # Its size is known and within the limit: one read, no per-chunk bookkeeping.
            try:
                async with asyncio.timeout_at(deadline):
                    return await resp.read()
            except TimeoutError:
                raise FetchError(f"body not complete within {timeout:g} s (timeout)", True, status) from None
        chunks: list[bytes] = []
        size = 0
        # A stalled body ends at the read timeout; a trickling one at this deadline.
        async for chunk in resp.content.iter_chunked(CHUNK):
            size += len(chunk)
            if size > limit:
                raise FetchError(f"body exceeds MAX_FILE_SIZE ({limit} bytes); download aborted", False, status)
            if loop.time() > deadline:
                raise FetchError(f"body not complete within {timeout:g} s (timeout)", True, status)
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        try:
            return self._timeouts[seconds]
        except KeyError:
            value = self._timeouts[seconds] = aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
            return value

    def _proxy(self, url: URL) -> str | None:
        """The proxy from the environment for `url` (worked out once per scheme and host)."""
        key = (url.scheme, url.raw_host)
        try:
            return self._proxies[key]
        except KeyError:
            proxy = self._env_proxies.get(url.scheme)
            if proxy and urllib.request.proxy_bypass(url.raw_host or ""):
                proxy = None
            self._proxies[key] = proxy
            return proxy


# ---------------------------------------------------------------- error wording

_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError)

_ERRNO_REASONS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection aborted",
    errno.EPIPE: "broken pipe",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
}


def _os_reason(exc: BaseException) -> str:
    os_error = getattr(exc, "os_error", exc)
    code = getattr(os_error, "errno", None)
    return _ERRNO_REASONS.get(code, type(os_error).__name__) if isinstance(code, int) else type(os_error).__name__


def _payload_reason(exc: BaseException) -> str:
    cause = exc.__cause__
    if isinstance(cause, (ContentEncodingError, DecompressSizeError)):
        return "invalid content encoding"
    if isinstance(cause, TransferEncodingError):
        return "invalid chunked encoding"
    return "incomplete read"


# (exception type, message or reason, retryable). The first matching row words the error:
# a message (no "{}") as it is, a reason as "<what failed> (<reason>)".
_WORDING: tuple[tuple[type[BaseException], str | Callable[[BaseException], str], bool], ...] = (
    (aiohttp.ClientConnectorCertificateError, "TLS certificate not trusted", False),
    (aiohttp.ClientSSLError, "TLS error", True),
    (ssl.SSLError, "TLS error", True),
    (asyncio.TimeoutError, "no answer within {timeout} s (timeout)", True),  # ServerTimeoutError too
    (aiohttp.InvalidURL, "invalid URL", False),
    (aiohttp.ClientConnectorDNSError, lambda e: "unknown host", True),
    (aiohttp.ClientProxyConnectionError, lambda e: "proxy unreachable", True),
    (aiohttp.ClientConnectorError, _os_reason, True),
    (aiohttp.ServerDisconnectedError, lambda e: "remote end closed the connection", True),
    (aiohttp.ClientPayloadError, _payload_reason, True),
    (aiohttp.ClientHttpProxyError, lambda e: "the proxy refused the request", True),
    (aiohttp.ClientResponseError, lambda e: "invalid response", True),
    (OSError, _os_reason, True),  # ClientOSError too
    (aiohttp.ClientError, lambda e: type(e).__name__, True),
    (ValueError, "invalid request", False),  # e.g. a header value that could split the request
)


def as_fetch_error(exc: BaseException, timeout: float, status: int | None = None) -> FetchError:
    """A FetchError worded from `exc`'s type. `status`: the body of this response failed."""
    if isinstance(exc, FetchError):
        return exc
    what = "connection failed" if status is None else "body truncated or connection dropped"
    for kind, wording, retryable in _WORDING:
        if isinstance(exc, kind):
            if isinstance(wording, str):
                return FetchError(wording.format(timeout=f"{timeout:g}"), retryable, status)
            return FetchError(f"{what} ({wording(exc)})", retryable, status)
    return FetchError(f"request failed ({type(exc).__name__})", False, status)
