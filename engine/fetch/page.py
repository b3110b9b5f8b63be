"""Fetching one page: attempts under the job's gate, retried by the one retry policy.

Retries live here, above the job's limiter and concurrency gate: every attempt (and every
redirect hop) takes a rate-limit ticket, settled with what the answer said about the API's
quota, and a 429 (or a 503 with Retry-After) pauses every process of the job. A page counts
as fetched only once its body parses, so a truncated or invalid body is retried too.

What an answer means is decided in this order: the source's response rules (the first that
matches skips the page, retries it or fails it), then the status (not 2xx: a failed attempt,
retried for the retry statuses), then, for GraphQL, a non-empty `errors` list (a failed page),
then the body (its records).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.fetch.auth import Auth
from engine.fetch.client import HttpClient, Response
from engine.fetch.ratelimit import read_signal
from engine.fetch.records import BodyError, ParsedPage, find_records, get_path, parse_page
from engine.fetch.retry import MAX_RETRY_AFTER, FetchError, RetryPolicy, parse_retry_after, retrying
from engine.spec.models import ResponseRule, Retry, Source

__all__ = ["Cancelled", "FetchError", "Gate", "PageFetcher", "PageOutcome", "SourceRequestSpec", "body_quote"]

SLOT_POLL = 0.002  # seconds between tries for a slot of the job's concurrency
QUOTE_CHARS = 300  # how much of a failed answer's body its error text quotes
QUOTE_READ = 1 << 16  # bytes of it read for that (whitespace may shrink them a lot)
PAUSING_STATUSES = (429, 503)  # their Retry-After holds back the whole job
_WHITESPACE = re.compile(r"\s+")
_UNREAD, _NOT_JSON = object(), object()  # the JSON body: not decoded yet / not JSON


@dataclass
class PageOutcome:
    """What came of one page: a parsed page, a page a response rule skipped, or the error
    after the last attempt."""

    parsed: ParsedPage | None = None
    response: Response | None = None
    url: str = ""
    attempts: int = 0
    error: FetchError | None = None
    cancelled: bool = False
    skipped: bool = False  # a `skip` response rule matched: no records, and not an error


@dataclass
class Gate:
    """The job-wide controls every attempt passes through (shared by the job's processes)."""

    limiter: Any  # engine.fetch.ratelimit.RateLimiter
    semaphore: Any  # bounds in-flight requests to the job's `concurrency`
    cancelled: Callable[[], bool]
    sleep: Callable[[float], Awaitable[bool]]  # cancellable sleep: True when the job was cancelled
    on_request: Callable[[], None] = lambda: None
    on_retry: Callable[[FetchError], None] = lambda error: None
    on_bytes: Callable[[int], None] = lambda n: None


def _as_is(text: str) -> str:
    return text


@dataclass
class SourceRequestSpec:
    method: str
    headers: dict
    body: Any
    fmt: str
    records: str | None
    csv: Any
    auth: Auth = field(default_factory=Auth)
    rules: tuple[ResponseRule, ...] = ()  # the source's `responses`, in order
    graphql: bool = False  # a 200 with a non-empty `errors` list is a failed page
    redact: Callable[[str], str] = _as_is  # masks secrets in quoted answer bodies
    pack: bool = False  # keep JSON records packed for the shard's native read (ParsedPage.packed)
    data: bytes | None = field(init=False, default=None)  # the body as sent, encoded once

    def __post_init__(self) -> None:
        if self.body is not None:
            self.data = orjson.dumps(self.body)
            if not any(name.lower() == "content-type" for name in self.headers):
                self.headers = {**self.headers, "Content-Type": "application/json"}

    @classmethod
    def for_source(cls, source: Source, auth: Auth, redact: Callable[[str], str] = _as_is) -> SourceRequestSpec:
        """What every request of `source` carries, and how its answers are read."""
        return cls(
            method=source.method,
            headers=dict(source.headers),
            body=source.body if source.graphql is None else source.graphql.model_dump(),
            fmt=source.format,
            records=source.records,
            csv=source.csv,
            auth=auth,
            rules=tuple(source.responses),
            graphql=source.graphql is not None,
            redact=redact,
        )


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
        tickets: list = []  # one per hop, each settled with the limiter once the hop is over

        async def ticket() -> Any:
            taken = await self._ticket()
            tickets.append(taken)
            return taken

        response = None
        try:
            outcome.attempts += 1
            response = await self.client.send(
                source.method,
                url,
                params,
                headers,
                data,
                self.timeout,
                ticket,
                gate.limiter.answered,
                credentials,
            )
        finally:
            gate.semaphore.release()
            self._settle(tickets, response)
        gate.on_bytes(len(response.body))
        outcome.response = response
        outcome.parsed, outcome.skipped = None, False
        status = response.status
        doc: Any = _UNREAD  # the body decoded as JSON once, when something needs it
        for index, rule in enumerate(source.rules):
            if rule.status is not None:
                matched = status in rule.status
            else:
                if doc is _UNREAD:
                    doc = _json_or_not(response.body)
                matched = doc is not _NOT_JSON and _same(get_path(doc, rule.path or ""), rule.equals)
            if matched:
                if rule.action == "skip":
                    outcome.skipped = True
                    outcome.error = None
                    return
                raise FetchError(
                    f"{self._quoted(source, response)} (responses.{index}: {rule.action})",
                    rule.action == "retry",
                    status,
                    parse_retry_after(response.headers.get("Retry-After")),
                )
        if not 200 <= status < 300:
            raise self._status_error(source, response, auth)
        if source.graphql:
            if doc is _UNREAD:
                doc = _json_or_not(response.body)
            message = _graphql_error(doc, source.redact)
            if message is not None:
                raise FetchError(message, retryable=False, status=status)
        try:
            if source.fmt == "json" and doc is not _UNREAD and doc is not _NOT_JSON:
                records = find_records(doc, source.records)
                outcome.parsed = ParsedPage.of_records(records, doc, source.pack)
            else:
                outcome.parsed = parse_page(response.body, source.fmt, source.records, source.csv, source.pack)
        except BodyError as exc:
            raise FetchError(str(exc), exc.retryable, status) from None
        outcome.error = None

    def _settle(self, tickets: list, response: Response | None) -> None:
        """Tell the limiter each hop is over; the last one's answer (if any) says what is left
        of the API's quota, and a 429/503 with Retry-After pauses the whole job."""
        limiter = self.gate.limiter
        for taken in tickets[:-1]:
            limiter.settle(taken)  # redirect hops: their headers are not seen here
        if not tickets:
            return
        if response is None:
            limiter.settle(tickets[-1])
            return
        limiter.settle(tickets[-1], read_signal(response.headers), heard=True, refused=response.status == 429)
        if response.status in PAUSING_STATUSES:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after is not None:
                limiter.pause(min(retry_after, MAX_RETRY_AFTER))

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
        self.gate.on_retry(error)
        if error.status == 429 and error.retry_after is None:  # with one, `_settle` paused already
            self.gate.limiter.pause(wait)

    def _status_error(self, source: SourceRequestSpec, response: Response, auth: Auth) -> FetchError:
        status = response.status
        if status == 401 and auth.refreshable:
            auth.on_unauthorized()
            return FetchError("HTTP 401 (credentials refreshed)", retryable=True, status=status)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return FetchError(self._quoted(source, response), status in self.retry.statuses, status, retry_after)

    @staticmethod
    def _quoted(source: SourceRequestSpec, response: Response) -> str:
        quote = body_quote(response.body, source.redact)
        return f"HTTP {response.status}: {quote}" if quote else f"HTTP {response.status}"


def body_quote(body: bytes, redact: Callable[[str], str] = _as_is, limit: int = QUOTE_CHARS) -> str:
    """The start of an answer's body for an error text: decoded as UTF-8 (undecodable bytes
    replaced), whitespace collapsed, secrets masked - before it is cut, so that a secret at the
    cut is not half shown - and at most `limit` characters."""
    text = _WHITESPACE.sub(" ", body[:QUOTE_READ].decode("utf-8", "replace")).strip()
    if not text:
        return ""
    text = redact(text[: limit * 4])  # enough for `limit` characters after masking
    return text[:limit].rstrip()


def _json_or_not(body: bytes) -> Any:
    """The decoded JSON body, or _NOT_JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return _NOT_JSON


def _same(value: Any, expected: Any) -> bool:
    """JSON equality: `true` is not `1`, but `1` is `1.0`."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return type(value) is type(expected) and value == expected
    return value == expected


def _graphql_error(doc: Any, redact: Callable[[str], str]) -> str | None:
    """The failure of a GraphQL answer with a non-empty `errors` list, naming its first message
    (masked before it is cut, like a body quote)."""
    if not isinstance(doc, dict):
        return None
    errors = doc.get("errors")
    if not isinstance(errors, list) or not errors:
        return None
    first = errors[0]
    message = first.get("message") if isinstance(first, dict) else first
    text = message if isinstance(message, str) else orjson.dumps(first).decode()
    text = redact(_WHITESPACE.sub(" ", text).strip()[: QUOTE_CHARS * 4])[:QUOTE_CHARS]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"GraphQL error: {text}{more}"
