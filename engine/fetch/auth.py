"""Credentials applied to every request and every retry of a source.

OAuth2 client-credentials tokens are fetched once per job and shared by all its processes
through a `TokenStore` (the job's Manager dict, guarded by one cross-process lock); a 401 or
the token's expiry makes the first process that notices fetch a new one for everybody. A
failed token request is shared the same way: whoever was waiting for it gets its error
instead of asking the endpoint again.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, MutableMapping
from contextvars import ContextVar
from typing import Any, Protocol, TypeGuard
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from engine.fetch.client import REDIRECT_STATUSES, HttpClient, Response
from engine.fetch.retry import FetchError, parse_retry_after
from engine.spec.models import OAuth2Auth

EXPIRY_MARGIN = 0.1  # refresh when 90 % of a token's lifetime has passed
MASK = "***"
RETRYABLE_TOKEN_STATUSES = (408, 425, 429, 500, 502, 503, 504)
TOKEN_LOCK_POLL = 0.005  # seconds between tries for the job's token lock


class AuthError(FetchError):
    """Credentials could not be obtained (e.g. the token endpoint refused the client). A
    FetchError, so the page's retry loop treats it like any failed attempt: retried when
    `retryable` (the endpoint was down or busy), else the page fails with this message."""

    def __init__(self, message: str, retryable: bool = False, retry_after: float | None = None):
        super().__init__(message, retryable, None, retry_after)


class TokenStore(Protocol):
    def get(self, key: str) -> dict | None: ...
    def put(self, key: str, value: dict) -> None: ...
    def lock(self) -> Any: ...


class DictTokenStore:
    """A TokenStore over any mapping (a Manager dict across processes, a plain dict in tests)."""

    def __init__(self, mapping: MutableMapping, lock: Any):
        self._mapping = mapping
        self._lock = lock

    def get(self, key: str) -> dict | None:
        return self._mapping.get(key)

    def put(self, key: str, value: dict) -> None:
        self._mapping[key] = value

    def lock(self) -> Any:
        return self._lock


class Auth:
    """No credentials."""

    refreshable = False

    async def ready(self) -> None:
        """Obtain what `apply` needs (an OAuth2 token); awaited before every attempt."""

    def apply(self, headers: dict, params: dict) -> None:
        pass

    def on_unauthorized(self) -> bool:
        """Called after a 401; True when a retry with fresh credentials is worth it."""
        return False

    def shown_params(self, params: dict) -> dict:
        """The query parameters of a request as messages show them (credentials masked)."""
        return params

    def without_credentials(self, url: str) -> str:
        """`url` minus the credentials `apply` adds anyway (a next URL that echoes them)."""
        return url


class HeaderValueAuth(Auth):
    def __init__(self, name: str, value: str):
        self.name, self.value = name, value

    def apply(self, headers: dict, params: dict) -> None:
        headers[self.name] = self.value


class QueryAuth(Auth):
    def __init__(self, name: str, value: str):
        self.name, self.value = name, value

    def apply(self, headers: dict, params: dict) -> None:
        params[self.name] = self.value

    def shown_params(self, params: dict) -> dict:
        return {**params, self.name: MASK}

    def without_credentials(self, url: str) -> str:
        """APIs often build next/Link URLs from the request's own query, key included: the
        key is dropped (apply adds it again), so it is neither sent twice nor kept in a
        shard's resume token on disk."""
        try:
            parts = urlsplit(url)
            query = parse_qsl(parts.query, keep_blank_values=True)
        except ValueError:
            return url
        kept = [(k, v) for k, v in query if k != self.name]
        if len(kept) == len(query):
            return url
        return urlunsplit(parts._replace(query=urlencode(kept)))


class OAuth2ClientCredentials(Auth):
    refreshable = True

    def __init__(
        self,
        spec: OAuth2Auth,
        store: TokenStore,
        key: str,
        timeout: float,
        client: HttpClient,
        clock: Callable[[], float] = time.time,
        on_token: Callable[[str], None] | None = None,
    ):
        self.spec, self.store, self.key, self.timeout, self.client = spec, store, key, timeout, client
        self.clock = clock
        self.on_token = on_token  # told every access token this process uses (to mask it)
        self._current: dict | None = None
        self._stale: dict | None = None
        self._carried: ContextVar[dict | None] = ContextVar(f"carried:{key}", default=None)  # per task
        self._local_lock: asyncio.Lock | None = None

    def _valid(self, token: dict | None) -> TypeGuard[dict]:
        return token is not None and bool(token) and token["expires_at"] > self.clock()

    def _endpoint(self) -> str:
        """The token URL as messages name it: without its query (which may carry anything)."""
        parts = urlsplit(self.spec.token_url)
        return urlunsplit(parts._replace(query="", fragment=""))

    async def _post(self, form: dict, headers: dict) -> Response:
        headers = {**headers, "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        return await self.client.send(
            "POST",
            self.spec.token_url,
            {},
            headers,
            urlencode(form).encode(),
            self.timeout,
            _no_ticket,
            _unused_ticket,
            follow_redirects=False,
        )

    async def _fetch(self) -> dict:
        endpoint = f"oauth2 token endpoint {self._endpoint()}"
        form = {"grant_type": "client_credentials"}
        if self.spec.scope:
            form["scope"] = self.spec.scope
        basic = _basic(self.spec.client_id, self.spec.client_secret)
        try:
            response = await self._post(form, {"Authorization": f"Basic {basic}"})
            if response.status in (400, 401):
                # Some servers want the client credentials in the form body instead.
                response = await self._post(
                    {**form, "client_id": self.spec.client_id, "client_secret": self.spec.client_secret}, {}
                )
        except FetchError as exc:
            # Worded by the client from the exception type: no URL in it.
            raise AuthError(f"{endpoint} could not be reached: {exc.message}", retryable=exc.retryable) from None
        if response.status in REDIRECT_STATUSES:
            raise AuthError(
                f"{endpoint} answered HTTP {response.status} (a redirect; token requests do not follow redirects)"
            )
        if response.status != 200:
            raise AuthError(
                f"{endpoint} answered HTTP {response.status}{_oauth_error(response)}",
                retryable=response.status in RETRYABLE_TOKEN_STATUSES,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        try:
            body = orjson.loads(response.body)
            token = body["access_token"]
            if not isinstance(token, str) or not token:
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise AuthError(f"{endpoint} answered without an access_token") from None
        lifetime = body.get("expires_in")
        if isinstance(lifetime, str):
            try:
                lifetime = float(lifetime)
            except ValueError:
                lifetime = None
        lifetime = float(lifetime) if isinstance(lifetime, (int, float)) and lifetime > 0 else 3600.0
        return {"token": token, "expires_at": self.clock() + lifetime * (1 - EXPIRY_MARGIN), "fetched_at": self.clock()}

    async def _token(self, stale: dict | None = None) -> dict:
        shared = self.store.get(self.key)
        if self._valid(shared) and shared != stale:
            return shared
        asked = self.clock()
        lock = self.store.lock()
        # The job-wide lock is a blocking one: poll it, so the event loop keeps running.
        while not lock.acquire(False):
            await asyncio.sleep(TOKEN_LOCK_POLL)
        try:
            shared = self.store.get(self.key)  # somebody may have refreshed while we waited
            if self._valid(shared) and shared != stale:
                return shared
            failed = self.store.get(self.key + ":error")
            if failed and failed["at"] >= asked:
                # The request we waited for failed: share its error rather than asking again.
                raise AuthError(failed["message"], failed["retryable"], failed["retry_after"])
            try:
                fresh = await self._fetch()
            except AuthError as exc:
                self.store.put(
                    self.key + ":error",
                    {
                        "message": exc.message,
                        "retryable": exc.retryable,
                        "retry_after": exc.retry_after,
                        "at": self.clock(),
                    },
                )
                raise
            self.store.put(self.key, fresh)
            return fresh
        finally:
            lock.release()

    async def ready(self) -> None:
        if self._valid(self._current):
            return
        if self._local_lock is None:
            self._local_lock = asyncio.Lock()
        async with self._local_lock:  # one token request per process, the other lanes wait for it
            if not self._valid(self._current):
                current = await self._token(stale=self._stale)
                if self.on_token is not None:
                    self.on_token(current["token"])
                self._current = current

    def apply(self, headers: dict, params: dict) -> None:
        current = self._current
        if current is None:
            raise AuthError("oauth2 token requested before `ready()`")
        self._carried.set(current)
        headers["Authorization"] = f"Bearer {current['token']}"

    def on_unauthorized(self) -> bool:
        # Only the token this task's request carried is stale: another lane may have
        # refreshed it already, and that fresh one must not be thrown away.
        carried = self._carried.get()
        if carried is not None and carried == self._current:
            self._stale, self._current = carried, None
        return True


def _basic(user: str, password: str) -> str:
    """HTTP Basic credentials as `requests` encodes them (latin-1, else UTF-8)."""
    raw = f"{user}:{password}"
    try:
        encoded = raw.encode("latin-1")
    except UnicodeEncodeError:
        encoded = raw.encode()
    return base64.b64encode(encoded).decode()


async def _no_ticket() -> None:
    return None


def _unused_ticket(ticket: Any) -> None:
    pass


def _oauth_error(response) -> str:
    """RFC 6749 §5.2 `error` (and `error_description`, or a `message`) from a token error body."""
    try:
        body = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return ""
    description = body.get("error_description") or body.get("message")
    if isinstance(description, str) and description:
        return f" ({body['error'][:80]}: {description[:160]})"
    return f" ({body['error'][:80]})"


def make_auth(
    spec: Any,
    store: TokenStore | None,
    key: str,
    timeout: float,
    client: HttpClient | None = None,
    on_token: Callable[[str], None] | None = None,
) -> Auth:
    """The applier for a source's (resolved) `auth` spec. `on_token`: told each OAuth2 access
    token obtained at run time (the job's redactor masks it from then on)."""
    if spec is None:
        return Auth()
    if spec.type == "bearer":
        return HeaderValueAuth("Authorization", f"Bearer {spec.token}")
    if spec.type == "header":
        return HeaderValueAuth(spec.name, spec.value)
    if spec.type == "query":
        return QueryAuth(spec.name, spec.value)
    if spec.type == "basic":
        raw = f"{spec.username}:{spec.password}".encode()
        return HeaderValueAuth("Authorization", "Basic " + base64.b64encode(raw).decode())
    if spec.type == "oauth2":
        if store is None or client is None:
            raise ValueError("oauth2 needs a token store and an HTTP client")
        return OAuth2ClientCredentials(spec, store, key, timeout, client, on_token=on_token)
    raise ValueError(f"unknown auth type {spec.type}")
