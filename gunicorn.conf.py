"""gunicorn settings for the pageferry service: `gunicorn -c gunicorn.conf.py`.

Threaded workers (gthread): every open websocket holds a thread. Each worker builds its
own app (no --preload: the engine's Manager and process pools are created lazily inside a
worker, never inherited through a fork). On a clean exit a worker hands its running tasks
back (their leases are released) and another worker - or the next start - resumes them."""

import os

from config import load_settings
from config.bind import bind_addresses, is_loopback, startup_refusal

_settings = load_settings()

wsgi_app = "service:create_app()"
bind = bind_addresses(_settings.bind)  # BIND; default 127.0.0.1:$PORT (the image sets 0.0.0.0:8000)
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "64"))
timeout = 60
graceful_timeout = 15
# Idle keep-alive: a client that reuses a connection just as the server closes it gets a reset
# (keepalive=5 reset pollers waiting ~5 s); 75 s (as load balancers) outlasts any poll interval.
keepalive = int(os.environ.get("KEEPALIVE", "75"))
worker_connections = 1000  # per worker; idle kept-alive ones wait in gthread's poller, not a thread (<= 1000 - threads)
preload_app = False
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()


def on_starting(server):
    """Fail closed: a non-loopback bind (BIND or -b) without API_TOKEN exits here, before any
    socket is opened, with a one-line reason on stderr - unless ALLOW_NO_TOKEN=1."""
    refusal = startup_refusal(_settings, server.cfg.bind)
    if refusal:
        raise SystemExit(refusal)
    exposed = [b for b in server.cfg.bind if not is_loopback(b)]
    if exposed and not _settings.api_token:
        server.log.warning("ALLOW_NO_TOKEN=1: serving %s without an API token", ", ".join(exposed))


def worker_exit(server, worker):
    app = getattr(worker, "wsgi", None)
    if app is not None:
        from service import shutdown

        shutdown(app)
