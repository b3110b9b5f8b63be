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


class Counters:
    """This process's progress for the job, pushed to the board a few times a second (never
    per row, never per request: the board is an IPC round trip)."""

    def __init__(self, sources: int):
        self.values = [[0] * WIDTH for _ in range(sources)]
        self.lock = threading.Lock()  # the progress thread reads while the event loop counts
        self.version = 0

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

    def snapshot(self) -> list[list[int]]:
        with self.lock:
            return [list(v) for v in self.values]
