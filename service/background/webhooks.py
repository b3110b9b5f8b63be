"""`WebhookDispatcher`: sends the webhooks the store queued (its `webhooks` outbox table) on a
small thread pool, so a slow receiver never holds a task slot and no ending is lost to a crash.
Delivery is at least once: receivers should dedupe by `task_id`."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Mapping

from engine import OutboundPolicy, SecretNames, SpecError, parse_spec, resolve
from engine import webhook_body as body_of
from engine import webhook_delay as delay_before
from engine import webhook_send_once as send_once
from service.background.events import append_event
from service.background.loop import BackgroundLoop
from service.logs import log_event
from service.store import TaskStore
from service.views.status import status_json

log = logging.getLogger("pageferry.webhooks")

SENDERS = 4  # concurrent POSTs per worker
POLL = 0.2  # seconds between looks at the outbox
LEASE_MARGIN = 30.0  # a claimed attempt is another worker's after 2 x its timeout + this


def payload_of(task: dict) -> dict:
    """The final status without the sections the attempts themselves change (the webhook's
    outcome, and the event log its attempts are added to): the same bytes on every attempt."""
    status = status_json(task, (task.get("extra") or {}).get("base_url") or "")
    for key in ("webhook", "events", "events_dropped", "throughput"):
        status.pop(key, None)
    return status


class WebhookDispatcher(BackgroundLoop):
    """Claims due attempts (a lease, so two workers never send the same attempt) and sends
    each; a failed attempt is put back with its backoff as the next due time, and given up
    after `webhook.attempts` tries. The payload is the task's final status JSON (without its
    `webhook` section), the same bytes on every attempt."""

    name = "webhook-dispatcher"
    period = POLL
    log = log
    failed = "webhook dispatch failed"

    def __init__(
        self,
        store: TaskStore,
        env: Mapping[str, str],
        owner: str,
        policy: OutboundPolicy | None = None,
        secret_names: SecretNames | None = None,
    ):
        super().__init__()
        self.store = store
        self.env = env
        self.secret_names = secret_names  # a spec stored before SECRET_NAMES still resolves no other name
        self.owner = owner
        self.policy = policy or OutboundPolicy(public_only=True)  # the service's: outbound_policy(settings, True)
        self._pool = cf.ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="webhook")
        self._busy = 0
        self._lock = threading.Lock()

    def stop(self, timeout: float = 2.0) -> None:
        super().stop(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def iterate(self) -> int:
        return self.dispatch()

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

    def _record(self, task: dict, outcome: dict, retry_at: float | None) -> None:
        """The attempt in the task's event log (the page shows it with the task)."""
        n = outcome["attempts"]
        if outcome["delivered"]:
            message = f"webhook delivered (attempt {n})"
        elif retry_at is not None:
            message = (
                f"webhook attempt {n} failed: {outcome['error']}; next in {max(0.0, retry_at - time.time()):.1f} s"
            )
        else:
            message = f"webhook failed after {n} attempt{'s' if n != 1 else ''}: {outcome['error']}"
        activity = append_event(task.get("activity"), "webhook", message, ok=outcome["delivered"], attempts=n)
        self.store.save_activity(task["id"], activity)

    def attempt(self, task_id: str, attempt: int) -> dict:
        task = self.store.get_task(task_id, with_spec=True)  # its webhook section
        if task is None:
            outcome = {"delivered": False, "attempts": attempt, "error": "the task is gone", "pending": False}
            self.store.settle_webhook(task_id, self.owner, outcome, None)
            return outcome
        try:  # only the webhook's own ${NAME} references matter here
            minimal = {"sources": [{"url": "http://webhook.invalid/"}], "webhook": task["spec"].get("webhook")}
            resolved, redactor = resolve(parse_spec(minimal), self.env, self.secret_names)
            webhook = resolved.webhook
        except SpecError as exc:  # e.g. ${HOOK_SECRET} no longer set in this environment
            outcome = {"delivered": False, "attempts": attempt, "error": f"invalid webhook: {exc}", "pending": False}
            self.store.settle_webhook(task_id, self.owner, outcome, None)
            return outcome
        if webhook is None:  # only tasks whose spec has a webhook are queued (_enqueue_webhook)
            raise RuntimeError(f"task {task_id} has no webhook")
        sent = send_once(webhook, body_of(payload_of(task)), task_id, self.policy)
        final = sent.ok or not sent.retryable or attempt >= webhook.attempts
        error = None if sent.ok else redactor.url(sent.error or "failed")
        outcome = {"delivered": sent.ok, "attempts": attempt, "error": error, "pending": not final}
        retry_at = None if final else time.time() + delay_before(attempt, webhook.backoff, sent.retry_after)
        if self.store.settle_webhook(task_id, self.owner, outcome, retry_at):
            self._record(task, outcome, retry_at)
            log_event(
                "webhook_delivered" if sent.ok else ("webhook_failed" if final else "webhook_retry"),
                level=logging.INFO if sent.ok else logging.WARNING,
                task_id=task_id,
                attempts=attempt,
                error=error,
            )
        return outcome
