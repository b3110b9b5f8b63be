"""`TaskRunner`: claims tasks from the store, runs them on this worker's `Engine`, renews
their leases, saves their progress, passes on cancel requests and records the outcome - so a
web request never waits for a fetch, and any worker can answer for any task."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from config import Settings
from engine import JobCancelled, JobFailed, SpecError
from service.background import kept_work, shared_copies
from service.background.events import Activity
from service.background.loop import BackgroundLoop
from service.logs import log_event
from service.store import TaskStatus, TaskStore, new_owner
from service.views.summary import run_summary

if TYPE_CHECKING:
    from engine import Engine, JobHandle

# Engine processes run a little nicer than the web threads beside them: with every core busy
# fetching, a status request or a websocket push still answers in milliseconds.
ENGINE_NICE = 5
log = logging.getLogger("pageferry.runner")

LEASE = 15.0  # seconds a claim lasts without renewal
RENEW_EVERY = 1.0
TICK = 0.2  # the runner's loop period: cancel within ~0.2 s, progress ≤ 5/s
SWEEP_EVERY = 60.0
SHUTDOWN = "service shutting down"


@dataclass
class Active:
    task: dict
    handle: JobHandle
    saved: dict | None = None
    saved_at: float = 0.0
    cancelling: bool = False
    extras: dict = field(default_factory=dict)


def uploads_dir(settings: Settings, task_id: str) -> Path:
    return settings.work_dir / task_id / "uploads"


def read_uploads(settings: Settings, task_id: str) -> dict[int, bytes]:
    """ids files uploaded with the task's spec, by source index."""
    folder = uploads_dir(settings, task_id)
    shared_copies.fetch_uploads(settings, task_id, folder)  # the task was started on another instance
    files = {}
    if folder.exists():
        for path in folder.glob("source-*.csv"):
            files[int(path.stem.split("-")[1])] = path.read_bytes()
    return files


class TaskRunner(BackgroundLoop):
    name = "task-runner"
    period = TICK
    log = log
    failed = "task runner loop failed"

    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        env: Mapping[str, str] | None = None,
        after_finish: Callable[[str], None] | None = None,
    ):
        super().__init__()
        self.settings = settings
        self.store = store
        self.env = os.environ if env is None else env
        self.after_finish = after_finish
        self.owner = new_owner()  # host:pid:random:instance (service/store/owners.py)
        self.active: dict[str, Active] = {}
        self._engine: Engine | None = None
        self._renewed = 0.0
        self._swept = 0.0
        self.companions: list[BackgroundLoop] = []  # started and stopped with the runner (webhooks, schedules)

    # ------------------------------------------------------------ life
    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from engine import Engine

            self._engine = Engine(self.settings, service=True)
        return self._engine

    def start(self) -> TaskRunner:
        super().start()
        for companion in self.companions:
            companion.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop running jobs without marking them cancelled: their leases are released so the
        next runner (after a restart, or another worker) resumes them from their shards."""
        self.request_stop()
        for companion in self.companions:
            companion.stop()
        for active in list(self.active.values()):
            active.handle.cancel(SHUTDOWN)
        deadline = time.monotonic() + timeout
        for active in list(self.active.values()):
            active.handle.wait(max(0.0, deadline - time.monotonic()))
        self.join(max(0.0, deadline - time.monotonic()) + 1)
        try:
            self.store.release(self.owner)
        except Exception:
            log.exception("could not release leases")
        if self._engine is not None:
            self._engine.close()

    def iterate(self) -> None:
        self._claim()
        self._tend()
        if time.monotonic() - self._swept > SWEEP_EVERY:
            self._swept = time.monotonic()
            self.sweep()

    # ------------------------------------------------------------ claiming
    def _claim(self) -> None:
        while not self.stopping:
            task = self.store.claim(self.owner, self.settings.max_concurrent_tasks, LEASE)
            if task is None:
                return
            self._launch(task)

    def _launch(self, task: dict) -> None:
        from engine import parse_spec
        from service.rules import prepare_for_service

        task_id = task["id"]
        try:
            spec = parse_spec(task["spec"])
            prepared = prepare_for_service(spec, self.settings, self.env, read_uploads(self.settings, task_id))
        except SpecError as exc:  # e.g. an environment variable gone since the task was queued
            self._record_failure(task_id, {"message": f"invalid spec: {exc}", "pages": []}, task)
            return
        except JobFailed as exc:  # RESULT_STORE could not give the task's uploaded ids files
            self._record_failure(task_id, {"message": str(exc), "pages": []}, task)
            return
        remaining = self.settings.worker_timeout - (time.time() - (task.get("started_at") or time.time()))
        options = self.engine.options(
            task_id,
            self.settings.work_dir / task_id,
            self.settings.results_dir / task_id / spec.output_name,
            deadline=time.monotonic() + max(0.0, remaining),
            nice=ENGINE_NICE,
        )
        options.incremental_state = self._saved_state(task, spec)
        handle = self.engine.start(prepared, options, after=shared_copies.result_saver(self.settings, task_id))
        self.active[task_id] = Active(task, handle, extras={"redactor": prepared.redactor, "spec": prepared.resolved})
        self.active[task_id].extras["activity"] = activity = Activity(task.get("activity"), task, _rate(spec))
        activity.event("started", f"resumed (run {task.get('runs')})" if task.get("runs", 1) > 1 else "started")
        log_event(
            "task_resumed" if task.get("runs", 1) > 1 else "task_started",
            task_id=task_id,
            name=spec.name,
            owner=self.owner,
        )

    # ------------------------------------------------------------ tending
    def _tend(self) -> None:
        if not self.active:
            return
        now = time.monotonic()
        if now - self._renewed >= RENEW_EVERY:
            self._renewed = now
            self.store.renew(self.owner, list(self.active), LEASE)
        for task_id in self.store.cancel_requests(list(self.active)):
            active = self.active[task_id]
            if not active.cancelling:
                active.cancelling = True
                active.handle.cancel("cancelled on request")
                active.extras["activity"].event("cancel", "cancel requested")
        for task_id, active in list(self.active.items()):
            if active.handle.done.is_set():
                self._finish(task_id, active)
            elif now - active.saved_at >= TICK:
                progress = active.handle.progress()
                if progress != active.saved:
                    active.saved, active.saved_at = progress, now
                    self.store.save_progress(task_id, self.owner, progress)
                activity = active.extras["activity"]
                activity.observe(progress, now)
                if activity.due(now):
                    activity.saved_now(now)
                    self.store.save_activity(task_id, activity.doc)

    def _finish(self, task_id: str, active: Active) -> None:
        del self.active[task_id]
        handle = active.handle
        error = handle.error
        if isinstance(error, JobCancelled) and str(error) == SHUTDOWN:
            return  # not cancelled: resumed by the next runner
        progress = handle.progress()
        stats = handle.runner.source_stats()
        redactor = active.extras["redactor"]
        extra = dict(active.task.get("extra") or {})
        seconds = round(time.time() - (active.task.get("started_at") or time.time()), 3)
        activity: Activity = active.extras["activity"]
        keep_until = None  # shards kept for a retry of the failed or skipped pages
        if error is None:
            result = handle.result
            assert result is not None  # a job that ended without an error has its result
            outcome = {
                "filename": result.output.name,
                "bytes": result.bytes,
                "sha256": result.sha256,
                "rows": result.rows,
                "rows_by_source": result.rows_by_source,
                "records": result.records,
                "pages": result.pages,
                "requests": result.requests,
                "retries": result.retries,
                "seconds": result.seconds,
            }
            progress = {**progress, "phase": "completed"}
            extra["summary"] = redactor.data(run_summary(active.task, TaskStatus.COMPLETED, stats, result=result))
            if result.skipped:
                extra["skipped_pages"] = result.skipped
            if result.deliveries:
                extra["deliveries"] = result.deliveries
            if result.state is not None:  # saved before the task completes: a completed task has its state
                extra["state"] = self._save_state(active, result.state)
            if result.skipped and kept_work.retry_refused(active.extras["spec"], partial=True) is None:
                keep_until = extra["retry_until"] = time.time() + self.settings.result_ttl
            self.store.finish(
                task_id,
                self.owner,
                TaskStatus.COMPLETED,
                result=outcome,
                partial=result.partial,
                progress=progress,
                extra=extra,
                activity=activity.finish(
                    "completed",
                    progress,
                    result=result,
                    skipped=redactor.data(result.skipped),
                    deliveries=redactor.data(result.deliveries),
                ),
            )
            log_event(
                "task_completed",
                task_id=task_id,
                rows=result.rows,
                pages=result.pages,
                requests=result.requests,
                retries=result.retries,
                seconds=result.seconds,
                partial=result.partial,
            )
        elif isinstance(error, JobCancelled):
            extra["summary"] = redactor.data(
                run_summary(active.task, TaskStatus.CANCELLED, stats, message=str(error), seconds=seconds)
            )
            self.store.finish(
                task_id,
                self.owner,
                TaskStatus.CANCELLED,
                progress=progress,
                error={"message": str(error), "pages": []},
                extra=extra,
                activity=activity.finish("cancelled", progress, error={"message": str(error)}),
            )
            log_event("task_cancelled", task_id=task_id)
        else:
            if isinstance(error, JobFailed):
                detail = redactor.data(error.as_dict())
            else:
                log.error("task %s: internal error %s", task_id, type(error).__name__)
                detail = {"message": redactor.text(f"internal error: {type(error).__name__}: {error}"), "pages": []}
            extra["summary"] = redactor.data(
                run_summary(
                    active.task, TaskStatus.FAILED, stats, error=error, message=detail["message"], seconds=seconds
                )
            )
            if kept_work.retry_refused(active.extras["spec"], partial=False) is None:
                keep_until = extra["retry_until"] = time.time() + self.settings.result_ttl
            self.store.finish(
                task_id,
                self.owner,
                TaskStatus.FAILED,
                progress=progress,
                error=detail,
                extra=extra,
                activity=activity.finish("failed", progress, error=detail),
            )
            log_event("task_failed", task_id=task_id, error=detail["message"])
        log_event("run_summary", **extra["summary"])
        if not kept_work.settle(self.settings, task_id, keep_until) and "retry_until" in extra:
            self.store.update_extra(task_id, {"retry_until": None})  # no shards were written
        if self.after_finish is not None:
            try:
                self.after_finish(task_id)
            except Exception:
                log.exception("after-finish hook failed for %s", task_id)

    # ------------------------------------------------------------ incremental state
    def _saved_state(self, task: dict, spec) -> dict | None:
        """The state the last completed run of the task's job name saved in its profile (None
        for a job without incremental sources). A resumed task ignores it: it asks for the
        bounds its work directory recorded."""
        from engine import has_incremental

        if not has_incremental(spec):
            return None
        saved = self.store.get_state(task.get("profile") or "default", spec.name)
        return saved["state"] if saved is not None else {}

    def _save_state(self, active: Active, state: dict) -> dict:
        """Save a completed task's state under its profile and job name, merged with what is
        saved by then (the later cursor of each unit wins); returns its sources' entries."""
        from engine import incremental_state_of, merge_incremental_states

        spec = active.extras["spec"]
        saved = self.store.update_state(
            active.task.get("profile") or "default",
            spec.name,
            lambda current: merge_incremental_states(spec, current, state),
            active.task["id"],
        )
        return incremental_state_of(spec, saved)

    def _record_failure(self, task_id: str, error: dict, task: dict | None = None) -> None:
        extra = dict((task or {}).get("extra") or {})
        extra["summary"] = run_summary(
            task or {"id": task_id}, TaskStatus.FAILED, [], message=error["message"], seconds=0.0
        )
        activity = Activity((task or {}).get("activity"), task or {"id": task_id}).finish("failed", error=error)
        self.store.finish(task_id, self.owner, TaskStatus.FAILED, error=error, extra=extra, activity=activity)
        log_event("task_failed", task_id=task_id, error=error["message"])
        log_event("run_summary", **extra["summary"])
        kept_work.settle(self.settings, task_id, None)

    # ------------------------------------------------------------ sweeping
    def sweep(self) -> dict:
        """Remove expired results (RESULT_TTL), work directories of finished or unknown tasks,
        and temp files a killed export left behind."""
        removed = {"results": 0, "work": 0, "temps": 0}
        for task in self.store.expired_results(self.settings.result_ttl):
            shutil.rmtree(self.settings.results_dir / task["id"], ignore_errors=True)
            shared_copies.remove_result(self.settings, task["id"])
            self.store.mark_expired(task["id"])
            removed["results"] += 1
        unfinished = self.store.unfinished_ids() | set(self.active)
        if self.settings.work_dir.exists():
            for folder in self.settings.work_dir.iterdir():
                if folder.name not in unfinished and _older_than(folder, 60):
                    if (kept_work.kept_until(folder) or 0) > time.time():
                        continue  # a failed or partial task's shards, kept for a retry
                    if kept_work.kept_until(folder) is not None:  # kept until now: its stored copy too
                        shared_copies.remove_work(self.settings, folder.name)
                    shutil.rmtree(folder, ignore_errors=True)
                    removed["work"] += 1
        if self.settings.results_dir.exists():
            known = self.store.task_ids()
            for folder in self.settings.results_dir.iterdir():
                if folder.name not in known and _older_than(folder, 60):
                    shutil.rmtree(folder, ignore_errors=True)
                    continue
                for temp in folder.glob(".*.tmp-*"):
                    if _older_than(temp, 3600):
                        temp.unlink(missing_ok=True)
                        removed["temps"] += 1
        if any(removed.values()):
            log_event("swept", **removed)
        return removed


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


def _rate(spec) -> float | None:
    """The spec's rate limit in requests per second (None: no limit)."""
    limit = spec.rate_limit
    return limit.requests / limit.per if limit is not None else None
