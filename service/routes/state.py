"""Incremental state (docs/incremental.md): what each incremental job name of a profile
(`X-Profile`, default `default`) has seen, saved when one of its tasks completes.

    GET    /api/export/state         {"profile", "states": [{"name", "profile", "state", "updated_at", "task_id"}]}
    DELETE /api/export/state         forget them all: {"profile", "deleted": n}
    GET    /api/export/state/{name}  {"name", "profile", "state", "updated_at", "task_id"}; 404 when none is saved
    DELETE /api/export/state/{name}  forget it (the next run starts from `start`): the same, plus "deleted": true

`state` is `{"<source>": {"cursor": <latest value seen>, "units": {"<unit key>": <value>}}}`
(`units` for a source that fans out).
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from service.auth import require_token
from service.errors import ApiError
from service.routes.common import profile_name, services
from service.views.status import iso

state_bp = Blueprint("state", __name__, url_prefix="/api/export")
state_bp.before_request(require_token)


def state_json(saved: dict) -> dict:
    return {
        "name": saved["name"],
        "profile": saved["profile"],
        "state": saved["state"],
        "updated_at": iso(saved["updated_at"]),
        "task_id": saved["task_id"],
    }


def _not_found(name: str, profile: str) -> ApiError:
    return ApiError(
        404,
        f"no incremental state for {name[:100]!r} in profile {profile!r}",
        "not_found",
        [{"field": "name", "message": "no completed incremental run of this name"}],
    )


@state_bp.get("/state")
def list_states():
    profile = profile_name()
    return jsonify({"profile": profile, "states": [state_json(s) for s in services().store.list_states(profile)]})


@state_bp.delete("/state")
def reset_states():
    profile = profile_name()
    return jsonify({"profile": profile, "deleted": services().store.delete_states(profile)})


@state_bp.get("/state/<name>")
def show_state(name: str):
    profile = profile_name()
    saved = services().store.get_state(profile, name)
    if saved is None:
        raise _not_found(name, profile)
    return jsonify(state_json(saved))


@state_bp.delete("/state/<name>")
def reset_state(name: str):
    profile = profile_name()
    saved = services().store.delete_state(profile, name)
    if saved is None:
        raise _not_found(name, profile)
    return jsonify({**state_json(saved), "deleted": True})
