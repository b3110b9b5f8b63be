"""Credentials applied to every request and every retry of a source.

OAuth2 client-credentials tokens are fetched once per job and shared by all its processes
through a `TokenStore` (the job's Manager dict, guarded by one cross-process lock); a 401 or
the token's expiry makes the first process that notices fetch a new one for everybody.
"""
from __future__ import annotations

import base64
import time
from typing import Any, Callable, MutableMapping, Protocol

import requests

from engine.spec import OAuth2Auth

EXPIRY_MARGIN = 0.1  # refresh when 90 % of a token's lifetime has passed


class AuthError(Exception):
    """Credentials could not be obtained (e.g. the token endpoint refused the client)."""


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

    def apply(self, headers: dict, params: dict) -> None:
        pass

    def on_unauthorized(self) -> bool:
        """Called after a 401; True when a retry with fresh credentials is worth it."""
        return False


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


class OAuth2ClientCredentials(Auth):
    refreshable = True

    def __init__(self, spec: OAuth2Auth, store: TokenStore, key: str, timeout: float,
                 session_factory: Callable[[], requests.Session] = requests.Session,
                 clock: Callable[[], float] = time.time):
        self.spec, self.store, self.key, self.timeout = spec, store, key, timeout
        self.session_factory, self.clock = session_factory, clock
        self._current: dict | None = None

    def _valid(self, token: dict | None) -> bool:
        return bool(token) and token["expires_at"] > self.clock()

    def _fetch(self) -> dict:
        data = {"grant_type": "client_credentials"}
        if self.spec.scope:
            data["scope"] = self.spec.scope
        session = self.session_factory()
        try:
            response = session.post(self.spec.token_url, data=data, timeout=self.timeout,
                                    auth=(self.spec.client_id, self.spec.client_secret))
            if response.status_code in (400, 401):
                # Some servers want the client credentials in the form body instead.
                response = session.post(self.spec.token_url, timeout=self.timeout, data={
                    **data, "client_id": self.spec.client_id, "client_secret": self.spec.client_secret})
        except requests.RequestException as exc:
            raise AuthError(f"oauth2 token request failed: {type(exc).__name__}") from None
        finally:
            session.close()
        if response.status_code != 200:
            detail = ""
            try:
                body = response.json()
                detail = f" ({body.get('error')})" if isinstance(body, dict) and body.get("error") else ""
            except ValueError:
                pass
            raise AuthError(f"oauth2 token endpoint answered {response.status_code}{detail}")
        try:
            body = response.json()
            token = body["access_token"]
        except (ValueError, KeyError, TypeError):
            raise AuthError("oauth2 token endpoint answered without an access_token") from None
        lifetime = body.get("expires_in")
        lifetime = float(lifetime) if isinstance(lifetime, (int, float)) and lifetime > 0 else 3600.0
        return {"token": token, "expires_at": self.clock() + lifetime * (1 - EXPIRY_MARGIN),
                "fetched_at": self.clock()}

    def _token(self, stale: dict | None = None) -> dict:
        shared = self.store.get(self.key)
        if self._valid(shared) and shared != stale:
            return shared
        with self.store.lock():
            shared = self.store.get(self.key)  # somebody may have refreshed while we waited
            if self._valid(shared) and shared != stale:
                return shared
            fresh = self._fetch()
            self.store.put(self.key, fresh)
            return fresh

    def apply(self, headers: dict, params: dict) -> None:
        if not self._valid(self._current):
            self._current = self._token()
        headers["Authorization"] = f"Bearer {self._current['token']}"

    def on_unauthorized(self) -> bool:
        self._current = self._token(stale=self._current)
        return True


def make_auth(spec, store: TokenStore | None, key: str, timeout: float) -> Auth:
    """The applier for a source's (resolved) `auth` spec."""
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
        if store is None:
            raise ValueError("oauth2 needs a token store")
        return OAuth2ClientCredentials(spec, store, key, timeout)
    raise ValueError(f"unknown auth type {spec.type}")
