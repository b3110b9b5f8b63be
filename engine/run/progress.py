"""Progress counters: what a pool process counts per source, by name.

Pool processes count (`Counters`), the coordinator sums the snapshots they push to the
job's board; on the wire a snapshot stays a plain list of rows indexed by `Counter`.
"""

from __future__ import annotations

import threading
from enum import IntEnum


class Counter(IntEnum):
    PAGES = 0
    RECORDS = 1
    BYTES = 2
    REQUESTS = 3
    RETRIES = 4


WIDTH = len(Counter)
MAX_CAUSES = 12  # distinct retry causes kept per process; the rest count as "other"


def retry_cause(status: int | None, message: str) -> str:
    """A retry's cause in a few words: `HTTP 503`, or the error's first clause (a timeout, a
    reset connection) - never the body quote or a URL, which vary from page to page."""
    if status is not None:
        return f"HTTP {status}"
    return message.split(":", 1)[0].split(" (", 1)[0].strip()[:80] or "error"


class Counters:
    """This process's progress for the job, pushed to the board a few times a second (never
    per row, never per request: the board is an IPC round trip)."""

    def __init__(self, sources: int):
        self.values = [[0] * WIDTH for _ in range(sources)]
        self.lock = threading.Lock()  # the progress thread reads while the event loop counts
        self.version = 0
        self.causes: dict[str, int] = {}  # retry cause -> retries

    def add_retry(self, source: int, cause: str) -> None:
        with self.lock:
            self.values[source][Counter.RETRIES] += 1
            if cause not in self.causes and len(self.causes) >= MAX_CAUSES:
                cause = "other"
            self.causes[cause] = self.causes.get(cause, 0) + 1
            self.version += 1

    def add(self, source: int, counter: Counter, amount: int = 1) -> None:
        with self.lock:
            self.values[source][counter] += amount
            self.version += 1

    def add_page(self, source: int, records: int) -> None:
        with self.lock:
            row = self.values[source]
            row[Counter.PAGES] += 1
            row[Counter.RECORDS] += records
            self.version += 1

    def snapshot(self, paused_until: float | None = None) -> list:
        """One row per source, then `{"causes", "paused_until"}` (the retries by cause, and until
        when - time.monotonic(), the same clock in every process - the API made the job wait)."""
        with self.lock:
            return [*(list(v) for v in self.values), {"causes": dict(self.causes), "paused_until": paused_until}]
