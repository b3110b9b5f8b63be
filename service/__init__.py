"""The pageferry service: `create_app()` builds the Flask app (gunicorn calls it once per
worker, after the fork - nothing heavy happens at import time)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from flask import Flask, Response, jsonify

from config import Settings, load_settings
from service import errors
from service.logs import configure_logging
from service.runner import TaskRunner
from service.store import SQLiteTaskStore


@dataclass
class Services:
    settings: Settings
    store: SQLiteTaskStore
    runner: TaskRunner
    env: Mapping[str, str]


def create_app(settings: Settings | None = None, *, run_tasks: bool = True,
               env: Mapping[str, str] | None = None) -> Flask:
    settings = settings or load_settings()
    env = os.environ if env is None else env
    configure_logging(settings.log_level)
    for folder in (settings.data_dir, settings.results_dir, settings.work_dir):
        folder.mkdir(parents=True, exist_ok=True)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_file_size
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": 25}
    app.json.sort_keys = False
    store = SQLiteTaskStore(settings.db_path)
    runner = TaskRunner(settings, store, env)
    from service.schedules import ScheduleClock
    from service.webhooks import WebhookDispatcher
    runner.companions = [WebhookDispatcher(store, env, runner.owner), ScheduleClock(store, on_fired=runner.wake)]
    app.extensions["pageferry"] = Services(settings, store, runner, env)

    from service.api import bp
    from service.metrics import registry_for, render
    from service.page import page_bp
    from service.sockets import sock

    errors.install(app)
    app.register_blueprint(bp)
    from service.schedules import sched_bp
    app.register_blueprint(sched_bp)
    app.register_blueprint(page_bp)
    sock.init_app(app)
    registry = registry_for(store)
    worker = str(os.getpid())

    @app.after_request
    def _served_by(response):
        response.headers["X-Pageferry-Worker"] = worker  # which gunicorn worker answered
        return response

    @app.get("/healthz")
    def healthz():
        store.ping()
        return jsonify({"status": "ok", "environment": settings.environment,
                        "running_here": len(runner.active)})

    @app.get("/metrics")
    def metrics():
        return Response(render(registry), mimetype="text/plain; version=0.0.4; charset=utf-8")

    if run_tasks:
        runner.start()
    return app
