"""GET /: the live progress page (plain HTML/CSS/JS from service/static, no build step, no
CDN: it works offline). The page talks to /api/export like any client: every fetch with
`Authorization: Bearer`; websockets and downloads through the short-lived URLs that
/ws-link and /download-link sign for one task - the token never goes into a URL."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, request, send_from_directory

STATIC = Path(__file__).resolve().parent.parent / "static"

page_bp = Blueprint("page", __name__, static_folder=STATIC, static_url_path="/static")


def _content_security_policy() -> str:
    """Only this origin's own script, styles and sockets: task names and error texts come from
    users, and the page never turns them into markup - this is the second line of defence."""
    host = request.host
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self' ws://{host} wss://{host}; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )


@page_bp.get("/")
def index():
    response = send_from_directory(page_bp.static_folder, "index.html")
    response.headers["Content-Security-Policy"] = _content_security_policy()
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
