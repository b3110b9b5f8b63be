"""Fetching one page: attempts under the job's gate, retried by the one retry policy.

Retries live here, above the job's limiter and concurrency gate: every attempt (and every
redirect hop) takes a rate-limit ticket, and a 429 pauses every process of the job. A page
counts as fetched only once its body parses, so a truncated or invalid body is retried too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.fetch.auth import Auth
from engine.fetch.client import HttpClient, Response
from engine.fetch.records import BodyError, ParsedPage, parse_page
from engine.fetch.retry import FetchError, RetryPolicy, parse_retry_after, retrying
from engine.spec.models import Retry

__all__ = ["Cancelled", "FetchError", "Gate", "PageFetcher", "PageOutcome", "SourceRequestSpec"]

SLOT_POLL = 0.002  # seconds between tries for a slot of the job's concurrency


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

    limiter: Any  # engine.fetch.ratelimit.RateLimiter
    semaphore: Any  # bounds in-flight requests to the job's `concurrency`
    cancelled: Callable[[], bool]
    sleep: Callable[[float], Awaitable[bool]]  # cancellable sleep: True when the job was cancelled
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
    data: bytes | None = field(init=False, default=None)  # the body as sent, encoded once

    def __post_init__(self) -> None:
        if self.body is not None:
            self.data = orjson.dumps(self.body)
            if not any(name.lower() == "content-type" for name in self.headers):
                self.headers = {**self.headers, "Content-Type": "application/json"}


class Cancelled(Exception):
    """The job was cancelled while a page was under way."""


class PageFetcher:
    def __init__(self, client: HttpClient, gate: Gate, retry: Retry, timeout: float):
        self.client, self.gate, self.retry, self.timeout = client, gate, retry, timeout
        self.policy = RetryPolicy(retry)

    async def fetch(
        self,
        source: SourceRequestSpec,
        url: str,
        params: dict,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> PageOutcome:
        """One page. `body` (a JSON object) replaces the source's body for this request (its
        pagination or fan-out values are in it); `headers` are added to the source's."""
        outcome = PageOutcome(url=url)
        data = orjson.dumps(body) if body is not None else source.data
        try:
            await retrying(
                self.policy,
                lambda: self._attempt(source, url, params, outcome, data, headers),
                self._sleep,
                self._before_sleep,
            )
        except FetchError as exc:
            outcome.error = exc
        except Cancelled:
            outcome.cancelled = True
        return outcome

    async def _attempt(
        self,
        source: SourceRequestSpec,
        url: str,
        params: dict,
        outcome: PageOutcome,
        data: bytes | None,
        extra_headers: Mapping[str, str] | None,
    ) -> None:
        gate = self.gate
        if gate.cancelled():
            raise Cancelled()
        auth = source.auth
        await auth.ready()  # an OAuth2 token fetch; its AuthError is a FetchError
        headers = dict(source.headers)
        if extra_headers:
            headers.update(extra_headers)
        credentials: dict = {}
        auth.apply(headers, credentials)
        await self._slot()
        try:
            outcome.attempts += 1
            response = await self.client.send(
                source.method,
                url,
                params,
                headers,
                data,
                self.timeout,
                self._ticket,
                gate.limiter.answered,
                credentials,
            )
        finally:
            gate.semaphore.release()
        gate.on_bytes(len(response.body))
        outcome.response = response
        if not 200 <= response.status < 300:
            raise self._status_error(response, auth)
        try:
            outcome.parsed = parse_page(response.body, source.fmt, source.records, source.csv)
        except BodyError as exc:
            raise FetchError(str(exc), exc.retryable, response.status) from None
        outcome.error = None

    async def _slot(self) -> None:
        # The job's semaphore is shared with other processes and cannot be awaited: poll it.
        semaphore = self.gate.semaphore
        while not semaphore.acquire(False):
            if self.gate.cancelled():
                raise Cancelled()
            await asyncio.sleep(SLOT_POLL)

    async def _ticket(self) -> Any:
        may_send, ticket = await self.gate.limiter.acquire_async(self.gate.sleep)
        if not may_send:
            raise Cancelled()
        self.gate.on_request()
        return ticket

    async def _sleep(self, seconds: float) -> None:
        if await self.gate.sleep(seconds):
            raise Cancelled()

    def _before_sleep(self, error: FetchError, wait: float) -> None:
        self.gate.on_retry()
        if error.status == 429:
            self.gate.limiter.pause(wait)

    def _status_error(self, response: Response, auth: Auth) -> FetchError:
        status = response.status
        if status == 401 and auth.refreshable:
            auth.on_unauthorized()
            return FetchError("HTTP 401 (credentials refreshed)", retryable=True, status=status)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return FetchError(f"HTTP {status}{_status_hint(response)}", status in self.retry.statuses, status, retry_after)


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
