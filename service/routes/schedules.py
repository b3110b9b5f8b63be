"""Schedules: recurring tasks, stored in the task store and fired by every worker's
`ScheduleClock`.

    POST   /api/export/schedules       {"cron", "spec", "timezone"} -> 201 {"schedule_id", "next_run", ...}
    GET    /api/export/schedules       {"schedules": [...]}
    GET    /api/export/schedules/{id}
    DELETE /api/export/schedules/{id}  404 when unknown
    POST   /api/export/schedules/check        {"cron", "timezone"} -> {"description", "next_runs", ...}
    POST   /api/export/schedules/{id}/pause   a paused schedule does not fire
    POST   /api/export/schedules/{id}/resume  fires again from the next due time after now
    POST   /api/export/schedules/{id}/run     one run now (202 as /start), besides the due times
"""

from __future__ import annotations

import re
import time

from flask import Blueprint, jsonify

from engine import FieldError, Redactor, SpecError, parse_spec, spec_to_json
from service.auth import require_token
from service.cron import check_cron, check_timezone, next_after
from service.errors import ApiError, invalid
from service.limits import check_spec_size
from service.logs import log_event
from service.routes.common import base_url, json_body, profile_name, services
from service.store import LimitReached
from service.views.status import iso

SCHEDULE_ID = re.compile(r"sch_[0-9a-f]{12}")
FIELDS = {"cron", "spec", "timezone"}

sched_bp = Blueprint("schedules", __name__, url_prefix="/api/export")
sched_bp.before_request(require_token)


def schedule_json(schedule: dict) -> dict:
    return {
        "schedule_id": schedule["id"],
        "cron": schedule["cron"],
        "timezone": schedule["timezone"],
        "next_run": iso(schedule["next_run"]),
        "last_run": iso(schedule.get("last_run")),
        "last_task_id": schedule.get("last_task_id"),
        "created_at": iso(schedule["created_at"]),
        "profile": schedule.get("profile") or "default",
        "skipped_runs": schedule.get("skipped_runs") or 0,  # firings skipped: MAX_QUEUED_PER_PROFILE
        "last_skipped": iso(schedule.get("last_skipped")),
        "name": schedule["spec"].get("name"),
        "spec": Redactor().spec(schedule["spec"]),
        "paused": bool(schedule.get("paused")),
        "description": describe_cron(schedule["cron"]),
    }


def _check_spec(document) -> dict:
    from service.rules import prepare_for_service

    svc = services()
    if not isinstance(document, dict):
        raise SpecError([FieldError("spec", "must be a JSON object (a job spec)")])
    spec = parse_spec(document)
    for i, source in enumerate(spec.sources):
        if source.ids is not None and source.ids.file is not None:
            raise SpecError(
                [
                    FieldError(
                        f"sources.{i}.ids.file",
                        "a schedule cannot carry an uploaded ids file; give ids.values or ids.range",
                    )
                ]
            )
    prepare_for_service(spec, svc.settings, svc.env)
    return spec_to_json(spec)


@sched_bp.post("/schedules")
def create_schedule():
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(
            400,
            'send {"cron", "spec", "timezone"}',
            "validation_error",
            [{"field": "schedule", "message": "must be a JSON object"}],
        )
    problems = [FieldError(k, "unknown field") for k in body if k not in FIELDS]
    problems += [FieldError(k, "field required") for k in ("cron", "spec") if k not in body]
    timing, timezone = _timing_problems(body, cron_given_or_not=False)
    problems += timing
    spec = None
    limit = services().settings.max_spec_bytes
    if "spec" in body:
        check_spec_size(body["spec"], limit)
        try:
            spec = _check_spec(body["spec"])
        except SpecError as exc:
            problems += [
                FieldError(d.field if d.field == "spec" else f"spec.{d.field}", d.message) for d in exc.details
            ]
    if problems:
        raise invalid(SpecError(problems))
    check_spec_size(spec, limit)  # as stored
    import secrets

    now = time.time()
    schedule = {
        "id": f"sch_{secrets.token_hex(6)}",
        "cron": body["cron"].strip(),
        "timezone": timezone,
        "spec": spec,
        "created_at": now,
        "base_url": base_url(),
        "profile": profile_name(),
    }
    schedule["next_run"] = next_after(schedule["cron"], timezone, now)
    cap = services().settings.max_schedules_per_profile
    try:
        services().store.create_schedule(schedule, max_per_profile=cap)
    except LimitReached:
        raise _over_limit("MAX_SCHEDULES_PER_PROFILE", cap, "schedules", "delete one first") from None
    log_event(
        "schedule_created",
        schedule_id=schedule["id"],
        cron=schedule["cron"],
        timezone=timezone,
        next_run=iso(schedule["next_run"]),
    )
    return jsonify(schedule_json(schedule)), 201


@sched_bp.get("/schedules")
def list_schedules():
    return jsonify({"schedules": [schedule_json(s) for s in services().store.list_schedules()]})


def _find(schedule_id: str) -> dict:
    schedule = services().store.get_schedule(schedule_id) if SCHEDULE_ID.fullmatch(schedule_id) else None
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


# ------------------------------------------------------------------ for the page: check, pause, run now

PREVIEW_RUNS = 5
WEEKDAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
NAMED = {
    "@yearly": "every year on January 1 at 00:00",
    "@annually": "every year on January 1 at 00:00",
    "@monthly": "on the 1st of every month at 00:00",
    "@weekly": "every Sunday at 00:00",
    "@daily": "every day at 00:00",
    "@midnight": "every day at 00:00",
    "@hourly": "every hour, on the hour",
}


def _number(field: str, top: int) -> int | None:
    return int(field) if field.isdigit() and int(field) <= top else None


def _weekdays(field: str) -> str | None:
    """ "1-5" -> "Monday to Friday", "1,3" -> "Monday and Wednesday", "0" -> "Sunday"."""
    if re.fullmatch(r"[0-7]-[0-7]", field):
        first, last = (int(x) % 7 for x in field.split("-"))
        return f"{WEEKDAYS[first]} to {WEEKDAYS[last]}"
    if re.fullmatch(r"[0-7](,[0-7])*", field):
        days = [WEEKDAYS[int(x) % 7] for x in field.split(",")]
        return days[0] if len(days) == 1 else ", ".join(days[:-1]) + " and " + days[-1]
    return None


def describe_cron(cron: str) -> str | None:
    """A cron expression in words, for the common shapes (None: "see the next runs")."""
    text = cron.strip()
    if text.startswith("@"):
        return NAMED.get(text.lower())
    fields = text.split()
    seconds = fields[5] if len(fields) == 6 else "0"
    if len(fields) not in (5, 6):
        return None
    minute, hour, day, month, weekday = fields[:5]
    if seconds != "0":
        if fields[:5] == ["*"] * 5:
            if seconds == "*":
                return "every second"
            if re.fullmatch(r"\*/\d+", seconds):
                return f"every {int(seconds[2:])} seconds"
        return None
    if (day, month, weekday) == ("*", "*", "*"):
        if (minute, hour) == ("*", "*"):
            return "every minute"
        if hour == "*" and re.fullmatch(r"\*/\d+", minute):
            return f"every {int(minute[2:])} minutes"
        if hour == "*" and _number(minute, 59) is not None:
            return "every hour, on the hour" if minute == "0" else f"every hour at {int(minute)} minutes past"
        if re.fullmatch(r"\*/\d+", hour) and _number(minute, 59) is not None:
            return f"every {int(hour[2:])} hours at minute {int(minute)}"
    m, h = _number(minute, 59), _number(hour, 23)
    if m is None or h is None:
        return None
    at = f"at {h:02d}:{m:02d}"
    if (day, month) == ("*", "*"):
        if weekday == "*":
            return f"every day {at}"
        days = _weekdays(weekday)
        return f"every {days} {at}" if days else None
    d = _number(day, 31)
    if d is None or weekday != "*":
        return None
    if month == "*":
        return f"on day {d} of every month {at}"
    mo = _number(month, 12)
    return f"every year on {MONTHS[mo - 1]} {d} {at}" if mo else None


def _upcoming(cron: str, timezone: str, count: int = PREVIEW_RUNS) -> list[dict]:
    import datetime as dt
    import zoneinfo

    zone = zoneinfo.ZoneInfo(timezone)
    runs, after = [], time.time()
    for _ in range(count):
        after = next_after(cron, timezone, after)
        local = dt.datetime.fromtimestamp(after, zone)
        runs.append({"at": iso(after), "local": local.strftime("%a %Y-%m-%d %H:%M:%S") + f" {timezone}"})
    return runs


@sched_bp.post("/schedules/check")
def check_schedule():
    """A cron expression and timezone checked as /schedules checks them, nothing stored:
    `{"cron", "timezone", "description", "next_runs": [{"at", "local"}, ...]}` - the form's
    preview of when a schedule would run."""
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(
            400,
            'send {"cron", "timezone"}',
            "validation_error",
            [{"field": "body", "message": "must be a JSON object"}],
        )
    problems = [FieldError(k, "unknown field") for k in body if k not in ("cron", "timezone")]
    timing, timezone = _timing_problems(body, cron_given_or_not=True)
    problems += timing
    if problems:
        raise invalid(SpecError(problems))
    cron = body["cron"].strip()
    return jsonify(
        {"cron": cron, "timezone": timezone, "description": describe_cron(cron), "next_runs": _upcoming(cron, timezone)}
    )


@sched_bp.post("/schedules/<schedule_id>/pause")
def pause_schedule(schedule_id: str):
    _find(schedule_id)
    schedule = services().store.pause_schedule(schedule_id, True)
    if schedule is None:
        raise ApiError(404, f"no schedule {schedule_id[:40]!r}", "not_found")
    log_event("schedule_paused", schedule_id=schedule_id)
    return jsonify(schedule_json(schedule))


@sched_bp.post("/schedules/<schedule_id>/resume")
def resume_schedule(schedule_id: str):
    """Due times that passed while it was paused are not run: it fires next at its first due
    time after now."""
    found = _find(schedule_id)
    next_run = next_after(found["cron"], found["timezone"], time.time())
    schedule = services().store.pause_schedule(schedule_id, False, next_run)
    if schedule is None:
        raise ApiError(404, f"no schedule {schedule_id[:40]!r}", "not_found")
    log_event("schedule_resumed", schedule_id=schedule_id, next_run=iso(next_run))
    return jsonify(schedule_json(schedule))


@sched_bp.post("/schedules/<schedule_id>/run")
def run_schedule_now(schedule_id: str):
    """One run of the schedule's spec now (paused or not), as an ordinary task of the schedule
    (`schedule_id`, `scheduled_for` now); its due times are unchanged. 429 when the schedule's
    profile has MAX_QUEUED_PER_PROFILE queued tasks."""
    from engine import new_job_id
    from service.routes.common import urls
    from service.rules import prepare_for_service

    svc = services()
    schedule = _find(schedule_id)
    try:  # checked again: a secret or an allowed host may have gone since it was created
        prepare_for_service(parse_spec(schedule["spec"]), svc.settings, svc.env)
    except SpecError as exc:
        raise invalid(SpecError([FieldError(f"spec.{d.field}", d.message) for d in exc.details])) from None
    now = time.time()
    task = {
        "id": new_job_id("task"),
        "name": schedule["spec"].get("name"),
        "spec": schedule["spec"],
        "schedule_id": schedule_id,
        "profile": schedule.get("profile") or "default",
        "created_at": now,
        "extra": {"scheduled_for": iso(now), "run_now": True, "base_url": schedule.get("base_url") or base_url()},
    }
    cap = svc.settings.max_queued_per_profile
    try:
        stored = svc.store.run_schedule_now(schedule_id, task, max_queued=cap)
    except LimitReached:
        raise _over_limit("MAX_QUEUED_PER_PROFILE", cap, "queued tasks", "run it once some have run") from None
    if not stored:
        raise ApiError(404, f"no schedule {schedule_id[:40]!r}", "not_found")
    svc.runner.wake()
    log_event("schedule_run_now", schedule_id=schedule_id, task_id=task["id"])
    return jsonify({"task_id": task["id"], "status": "queued", "schedule_id": schedule_id, **urls(task["id"])}), 202


def _over_limit(setting: str, cap: int, things: str, advice: str) -> ApiError:
    """The 429 for a profile at one of its limits (docs/security.md, "Fail closed")."""
    return ApiError(
        429,
        f"this profile already has {setting} ({cap}) {things}; {advice}",
        "too_many_requests",
        [{"field": "X-Profile", "message": f"at most {cap} {things} ({setting})"}],
    )


def _timing_problems(body: dict, cron_given_or_not: bool) -> tuple[list[FieldError], str]:
    """A schedule body's `cron` and `timezone` checked: (problems, the timezone). The cron is
    checked when present, or always with `cron_given_or_not` (its absence is then its problem)."""
    problems = []
    if cron_given_or_not or "cron" in body:
        cron_problem = check_cron(body.get("cron"))
        if cron_problem:
            problems.append(FieldError("cron", cron_problem))
    timezone = body.get("timezone", "UTC")
    tz_problem = check_timezone(timezone)
    if tz_problem:
        problems.append(FieldError("timezone", tz_problem))
    return problems, timezone
