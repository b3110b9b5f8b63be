"""The pageferry service: `create_app()` builds the Flask app (gunicorn calls it once per
worker, after the fork - nothing heavy happens at import time); `shutdown(app)` stops it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from flask import Flask, Response, current_app, jsonify
from flask.json.provider import DefaultJSONProvider

from config import Settings, load_settings
from service import errors
from service.background import shared_copies
from service.background.runner import TaskRunner
from service.logs import configure_logging
from service.store import TaskStore, open_store


@dataclass
class Services:
    settings: Settings
    store: TaskStore
    runner: TaskRunner
    env: Mapping[str, str]


def services() -> Services:
    """The current app's services (inside a request)."""
    return current_app.extensions["pageferry"]


def create_app(
    settings: Settings | None = None, *, run_tasks: bool = True, env: Mapping[str, str] | None = None
) -> Flask:
    from engine import outbound_policy, service_secret_names
    from service.background.schedule_clock import ScheduleClock
    from service.background.webhooks import WebhookDispatcher
    from service.limits import BodyLimiter, SocketSlots
    from service.metrics import registry_for, render
    from service.routes import register

    settings = settings or load_settings()
    env = os.environ if env is None else env
    configure_logging(settings.log_level)
    for folder in (settings.data_dir, settings.results_dir, settings.work_dir):
        folder.mkdir(parents=True, exist_ok=True)
    shared_copies.check(settings)  # RESULT_STORE: no start with a bucket it cannot use (says why)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_file_size
    # a ping every 10 s: a websocket whose client vanished without closing frees its slot
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": 10}
    assert isinstance(app.json, DefaultJSONProvider)  # Flask's default; the attribute is typed as the base class
    app.json.sort_keys = False
    store: TaskStore = open_store(settings)  # DATABASE_URL: SQLite (default) or PostgreSQL
    runner = TaskRunner(settings, store, env)
    runner.companions = [
        WebhookDispatcher(
            store, env, runner.owner, outbound_policy(settings, service=True), service_secret_names(settings)
        ),
        ScheduleClock(store, on_fired=runner.wake, max_queued=settings.max_queued_per_profile),
    ]
    app.extensions["pageferry"] = Services(settings, store, runner, env)
    # limits per worker process (service/limits.py): websockets, and request bodies being read
    app.extensions["pageferry.ws_slots"] = SocketSlots(settings.max_ws_per_task, settings.max_ws_total)
    app.wsgi_app = BodyLimiter(app.wsgi_app, settings.max_request_bodies)  # type: ignore[method-assign]

    errors.install(app)
    register(app)
    registry = registry_for(store)
    worker = str(os.getpid())

    @app.after_request
    def _served_by(response):
        response.headers["X-Pageferry-Worker"] = worker  # which gunicorn worker answered
        return response

    @app.get("/healthz")
    def healthz():
        store.ping()
        return jsonify({"status": "ok", "environment": settings.environment, "running_here": len(runner.active)})

    @app.get("/metrics")
    def metrics():
        from service.auth import require_token

        require_token()  # behind API_TOKEN like /api (task counts and volumes are not public)
        return Response(render(registry), mimetype="text/plain; version=0.0.4; charset=utf-8")

    if run_tasks:
        runner.start()
    return app


def shutdown(app: Flask) -> None:
    """Stop the app's background threads and hand its running tasks back (their leases are
    released, so another worker or the next start resumes them). For gunicorn's worker_exit."""
    found = getattr(app, "extensions", {}).get("pageferry")
    if found is not None:
        found.runner.stop()
