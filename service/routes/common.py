"""What every /api/export route uses: the request's JSON body and profile, task lookup, and
the absolute URLs a task's status links to."""

from __future__ import annotations

import re

from flask import request

from engine import SpecError
from service import profiles, services
from service.errors import ApiError, invalid

__all__ = ["FORBIDDEN_ENV", "TASK_ID", "base_url", "find_task", "json_body", "profile_name", "services", "urls"]

TASK_ID = re.compile(r"task_[0-9a-f]{12}")
FORBIDDEN_ENV = {"API_TOKEN"}  # the service's own secrets are not for job specs


def json_body(required: bool = True):
    """The request's JSON document; 415 for another content type, 400 for invalid JSON."""
    if not request.get_data(cache=True):
        if required:
            raise ApiError(400, "a JSON body is required", "invalid_json")
        return None
    if request.mimetype != "application/json":
        raise ApiError(415, "send Content-Type: application/json", "unsupported_media_type")
    body = request.get_json(silent=True)
    if body is None:
        raise ApiError(400, "the body is not valid JSON", "invalid_json")
    return body


def profile_name() -> str:
    try:
        return profiles.check_profile_name(request.headers.get("X-Profile"))
    except SpecError as exc:
        raise invalid(exc) from None


def find_task(task_id: str) -> dict:
    task = services().store.get_task(task_id) if TASK_ID.fullmatch(task_id) else None
    if task is None:
        raise ApiError(404, f"no task {task_id[:40]!r}", "not_found")
    return task


def base_url() -> str:
    return request.host_url.rstrip("/")


def urls(task_id: str) -> dict:
    root = base_url()
    ws_root = ("wss://" if root.startswith("https://") else "ws://") + root.split("://", 1)[1]
    return {
        "status_url": f"{root}/api/export/status/{task_id}",
        "download_url": f"{root}/api/export/download/{task_id}",
        "ws_url": f"{ws_root}/api/export/ws/{task_id}",
    }
