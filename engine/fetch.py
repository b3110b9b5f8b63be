"""Fetching one page: the retry loop (`PageFetcher.fetch`) around one HTTP attempt
(`engine.http.HttpClient.send`).

Retries live here, above the job's limiter and concurrency gate, not in urllib3: every
attempt (and every redirect hop) takes a slot of the job's rate limit, and a 429 pauses
every process of the job. A page counts as fetched only once its body parses, so a
truncated or invalid body is retried like a failed request.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

from engine.auth import Auth, AuthError
from engine.backoff import backoff_delay, parse_retry_after
from engine.http import FetchError, HttpClient, Response
from engine.records import BodyError, ParsedPage, parse_page
from engine.spec import Retry

MAX_RETRY_AFTER = 600.0


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
        doc = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(doc, dict):
        for key in ("error", "message", "detail"):
            value = doc.get(key)
            if isinstance(value, str) and value:
                return f" ({value[:120]})"
    return ""
