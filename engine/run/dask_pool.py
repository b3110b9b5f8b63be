"""EXECUTOR=dask://host:port: a job's pieces run on an existing Dask cluster's workers.

The coordinator asks `DaskExecutor.pool()` where it would start a process pool, and gets a
`DaskPool`: the same small interface (`submit` -> a concurrent.futures Future, a lost worker
shows as `BrokenProcessPool`, `kill`, `shutdown`), over `distributed.Client.get_executor()`.
Only this module imports distributed, and the coordinator imports it only for a Dask job.

On a worker a piece runs in one of its threads (`run_piece_task`): the job's worker-side state
(event loop, HTTP client, counters - engine/run/worker.py `build_state`) is built once per
thread, job and epoch and kept for the next pieces; every shared primitive is behind the job's
hub (engine/run/hub.py). A worker writes shards where the coordinator's would (the cluster
shares that filesystem) or to RESULT_STORE (the WorkerJob carries its settings).

A lost worker: Dask re-runs its task elsewhere (the hub refuses it) or raises KilledWorker;
either way the coordinator sees a broken pool, stops the epoch, waits until all its tasks have
returned (`kill`), re-reads the ledger and re-plans the missing pages in a new epoch.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import platform
import threading
import uuid
from collections import OrderedDict
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import distributed
from distributed.comm.core import CommClosedError
from distributed.utils import get_ip

from engine.errors import JobFailed
from engine.fetch.budget import BudgetLimiterState
from engine.fetch.ratelimit import LimiterState, SharedLimiterState
from engine.plan.scheduler import Piece
from engine.run.entrypoints import run_piece
from engine.run.hub import HostedLimiter, HubLink, HubManager, piece_done, remote_state, state_closed
from engine.run.messages import SharedState, WorkerJob
from engine.run.pool import mp_context
from engine.spec.models import RateLimit

log = logging.getLogger("pageferry.engine")

CONNECT_TIMEOUT = 5.0  # seconds to reach the scheduler
WORKERS_TIMEOUT = 10.0  # seconds a job waits for the cluster to have a worker at all
DRAIN_TIMEOUT = 120.0  # seconds a stopped epoch's tasks get to return (a request's timeout, at most)
JOBS_PER_THREAD = 4  # jobs whose worker-side state a worker thread keeps
REPORT_EVERY = 0.25  # seconds between progress pushes while a piece runs

_clients: dict[str, distributed.Client] = {}
_clients_lock = threading.Lock()


def hub_manager(scheduler: str) -> HubManager:
    """The Engine's Manager (not started yet), listening on the address by which this host
    reaches the scheduler - the workers reach it the same way."""
    host = scheduler.removeprefix("tcp://").rpartition(":")[0].strip("[]")
    return HubManager((get_ip(host), 0), ctx=mp_context())


def client_for(address: str) -> distributed.Client:
    """One client per scheduler for the whole process (connecting costs a few round trips)."""
    with _clients_lock:
        client = _clients.get(address)
        if client is not None and client.status in ("running", "connecting"):
            return client
        try:
            client = distributed.Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except Exception:  # OSError, TimeoutError: the message says which address, and nothing else
            raise JobFailed(f"EXECUTOR: cannot reach dask scheduler at {address}") from None
        _clients[address] = client
        return client


def _hosted(limiter: LimiterState, rate_limit: RateLimit | None) -> HostedLimiter | None:
    """Where the workers' limiter lives: a budget's file or shared memory is on this host, so the
    hub runs it; a state every host reaches (Redis) is used by the workers themselves."""
    requests = rate_limit.requests if rate_limit else None
    per = rate_limit.per if rate_limit else 1.0
    burst = rate_limit.effective_burst if rate_limit else None
    if isinstance(limiter, BudgetLimiterState):  # the hub's process opens the same file
        return HostedLimiter(limiter, requests, per, burst)
    if isinstance(limiter, SharedLimiterState):
        return HostedLimiter(None, requests, per, burst)
    return None


class DaskExecutor:
    """One job's use of the cluster: the client, the job's hub, the pool of the current epoch."""

    def __init__(self, address: str, manager: Any, client: distributed.Client):
        self.address = address
        self.manager = manager
        self.client = client
        self._hub: Any = None
        self._own_limiter: LimiterState | None = None  # the job's limiter state when the workers use it
        self._pool: DaskPool | None = None

    @classmethod
    def connect(cls, address: str, manager: Any) -> DaskExecutor:
        if not isinstance(manager, HubManager):
            raise JobFailed("internal error: a Dask job needs the engine's TCP manager (EXECUTOR changed?)")
        return cls(address, manager, client_for(address))

    def slots(self) -> int:
        """The cluster's worker threads: how many pieces run at once (the local pool's processes)."""
        try:
            self.client.wait_for_workers(1, timeout=WORKERS_TIMEOUT)
            return max(1, sum(self.client.nthreads().values()))
        except (TimeoutError, OSError):
            raise JobFailed(f"EXECUTOR: the dask scheduler at {self.address} has no workers") from None

    def pool(
        self, job: WorkerJob, shared: SharedState, board: Any, rate_limit: RateLimit | None, concurrency: int
    ) -> DaskPool:
        """The first epoch's pool, or - the last one killed and drained - the next epoch's."""
        # Workers are elsewhere: no coordinator pid to watch, no path relative to our cwd.
        job = replace(job, coordinator_pid=None, shards_dir=str(Path(job.shards_dir).resolve()))
        units = len(shared.ends)
        if self._hub is None:
            hosted = _hosted(shared.limiter, rate_limit)
            self._hub = self.manager.JobHub(job, concurrency, units, hosted)
            self._own_limiter = None if hosted is not None else shared.limiter
            self._warm_up()
            epoch = 0
        else:
            if self._pool is not None and not self._pool.drained:
                raise JobFailed("EXECUTOR: pieces on a lost dask worker's peers did not stop; resume the job")
            epoch = self._hub.renew(job, units)
        # The coordinator cancels through `shared.cancel`: the epoch's pieces must hear it at once.
        shared.cancel = _AlsoStops(shared.cancel, self._hub)
        link = HubLink.of(self.manager, self._hub, board, epoch, self._own_limiter)
        self._pool = DaskPool(self.client, link, self._hub)
        return self._pool

    def _warm_up(self) -> None:
        """Every worker imports the fetching modules now (a CPU burst before the first send, as
        a local pool's processes start before it), and says so if it cannot."""
        try:
            self.client.run(warm_up)
        except Exception as exc:
            raise JobFailed(
                f"EXECUTOR: the dask workers at {self.address} cannot run the engine "
                f"({type(exc).__name__}: {str(exc)[:200]}); they need pageferry importable"
            ) from None

    def close(self) -> None:
        """The job is over: its hub lets go of a budget, and goes with the last reference."""
        hub, self._hub = self._hub, None
        if hub is not None:
            try:
                hub.close()
            except Exception:  # the Manager is gone already
                pass


class _AlsoStops:
    """The coordinator's cancel event; setting it stops the hub's epoch too."""

    def __init__(self, event: Any, hub: Any):
        self._event, self._hub = event, hub

    def set(self) -> None:
        self._event.set()
        try:
            self._hub.stop()
        except Exception:  # the Manager is gone: so are the pieces' means to go on
            pass

    def is_set(self) -> bool:
        return self._event.is_set()


class DaskPool(cf.Executor):
    """One epoch's pieces on the cluster. Other calls (a parent's values, read from its shards)
    run in a local process: the shards are surely here (RESULT_STORE: fetched for the call),
    not necessarily on a worker's host."""

    def __init__(self, client: distributed.Client, link: HubLink, hub: Any):
        self._link = link
        self._hub = hub
        self._executor = client.get_executor(pure=False, retries=0)  # a lost piece is re-planned, not retried
        self._running: set[cf.Future] = set()
        self._lock = threading.Lock()
        self._local: cf.ProcessPoolExecutor | None = None
        self.drained = True

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        if fn is not run_piece:
            if self._local is None:
                self._local = cf.ProcessPoolExecutor(max_workers=1, mp_context=mp_context())
            return self._local.submit(fn, *args, **kwargs)
        source = self._executor.submit(run_piece_task, self._link, *args)
        with self._lock:
            self._running.add(source)
        source.add_done_callback(self._finished)
        return _relayed(source)

    def _finished(self, future: cf.Future) -> None:
        with self._lock:
            self._running.discard(future)

    def kill(self) -> None:
        """Stop the epoch's pieces (at their next look at the cancel flag) and wait until every
        one has returned: then none of them writes a shard behind the ledger's back. A task of a
        lost worker returns too - Dask re-runs it and the hub refuses it, or it fails."""
        try:
            self._hub.stop()
        except Exception:  # the Manager is gone (the engine is closing): the tasks find out themselves
            pass
        with self._lock:
            running = list(self._running)
        _, pending = cf.wait(running, timeout=DRAIN_TIMEOUT)
        self.drained = not pending
        if pending:
            log.warning("%d dask task(s) of a stopped job did not return within %g s", len(pending), DRAIN_TIMEOUT)
        for process in list((getattr(self._local, "_processes", None) or {}).values()):
            process.kill()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            running = list(self._running)
        if cancel_futures:
            for future in running:
                future.cancel()  # a task not started yet never starts
        elif wait:
            cf.wait(running)
        if self._local is not None:
            self._local.shutdown(wait=wait, cancel_futures=cancel_futures)


def _lost(why: str) -> BrokenProcessPool:
    log.warning("a dask worker was lost: %s", why)
    return BrokenProcessPool(f"a dask worker was lost: {why}")


def _relayed(source: cf.Future) -> cf.Future:
    """`source`'s outcome as the coordinator reads a pool's: a lost worker is a broken pool."""
    target: cf.Future = cf.Future()

    def relay(done: cf.Future) -> None:
        try:
            outcome = done.result()
        except (distributed.KilledWorker, CommClosedError, cf.CancelledError) as exc:
            target.set_exception(_lost(f"Dask gave up on a task ({type(exc).__name__})"))
        except BaseException as exc:
            target.set_exception(exc)
        else:
            if isinstance(outcome, Refused):
                target.set_exception(_lost("Dask ran a piece again") if outcome.again else BrokenProcessPool("stopped"))
            elif isinstance(outcome, Raised):
                target.set_exception(outcome.error)
            else:
                target.set_result(outcome)

    source.add_done_callback(relay)
    return target


# ---------------------------------------------------------------- on the workers


@dataclass
class Refused:
    """The piece did not run: its epoch is over, or (`again`) it ran before on a lost worker."""

    again: bool = False


@dataclass
class Raised:
    """What the piece raised - returned, not raised, so Dask does not log the task's arguments."""

    error: BaseException


def warm_up() -> int:
    import engine.run.worker  # noqa: F401 - pyarrow, the HTTP stack, the spec

    return os.getpid()


@dataclass
class _Job:
    """One job's worker-side state in one worker thread."""

    hub: Any
    epoch: int = -1
    state: Any = None  # engine.run.worker._Process of `epoch`
    stop: threading.Event | None = None  # ends the state's progress reporter

    def close(self) -> None:
        from engine.run import worker

        if self.stop is not None:
            self.stop.set()
        if self.state is not None:
            state_closed(self.state.limiter)
            worker.close_state(self.state)
        self.state, self.stop, self.epoch = None, None, -1


_local = threading.local()  # per worker thread: (hub address, hub id) -> _Job, least recent first


def _job(link: HubLink) -> _Job:
    jobs: OrderedDict | None = getattr(_local, "jobs", None)
    if jobs is None:
        jobs = _local.jobs = OrderedDict()
    key = (link.address, link.hub_id)
    job = jobs.get(key)
    if job is None:
        job = jobs[key] = _Job(link.hub())
        while len(jobs) > JOBS_PER_THREAD:
            jobs.popitem(last=False)[1].close()
    jobs.move_to_end(key)
    return job


def _state(job: _Job, link: HubLink) -> Any:
    """The thread's state for the link's epoch (built on its first piece), or None: the epoch is over."""
    from engine.run import worker

    if job.epoch != link.epoch:
        job.close()
        worker_job = job.hub.job(link.epoch)
        if worker_job is None:
            return None
        key = f"proc:{platform.node()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # per thread and epoch
        job.state = worker.build_state(worker_job, remote_state(link, job.hub), key)
        job.epoch = link.epoch
        job.stop = threading.Event()
        threading.Thread(target=_report, args=(job.state, job.stop), name="progress", daemon=True).start()
    return job.state


def _report(state: Any, stop: threading.Event) -> None:
    """Pushes the state's counters to the board while its job runs (a piece flushes at its end too)."""
    from engine.run import worker

    seen = -1
    while not stop.wait(REPORT_EVERY):
        if state.counters.version != seen:
            seen = state.counters.version
            worker.flush_progress(state)
        try:
            if state.shared.cancel.is_set():  # the epoch is over
                return
        except Exception:  # the hub is gone: so is the job
            return


def run_piece_task(link: HubLink, piece: Piece) -> Any:
    """A Dask task: one piece, on this worker thread's state for the job."""
    from engine.run import worker

    job = _job(link)
    try:
        claim = job.hub.claim(link.epoch, piece.id)
        if claim != "run":
            return Refused(again=claim == "again")
        state = _state(job, link)
        if state is None:
            return Refused()
        try:
            return worker.run_piece_with(state, piece)
        finally:
            piece_done(state.limiter, state.shared)
    except Exception as exc:
        return Raised(exc)
