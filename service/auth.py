"""Who may call the API: the check every /api/export route, the websockets and /metrics run
first (a blueprint `before_request` hook, so no route can forget it), and the signed links
that let a browser download a result or open a websocket without sending a header.

- With API_TOKEN set, a request needs `Authorization: Bearer <API_TOKEN>` (constant-time
  compare), or a valid signed link on the one route and task it was signed for.
- A `token` query parameter is refused (401) whether or not a token is configured: a token in
  a URL ends up in browser history, proxy logs and Referer headers.
- Signed links: `?expires=<epoch seconds>&sig=<hex HMAC-SHA256(route, task id, expires)>`,
  valid LINK_TTL seconds, keyed by a secret derived from API_TOKEN - or, with no token, by a
  random key created once in DATA_DIR (atomically, so every gunicorn worker shares it).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from flask import request

from config import Settings
from service import services
from service.errors import ApiError

LINK_TTL = 60  # seconds a signed link is valid
LINK_KEY_FILE = "link-signing.key"
# the routes a link can be signed for: name in the signature -> Flask endpoint
SIGNED_ROUTES = {"download": "export.download", "ws": "export.task_socket"}
_KEY_CONTEXT = b"pageferry signed links v1"


def require_token() -> None:
    """401 for a token in the query string; for a signed link, 401 when expired and 403 when
    it does not match this route and task; else, with API_TOKEN set, 401 unless the request
    carries `Authorization: Bearer <API_TOKEN>`."""
    if "token" in request.args:
        raise ApiError(
            401,
            "a token in the query string is refused: send Authorization: Bearer <API_TOKEN> "
            "(browsers: POST /api/export/download-link/{id} or /ws-link/{id} for a signed URL)",
            "token_in_url",
        )
    if "sig" in request.args or "expires" in request.args:
        _check_signed_link()
        return None
    token = services().settings.api_token
    if not token:
        return None
    header = request.headers.get("Authorization", "")
    given = header[7:] if header.startswith("Bearer ") else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(401, "missing or wrong API token: send Authorization: Bearer <API_TOKEN>", "unauthorized")
    return None


# ------------------------------------------------------------------ signed links


def link_key(settings: Settings) -> bytes:
    """The key links are signed with: derived from API_TOKEN, else the random key in DATA_DIR."""
    if settings.api_token:
        return hmac.new(settings.api_token.encode(), _KEY_CONTEXT, hashlib.sha256).digest()
    return _stored_key(settings.data_dir.resolve())


@lru_cache(maxsize=4)
def _stored_key(data_dir: Path) -> bytes:
    """DATA_DIR/link-signing.key: 32 random bytes, created once. The first process to link
    its complete temp file into place wins; every other one reads that file."""
    path = data_dir / LINK_KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        temp = data_dir / f".{LINK_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(32))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)  # fails when another worker got there first: use theirs
        except FileExistsError:
            pass
        finally:
            temp.unlink(missing_ok=True)
    key = path.read_bytes()
    if len(key) != 32:
        raise RuntimeError(f"{path} is not a 32-byte key: remove it and restart the service")
    return key


def signature(key: bytes, route: str, task_id: str, expires: int) -> str:
    return hmac.new(key, f"{route}\n{task_id}\n{expires}".encode(), hashlib.sha256).hexdigest()


def signed_query(route: str, task_id: str, now: float | None = None) -> tuple[str, int]:
    """(`expires=…&sig=…`, expires) for `route` ("download" | "ws") of `task_id`."""
    expires = int(now if now is not None else time.time()) + LINK_TTL
    sig = signature(link_key(services().settings), route, task_id, expires)
    return f"expires={expires}&sig={sig}", expires


def iso_utc(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_signed_link() -> None:
    route = next((name for name, endpoint in SIGNED_ROUTES.items() if endpoint == request.endpoint), None)
    task_id = (request.view_args or {}).get("task_id")
    if route is None or not isinstance(task_id, str):
        raise ApiError(403, "signed links are only for a task's download and websocket", "bad_signature")
    raw_expires, given = request.args.get("expires", ""), request.args.get("sig", "")
    if not raw_expires.isdigit() or len(raw_expires) > 12 or not given:
        raise ApiError(403, "the signed link is malformed", "bad_signature")
    expires = int(raw_expires)
    expected = signature(link_key(services().settings), route, task_id, expires)
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(403, "the link's signature does not match this task and route", "bad_signature")
    now = time.time()
    if expires < now:
        raise ApiError(401, "the signed link has expired: ask for a new one", "link_expired")
    if expires > now + LINK_TTL + 5:
        raise ApiError(403, "the signed link is valid for longer than links are issued for", "bad_signature")
