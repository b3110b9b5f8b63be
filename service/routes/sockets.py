"""WS /api/export/ws/{id}: live status pushes. The socket polls the task store, not an
in-process job, so it works whichever gunicorn worker accepted it: the status on connect,
on each change (at most ~5 a second) and when final, then a normal close."""

from __future__ import annotations

import json

from flask import current_app
from flask_sock import ConnectionClosed, Sock

from service.routes.common import TASK_ID, base_url
from service.routes.exports import bp
from service.store import TaskStatus
from service.views.status import status_json

PUSH_EVERY = 0.2

sock = Sock()


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
            task = store.get_task(task_id)
            message = json.dumps(status_json(task, root))
            if message != last:
                ws.send(message)
                last = message
            if TaskStatus(task["status"]).is_final:
                break
            # receive() with a timeout paces the pushes and notices a client that went away
            ws.receive(timeout=PUSH_EVERY)
    except ConnectionClosed:
        return
    ws.close(1000, "final status sent")
