"""What happened to a task: a bounded event log and throughput samples, kept with the task
(the store's `tasks.activity`) and sent with its status (`events`, `throughput`).

The runner sees a running job only through its progress snapshots, so events are what those
show changing: the phase, the retry counter, requests stopping and starting again (a pause: the
rate limit, a `Retry-After`, or a slow API), a rate at the configured limit; and, when the job
ends, its skipped pages, deliveries and outcome. Sizes are bounded: the first event and the
last MAX_EVENTS - 1 are kept (`dropped` counts the others), and the samples are thinned to at
most MAX_SAMPLES by doubling their interval."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

MAX_EVENTS = 100
MAX_SAMPLES = 120
SAMPLE_EVERY = 1.0  # seconds between throughput samples at first (doubles when thinned)
SAVE_EVERY = 1.0  # seconds between writes of a running task's activity
PAUSE_AFTER = 3.0  # seconds without a new request while fetching that count as a pause
RETRY_EVERY = 1.0  # retries are reported at most this often, counted together
MAX_PAGE_EVENTS = 20  # skipped pages listed one by one; the rest in one line
RATE_SETTLES = 3.0  # seconds of fetching before the measured rate is compared with the limit
PHASES = {
    "fetching": "fetching pages",
    "merging": "merging the pages in order",
    "exporting": "writing the export",
    "delivering": "delivering the result",
}


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _retried(more: int, total: int, causes: list[dict] | None = None) -> str:
    why = ", ".join(f"{c['cause']} ×{c['count']}" for c in causes or [])
    in_all = f"{total:,} {'retry' if total == 1 else 'retries'} in all"
    return f"{_plural(more, 'request')} retried{f' ({why})' if why else ''}: {in_all}"


def _new_causes(now: list[dict], before: dict[str, int]) -> list[dict]:
    """The retries by cause since `before` (the counts already reported), most frequent first."""
    fresh = [{"cause": c["cause"], "count": c["count"] - before.get(c["cause"], 0)} for c in now]
    return sorted((c for c in fresh if c["count"] > 0), key=lambda c: -c["count"])


def append_event(activity: dict | None, kind: str, message: str, at: float | None = None, **data: Any) -> dict:
    """`activity` with one more event (a new document when None), trimmed to MAX_EVENTS."""
    doc: dict[str, Any] = activity if activity is not None else {"events": [], "dropped": 0, "throughput": []}
    events: list[dict] = doc.setdefault("events", [])
    events.append({"at": _iso(time.time() if at is None else at), "kind": kind, "message": message, **data})
    if len(events) > MAX_EVENTS:
        del events[1 : len(events) - MAX_EVENTS + 1]  # the first event (how it was made) stays
        doc["dropped"] = doc.get("dropped", 0) + 1
    return doc


def initial_activity(task: dict) -> dict:
    """How a task came to be: started by a client, re-run, retried or fired by a schedule."""
    extra = task.get("extra") or {}
    at = task.get("created_at") or time.time()
    if extra.get("retry_of"):
        kind, message = "created", f"queued: retry of {extra['retry_of']}, continuing from its finished pages"
    elif extra.get("rerun_of"):
        kind, message = "created", f"queued: re-run of {extra['rerun_of']}"
    elif task.get("schedule_id"):
        how = "run now" if extra.get("run_now") else f"due {extra.get('scheduled_for') or 'now'}"
        kind, message = "created", f"queued by schedule {task['schedule_id']} ({how})"
    else:
        kind, message = "created", "queued"
    return append_event(None, kind, message, at=at)


class Activity:
    """One running task's activity, updated from its progress snapshots by the runner."""

    def __init__(self, doc: dict | None, task: dict, rate_limit: float | None = None):
        self.doc = doc if doc else initial_activity(task)
        self.doc.setdefault("events", [])
        self.doc.setdefault("throughput", [])
        self.doc.setdefault("dropped", 0)
        self.every = float(self.doc.get("every") or SAMPLE_EVERY)
        self.started = task.get("started_at") or time.time()
        self.rate_limit = rate_limit  # requests per second, when the spec sets a limit
        self.phase: str | None = None
        self.retries: int | None = None
        self.causes_reported: dict[str, int] = {}  # retries by cause already in an event
        self.api_paused = False  # a pause the API asked for is under way (reported once)
        self.retries_reported = 0
        self.retries_at = 0.0
        self.requests: int | None = None
        self.requests_moved = time.monotonic()
        self.paused_since: float | None = None
        self.fetching_since: float | None = None
        self.at_limit = False
        self.sampled = 0.0
        self.saved = 0.0
        self.dirty = True

    def _report_retries(self, progress: dict) -> None:
        assert self.retries is not None
        more = self.retries - self.retries_reported
        causes = progress.get("retry_causes") or []
        fresh = _new_causes(causes, self.causes_reported)
        self.event("retry", _retried(more, self.retries, fresh), count=more, causes=fresh)
        self.retries_reported = self.retries
        self.causes_reported = {c["cause"]: c["count"] for c in causes}

    def event(self, kind: str, message: str, **data: Any) -> None:
        append_event(self.doc, kind, message, **data)
        self.dirty = True

    def observe(self, progress: dict, now: float | None = None) -> None:
        """Compare a progress snapshot with the last one: events for what changed."""
        now = time.monotonic() if now is None else now
        numbers = progress.get("progress") or {}
        phase = progress.get("phase")
        if phase != self.phase:
            if self.phase is not None and phase:
                self.event("phase", PHASES.get(phase, phase), phase=phase)
            if phase == "fetching":
                self.fetching_since = now
            self.phase = phase
        retries = numbers.get("retries") or 0
        if self.retries is None:
            self.retries = self.retries_reported = retries
        elif retries > self.retries:
            self.retries = retries
        if self.retries > self.retries_reported and now - self.retries_at >= RETRY_EVERY:
            self._report_retries(progress)
            self.retries_at = now
        paused = progress.get("paused_seconds") or 0.0
        if paused >= 0.5 and not self.api_paused:
            self.api_paused = True
            self.event(
                "pause",
                f"the API asked to wait: paused {paused:.1f} s (Retry-After or its rate-limit headers)",
                seconds=paused,
            )
        elif paused < 0.5:
            self.api_paused = False
        requests = numbers.get("requests") or 0
        if self.requests is None or requests != self.requests:
            if self.paused_since is not None:
                waited = now - self.paused_since + PAUSE_AFTER
                self.event("resumed", f"requests again after {waited:.1f} s", seconds=round(waited, 1))
                self.paused_since = None
            self.requests, self.requests_moved = requests, now
        elif phase == "fetching" and self.paused_since is None and now - self.requests_moved >= PAUSE_AFTER:
            self.paused_since = now
            self.event(
                "pause",
                f"no new request for {PAUSE_AFTER:.0f} s: waiting for the rate limit, a Retry-After or a slow API",
            )
        rate = numbers.get("rate") or 0.0
        settled = self.fetching_since is not None and now - self.fetching_since >= RATE_SETTLES
        if self.rate_limit and not self.at_limit and phase == "fetching" and settled and rate >= 0.9 * self.rate_limit:
            self.at_limit = True
            self.event("rate_limit", f"at the rate limit: {rate:.1f} of {self.rate_limit:g} requests/s")
        if now - self.sampled >= self.every:
            self.sampled = now
            self.sample(numbers)

    def sample(self, numbers: dict) -> None:
        """[seconds since start, pages done, rows] - a chart's pages/s comes from the deltas."""
        point = [round(time.time() - self.started, 1), numbers.get("pages_done") or 0, numbers.get("rows") or 0]
        samples = self.doc["throughput"]
        if samples and point[1] < samples[-1][1]:
            return  # a resumed run reads its finished pages back first: no dip to 0
        if samples and samples[-1][0] >= point[0]:
            samples[-1] = point
        else:
            samples.append(point)
        if len(samples) > MAX_SAMPLES:
            samples[:] = samples[::2] + ([samples[-1]] if len(samples) % 2 == 0 else [])
            self.every *= 2
            self.doc["every"] = self.every
        self.dirty = True

    def due(self, now: float | None = None) -> bool:
        """Worth a write now (changed, and the last write was SAVE_EVERY ago)."""
        now = time.monotonic() if now is None else now
        return self.dirty and now - self.saved >= SAVE_EVERY

    def saved_now(self, now: float | None = None) -> None:
        self.saved = time.monotonic() if now is None else now
        self.dirty = False

    def finish(
        self,
        status: str,
        progress: dict | None = None,
        *,
        result: Any = None,
        error: dict | None = None,
        skipped: list[dict] | None = None,
        deliveries: list[dict] | None = None,
    ) -> dict:
        """The last events: skipped pages, deliveries, the outcome; a last sample."""
        if progress:
            numbers = progress.get("progress") or {}
            self.sample(numbers)
            self.retries = max(self.retries or 0, numbers.get("retries") or 0)
            if self.retries > self.retries_reported:  # those counted since the last report
                self._report_retries(progress)
        skipped = skipped or []
        for page in skipped[:MAX_PAGE_EVENTS]:
            why = page.get("error") or (f"HTTP {page['status']}" if page.get("status") else "failed")
            self.event("skipped", f"skipped {page.get('url') or 'a page'}: {why}", status=page.get("status"))
        if len(skipped) > MAX_PAGE_EVENTS:
            self.event("skipped", f"and {_plural(len(skipped) - MAX_PAGE_EVENTS, 'more skipped page')}")
        for delivery in deliveries or []:
            target = delivery.get("target") or "a target"
            if delivery.get("ok"):
                self.event("delivery", f"delivered to {target}", ok=True, attempts=delivery.get("attempts"))
            else:
                self.event(
                    "delivery",
                    f"delivery to {target} failed: {delivery.get('error') or 'unknown error'}",
                    ok=False,
                    attempts=delivery.get("attempts"),
                )
        if status == "completed" and result is not None:
            how = f"{_plural(result.rows, 'row')} from {_plural(result.pages, 'page')} in {result.seconds:.1f} s"
            if result.skipped:
                how += f", {_plural(len(result.skipped), 'page')} skipped"
            self.event("completed", f"completed: {how}")
        elif status == "failed":
            self.event("failed", f"failed: {(error or {}).get('message') or 'unknown error'}")
        elif status == "cancelled":
            self.event("cancelled", (error or {}).get("message") or "cancelled")
        return self.doc
