"""What every /api/export route uses: the request's JSON body and profile, task lookup, and
the absolute URLs a task's status links to."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from flask import request

from engine import SpecError
from service import profiles, services
from service.errors import ApiError, invalid

__all__ = [
    "MAX_JSON_DEPTH",
    "TASK_ID",
    "base_url",
    "find_task",
    "json_body",
    "parse_json",
    "profile_name",
    "services",
    "urls",
]

TASK_ID = re.compile(r"task_[0-9a-f]{12}")


MAX_JSON_DEPTH = 64  # arrays/objects inside each other; a job spec needs about 8
MAX_JSON_INT = 2**63  # -2**63 <= n < 2**63: what SQLite, Parquet and most JSON readers hold exactly


class _HugeInt:
    """An integer literal too long to convert (parsed lazily: its digits are never turned into
    an int, which is quadratic in their number)."""


class _DuplicateKey(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return document


def _int(digits: str) -> int | _HugeInt:
    return _HugeInt() if len(digits) > 40 else int(digits)


_CHECKED = (dict, list, float, int, _HugeInt)


def _bad_json(field: str, message: str, code: str = "invalid_json") -> ApiError:
    return ApiError(400, f"{field}: {message}", code, [{"field": field, "message": message}])


def _check_document(document: Any, field: str) -> None:
    """Depth, numbers: walked without recursion, naming the first offending field."""
    stack: list[tuple[Any, str, int]] = [(document, field, 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise _bad_json(path[:200], f"nested more than {MAX_JSON_DEPTH} levels deep", "too_deep")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            prefix = "" if depth == 1 else path + "."  # field paths are relative to the document
            stack.extend((v, f"{prefix}{k}", depth + 1) for k, v in items if isinstance(v, _CHECKED))
        elif isinstance(value, _HugeInt) or (
            isinstance(value, int) and not isinstance(value, bool) and not -MAX_JSON_INT <= value < MAX_JSON_INT
        ):
            raise _bad_json(path[:200], "number out of range (at most 2^63 - 1 in magnitude)", "validation_error")
        elif isinstance(value, float) and not math.isfinite(value):
            raise _bad_json(path[:200], "must be a finite number (no NaN, Infinity or overflow)", "validation_error")


def parse_json(data: bytes | str, field: str = "body") -> Any:
    """A JSON document from a client, strictly: UTF-8, no duplicate keys, no NaN/Infinity, finite
    numbers within 64 bits, at most MAX_JSON_DEPTH levels. A 400 naming `field` (or the field
    inside it) otherwise - never a RecursionError further down."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _bad_json(field, f"not valid UTF-8 (byte {exc.start})") from None
    try:
        document = json.loads(data, object_pairs_hook=_pairs, parse_int=_int, parse_constant=float)
    except RecursionError:
        raise _bad_json(field, f"nested more than {MAX_JSON_DEPTH} levels deep", "too_deep") from None
    except _DuplicateKey as exc:
        raise _bad_json(field, f"duplicate key {str(exc)[:100]!r}") from None
    except ValueError as exc:  # JSONDecodeError, an integer of more than 4300 digits
        raise _bad_json(field, f"not valid JSON ({str(exc)[:200]})") from None
    _check_document(document, field)
    return document


def json_body(required: bool = True):
    """The request's JSON document (`parse_json`); 415 for another content type, 400 for
    invalid JSON."""
    data = request.get_data(cache=True)
    if not data:
        if required:
            raise ApiError(400, "a JSON body is required", "invalid_json")
        return None
    if request.mimetype != "application/json":
        raise ApiError(415, "send Content-Type: application/json", "unsupported_media_type")
    return parse_json(data)


def profile_name() -> str:
    try:
        return profiles.check_profile_name(request.headers.get("X-Profile"))
    except SpecError as exc:
        raise invalid(exc) from None


def find_task(task_id: str, with_spec: bool = False) -> dict:
    """A task (404 when unknown); its stored spec only `with_spec` (status never parses it)."""
    task = services().store.get_task(task_id, with_spec=with_spec) if TASK_ID.fullmatch(task_id) else None
    if task is None:
        raise ApiError(404, f"no task {task_id[:40]!r}", "not_found")
    return task


def base_url() -> str:
    return request.host_url.rstrip("/")


def urls(task_id: str) -> dict:
    root = base_url()
    ws_root = ("wss://" if root.startswith("https://") else "ws://") + root.split("://", 1)[1]
    return {
        "status_url": f"{root}/api/export/status/{task_id}",
        "download_url": f"{root}/api/export/download/{task_id}",
        "ws_url": f"{ws_root}/api/export/ws/{task_id}",
    }
