"""Every error the service returns is JSON: {"error": code, "message": ..., "details": [...]}.
Client mistakes are 4xx naming the field; anything unexpected is a bare 500 JSON - never a
traceback or an HTML page."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from engine import SpecError

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
}


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

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
        return error_response(500, "internal_error", "internal error")
