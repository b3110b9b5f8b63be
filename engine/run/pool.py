"""How the engine starts processes: a forkserver with the fetching modules (pyarrow, the HTTP
stack, the spec) preloaded, because forking a multi-threaded process (a gunicorn gthread
worker) can deadlock, and a preloaded forkserver hands out processes ready to work.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from multiprocessing import forkserver

# pyarrow.compute (~50 ms of imports) is loaded by a fetch process's first flatten otherwise,
# on its event loop, while its requests wait.
PRELOAD = ["engine.run.worker", "pyarrow.compute", "engine.run.preloaded"]
_lock = threading.Lock()
_context = None


def mp_context():
    global _context
    with _lock:
        if _context is None:
            # pyarrow loads numpy, whose OpenBLAS starts a spinning thread per core in every
            # process that imports it; nothing here does linear algebra.
            os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
            _context = multiprocessing.get_context("forkserver")
            _context.set_forkserver_preload(PRELOAD)
        return _context


def warm_up() -> None:
    """Start the forkserver now (it preloads in the background).

    Polars is not preloaded: only the export process needs it, and it imports it itself while
    the pages are being fetched (engine.run.entrypoints.start_export_process) - the preload is what the
    first request waits for. This module imports nothing heavy, so `warm_up()` can start the
    forkserver before the caller has finished its own imports - both then import in parallel.
    """
    mp_context()
    forkserver.ensure_running()


_PROC = os.path.isdir("/proc/self")


def process_alive(pid: int) -> bool:
    """Is `pid` running? A zombie is not: a killed coordinator whose own parent died with it
    stays one until init reaps it, and its engine processes must stop meanwhile."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        pass
    if not _PROC:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # "pid (comm) state ...": the state follows the last ")" (comm may hold one)
            return stat.read().rpartition(b")")[2].split()[:1] != [b"Z"]
    except FileNotFoundError:  # gone since
        return False


def lower_priority(nice: int) -> None:
    """Yield the CPU to the web threads that share this machine: a status request should not
    queue behind page parsing. Throughput is unchanged when nothing else wants the CPU."""
    if nice > 0:
        try:
            os.nice(nice)
        except OSError:
            pass
