"""Schedules: recurring tasks, stored in the task store and fired by every worker's
`ScheduleClock`.

    POST   /api/export/schedules       {"cron", "spec", "timezone"} -> 201 {"schedule_id", "next_run", ...}
    GET    /api/export/schedules       {"schedules": [...]}
    GET    /api/export/schedules/{id}
    DELETE /api/export/schedules/{id}  404 when unknown
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
    cron_problem = check_cron(body["cron"]) if "cron" in body else None
    if cron_problem:
        problems.append(FieldError("cron", cron_problem))
    timezone = body.get("timezone", "UTC")
    tz_problem = check_timezone(timezone)
    if tz_problem:
        problems.append(FieldError("timezone", tz_problem))
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
        raise ApiError(
            429,
            f"this profile already has MAX_SCHEDULES_PER_PROFILE ({cap}) schedules; delete one first",
            "too_many_requests",
            [{"field": "X-Profile", "message": f"at most {cap} schedules (MAX_SCHEDULES_PER_PROFILE)"}],
        ) from None
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
