"""The HTTP transport: one attempt at one request, over pooled keep-alive connections.

Not a `requests.Session`: on the hot path a Session re-reads proxy settings and ~/.netrc and
rebuilds the request for every call (1.5 ms per page here). Not urllib3's `PoolManager`
either, for the common case: its URL re-parsing, pool-key normalisation, `Retry`/`Timeout`
objects and response wrapper cost ~0.2 ms of CPU per request on top of `http.client`
(0.43 ms against 0.2 ms per 23 KB page, measured on this machine) - and the engine's CPU is
what bounds a fast API. So a direct request (no proxy, a URL urllib3 would send unchanged)
goes over `http.client` connections pooled per host here, with urllib3's own checks kept:
a pooled connection is reused only if its socket is not readable (not closed by the server),
bodies are decoded with urllib3's gzip/deflate decoders. Anything else (a proxy from the
environment, a URL that urllib3 would re-encode or normalise) goes through urllib3 as before.
What a Session would have given us is done explicitly: proxies from the environment (read
once), CA certificates from certifi, redirects followed by hand so every hop is checked
against ALLOWED_SOURCE_HOSTS and charged to the job's rate limit. Cookies are not kept.

Errors are `FetchError`s worded here from the exception type - never library text, which
may quote a URL with a secret in it.
"""
from __future__ import annotations

import http.client
import re
import select
import socket
import ssl
import threading
import time
import types
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlencode, urljoin, urlsplit

import certifi
import orjson
import urllib3
from urllib3.exceptions import (DecodeError, HTTPError, LocationValueError, NewConnectionError, ProtocolError,
                                ProxyError, SSLError, TimeoutError as Urllib3Timeout)

MAX_REDIRECTS = 10
SAFE_CROSS_HOST_HEADERS = {"accept", "accept-encoding", "accept-language", "user-agent", "content-type"}
USER_AGENT = "pageferry/1.0"
CHUNK = 1 << 16


class FetchError(Exception):
    """One attempt failed. `retryable`: might another attempt succeed?"""

    def __init__(self, message: str, retryable: bool, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.message, self.retryable, self.status, self.retry_after = message, retryable, status, retry_after


@dataclass
class Response:
    status: int
    headers: Any            # case-insensitive
    body: bytes
    url: str

    @property
    def links(self) -> dict:
        """RFC 8288 Link header by rel: {"next": {"url": ..., "rel": "next"}, ...}."""
        header = self.headers.get("Link")
        if not header:
            return {}
        return {link.get("rel") or link.get("url"): link for link in parse_header_links(header)}


def parse_header_links(value: str) -> list[dict[str, str]]:
    """RFC 8288 `Link` header → [{"url": ..., "rel": ..., ...}] (the same parse as
    `requests.utils.parse_header_links`, without importing requests into every process)."""
    links: list[dict[str, str]] = []
    strip = " '\""
    value = value.strip(strip)
    if not value:
        return links
    for item in re.split(", *<", value):
        try:
            url, params = item.split(";", 1)
        except ValueError:
            url, params = item, ""
        link = {"url": url.strip("<> '\"")}
        for param in params.split(";"):
            try:
                key, val = param.split("=")
            except ValueError:
                break
            link[key.strip(strip)] = val.strip(strip)
        links.append(link)
    return links


def host_allowed(url: str, allowed: tuple[str, ...]) -> bool:
    if not allowed:
        return True
    host = (urlsplit(url).hostname or "").lower()
    return any(host == a or (a.startswith(".") and host.endswith(a)) for a in allowed)


_SAFE_QUERY_PART = re.compile(r"[A-Za-z0-9_.~-]*\Z")


def encode_query(params: dict) -> str:
    """`urlencode(params, doseq=True)`, without its per-character quoting when every key and
    value is a plain str or int made of characters it would leave alone anyway."""
    parts = []
    for key, value in params.items():
        if type(key) is str and _SAFE_QUERY_PART.match(key) and (
                type(value) is int or (type(value) is str and _SAFE_QUERY_PART.match(value))):
            parts.append(f"{key}={value}")
        else:
            return urlencode(params, doseq=True)
    return "&".join(parts)


def with_query(url: str, params: dict) -> str:
    if not params:
        return url
    return f"{url}{'&' if '?' in url else '?'}{encode_query(params)}"


# Characters urllib3 leaves as they are in a request target (its path/query sets, plus `%`
# as part of an upper-case percent-encoding). A target made only of these, without dot
# segments or lower-case escapes, is sent by urllib3 unchanged - so it can skip urllib3.
_PLAIN_TARGET = re.compile(r"/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-F]{2})*\Z")
_PLAIN_QUERY = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-F]{2})*\Z")
_DOT_SEGMENT = re.compile(r"(?:^|/)\.\.?(?:/|\Z)")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_METHODS_EXPECTING_BODY = {"PATCH", "POST", "PUT"}


class _Message:
    """The parsed header block of a response: what `http.client` and this module read of an
    `http.client.HTTPMessage` (first value by case-insensitive name, all values, items)."""

    __slots__ = ("_headers", "_by_name")

    def __init__(self, headers: list[tuple[str, str]]):
        self._headers = headers
        by_name: dict[str, list[str]] = {}
        for key, value in headers:
            by_name.setdefault(key.lower(), []).append(value)
        self._by_name = by_name

    def get(self, name: str, failobj: Any = None) -> Any:
        values = self._by_name.get(name.lower())
        return values[0] if values else failobj

    __getitem__ = get

    def get_all(self, name: str, failobj: Any = None) -> Any:
        values = self._by_name.get(name.lower())
        return list(values) if values else failobj

    def items(self) -> list[tuple[str, str]]:
        return list(self._headers)

    def keys(self) -> list[str]:
        return [key for key, _ in self._headers]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._by_name

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._headers)


_HEADER_NAME = re.compile(r"[!-9;-~]+\Z")   # what the email parser takes for a header name


def _parse_headers(fp) -> Any:
    """`http.client.parse_headers` without the email package (~50 us a response here, most
    of http.client's own cost): the same line limits and errors, the same values for a
    well-formed header block (compat32: leading blanks dropped, folded lines joined); anything
    unusual (a line without a colon, a fold) goes to the stdlib parser."""
    return message_from_lines(http.client._read_headers(fp))


def message_from_lines(lines: list[bytes]) -> Any:
    """The header lines of a response (each with its line end; a blank line or none at the
    end) as `_parse_headers` reads them."""
    headers = []
    for raw_line in lines:
        if raw_line in (b"\r\n", b"\n", b""):
            break
        line = raw_line.decode("iso-8859-1")
        name, colon, value = line.partition(":")
        if not colon or not _HEADER_NAME.match(name):
            import email.parser
            return email.parser.Parser(_class=http.client.HTTPMessage).parsestr(
                b"".join(lines).decode("iso-8859-1"))
        headers.append((name, value.lstrip(" \t").rstrip("\r\n")))
    return _Message(headers)


class _FastResponse(http.client.HTTPResponse):
    # The stdlib's own `begin` (status line, 1xx, chunked, keep-alive, lengths), running with
    # the header parser above in place of `http.client.parse_headers`.
    begin = types.FunctionType(http.client.HTTPResponse.begin.__code__,
                               {**vars(http.client), "parse_headers": _parse_headers}, "begin")


def _reusable(sock: socket.socket) -> bool:
    """A pooled connection may carry a new request if its socket is not readable (readable
    means the server closed it, or sent something unasked) - urllib3's check."""
    try:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return False
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False


_HEADS: dict[tuple, bytes] = {}   # (method, host, headers, body length) -> encoded header block


def _request_head(method: str, target: str, host: str, headers: dict, data: bytes | None) -> bytes:
    """The request line and headers as `http.client` writes them (Host first unless given,
    Content-Length for a body or a method that expects one), with its checks: a header name or
    value that could split the request is a ValueError, a non-latin-1 value a UnicodeError.
    The header block is the same request after request: it is built and checked once."""
    key = (method, host, tuple(headers.items()), None if data is None else len(data))
    try:
        block = _HEADS[key]
    except (KeyError, TypeError):  # TypeError: an unhashable header value
        block = _header_block(method, host, headers, data)
        try:
            if len(_HEADS) > 512:
                _HEADS.clear()
            _HEADS[key] = block
        except TypeError:
            pass
    return f"{method} {target} HTTP/1.1\r\n".encode("ascii") + block


def _header_block(method: str, host: str, headers: dict, data: bytes | None) -> bytes:
    if http.client._contains_disallowed_method_pchar_re.search(method):
        raise ValueError("method can't contain control characters")
    names = {name.lower() for name in headers}
    lines = []
    if "host" not in names:
        lines.append(f"Host: {host}")
    if "accept-encoding" not in names:
        lines.append("Accept-Encoding: identity")
    if "content-length" not in names and "transfer-encoding" not in names:
        if data is not None:
            lines.append(f"Content-Length: {len(data)}")
        elif method.upper() in _METHODS_EXPECTING_BODY:
            lines.append("Content-Length: 0")
    head = "".join(line + "\r\n" for line in lines).encode("latin-1")
    for name, value in headers.items():
        encoded_name = name.encode("ascii")
        if not http.client._is_legal_header_name(encoded_name):
            raise ValueError("Invalid header name")
        if isinstance(value, str):
            encoded = value.encode("latin-1")
        elif isinstance(value, int):
            encoded = str(value).encode("ascii")
        else:
            encoded = bytes(value)
        if http.client._is_illegal_header_value(encoded):
            raise ValueError("Invalid header value")
        head += encoded_name + b": " + encoded + b"\r\n"
    return head + b"\r\n"


class _Headers:
    """Response headers, case-insensitive; a repeated header reads as its values joined with
    ", " (as urllib3's HTTPHeaderDict does)."""

    __slots__ = ("_message",)

    def __init__(self, message):
        self._message = message

    def get(self, name: str, default: Any = None) -> Any:
        values = self._message.get_all(name)
        if not values:
            return default
        return values[0] if len(values) == 1 else ", ".join(values)

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._message.get(name) is not None

    def items(self):
        return self._message.items()

    def __repr__(self) -> str:
        return f"_Headers({dict(self._message.items())!r})"


@dataclass
class Prepared:
    """A request ready to go: `key` (the pool) and `request` (its bytes) when it takes the
    direct path, None when urllib3 sends it."""
    headers: dict
    data: bytes | None
    key: tuple | None = None
    request: bytes | None = None


def redirect_hop(response: Response, method: str, url: str, headers: dict,
                 body: Any) -> tuple[str, str, dict, Any] | None:
    """The next hop's (method, url, headers, body) when `response` redirects, else None."""
    location = response.headers.get("Location")
    if response.status not in (301, 302, 303, 307, 308) or not location:
        return None
    target = urljoin(response.url, location)
    if urlsplit(target).hostname != urlsplit(url).hostname:
        # Another host gets none of our credentials (auth headers, API keys, cookies).
        headers = {k: v for k, v in headers.items() if k.lower() in SAFE_CROSS_HOST_HEADERS}
    if response.status == 303 or (response.status in (301, 302) and method == "POST"):
        method, body = "GET", None
    return method, target, headers, body


class BodyCollector:
    """A response body as it streams in: decoded (gzip/deflate) unless the transport decodes,
    measured against MAX_FILE_SIZE as it arrives and expands (never inflated whole first),
    given up on past its time."""

    def __init__(self, max_body: int, status: int, headers: Any, started: float, timeout: float,
                 decode: bool = True):
        declared = headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_body:
            raise FetchError(f"body of {int(declared)} bytes exceeds MAX_FILE_SIZE ({max_body} bytes)",
                             retryable=False, status=status)
        self.max_body, self.status, self.started, self.timeout = max_body, status, started, timeout
        self.decoder = _decoder(headers.get("Content-Encoding", "").lower()) if decode else None
        self.chunks: list[bytes] = []
        self.size = 0

    def add(self, chunk: bytes) -> None:
        if self.decoder is not None:
            chunk = _decode(self.decoder, chunk, self.max_body - self.size + 1)
        self._append(chunk)

    def finish(self) -> bytes:
        if self.decoder is not None:
            self._append(_decode(self.decoder, b"", -1, flush=True))
        return b"".join(self.chunks)

    def _append(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_body:
            raise FetchError(f"body exceeds MAX_FILE_SIZE ({self.max_body} bytes); download aborted",
                             retryable=False, status=self.status)
        if time.monotonic() - self.started > self.timeout:
            raise FetchError(f"body not complete within {self.timeout:g} s (timeout)", retryable=True,
                             status=self.status)
        self.chunks.append(chunk)


class HttpClient:
    """One per process: pooled keep-alive connections, the body size cap, the host allowlist."""

    def __init__(self, max_body: int, allowed_hosts: tuple[str, ...] = (), pool_size: int = 16):
        self.max_body = max_body
        self.allowed_hosts = allowed_hosts
        self.pool_size = max(pool_size, 1)
        self._options = dict(num_pools=16, maxsize=self.pool_size, block=False, retries=False,
                             ca_certs=certifi.where())
        self._env_proxies = urllib.request.getproxies()
        self._urllib3: urllib3.PoolManager | None = None
        self._proxied: dict[str, urllib3.ProxyManager] = {}
        self._idle: dict[tuple, list] = {}      # (scheme, host, port) -> idle sockets
        self._routes: dict[str, tuple | None] = {}
        self._tls: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            pools, self._idle = self._idle, {}
        for idle in pools.values():
            while idle:
                try:
                    idle.pop().close()
                except IndexError:
                    break
        if self._urllib3 is not None:
            self._urllib3.clear()
        for manager in self._proxied.values():
            manager.clear()

    def _proxy_for(self, scheme: str, hostname: str) -> str | None:
        proxy = self._env_proxies.get(scheme)
        if not proxy or urllib.request.proxy_bypass(hostname or ""):
            return None
        return proxy

    def _manager(self, url: str) -> urllib3.PoolManager:
        parts = urlsplit(url)
        proxy = self._proxy_for(parts.scheme, parts.hostname or "")
        if proxy is None:
            with self._lock:
                if self._urllib3 is None:
                    self._urllib3 = urllib3.PoolManager(**self._options)
            return self._urllib3
        with self._lock:
            if proxy not in self._proxied:
                self._proxied[proxy] = urllib3.ProxyManager(proxy, **self._options)
            return self._proxied[proxy]

    def send(self, method: str, url: str, params: dict, headers: dict, body: Any, timeout: float,
             before_each: Callable[[], Any], answered: Callable[[Any], None] = lambda ticket: None) -> Response:
        """One request, following redirects ourselves. `before_each()` runs right before every
        send (each hop takes a rate-limit slot) and returns a ticket; `answered(ticket)` runs
        when that send's response headers arrive."""
        for _ in range(MAX_REDIRECTS + 1):
            self.check_host(url)
            response = self._send_once(method, with_query(url, params), headers, body, timeout, before_each, answered)
            hop = redirect_hop(response, method, url, headers, body)
            if hop is None:
                return response
            (method, url, headers, body), params = hop, {}
        raise FetchError(f"more than {MAX_REDIRECTS} redirects", retryable=False)

    def check_host(self, url: str) -> None:
        if not host_allowed(url, self.allowed_hosts):
            raise FetchError(f"host {urlsplit(url).hostname!r} is not in ALLOWED_SOURCE_HOSTS", retryable=False)

    def prepare(self, method: str, url: str, headers: dict, body: Any, timeout: float) -> "Prepared":
        """Everything about a send that can be done before its rate-limit slot is taken, so the
        slot is as close to the real send as it can be."""
        sent_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate", **headers}
        data = None
        if body is not None:
            data = orjson.dumps(body)
            sent_headers.setdefault("Content-Type", "application/json")
        direct = self._direct(url)
        if direct is None:
            return Prepared(sent_headers, data)
        key, target, host = direct
        try:
            request = _request_head(method, target, host, sent_headers, data) + (data or b"")
        except (ValueError, UnicodeError) as exc:
            raise _as_fetch_error(exc, timeout, "connection failed") from None
        return Prepared(sent_headers, data, key, request)

    def tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context(cafile=certifi.where())
        return self._tls

    def _route(self, base: str) -> tuple[tuple, str, str] | None:
        """(pool key, path, Host header) when requests to `base` (a URL without its query)
        can go over a plain pooled socket: http(s), no proxy, no credentials or fragment in
        the URL, a path urllib3 would send unchanged. Cached: a job asks for few bases."""
        try:
            return self._routes[base]
        except KeyError:
            pass
        route = None
        try:
            parts = urlsplit(base)
            scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
        except ValueError:
            scheme = host = None
        if (scheme in _DEFAULT_PORTS and host and host.isascii() and "@" not in parts.netloc
                and "#" not in base and not parts.query
                and (not self._env_proxies or self._proxy_for(scheme, host) is None)):
            path = parts.path or "/"
            if _PLAIN_TARGET.match(path) and not _DOT_SEGMENT.search(path):
                port = port or _DEFAULT_PORTS[scheme]
                shown = f"[{host}]" if ":" in host else host
                route = ((scheme, host, port), path,
                         shown if port == _DEFAULT_PORTS[scheme] else f"{shown}:{port}")
        if len(self._routes) > 256:
            self._routes.clear()
        self._routes[base] = route
        return route

    def _direct(self, url: str) -> tuple[tuple, str, str] | None:
        """(pool key, request target, Host header) for `url`, or None (urllib3 sends it)."""
        base, mark, query = url.partition("?")
        route = self._route(base)
        if route is None or (mark and not _PLAIN_QUERY.match(query)):
            return None
        key, path, host = route
        return key, (f"{path}?{query}" if mark else path), host

    def _pooled(self, key: tuple, timeout: float) -> socket.socket | None:
        idle = self._idle.get(key)
        while idle:
            try:
                sock = idle.pop()
            except IndexError:
                break
            if _reusable(sock):
                sock.settimeout(timeout)
                return sock
            sock.close()
        return None

    def _connect(self, key: tuple, timeout: float) -> socket.socket:
        scheme, host, port = key
        sock = socket.create_connection((host, port), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = self.tls_context().wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        return sock

    def _release(self, key: tuple, sock: socket.socket) -> None:
        idle = self._idle.get(key)
        if idle is None:
            with self._lock:
                idle = self._idle.setdefault(key, [])
        if len(idle) < self.pool_size:
            idle.append(sock)
        else:
            sock.close()

    def _send_once(self, method: str, url: str, headers: dict, body: Any, timeout: float,
                   before_send: Callable[[], Any], answered: Callable[[Any], None]) -> Response:
        prepared = self.prepare(method, url, headers, body, timeout)
        if prepared.key is None:
            return self._send_urllib3(method, url, prepared.headers, prepared.data, timeout, before_send, answered)
        key = prepared.key
        sock = self._pooled(key, timeout)
        ticket = before_send()
        started = time.monotonic()
        raw = None
        try:
            if sock is None:
                sock = self._connect(key, timeout)
            sock.sendall(prepared.request)
            raw = _FastResponse(sock, method=method)
            raw.begin()
        except Exception as exc:  # noqa: BLE001 - every failure becomes a worded FetchError
            if raw is not None:
                raw.close()
            if sock is not None:
                sock.close()
            raise _as_fetch_error(exc, timeout, "connection failed") from None
        answered(ticket)
        complete = False
        try:
            headers_in = _Headers(raw.msg)
            collected = BodyCollector(self.max_body, raw.status, headers_in, started, timeout)
            while True:
                chunk = raw.read(CHUNK)
                if not chunk:
                    if raw.length:  # read(amt) returns b"" at a premature end instead of raising
                        raise http.client.IncompleteRead(b"", raw.length)
                    break
                collected.add(chunk)
            body = collected.finish()
            complete = True
            return Response(raw.status, headers_in, body, url)
        except FetchError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _as_fetch_error(exc, timeout, "body truncated or connection dropped", raw.status) from None
        finally:
            raw.close()
            if complete and not raw.will_close:
                self._release(key, sock)
            else:
                sock.close()  # a half-read connection cannot be reused

    def _send_urllib3(self, method: str, url: str, sent_headers: dict, data: bytes | None, timeout: float,
                      before_send: Callable[[], Any], answered: Callable[[Any], None]) -> Response:
        try:
            manager = self._manager(url)
        except (LocationValueError, ValueError):
            raise FetchError("invalid URL", retryable=False) from None
        ticket = before_send()
        started = time.monotonic()
        try:
            raw = manager.urlopen(method, url, body=data, headers=sent_headers, redirect=False, retries=False,
                                  preload_content=False, timeout=urllib3.Timeout(connect=timeout, read=timeout))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a worded FetchError
            raise _as_fetch_error(exc, timeout, "connection failed") from None
        answered(ticket)
        complete = False
        try:
            collected = BodyCollector(self.max_body, raw.status, raw.headers, started, timeout, decode=False)
            for chunk in raw.stream(CHUNK, decode_content=True):  # urllib3 decodes
                collected.add(chunk)
            body = collected.finish()
            complete = True
            return Response(raw.status, raw.headers, body, url)
        except FetchError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _as_fetch_error(exc, timeout, "body truncated or connection dropped", raw.status) from None
        finally:
            if not complete:
                raw.close()  # a half-read connection cannot be reused
            raw.release_conn()


def _decoder(content_encoding: str):
    """urllib3's decoder for a Content-Encoding, chosen the way urllib3 chooses it."""
    if not content_encoding:
        return None
    from urllib3.response import BaseHTTPResponse, _get_decoder
    known = BaseHTTPResponse.CONTENT_DECODERS
    if content_encoding in known:
        return _get_decoder(content_encoding)
    if "," in content_encoding and any(e.strip() in known for e in content_encoding.split(",")):
        return _get_decoder(content_encoding)
    return None


def _decode(decoder, data: bytes, max_length: int, flush: bool = False) -> bytes:
    """Decode with at most `max_length` bytes out (-1: no limit) - a compressed body is
    measured against MAX_FILE_SIZE as it expands, never inflated whole first."""
    try:
        if flush:
            return decoder.decompress(b"") + decoder.flush()
        return decoder.decompress(data, max_length=max_length)
    except Exception as exc:  # zlib.error and the like
        raise DecodeError("Received response with content-encoding, but failed to decode it.", exc) from None


def _as_fetch_error(exc: BaseException, timeout: float, what: str, status: int | None = None) -> FetchError:
    if isinstance(exc, FetchError):
        return exc
    if isinstance(exc, NewConnectionError):
        return FetchError(f"connection failed ({_reason(exc)})", retryable=True, status=status)
    if isinstance(exc, (Urllib3Timeout, socket.timeout)):
        return FetchError(f"no answer within {timeout:g} s (timeout)", retryable=True, status=status)
    if isinstance(exc, (SSLError, ssl.SSLError)):
        trusted = "CERTIFICATE_VERIFY_FAILED" not in str(exc)
        return FetchError("TLS error" if trusted else "TLS certificate not trusted", retryable=trusted, status=status)
    if isinstance(exc, (ProtocolError, ProxyError, DecodeError, ConnectionError, OSError, http.client.HTTPException)):
        return FetchError(f"{what} ({_reason(exc)})", retryable=True, status=status)
    if status is not None and isinstance(exc, ValueError):
        # http.client's chunked reader raises a bare ValueError on a bad chunk size line.
        return FetchError(f"{what} (invalid chunked encoding)", retryable=True, status=status)
    if isinstance(exc, (LocationValueError, ValueError)):
        return FetchError("invalid URL", retryable=False, status=status)
    if isinstance(exc, HTTPError):
        return FetchError(f"request failed ({type(exc).__name__})", retryable=True, status=status)
    return FetchError(f"request failed ({type(exc).__name__})", retryable=False, status=status)


def _reason(exc: BaseException) -> str:
    """A short, URL-free reason from an exception chain."""
    text = (type(exc).__name__ + " " + " ".join(str(a) for a in getattr(exc, "args", ())) + " "
            + repr(getattr(exc, "__context__", "")))
    for marker, reason in (("IncompleteRead", "incomplete read"), ("Connection refused", "connection refused"),
                           ("RemoteDisconnected", "remote end closed the connection"),
                           ("Connection aborted", "connection aborted"),
                           ("ConnectionRefused", "connection refused"),   # asyncio's wording
                           ("Connection reset", "connection reset"), ("Broken pipe", "broken pipe"),
                           ("Name or service not known", "unknown host"), ("NameResolution", "unknown host"),
                           ("Failed to resolve", "unknown host"),
                           ("InvalidChunkLength", "invalid chunked encoding")):
        if marker in text:
            return reason
    return type(exc).__name__
