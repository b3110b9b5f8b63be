"""The webhook: one signed POST of a JSON document when a job ends (docs/spec.md, "Webhook").
The CLI sends it with `post_webhook`; the service schedules the same attempts through its task
store, so no ending is lost to a crash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

from engine.fetch.retry import parse_retry_after, wait_before_retry
from engine.spec.models import Retry
from engine.spec.redact import Redactor

USER_AGENT = "pageferry-webhook/1.0"
SIGNATURE_HEADER = "X-Pageferry-Signature"
MAX_DELAY = 60.0
RETRY_STATUSES = {408, 425, 429}


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


def send_once(webhook, body: bytes, task_id: str | None = None) -> Attempt:
    """One POST of `body` to `webhook.url` (a resolved spec model: secrets substituted)."""
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if webhook.secret:
        headers[SIGNATURE_HEADER] = signature(webhook.secret, body)
    if task_id:
        headers["X-Pageferry-Task"] = task_id
    try:
        response = requests.post(
            webhook.url,
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=(min(webhook.timeout, 10.0), webhook.timeout),
        )
        response.close()
    except requests.Timeout:
        return Attempt(False, True, f"timed out after {webhook.timeout:g} s")
    except requests.ConnectionError as exc:
        cause = exc.args[0] if exc.args else exc
        reason = getattr(cause, "reason", None) or cause
        return Attempt(False, True, f"connection failed ({type(reason).__name__})")
    except requests.RequestException as exc:
        return Attempt(False, False, f"request failed ({type(exc).__name__})")
    status = response.status_code
    if 200 <= status < 300:
        return Attempt(True)
    retry_after = None
    if status == 429 or status == 503:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if 300 <= status < 400:
        return Attempt(False, False, f"HTTP {status} (redirects are not followed)")
    return Attempt(False, status >= 500 or status in RETRY_STATUSES, f"HTTP {status}", retry_after)


def post_webhook(
    webhook, payload: dict, redactor: Redactor, task_id: str | None = None, sleep: Callable[[float], None] = time.sleep
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
        outcome = send_once(webhook, body, task_id)
        if outcome.ok or not outcome.retryable:
            break
        if attempt < webhook.attempts:
            sleep(delay_before(attempt, webhook.backoff, outcome.retry_after))
    error = None if outcome.ok else redactor.url(redactor.text(outcome.error or "failed"))
    return {"delivered": outcome.ok, "attempts": attempt, "error": error}
