"""The engine as a library: `Engine` runs jobs (blocking, or in the background) for the CLI
and the service. One `Engine` per process; it owns the progress Manager, started lazily -
never at import time, so a gunicorn master never holds one."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable
from multiprocessing.managers import SyncManager
from pathlib import Path

from config import Settings
from engine.errors import JobCancelled, JobFailed
from engine.fetch.outbound import outbound_policy
from engine.run.coordinator import JobOptions, JobResult, JobRunner
from engine.run.pool import mp_context
from engine.spec.prepare import PreparedJob
from engine.storage import store_config


def new_job_id(prefix: str = "task") -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


def _watch_parent(parent: int) -> None:
    """Runs in the Manager process: exit when the process that started it is gone (SIGKILL
    leaves no chance to shut the Manager down)."""

    def watch():
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass

    threading.Thread(target=watch, daemon=True).start()


class JobHandle:
    """A job running in a background thread of this process. `after`: run in that thread with
    the result before the job counts as done (the service stores the result in RESULT_STORE
    there, off its own loop); what it raises is the job's error."""

    def __init__(self, runner: JobRunner, after: Callable[[JobResult], None] | None = None):
        self.runner = runner
        self.after = after
        self.result: JobResult | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"job-{runner.options.job_id}", daemon=True)

    def _run(self) -> None:
        try:
            result = self.runner.run()
            if self.after is not None:
                self.after(result)
            self.result = result
        except BaseException as exc:  # reported through `error`; the thread must not die loudly
            self.error = exc
        finally:
            self.done.set()

    def progress(self) -> dict:
        return self.runner.progress()

    def cancel(self, reason: str = "cancelled") -> None:
        self.runner.cancel(reason)

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)


class Engine:
    """`service`: jobs run for the service's clients - outbound connections to public
    addresses only unless ALLOWED_SOURCE_HOSTS says otherwise, no ambient cloud credentials
    unless ALLOW_AMBIENT_CREDENTIALS (the CLI runs for its own user: both allowed)."""

    def __init__(self, settings: Settings, service: bool = False):
        self.settings = settings
        self.service = service
        self._manager: SyncManager | None = None
        self._lock = threading.Lock()

    def manager(self) -> SyncManager:
        with self._lock:
            if self._manager is None:
                if self.settings.dask_address:  # Dask workers reach the job's shared state over TCP
                    from engine.run.dask_pool import hub_manager

                    manager: SyncManager = hub_manager(self.settings.dask_address)
                else:
                    manager = SyncManager(ctx=mp_context())
                manager.start(initializer=_watch_parent, initargs=(os.getpid(),))
                self._manager = manager
            return self._manager

    def options(
        self,
        job_id: str,
        workdir: Path,
        output: Path,
        workers: int | None = None,
        deadline: float | None = None,
        nice: int = 0,
        budget_dir: Path | None = None,
    ) -> JobOptions:
        """`budget_dir`: where rate-limit budgets live (default DATA_DIR/budgets, shared by every
        job of the service; the CLI passes .pageferry/budgets)."""
        return JobOptions(
            job_id=job_id,
            workdir=workdir,
            output=output,
            workers=workers or self.settings.workers,
            max_body=self.settings.max_file_size,
            outbound=outbound_policy(self.settings, self.service),
            ambient_credentials=not self.service or self.settings.allow_ambient_credentials,
            ftps_ca_file=str(self.settings.ftps_ca_file) if self.settings.ftps_ca_file else None,
            deadline=deadline,
            timeout_seconds=self.settings.worker_timeout,
            nice=nice,
            budget_dir=Path(budget_dir or self.settings.data_dir / "budgets").resolve(),
            redis_url=self.settings.redis_url,  # limiter and budgets in Redis instead of budget_dir
            result_store=store_config(self.settings, self.service),
            dask_address=self.settings.dask_address,  # EXECUTOR=dask://: the pieces run on that cluster
        )

    def runner(
        self, prepared: PreparedJob, options: JobOptions, on_change: Callable[[dict], None] | None = None
    ) -> JobRunner:
        # A run that starts inline (engine/run/inline.py) starts the Manager only if it needs a pool.
        return JobRunner(prepared, options, self.manager if options.inline_start else self.manager(), on_change)

    def start(
        self,
        prepared: PreparedJob,
        options: JobOptions,
        on_change: Callable[[dict], None] | None = None,
        after: Callable[[JobResult], None] | None = None,
    ) -> JobHandle:
        handle = JobHandle(self.runner(prepared, options, on_change), after)
        handle.thread.start()
        return handle

    def close(self) -> None:
        with self._lock:
            if self._manager is not None:
                try:
                    self._manager.shutdown()
                except Exception:
                    pass
                self._manager = None


__all__ = ["Engine", "JobHandle", "JobCancelled", "JobFailed", "new_job_id"]
