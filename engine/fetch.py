"""Fetching one page: one HTTP attempt (`HttpClient.send`) and the retry loop around it
(`PageFetcher.fetch`).

Retries live here, above the job's limiter and concurrency gate, not in urllib3: every
attempt (and every redirect hop) takes a slot of the job's rate limit, and a 429 pauses
every process of the job. Error messages are written here from the exception *type* and
our own words, never from library text that may quote a URL with a secret in it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from engine.auth import Auth, AuthError
from engine.backoff import backoff_delay, parse_retry_after
from engine.records import BodyError, ParsedPage, parse_page
from engine.spec import Retry

MAX_REDIRECTS = 10
SAFE_CROSS_HOST_HEADERS = {"accept", "accept-encoding", "accept-language", "user-agent", "content-type"}
MAX_RETRY_AFTER = 600.0
USER_AGENT = "pageferry/1.0"


class FetchError(Exception):
    """One attempt failed. `retryable`: might another attempt succeed?"""

    def __init__(self, message: str, retryable: bool, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.message, self.retryable, self.status, self.retry_after = message, retryable, status, retry_after


@dataclass
class Response:
    status: int
    headers: Any
    body: bytes
    url: str
    links: dict


def host_allowed(url: str, allowed: tuple[str, ...]) -> bool:
    if not allowed:
        return True
    host = (urlsplit(url).hostname or "").lower()
    return any(host == a or (a.startswith(".") and host.endswith(a)) for a in allowed)


class HttpClient:
    """One per process: a pooled `requests.Session`, the body size cap and the host allowlist."""

    def __init__(self, max_body: int, allowed_hosts: tuple[str, ...] = (), pool_size: int = 16):
        self.max_body = max_body
        self.allowed_hosts = allowed_hosts
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=8, pool_maxsize=max(pool_size, 1), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = USER_AGENT

    def close(self) -> None:
        self.session.close()

    def send(self, method: str, url: str, params: dict, headers: dict, body: Any, timeout: float,
             before_each: Callable[[], Any], answered: Callable[[Any], None] = lambda ticket: None) -> Response:
        """One request, following redirects ourselves: each hop is checked against the host
        allowlist and charged to the rate limit: `before_each()` is called right before every
        send and returns a ticket; `answered(ticket)` when that send's response headers arrive."""
        for hop in range(MAX_REDIRECTS + 1):
            if not host_allowed(url, self.allowed_hosts):
                raise FetchError(f"host {urlsplit(url).hostname!r} is not in ALLOWED_SOURCE_HOSTS", retryable=False)
            response = self._send_once(method, url, params, headers, body, timeout, before_each, answered)
            if response.status in (301, 302, 303, 307, 308) and response.headers.get("Location"):
                target = urljoin(response.url, response.headers["Location"])
                if urlsplit(target).hostname != urlsplit(url).hostname:
                    # Another host gets none of our credentials (auth headers, API keys, cookies).
                    headers = {k: v for k, v in headers.items() if k.lower() in SAFE_CROSS_HOST_HEADERS}
                if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                    method, body = "GET", None
                url, params = target, {}
                continue
            return response
        raise FetchError(f"more than {MAX_REDIRECTS} redirects", retryable=False)

    def _send_once(self, method: str, url: str, params: dict, headers: dict, body: Any, timeout: float,
                   before_send: Callable[[], Any], answered: Callable[[Any], None]) -> Response:
        try:
            # Prepared before the rate-limit slot is taken: the slot is as close to the real
            # send as we can make it.
            prepared = self.session.prepare_request(
                requests.Request(method, url, params=params or None, headers=headers, json=body))
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, ValueError):
            raise FetchError("invalid URL", retryable=False) from None
        ticket = before_send()
        started = time.monotonic()
        try:
            raw = self.session.send(prepared, timeout=(timeout, timeout), stream=True, allow_redirects=False)
            answered(ticket)
        except requests.Timeout:
            raise FetchError(f"no answer within {timeout:g} s (timeout)", retryable=True) from None
        except requests.exceptions.InvalidURL:
            raise FetchError("invalid URL", retryable=False) from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise FetchError(f"connection failed ({_reason(exc)})", retryable=True) from None
        except requests.RequestException as exc:
            raise FetchError(f"request failed ({type(exc).__name__})", retryable=False) from None
        try:
            declared = raw.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > self.max_body:
                raise FetchError(f"body of {int(declared)} bytes exceeds MAX_FILE_SIZE ({self.max_body} bytes)",
                                 retryable=False, status=raw.status_code)
            chunks, size = [], 0
            for chunk in raw.iter_content(chunk_size=1 << 16):
                size += len(chunk)
                if size > self.max_body:
                    raise FetchError(f"body exceeds MAX_FILE_SIZE ({self.max_body} bytes); download aborted",
                                     retryable=False, status=raw.status_code)
                if time.monotonic() - started > timeout:
                    raise FetchError(f"body not complete within {timeout:g} s (timeout)", retryable=True,
                                     status=raw.status_code)
                chunks.append(chunk)
            return Response(raw.status_code, raw.headers, b"".join(chunks), raw.url, raw.links)
        except requests.Timeout:
            raise FetchError(f"body not complete within {timeout:g} s (timeout)", retryable=True) from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as exc:
            raise FetchError(f"body truncated or connection dropped ({_reason(exc)})", retryable=True) from None
        finally:
            raw.close()


def _reason(exc: BaseException) -> str:
    """A short, URL-free reason from a requests/urllib3 exception chain."""
    text = " ".join(str(a) for a in getattr(exc, "args", ()))
    for marker, reason in (("IncompleteRead", "incomplete read"), ("Connection refused", "connection refused"),
                           ("RemoteDisconnected", "remote end closed the connection"),
                           ("Connection reset", "connection reset"), ("Broken pipe", "broken pipe"),
                           ("Name or service not known", "unknown host"), ("NameResolution", "unknown host"),
                           ("CERTIFICATE_VERIFY_FAILED", "TLS certificate not trusted"),
                           ("SSLError", "TLS error"), ("InvalidChunkLength", "invalid chunked encoding")):
        if marker in text:
            return reason
    return type(exc).__name__


@dataclass
class PageOutcome:
    """What came of one page: a parsed page, or the error after the last attempt."""
    parsed: ParsedPage | None = None
    response: Response | None = None
    url: str = ""
    attempts: int = 0
    error: FetchError | None = None
    cancelled: bool = False


@dataclass
class Gate:
    """The job-wide controls every attempt passes through (shared by the job's processes)."""
    limiter: Any                      # engine.ratelimit.RateLimiter
    semaphore: Any                    # bounds in-flight requests to the job's `concurrency`
    cancelled: Callable[[], bool]
    sleep: Callable[[float], bool]    # cancellable sleep: True when the job was cancelled
    on_request: Callable[[], None] = lambda: None
    on_retry: Callable[[], None] = lambda: None
    on_bytes: Callable[[int], None] = lambda n: None


@dataclass
class SourceRequestSpec:
    method: str
    headers: dict
    body: Any
    fmt: str
    records: str | None
    csv: Any
    auth: Auth = field(default_factory=Auth)


class PageFetcher:
    def __init__(self, client: HttpClient, gate: Gate, retry: Retry, timeout: float):
        self.client, self.gate, self.retry, self.timeout = client, gate, retry, timeout

    def _acquire_slot(self) -> bool:
        while not self.gate.semaphore.acquire(timeout=0.2):
            if self.gate.cancelled():
                return False
        return True

    def fetch(self, source: SourceRequestSpec, url: str, params: dict) -> PageOutcome:
        outcome = PageOutcome(url=url)
        policy = self.retry
        failures = 0
        while True:
            if self.gate.cancelled():
                outcome.cancelled = True
                return outcome
            headers = dict(source.headers)
            query = dict(params)
            wait = 0.0
            try:
                source.auth.apply(headers, query)
                if not self._acquire_slot():
                    outcome.cancelled = True
                    return outcome
                outcome.attempts += 1
                try:
                    response = self.client.send(source.method, url, query, headers, source.body, self.timeout,
                                                self._take_token, self.gate.limiter.answered)
                finally:
                    self.gate.semaphore.release()
                self.gate.on_bytes(len(response.body))
                outcome.response = response
                if 200 <= response.status < 300:
                    outcome.parsed = parse_page(response.body, source.fmt, source.records, source.csv)
                    outcome.error = None
                    return outcome
                raise self._status_error(response, source.auth)
            except _Cancelled:
                outcome.cancelled = True
                return outcome
            except FetchError as exc:
                error = exc
            except BodyError as exc:
                error = FetchError(str(exc), exc.retryable, outcome.response.status if outcome.response else None)
            except AuthError as exc:
                error = FetchError(str(exc), retryable=False)
            outcome.error = error
            failures += 1
            if not error.retryable or failures >= policy.attempts:
                return outcome
            self.gate.on_retry()
            wait = backoff_delay(policy, failures)
            if error.retry_after is not None:
                wait = max(wait, min(error.retry_after, MAX_RETRY_AFTER))
            if error.status == 429:
                self.gate.limiter.pause(wait)
            if self.gate.sleep(wait):
                outcome.cancelled = True
                return outcome

    def _take_token(self) -> Any:
        may_send, ticket = self.gate.limiter.acquire(self.gate.sleep)
        if not may_send:
            raise _Cancelled()
        self.gate.on_request()
        return ticket

    def _status_error(self, response: Response, auth: Auth) -> FetchError:
        status = response.status
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status == 401 and auth.refreshable:
            auth.on_unauthorized()
            return FetchError("HTTP 401 (credentials refreshed)", retryable=True, status=status)
        retryable = status in self.retry.statuses
        return FetchError(f"HTTP {status}{_status_hint(response)}", retryable, status, retry_after)


class _Cancelled(Exception):
    pass


def _status_hint(response: Response) -> str:
    """A short, safe hint from an error body: a JSON `error`/`message` field, if any."""
    if not response.body or len(response.body) > 65536:
        return ""
    try:
        import orjson
        doc = orjson.loads(response.body)
    except Exception:
        return ""
    if isinstance(doc, dict):
        for key in ("error", "message", "detail"):
            value = doc.get(key)
            if isinstance(value, str) and value:
                return f" ({value[:120]})"
    return ""
