"""POST /api/export/download-link/{id} and /ws-link/{id}: short-lived URLs signed for one task
and one route, for browsers (a download link or a websocket cannot carry an Authorization
header). Both need the API token like every /api route; the URLs they answer need none, and
never contain the token itself (service/auth.py)."""

from __future__ import annotations

from flask import jsonify

from service.auth import iso_utc, signed_query
from service.errors import ApiError
from service.routes.common import find_task, urls
from service.routes.exports import bp
from service.store import TaskStatus


@bp.post("/download-link/<task_id>")
def download_link(task_id: str):
    task = find_task(task_id)
    if task["status"] != TaskStatus.COMPLETED:
        raise ApiError(409, f"task is {task['status']}; only a completed task has a result", "not_completed")
    query, expires = signed_query("download", task_id)
    return jsonify({"url": f"{urls(task_id)['download_url']}?{query}", "expires_at": iso_utc(expires)})


@bp.post("/ws-link/<task_id>")
def ws_link(task_id: str):
    find_task(task_id)
    query, expires = signed_query("ws", task_id)
    return jsonify({"url": f"{urls(task_id)['ws_url']}?{query}", "expires_at": iso_utc(expires)})
