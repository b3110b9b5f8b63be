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

from engine import FieldError, Redactor, SpecError, env_references, parse_spec, spec_to_json
from service.auth import require_token
from service.cron import check_cron, check_timezone, next_after
from service.errors import ApiError, invalid
from service.logs import log_event
from service.routes.common import FORBIDDEN_ENV, base_url, json_body, services
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
        "name": schedule["spec"].get("name"),
        "spec": Redactor().spec(schedule["spec"]),
    }


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
            raise SpecError(
                [
                    FieldError(
                        f"sources.{i}.ids.file",
                        "a schedule cannot carry an uploaded ids file; give ids.values or ids.range",
                    )
                ]
            )
    prepare(spec, svc.env, svc.settings.allowed_source_hosts)
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
    if "spec" in body:
        try:
            spec = _check_spec(body["spec"])
        except SpecError as exc:
            problems += [
                FieldError(d.field if d.field == "spec" else f"spec.{d.field}", d.message) for d in exc.details
            ]
    if problems:
        raise invalid(SpecError(problems))
    import secrets

    now = time.time()
    schedule = {
        "id": f"sch_{secrets.token_hex(6)}",
        "cron": body["cron"].strip(),
        "timezone": timezone,
        "spec": spec,
        "created_at": now,
        "base_url": base_url(),
    }
    schedule["next_run"] = next_after(schedule["cron"], timezone, now)
    services().store.create_schedule(schedule)
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
