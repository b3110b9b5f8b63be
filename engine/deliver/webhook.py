"""The webhook: one signed POST of a JSON document when a job ends (docs/spec.md, "Webhook").
The CLI sends it with `post_webhook`; the service schedules the same attempts through its task
store, so no ending is lost to a crash.

Sent through the fetch client (engine/fetch/client.py) under the caller's outbound policy: the
URL parsed by the parser that sends, every resolved address checked, no redirect followed, no
~/.netrc; the environment's proxy applies as it does to sources (the operator's).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.fetch.outbound import OutboundPolicy
from engine.fetch.retry import FetchError, parse_retry_after, wait_before_retry
from engine.spec.models import Retry
from engine.spec.redact import Redactor

USER_AGENT = "pageferry-webhook/1.0"
SIGNATURE_HEADER = "X-Pageferry-Signature"
MAX_DELAY = 60.0
RETRY_STATUSES = {408, 425, 429}
MAX_REPLY = 1 << 20  # bytes of the receiver's answer read (and ignored)


def body_of(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


@dataclass
class Attempt:
    ok: bool
    retryable: bool = False
    error: str | None = None
    retry_after: float | None = None


def delay_before(attempt: int, backoff: float, retry_after: float | None = None) -> float:
    """Seconds to wait before try number `attempt + 1`: the engine's one retry wait."""
    policy = Retry(attempts=max(attempt, 1), backoff=backoff, max_backoff=MAX_DELAY)
    return wait_before_retry(policy, attempt, retry_after, max_retry_after=MAX_DELAY)


def send_once(webhook, body: bytes, task_id: str | None = None, policy: OutboundPolicy | None = None) -> Attempt:
    """One POST of `body` to `webhook.url` (a resolved spec model: secrets substituted), allowed
    by `policy` (the service's: `outbound_policy(settings, service=True)`; None: anywhere)."""
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if webhook.secret:
        headers[SIGNATURE_HEADER] = signature(webhook.secret, body)
    if task_id:
        headers["X-Pageferry-Task"] = task_id
    try:
        status, retry_after_header = asyncio.run(_post(webhook, body, headers, policy))
    except FetchError as exc:
        if exc.status is not None:  # answered, but the answer's body failed: the status counts
            status, retry_after_header = exc.status, None
        elif exc.message.endswith("(timeout)"):
            return Attempt(False, True, f"timed out after {webhook.timeout:g} s")
        else:
            return Attempt(False, exc.retryable, exc.message)
    if 200 <= status < 300:
        return Attempt(True)
    retry_after = None
    if status == 429 or status == 503:
        retry_after = parse_retry_after(retry_after_header)
    if 300 <= status < 400:
        return Attempt(False, False, f"HTTP {status} (redirects are not followed)")
    return Attempt(False, status >= 500 or status in RETRY_STATUSES, f"HTTP {status}", retry_after)


async def _post(webhook, body: bytes, headers: dict, policy: OutboundPolicy | None) -> tuple[int, str | None]:
    from engine.fetch.client import HttpClient  # aiohttp: loaded when a webhook is sent

    client = HttpClient(MAX_REPLY, policy, lanes=1)
    try:
        response = await client.send(
            "POST", webhook.url, {}, headers, body, webhook.timeout, _no_ticket, _unused, follow_redirects=False
        )
    finally:
        await client.close()
    return response.status, response.headers.get("Retry-After")


async def _no_ticket() -> None:
    return None


def _unused(ticket: object) -> None:
    pass


def post_webhook(
    webhook,
    payload: dict,
    redactor: Redactor,
    task_id: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    policy: OutboundPolicy | None = None,
) -> dict:
    """POST `payload` until it is accepted or `webhook.attempts` are used up.
    Returns the status's `webhook` section: {"delivered", "attempts", "error"}.

    `body_of(payload)` fixes the exact bytes; `signature(secret, body)` is the header value
    `sha256=<hex HMAC-SHA256 of those bytes>`; `send_once` makes one attempt and says whether
    another could help; `post_webhook` is the whole bounded retry loop (the CLI uses it; the
    service schedules its attempts through the task store instead, see service/background/webhooks.py).

    Retried: connection errors, timeouts, 408, 425, 429 and 5xx answers. Not retried: other 4xx
    (the receiver refused the document: a wrong signature, say) and 3xx (redirects are not
    followed: a POST must not turn into a GET somewhere else). Error texts are worded here from
    the exception type and the status code, never from library messages that may quote the URL.
    """
    body = body_of(payload)
    attempt, outcome = 0, Attempt(False, True, None)
    while attempt < webhook.attempts:
        attempt += 1
        outcome = send_once(webhook, body, task_id, policy)
        if outcome.ok or not outcome.retryable:
            break
        if attempt < webhook.attempts:
            sleep(delay_before(attempt, webhook.backoff, outcome.retry_after))
    error = None if outcome.ok else redactor.url(redactor.text(outcome.error or "failed"))
    return {"delivered": outcome.ok, "attempts": attempt, "error": error}
