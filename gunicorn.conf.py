"""gunicorn settings for the pageferry service: `gunicorn -c gunicorn.conf.py`.

Threaded workers (gthread): every open websocket holds a thread. Each worker builds its
own app (no --preload: the engine's Manager and process pools are created lazily inside a
worker, never inherited through a fork). On a clean exit a worker hands its running tasks
back (their leases are released) and another worker - or the next start - resumes them."""

import os

from config import load_settings

_settings = load_settings()

wsgi_app = "service:create_app()"
bind = os.environ.get("BIND", f"0.0.0.0:{_settings.port}")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "64"))
timeout = 60
graceful_timeout = 15
keepalive = 5
preload_app = False
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()


def worker_exit(server, worker):
    app = getattr(worker, "wsgi", None)
    if app is not None:
        from service import shutdown

        shutdown(app)
