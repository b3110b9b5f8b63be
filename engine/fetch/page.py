"""Fetching one page: the retry loop around one HTTP attempt.

The loop itself (`PageFetcher._attempts`) does no I/O: it is a generator that says what to do
next - send an attempt, or sleep before the next one - and is handed what came of it. Two
drivers run it: `fetch` on a blocking thread over `engine.fetch.transport.HttpClient`, and `fetch_async`
on the fetch process's event loop over `engine.fetch.aio_transport.AsyncHttpClient` (many requests in
flight without a thread each). So both behave alike by construction.

Retries live here, above the job's limiter and concurrency gate, not in urllib3: every
attempt (and every redirect hop) takes a slot of the job's rate limit, and a 429 pauses
every process of the job. A page counts as fetched only once its body parses, so a
truncated or invalid body is retried like a failed request.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generator

import orjson

from engine.fetch.auth import Auth, AuthError
from engine.fetch.retry import backoff_delay, parse_retry_after
from engine.fetch.transport import FetchError, HttpClient, Response
from engine.fetch.records import BodyError, ParsedPage, parse_page
from engine.spec.models import Retry

MAX_RETRY_AFTER = 600.0
SLOT_POLL = 0.002   # seconds between tries for a slot of the job's concurrency on the event loop


@dataclass
class PageOutcome:
    """What came of one page: a parsed page, or the error after the last attempt."""
    parsed: ParsedPage | None = None
    response: Response | None = None
    url: str = ""
    attempts: int = 0
    error: FetchError | None = None
    cancelled: bool = False


async def _never_cancelled_sleep(seconds: float) -> bool:
    await asyncio.sleep(seconds)
    return False


@dataclass
class Gate:
    """The job-wide controls every attempt passes through (shared by the job's processes)."""
    limiter: Any                      # engine.fetch.ratelimit.RateLimiter
    semaphore: Any                    # bounds in-flight requests to the job's `concurrency`
    cancelled: Callable[[], bool]
    sleep: Callable[[float], bool]    # cancellable sleep: True when the job was cancelled
    on_request: Callable[[], None] = lambda: None
    on_retry: Callable[[], None] = lambda: None
    on_bytes: Callable[[int], None] = lambda n: None
    sleep_async: Callable[[float], Awaitable[bool]] = _never_cancelled_sleep   # `sleep` on the event loop


@dataclass
class SourceRequestSpec:
    method: str
    headers: dict
    body: Any
    fmt: str
    records: str | None
    csv: Any
    auth: Auth = field(default_factory=Auth)


@dataclass
class _Send:
    """A step of the retry loop: send one attempt with these (credentials applied)."""
    query: dict
    headers: dict


class _Cancelled(Exception):
    pass


class PageFetcher:
    def __init__(self, client: HttpClient, gate: Gate, retry: Retry, timeout: float, aio_client: Any = None):
        self.client, self.gate, self.retry, self.timeout = client, gate, retry, timeout
        self.aio_client = aio_client   # engine.fetch.aio_transport.AsyncHttpClient, for `fetch_async`

    # ------------------------------------------------------------ the loop, free of I/O

    def _attempts(self, source: SourceRequestSpec, params: dict, outcome: PageOutcome) -> Generator[Any, Any, None]:
        """Yields `_Send` (sent back: the Response; a failed attempt is thrown in as FetchError)
        or a float, seconds to wait (sent back: True when the job was cancelled meanwhile).
        Fills `outcome`; a cancel found by the driver ends the loop with `close()`."""
        failures = 0
        while True:
            if self.gate.cancelled():
                outcome.cancelled = True
                return
            try:
                headers, query = dict(source.headers), dict(params)
                # An OAuth2 token fetch blocks here, on the event loop too: every request
                # waits for that token anyway.
                source.auth.apply(headers, query)
                response = yield _Send(query, headers)
                self.gate.on_bytes(len(response.body))
                outcome.response = response
                if 200 <= response.status < 300:
                    outcome.parsed = parse_page(response.body, source.fmt, source.records, source.csv)
                    outcome.error = None
                    return
                raise self._status_error(response, source.auth)
            except FetchError as exc:
                error = exc
            except BodyError as exc:
                error = FetchError(str(exc), exc.retryable, outcome.response.status if outcome.response else None)
            except AuthError as exc:
                error = FetchError(str(exc), retryable=False)
            outcome.error = error
            failures += 1
            if not error.retryable or failures >= self.retry.attempts:
                return
            self.gate.on_retry()
            wait = backoff_delay(self.retry, failures)
            if error.retry_after is not None:
                wait = max(wait, min(error.retry_after, MAX_RETRY_AFTER))
            if error.status == 429:
                self.gate.limiter.pause(wait)
            if (yield wait):
                outcome.cancelled = True
                return

    def _status_error(self, response: Response, auth: Auth) -> FetchError:
        status = response.status
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status == 401 and auth.refreshable:
            auth.on_unauthorized()
            return FetchError("HTTP 401 (credentials refreshed)", retryable=True, status=status)
        retryable = status in self.retry.statuses
        return FetchError(f"HTTP {status}{_status_hint(response)}", retryable, status, retry_after)

    # ------------------------------------------------------------ on a blocking thread

    def fetch(self, source: SourceRequestSpec, url: str, params: dict) -> PageOutcome:
        outcome = PageOutcome(url=url)
        steps = self._attempts(source, params, outcome)
        reply, failure = None, None
        while True:
            try:
                step = steps.send(reply) if failure is None else steps.throw(failure)
            except StopIteration:
                return outcome
            reply, failure = None, None
            if not isinstance(step, _Send):
                reply = self.gate.sleep(step)
                continue
            try:
                reply = self._send(source, url, step, outcome)
            except FetchError as exc:
                failure = exc
            except _Cancelled:
                steps.close()
                outcome.cancelled = True
                return outcome

    def _send(self, source: SourceRequestSpec, url: str, step: _Send, outcome: PageOutcome) -> Response:
        while not self.gate.semaphore.acquire(timeout=0.2):
            if self.gate.cancelled():
                raise _Cancelled()
        try:
            outcome.attempts += 1
            return self.client.send(source.method, url, step.query, step.headers, source.body, self.timeout,
                                    self._take_token, self.gate.limiter.answered)
        finally:
            self.gate.semaphore.release()

    def _take_token(self) -> Any:
        may_send, ticket = self.gate.limiter.acquire(self.gate.sleep)
        if not may_send:
            raise _Cancelled()
        self.gate.on_request()
        return ticket

    # ------------------------------------------------------------ on the event loop

    async def fetch_async(self, source: SourceRequestSpec, url: str, params: dict) -> PageOutcome:
        outcome = PageOutcome(url=url)
        steps = self._attempts(source, params, outcome)
        reply, failure = None, None
        while True:
            try:
                step = steps.send(reply) if failure is None else steps.throw(failure)
            except StopIteration:
                return outcome
            reply, failure = None, None
            if not isinstance(step, _Send):
                reply = await self.gate.sleep_async(step)
                continue
            try:
                reply = await self._send_async(source, url, step, outcome)
            except FetchError as exc:
                failure = exc
            except _Cancelled:
                steps.close()
                outcome.cancelled = True
                return outcome

    async def _send_async(self, source: SourceRequestSpec, url: str, step: _Send, outcome: PageOutcome) -> Response:
        # The job's semaphore is shared with other processes and cannot be awaited: poll it.
        while not self.gate.semaphore.acquire(False):
            if self.gate.cancelled():
                raise _Cancelled()
            await asyncio.sleep(SLOT_POLL)
        try:
            outcome.attempts += 1
            return await self.aio_client.send(source.method, url, step.query, step.headers, source.body,
                                              self.timeout, self._take_token_async, self.gate.limiter.answered)
        finally:
            self.gate.semaphore.release()

    async def _take_token_async(self) -> Any:
        may_send, ticket = await self.gate.limiter.acquire_async(self.gate.sleep_async)
        if not may_send:
            raise _Cancelled()
        self.gate.on_request()
        return ticket


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
