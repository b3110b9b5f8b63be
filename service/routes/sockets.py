"""WS /api/export/ws/{id}: live status pushes. The socket polls the task store, not an
in-process job, so it works whichever gunicorn worker accepted it: the status on connect,
on each change (at most ~5 a second) and when final, then a normal close.

Each open socket holds a gunicorn thread, so a worker process takes at most MAX_WS_PER_TASK
sockets per task and MAX_WS_TOTAL in all: one more is refused before the upgrade (429 JSON).
A slot is freed when the socket ends (a client that closed is noticed by the next receive(),
one that vanished by the ping), whatever way the handler ends (teardown)."""

from __future__ import annotations

import json
import time

from flask import current_app, g, request
from flask_sock import ConnectionClosed, Sock

from service.errors import ApiError
from service.limits import SocketSlots
from service.routes.common import TASK_ID, base_url
from service.routes.exports import bp
from service.store import TaskStatus
from service.views.status import status_json

PUSH_EVERY = 0.2

sock = Sock()
ENDPOINT = f"{bp.name}.task_socket"


def _slots() -> SocketSlots:
    return current_app.extensions["pageferry.ws_slots"]


@bp.before_request
def _take_slot():
    """Runs after the blueprint's token check: a socket over a limit is a 429 before the upgrade."""
    if request.endpoint != ENDPOINT:
        return
    task_id = (request.view_args or {}).get("task_id", "")
    refused = _slots().acquire(task_id)
    if refused is not None:
        raise ApiError(429, f"too many websockets: {refused}; poll /api/export/status instead", "too_many_requests")
    g.ws_slot = task_id


@bp.teardown_request
def _free_slot(_exc=None):
    task_id = g.pop("ws_slot", None)
    if task_id is not None:
        _slots().release(task_id)


@sock.route("/ws/<task_id>", bp=bp)
def task_socket(ws, task_id: str):
    store = current_app.extensions["pageferry"].store
    root = base_url()
    task = store.get_task(task_id) if TASK_ID.fullmatch(task_id) else None
    if task is None:
        ws.send(json.dumps({"error": "not_found", "message": f"no task {task_id[:40]!r}", "details": []}))
        ws.close(1000)
        return
    last = None
    try:
        while True:
            task = store.get_task(task_id)  # without its spec: a push never parses it
            message = json.dumps(status_json(task, root))
            if message != last:
                ws.send(message)
                last = message
            if TaskStatus(task["status"]).is_final:
                break
            # receive() with a timeout paces the pushes and notices a client that went away;
            # what a client sends is ignored and does not make the pushes faster
            next_push = time.monotonic() + PUSH_EVERY
            while (left := next_push - time.monotonic()) > 0:
                ws.receive(timeout=left)
    except ConnectionClosed:
        return
    ws.close(1000, "final status sent")
