"""The service's HTTP and websocket routes, one blueprint per resource; `register(app)` adds
them all. Every /api/export blueprint runs `service.auth.require_token` first."""

from __future__ import annotations

from flask import Flask


def register(app: Flask) -> None:
    import service.routes.preview  # noqa: F401 - adds /preview to `bp`
    import service.routes.tasks_actions  # noqa: F401 - adds /rerun, DELETE /tasks/{id}, /page-settings to `bp`
    from service.routes import links  # noqa: F401 - adds /download-link and /ws-link to `bp`
    from service.routes.exports import bp
    from service.routes.page import page_bp
    from service.routes.profiles import profiles_bp
    from service.routes.schedules import sched_bp
    from service.routes.sockets import sock  # adds /ws/<task_id> to `bp`: before bp is registered
    from service.routes.state import state_bp

    app.register_blueprint(bp)
    app.register_blueprint(profiles_bp)
    app.register_blueprint(sched_bp)
    app.register_blueprint(page_bp)
    app.register_blueprint(state_bp)
    sock.init_app(app)
