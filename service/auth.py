"""The API token check every /api/export route runs first (a blueprint `before_request`
hook), so no route can forget it."""

from __future__ import annotations

import hmac

from flask import request

from service import services
from service.errors import ApiError


def require_token() -> None:
    """401 unless the request carries API_TOKEN (`Authorization: Bearer`, or `?token=` for a
    websocket); nothing to check when API_TOKEN is unset."""
    token = services().settings.api_token
    if not token:
        return None
    header = request.headers.get("Authorization", "")
    given = header[7:] if header.startswith("Bearer ") else request.args.get("token", "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(401, "missing or wrong API token: send Authorization: Bearer <API_TOKEN>", "unauthorized")
    return None
