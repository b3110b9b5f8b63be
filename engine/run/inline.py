"""A job's first pieces on a thread of the coordinator's own process, while its pool starts.

A pool process comes from the forkserver once its preload is done, and the progress Manager
with it; a CLI run that waited for them would send its first request well after a plain script
would have. `InlinePool` runs pieces the way a pool process does (`engine.run.worker`: one event
loop, one HTTP session) on one thread of this process: the first piece (page 1, usually) goes
out as soon as the spec is checked, and a job that page 1 shows to be small never starts a pool
at all - nor does a job run with one process (`--workers 1`): this thread is that process.
Only for a process that runs one job for its own user (the CLI): it loads pyarrow and
the HTTP stack, which the service's web workers must not.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
from typing import Any

from engine.run.messages import SharedState, WorkerJob


class InlinePool(cf.Executor):
    """Runs `run_piece` on one thread of this process, with its own job state (board: `shared`'s)."""

    def __init__(self, job: WorkerJob, shared: SharedState):
        from engine.run.worker import build_state

        self.state: Any = build_state(job, shared, board_key=f"proc:{os.getpid()}")
        self._thread = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="inline-fetch")
        self._closed = threading.Event()
        threading.Thread(target=self._report, name="inline-progress", daemon=True).start()

    def _report(self) -> None:
        """Progress while a piece runs, as a pool process's reporting thread pushes it."""
        from engine.run.worker import REPORT_EVERY, flush_progress

        while not self._closed.wait(REPORT_EVERY):
            flush_progress(self.state)

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        """`fn` as a pool process would run it; the pool's `run_piece` with this process's job
        state (anything else - a parent's values, say - needs none)."""
        from engine.run.entrypoints import run_piece
        from engine.run.worker import run_piece_with

        if fn is run_piece:
            return self._thread.submit(run_piece_with, self.state, *args)
        return self._thread.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._thread.shutdown(wait=wait, cancel_futures=cancel_futures)
        self._closed.set()
        if wait:
            from engine.run.worker import close_state

            close_state(self.state)  # the HTTP session and the loop, once no piece runs on them
