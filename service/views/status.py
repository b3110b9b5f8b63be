"""The status JSON: one shape for GET /status, the task list, every websocket message and
the webhook payload, so a client parses one document however it asks."""

from __future__ import annotations

import datetime as dt

from service.store import TaskStatus

IDLE_PROGRESS = {
    "pages_done": 0,
    "pages_total": None,
    "rows": 0,
    "bytes": 0,
    "requests": 0,
    "retries": 0,
    "rate": 0.0,
    "percent": None,
    "eta_seconds": None,
}


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def download_path(task_id: str) -> str:
    return f"/api/export/download/{task_id}"


def status_json(task: dict, base_url: str = "") -> dict:
    """`base_url` (e.g. http://host:8000) makes the URLs absolute; empty keeps them relative."""
    snapshot = task.get("progress") or {}
    progress = {**IDLE_PROGRESS, **(snapshot.get("progress") or {})}
    status = TaskStatus(task["status"])
    if status is TaskStatus.COMPLETED:
        progress["percent"] = 100.0
        progress["eta_seconds"] = 0
        if progress.get("pages_total") is None:
            progress["pages_total"] = progress.get("pages_done")
    result = None
    if status is TaskStatus.COMPLETED and task.get("result"):
        result = {**task["result"], "download_url": base_url + download_path(task["id"])}
        progress["rows"] = result.get("rows", progress["rows"])
    out = {
        "task_id": task["id"],
        "name": task.get("name"),
        "status": status.value,
        "phase": (snapshot.get("phase") or task.get("phase") or "fetching") if status is TaskStatus.RUNNING else None,
        "progress": progress,
        "sources": snapshot.get("sources") or [],
        "retry_causes": snapshot.get("retry_causes") or [],
        "created_at": iso(task.get("created_at")),
        "started_at": iso(task.get("started_at")),
        "finished_at": iso(task.get("finished_at")),
        "partial": bool(task.get("partial")),
        "error": task.get("error") if status in (TaskStatus.FAILED, TaskStatus.CANCELLED) else None,
        "result": result,
        "schedule_id": task.get("schedule_id"),
        "cancel_requested": bool(task.get("cancel_requested")) and status is TaskStatus.RUNNING,
        "expired": bool(task.get("expired")),
    }
    extra = task.get("extra") or {}
    for key in ("webhook", "deliveries", "summary", "skipped_pages", "manifest", "scheduled_for", "missed_runs"):
        if key in extra:
            out[key] = extra[key]
    if "state" in extra:  # incremental sources: the state the completed task saved
        out["state"] = extra["state"]
    _page_extras(out, task, extra)
    return out


def _page_extras(out: dict, task: dict, extra: dict) -> None:
    """What the progress page adds: where the task came from, until when its failed pages can
    be retried, its place in the queue, and (one task's status, not listings) its event log."""
    for key in ("rerun_of", "retry_of"):
        if extra.get(key):
            out[key] = extra[key]
    if extra.get("retry_until") and out["status"] in (TaskStatus.FAILED, TaskStatus.COMPLETED):
        out["retry_until"] = iso(extra["retry_until"])
    if task.get("queue_position") is not None and out["status"] == TaskStatus.QUEUED:
        out["queue_position"] = task["queue_position"]
    activity = task.get("activity")
    if activity:
        out["events"] = activity.get("events") or []
        out["events_dropped"] = activity.get("dropped") or 0
        out["throughput"] = activity.get("throughput") or []
