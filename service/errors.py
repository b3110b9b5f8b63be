"""Every error the service returns is JSON: {"error": code, "message": ..., "details": [...]}.
Client mistakes are 4xx naming the field; a full disk is 507 and an unavailable store 503 (with
Retry-After), mapped here once for every route; anything unexpected is a bare 500 JSON - never a
traceback or an HTML page."""

from __future__ import annotations

import errno
import logging
import sqlite3

from flask import Flask, jsonify
from pydantic_core import PydanticSerializationError
from werkzeug.exceptions import HTTPException

from engine import ResultStoreError, SpecError
from service.store import StoreUnavailable

log = logging.getLogger("pageferry.service")

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
    507: "insufficient_storage",
}
RETRY_AFTER = "5"  # seconds, on a 503: a busy or briefly unavailable store
NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
# SQLite result codes (`sqlite_errorname`, extended codes included by prefix): the store is
# full, or cannot be used right now - the server's condition, not the client's request.
SQLITE_FULL = ("SQLITE_FULL",)
SQLITE_UNAVAILABLE = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_CANTOPEN",
    "SQLITE_IOERR",
    "SQLITE_READONLY",
    "SQLITE_PROTOCOL",
)


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, details: list | None = None):
        super().__init__(message)
        self.status, self.message = status, message
        self.code = code or CODES.get(status, "error")
        self.details = details or []


def invalid(exc: SpecError, rename=lambda field: field) -> ApiError:
    details = [{"field": rename(d.field), "message": d.message} for d in exc.details]
    first = details[0] if details else {"field": "spec", "message": "invalid"}
    return ApiError(400, f"{first['field']}: {first['message']}", "validation_error", details)


def error_response(status: int, code: str, message: str, details: list | None = None):
    response = jsonify({"error": code, "message": message, "details": details or []})
    response.status_code = status
    return response


def store_error_status(exc: sqlite3.Error) -> int | None:
    """507 for a full store volume, 503 for a store that cannot be used now, else None."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    message = str(exc).lower()
    if name.startswith(SQLITE_FULL) or "database or disk is full" in message:
        return 507
    if name.startswith(SQLITE_UNAVAILABLE) or any(
        text in message for text in ("database is locked", "unable to open", "disk i/o error", "readonly")
    ):
        return 503
    return None


def storage_error(status: int) -> object:
    if status == 507:
        return error_response(507, CODES[507], "the server's storage is full; nothing was changed - try again later")
    response = error_response(503, CODES[503], "the task store is unavailable; nothing was changed - try again shortly")
    response.headers["Retry-After"] = RETRY_AFTER
    return response


def install(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.details)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        message = {
            413: "the request body exceeds MAX_FILE_SIZE",
            405: "method not allowed on this path",
            404: "no such resource",
        }.get(status, exc.description or exc.name)
        response = error_response(status, CODES.get(status, exc.name.lower().replace(" ", "_")), message)
        valid_methods = getattr(exc, "valid_methods", None)  # set on werkzeug's MethodNotAllowed
        if status == 405 and valid_methods:
            response.headers["Allow"] = ", ".join(valid_methods)
        return response

    @app.errorhandler(sqlite3.Error)
    def _store_error(exc: sqlite3.Error):
        status = store_error_status(exc)
        if status is None:
            return _unexpected(exc)
        log.warning("store unavailable (%s): %s", status, exc)
        return storage_error(status)

    @app.errorhandler(StoreUnavailable)
    def _store_unavailable(exc: StoreUnavailable):  # PostgreSQL unreachable, or no free connection
        log.warning("store unavailable (503): %s", exc)
        return storage_error(503)

    @app.errorhandler(ResultStoreError)
    def _result_store_unavailable(exc: ResultStoreError):  # RESULT_STORE down or refusing (its keys masked)
        log.warning("result store unavailable (503): %s", exc)
        response = error_response(503, CODES[503], "the result store (RESULT_STORE) is unavailable; try again shortly")
        response.headers["Retry-After"] = RETRY_AFTER
        return response

    @app.errorhandler(OSError)
    def _os_error(exc: OSError):
        if exc.errno not in NO_SPACE:
            return _unexpected(exc)
        log.warning("no space left (507): %s", exc)
        return storage_error(507)

    @app.errorhandler(RecursionError)
    @app.errorhandler(PydanticSerializationError)
    def _too_deep(exc: Exception):
        """A document nested too deeply for the validator or serialiser (routes bound nesting
        when they read JSON - service.routes.common.parse_json - so this is the backstop)."""
        if isinstance(exc, PydanticSerializationError) and "depth exceeded" not in str(exc):
            return _unexpected(exc)
        log.warning("too deeply nested: %s", str(exc)[:200])
        message = "nested too deeply"
        return error_response(400, "too_deep", f"body: {message}", [{"field": "body", "message": message}])

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
        return error_response(500, "internal_error", "internal error")
