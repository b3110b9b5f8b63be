"""Row shaping shared by the SQLite and PostgreSQL task stores. Both keep the same columns
(JSON documents as compact text, times as epoch floats, flags as 0/1), so a task, schedule,
webhook or saved state read from either is the same dict."""

from __future__ import annotations

import json
from typing import Any

from service.store.protocol import TaskStatus

METRIC_COLUMNS = ("m_pages", "m_requests", "m_retries", "m_bytes", "m_rows")
STATUSES = tuple(s.value for s in TaskStatus)
WEBHOOK_PENDING = {"delivered": False, "attempts": 0, "error": None, "pending": True}

# What status, listing and websocket pushes read: every column but the spec (which can be
# ~MAX_SPEC_BYTES and is parsed only where it is used: a claim, /detail, a webhook).
LIST_COLUMNS = (
    "id, status, phase, name, profile, schedule_id, created_at, started_at, finished_at, progress, result, "
    "error, extra, partial, cancel_requested, owner, lease_until, runs, expired"
)
# one task's status adds its bounded event log; a listing of many tasks leaves it out
STATUS_COLUMNS = LIST_COLUMNS + ", activity"
# a whole task, in the SQLite table's column order (its `SELECT *` without the m_* counters)
TASK_COLUMNS = (
    "id, status, phase, name, spec, profile, schedule_id, created_at, started_at, finished_at, progress, result, "
    "error, extra, partial, cancel_requested, owner, lease_until, runs, expired, activity, submitted"
)
SCHEDULE_COLUMNS = (
    "id, cron, timezone, spec, created_at, next_run, last_run, last_task_id, base_url, profile, "
    "skipped_runs, last_skipped, paused"
)
WEBHOOK_COLUMNS = "task_id, due, attempts, done, owner, lease_until"
_JSON_COLUMNS = ("spec", "progress", "result", "error", "extra", "activity", "submitted")


def to_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def task_of(row: Any) -> dict:
    """A task row (sqlite3.Row or a dict) as the service sees it: JSON parsed, flags as bools."""
    task = {k: row[k] for k in row.keys() if not k.startswith("m_")}
    for key in _JSON_COLUMNS:
        if task.get(key) is not None:
            task[key] = json.loads(task[key])
    task["partial"] = bool(task["partial"])
    task["cancel_requested"] = bool(task["cancel_requested"])
    task["expired"] = bool(task["expired"])
    return task


def metrics_of(progress: Any) -> dict[str, Any]:
    """A progress snapshot's numbers, for the m_* columns (what /metrics adds up)."""
    numbers = (progress or {}).get("progress") or {}
    return {
        "m_pages": numbers.get("pages_done") or 0,
        "m_requests": numbers.get("requests") or 0,
        "m_retries": numbers.get("retries") or 0,
        "m_bytes": numbers.get("bytes") or 0,
    }


def profile_of(row: Any) -> dict:
    """A profile's saved inputs and configuration; an unsaved profile has none."""
    if row is None:
        return {"inputs": [], "configuration": {}}
    return {"inputs": json.loads(row["inputs"]), "configuration": json.loads(row["configuration"])}


def schedule_of(row: Any) -> dict:
    schedule = dict(row)
    schedule["spec"] = json.loads(schedule["spec"])
    return schedule


def state_of(row: Any) -> dict:
    return {
        "name": row["name"],
        "profile": row["profile"],
        "state": json.loads(row["state"]),
        "updated_at": row["updated_at"],
        "task_id": row["task_id"],
    }


def with_webhook(extra: str | None, outcome: dict) -> str | None:
    """A task's `extra` JSON with its `webhook` section set to `outcome` (as SQLite's json_set)."""
    merged = json.loads(extra) if extra else {}
    merged["webhook"] = outcome
    return to_json(merged)
