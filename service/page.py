"""GET /: the live progress page (plain HTML/CSS/JS from service/static, no build step)."""
from __future__ import annotations

from flask import Blueprint, send_from_directory

page_bp = Blueprint("page", __name__, static_folder="static", static_url_path="/static")


@page_bp.get("/")
def index():
    return send_from_directory(page_bp.static_folder, "index.html")
