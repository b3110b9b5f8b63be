"""`ScheduleClock`: turns due schedules into queued tasks, in every gunicorn worker; the store
fires each due time exactly once however many workers look, so a restart neither repeats
nor drops one."""

from __future__ import annotations

import logging
import time
from typing import Any

from service.background.loop import BackgroundLoop
from service.cron import plan_runs
from service.logs import log_event
from service.store import TaskStore
from service.views.status import iso

log = logging.getLogger("pageferry.schedules")

STALE = 10.0  # seconds without any scheduler looking that count as downtime
TICK = 0.2  # seconds between looks


class ScheduleClock(BackgroundLoop):
    """Looks for due schedules and queues their runs (one per gunicorn worker).

    Missed runs: when some scheduler looked within the last STALE seconds (a restart, a busy
    moment), every due time since is run, one task each. After a longer downtime, the missed
    due times make one run on start (its `missed_runs` says how many it stands for), not N."""

    name = "schedule-clock"
    period = TICK
    log = log
    failed = "schedule clock failed"

    def __init__(self, store: TaskStore, on_fired=None, clock=time.time, max_queued: int | None = None):
        super().__init__()
        self.store = store
        self.on_fired = on_fired
        self.clock = clock
        self.max_queued = max_queued  # MAX_QUEUED_PER_PROFILE: a firing over it is skipped

    def iterate(self) -> list[dict]:
        return self.tick()

    def tick(self) -> list[dict]:
        from engine import new_job_id

        now = self.clock()

        def make_task(schedule: dict, due: float, missed: int) -> dict:
            extra: dict[str, Any] = {"scheduled_for": iso(due)}
            if missed:
                extra["missed_runs"] = missed
            if schedule.get("base_url"):
                extra["base_url"] = schedule["base_url"]
            return {
                "id": new_job_id("task"),
                "name": schedule["spec"].get("name"),
                "spec": schedule["spec"],
                "schedule_id": schedule["id"],
                "profile": schedule.get("profile") or "default",
                "created_at": now,
                "extra": extra,
            }

        def skipped(schedule: dict, task: dict) -> None:
            log_event(
                "schedule_skipped",
                level=logging.WARNING,
                schedule_id=schedule["id"],
                profile=task.get("profile"),
                scheduled_for=task["extra"]["scheduled_for"],
                reason=f"MAX_QUEUED_PER_PROFILE ({self.max_queued}) tasks are queued",
            )

        fired = self.store.fire_schedules(now, plan_runs, make_task, STALE, self.max_queued, skipped)
        for task in fired:
            log_event(
                "schedule_fired",
                schedule_id=task["schedule_id"],
                task_id=task["id"],
                scheduled_for=task["extra"]["scheduled_for"],
                missed_runs=task["extra"].get("missed_runs", 0),
            )
        if fired and self.on_fired is not None:
            self.on_fired()
        return fired
