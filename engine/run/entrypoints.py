"""The functions the coordinator submits to its pool processes - light to import, because the
coordinator must not import pyarrow, polars or the HTTP stack: the pool processes come from a
forkserver with `engine.run.worker` preloaded, so these only forward to it.
"""

from __future__ import annotations

import os
import threading
import time

from engine.run.messages import ExportOutcome, ExportRequest, SharedState, WorkerJob
from engine.run.pool import lower_priority, process_alive


def init_worker(job: WorkerJob, shared: SharedState) -> None:
    from engine.run.worker import init_worker as init

    init(job, shared)


def greet(hold: float) -> int:
    """A no-op the coordinator uses to start every pool process up front."""
    from engine.run.worker import greet as hello

    return hello(hold)


def run_piece(piece):
    from engine.run.worker import run_piece as run

    return run(piece)


def run_export(request: ExportRequest) -> ExportOutcome:
    from engine.run.worker import run_export as run

    exported = run(request)
    deliveries: list[dict] = []
    if request.table_job is not None:  # table targets load here, in the export process
        from engine.deliver.tables import load_all

        deliveries = load_all(request.spec.deliver, request.table_job, [name for name, _ in request.tables])
    return ExportOutcome(exported.path, exported.bytes, exported.sha256, dict(exported.rows), deliveries)


def start_export_process(nice: int, coordinator_pid: int | None = None) -> None:
    """Initializer of a job's export process: its priority, and the reducer with Polars loaded
    at once. The process is started while pages are still being fetched, so this import
    (noticeable CPU) is neither on the way to the first request (the forkserver preloads only
    what fetching needs) nor on the way from the last page to the result. It waits idle for a
    while, so it ends itself when the coordinator is gone (an idle pool process never sees
    EOF on its call queue: it holds both ends of the pipe)."""
    lower_priority(nice)
    if coordinator_pid is not None:
        threading.Thread(target=_exit_with, args=(coordinator_pid,), name="coordinator-watch", daemon=True).start()
    import engine.export.reduce  # noqa: F401


_export_loader: threading.Thread | None = None
_loader_lock = threading.Lock()


def load_export_here() -> threading.Thread:
    """Start loading the reducer and Polars on a thread of this process, once (for exports run
    in this process: the CLI calls it first thing, so the import overlaps the forkserver's)."""
    global _export_loader
    with _loader_lock:
        if _export_loader is None:
            _export_loader = threading.Thread(target=_import_reducer, name="load-polars", daemon=True)
            _export_loader.start()
        return _export_loader


def _import_reducer() -> None:
    import engine.export.reduce  # noqa: F401


def _exit_with(pid: int, every: float = 0.25) -> None:
    while True:
        time.sleep(every)
        if not process_alive(pid):
            os._exit(0)


def ready() -> int:
    """A no-op that makes a pool start its process now."""
    return os.getpid()
