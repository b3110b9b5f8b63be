"""Schedules: recurring tasks (contract §3).

    POST   /api/export/schedules       {"cron", "spec", "timezone"} -> 201 {"schedule_id", "next_run", ...}
    GET    /api/export/schedules       {"schedules": [...]}
    GET    /api/export/schedules/{id}
    DELETE /api/export/schedules/{id}  404 when unknown

A schedule lives in the task store. Every gunicorn worker runs a `ScheduleClock` thread that
looks for due schedules a few times a second; the store turns each due time into an
ordinary queued task (carrying `schedule_id` and `scheduled_for`) and moves the schedule's
`next_run` on in the same write transaction, so each due time fires exactly once however
many workers look, and a restart neither repeats nor drops one.

Missed runs: when some scheduler looked within the last STALE seconds (a restart, a busy
moment), every due time since is run, one task each. After a longer downtime, the missed
due times make one run on start (its `missed_runs` says how many it stands for), not N.

Cron: five fields (minute hour day month weekday), or six with seconds last
(`*/10 * * * * 30`), or @hourly/@daily/...; evaluated in the schedule's IANA timezone.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
import zoneinfo

from croniter import croniter
from flask import Blueprint, jsonify

from engine import FieldError, SpecError
from engine import Redactor, env_references
from engine import parse_spec, spec_to_json
from service.api import FORBIDDEN_ENV, _authorize, base_url, json_body, services
from service.errors import ApiError, invalid
from service.logs import log_event
from service.status import iso

log = logging.getLogger("pageferry.schedules")

SCHEDULE_ID = re.compile(r"^sch_[0-9a-f]{12}$")
STALE = 10.0          # seconds without any scheduler looking that count as downtime
TICK = 0.2            # seconds between looks
MAX_CATCH_UP = 1000   # due times run one by one at most; beyond, they are folded into one run
FIELDS = {"cron", "spec", "timezone"}

sched_bp = Blueprint("schedules", __name__, url_prefix="/api/export")


# ------------------------------------------------------------------ cron arithmetic

def check_cron(cron) -> str | None:
    """Why `cron` is not usable, or None."""
    if not isinstance(cron, str) or not cron.strip():
        return "must be a cron expression (5 fields, or 6 with seconds last)"
    text = cron.strip()
    if not text.startswith("@") and len(text.split()) not in (5, 6):
        return f"must have 5 fields (minute hour day month weekday) or 6 (seconds last), not {len(text.split())}"
    if not croniter.is_valid(text):
        return f"{text!r} is not a valid cron expression"
    return None


def check_timezone(name) -> str | None:
    if not isinstance(name, str) or not name:
        return "must be an IANA timezone name such as 'UTC' or 'Europe/Berlin'"
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"unknown timezone {name[:60]!r}"
    return None


def next_after(cron: str, timezone: str, after: float) -> float:
    """The first due time strictly after the timestamp `after`."""
    start = dt.datetime.fromtimestamp(after, zoneinfo.ZoneInfo(timezone))
    return croniter(cron.strip(), start).get_next(float)


def plan_runs(schedule: dict, now: float, caught_up: bool) -> tuple[list[tuple[float, int]], float]:
    """Which runs a due schedule makes at `now`: [(due time, missed runs folded in), ...] and
    the schedule's next `next_run` (> now)."""
    cron, timezone = schedule["cron"], schedule["timezone"]
    due = [schedule["next_run"]]
    following = next_after(cron, timezone, due[-1])
    while following <= now and len(due) < MAX_CATCH_UP:
        due.append(following)
        following = next_after(cron, timezone, following)
    folded = 0
    if following <= now:  # more than MAX_CATCH_UP due times: stop counting, jump to now
        folded = 1
        following = next_after(cron, timezone, now)
    if caught_up and not folded:
        return [(t, 0) for t in due], following
    return [(due[-1], len(due) - 1 + folded)], following


# ------------------------------------------------------------------ the clock

class ScheduleClock:
    """Looks for due schedules and queues their runs (one per gunicorn worker)."""

    def __init__(self, store, on_fired=None, clock=time.time):
        self.store = store
        self.on_fired = on_fired
        self.clock = clock
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="schedule-clock", daemon=True)

    def start(self) -> "ScheduleClock":
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("schedule clock failed")
            self._stopping.wait(TICK)

    def tick(self) -> list[dict]:
        from engine import new_job_id
        now = self.clock()

        def make_task(schedule: dict, due: float, missed: int) -> dict:
            extra = {"scheduled_for": iso(due)}
            if missed:
                extra["missed_runs"] = missed
            if schedule.get("base_url"):
                extra["base_url"] = schedule["base_url"]
            return {"id": new_job_id("task"), "name": schedule["spec"].get("name"), "spec": schedule["spec"],
                    "schedule_id": schedule["id"], "created_at": now, "extra": extra}

        fired = self.store.fire_schedules(now, plan_runs, make_task, STALE)
        for task in fired:
            log_event("schedule_fired", schedule_id=task["schedule_id"], task_id=task["id"],
                      scheduled_for=task["extra"]["scheduled_for"], missed_runs=task["extra"].get("missed_runs", 0))
        if fired and self.on_fired is not None:
            self.on_fired()
        return fired


# ------------------------------------------------------------------ the API

def schedule_json(schedule: dict) -> dict:
    return {"schedule_id": schedule["id"], "cron": schedule["cron"], "timezone": schedule["timezone"],
            "next_run": iso(schedule["next_run"]), "last_run": iso(schedule.get("last_run")),
            "last_task_id": schedule.get("last_task_id"), "created_at": iso(schedule["created_at"]),
            "name": schedule["spec"].get("name"), "spec": Redactor().spec(schedule["spec"])}


def _check_spec(document) -> dict:
    from engine import prepare
    svc = services()
    if not isinstance(document, dict):
        raise SpecError([FieldError("spec", "must be a JSON object (a job spec)")])
    spec = parse_spec(document)
    forbidden = sorted(env_references(spec) & FORBIDDEN_ENV)
    if forbidden:
        raise SpecError([FieldError("spec", f"${{{forbidden[0]}}} is the service's own secret")])
    for i, source in enumerate(spec.sources):
        if source.ids is not None and source.ids.file is not None:
            raise SpecError([FieldError(f"sources.{i}.ids.file", "a schedule cannot carry an uploaded ids "
                                                                 "file; give ids.values or ids.range")])
    prepare(spec, svc.env, svc.settings.allowed_source_hosts)
    return spec_to_json(spec)


sched_bp.before_request(_authorize)  # API_TOKEN, as for every /api route


@sched_bp.post("/schedules")
def create_schedule():
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "send {\"cron\", \"spec\", \"timezone\"}", "validation_error",
                       [{"field": "schedule", "message": "must be a JSON object"}])
    problems = [FieldError(k, "unknown field") for k in body if k not in FIELDS]
    problems += [FieldError(k, "field required") for k in ("cron", "spec") if k not in body]
    cron_problem = check_cron(body["cron"]) if "cron" in body else None
    if cron_problem:
        problems.append(FieldError("cron", cron_problem))
    timezone = body.get("timezone", "UTC")
    tz_problem = check_timezone(timezone)
    if tz_problem:
        problems.append(FieldError("timezone", tz_problem))
    spec = None
    if "spec" in body:
        try:
            spec = _check_spec(body["spec"])
        except SpecError as exc:
            problems += [FieldError(d.field if d.field == "spec" else f"spec.{d.field}", d.message)
                         for d in exc.details]
    if problems:
        raise invalid(SpecError(problems))
    import secrets
    now = time.time()
    schedule = {"id": f"sch_{secrets.token_hex(6)}", "cron": body["cron"].strip(), "timezone": timezone,
                "spec": spec, "created_at": now, "base_url": base_url()}
    schedule["next_run"] = next_after(schedule["cron"], timezone, now)
    services().store.create_schedule(schedule)
    log_event("schedule_created", schedule_id=schedule["id"], cron=schedule["cron"], timezone=timezone,
              next_run=iso(schedule["next_run"]))
    return jsonify(schedule_json(schedule)), 201


@sched_bp.get("/schedules")
def list_schedules():
    return jsonify({"schedules": [schedule_json(s) for s in services().store.list_schedules()]})


def _find(schedule_id: str) -> dict:
    schedule = services().store.get_schedule(schedule_id) if SCHEDULE_ID.match(schedule_id) else None
    if schedule is None:
        raise ApiError(404, f"no schedule {schedule_id[:40]!r}", "not_found")
    return schedule


@sched_bp.get("/schedules/<schedule_id>")
def show_schedule(schedule_id: str):
    return jsonify(schedule_json(_find(schedule_id)))


@sched_bp.delete("/schedules/<schedule_id>")
def delete_schedule(schedule_id: str):
    schedule = _find(schedule_id)
    if not services().store.delete_schedule(schedule_id):
        raise ApiError(404, f"no schedule {schedule_id[:40]!r}", "not_found")
    log_event("schedule_deleted", schedule_id=schedule_id)
    return jsonify({**schedule_json(schedule), "deleted": True})
