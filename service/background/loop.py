"""`BackgroundLoop`: a daemon thread that runs one iteration every `period` seconds, or at
once when woken, and survives a failed iteration (the runner, webhooks and schedule clock)."""

from __future__ import annotations

import logging
import threading


class BackgroundLoop:
    name = "background-loop"
    period = 0.2
    log = logging.getLogger("pageferry")
    failed = "background loop failed"  # logged, with the traceback, when an iteration raises

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)

    def iterate(self) -> object:
        raise NotImplementedError

    def start(self):
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def request_stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def stop(self, timeout: float = 2.0) -> None:
        self.request_stop()
        self.join(timeout)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.iterate()
            except Exception:  # the loop must outlive any one iteration's trouble
                self.log.exception(self.failed)
            self._wake.wait(self.period)
            self._wake.clear()
