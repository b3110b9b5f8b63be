"""Webhook dispatch for the service: a thread per gunicorn worker, beside the task runner.

When a task reaches a final status, the store queues its webhook in the same transaction
(the `webhooks` outbox table), so no ending is lost to a crash. Every worker's dispatcher
claims due attempts from that table (a lease, so two workers never send the same attempt)
and sends each on a small thread pool: a slow or dead receiver holds a dispatch thread for
at most `webhook.timeout` seconds and never a task slot. A failed attempt is put back with
its backoff as the next due time; after `webhook.attempts` tries it is given up.

The payload is the task's final status JSON (as GET /status shows it, without the
`webhook` section itself), the same bytes on every attempt. Delivery is at least once:
a worker killed after the receiver answered but before the outcome was stored makes
another worker send it again, so receivers should dedupe by `task_id`.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from typing import Mapping

from engine import SpecError
from engine import resolve
from engine import parse_spec
from engine import webhook_body as body_of, webhook_delay as delay_before, webhook_send_once as send_once
from service.logs import log_event
from service.status import status_json

log = logging.getLogger("pageferry.webhooks")

SENDERS = 4          # concurrent POSTs per worker
POLL = 0.2           # seconds between looks at the outbox
LEASE_MARGIN = 30.0  # a claimed attempt is another worker's after 2 x its timeout + this


def payload_of(task: dict) -> dict:
    status = status_json(task, (task.get("extra") or {}).get("base_url") or "")
    status.pop("webhook", None)
    return status


class WebhookDispatcher:
    def __init__(self, store, env: Mapping[str, str], owner: str):
        self.store = store
        self.env = env
        self.owner = owner
        self._pool = cf.ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="webhook")
        self._busy = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="webhook-dispatcher", daemon=True)

    def start(self) -> "WebhookDispatcher":
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.dispatch()
            except Exception:
                log.exception("webhook dispatch failed")
            self._wake.wait(POLL)
            self._wake.clear()

    def dispatch(self) -> int:
        """Claim what is due (as far as free senders go) and send it. Returns how many."""
        with self._lock:
            free = SENDERS - self._busy
        claimed = self.store.claim_webhooks(self.owner, free, LEASE_MARGIN)
        for row in claimed:
            with self._lock:
                self._busy += 1
            self._pool.submit(self._send, row)
        return len(claimed)

    def _send(self, row: dict) -> None:
        try:
            self.attempt(row["task_id"], row["attempts"])
        except Exception:
            log.exception("webhook attempt for %s failed", row["task_id"])
        finally:
            with self._lock:
                self._busy -= 1
            self._wake.set()

    def attempt(self, task_id: str, attempt: int) -> dict:
        task = self.store.get_task(task_id)
        if task is None:
            outcome = {"delivered": False, "attempts": attempt, "error": "the task is gone", "pending": False}
            self.store.settle_webhook(task_id, self.owner, outcome, None)
            return outcome
        try:  # only the webhook's own ${NAME} references matter here
            minimal = {"sources": [{"url": "http://webhook.invalid/"}], "webhook": task["spec"].get("webhook")}
            resolved, redactor = resolve(parse_spec(minimal), self.env)
            webhook = resolved.webhook
        except SpecError as exc:  # e.g. ${HOOK_SECRET} no longer set in this environment
            outcome = {"delivered": False, "attempts": attempt, "error": f"invalid webhook: {exc}", "pending": False}
            self.store.settle_webhook(task_id, self.owner, outcome, None)
            return outcome
        sent = send_once(webhook, body_of(payload_of(task)), task_id)
        final = sent.ok or not sent.retryable or attempt >= webhook.attempts
        error = None if sent.ok else redactor.url(sent.error or "failed")
        outcome = {"delivered": sent.ok, "attempts": attempt, "error": error, "pending": not final}
        retry_at = None if final else time.time() + delay_before(attempt, webhook.backoff, sent.retry_after)
        if self.store.settle_webhook(task_id, self.owner, outcome, retry_at):
            log_event("webhook_delivered" if sent.ok else ("webhook_failed" if final else "webhook_retry"),
                      level=logging.INFO if sent.ok else logging.WARNING,
                      task_id=task_id, attempts=attempt, error=error)
        return outcome
