"""POST /api/export/preview: page 1 of each source of a job spec (or of one source object),
as `python -m engine preview` prints it (docs/preview.md). Checked exactly as /start checks a
spec (service/rules.py: SECRET_NAMES, the outbound policy, uploads for ids.file); nothing is
stored and no task is created. The fetch runs in the request's own thread, on its own event
loop, within PREVIEW_TIME_LIMIT."""

from __future__ import annotations

import threading

from flask import Response

from engine import SpecError, parse_spec, spec_to_json
from service.errors import ApiError, invalid
from service.limits import check_spec_size
from service.routes.common import services
from service.routes.exports import _match_uploads, _spec_and_uploads, bp

PREVIEW_TIME_LIMIT = 30.0  # seconds for a whole preview: it holds a request thread
ONE_SOURCE = "sources.0."
_running = 0  # previews fetching in this worker (MAX_PREVIEWS)
_running_lock = threading.Lock()


def _source_field(field: str) -> str:
    """A field of a one-source body, named as the client wrote it (`pagination.size`)."""
    if field == "sources.0":
        return "spec"
    return field[len(ONE_SOURCE) :] if field.startswith(ONE_SOURCE) else field


@bp.post("/preview")
def preview():
    import orjson

    from engine import outbound_policy, preview_spec_document, run_preview
    from service.rules import prepare_for_service

    svc = services()
    document, files = _spec_and_uploads()
    document, one_source = preview_spec_document(document)
    check_spec_size(document, svc.settings.max_spec_bytes)
    try:
        spec = parse_spec(document)
        check_spec_size(spec_to_json(spec), svc.settings.max_spec_bytes)
        uploads = _match_uploads(spec, files)
        prepared = prepare_for_service(spec, svc.settings, svc.env, id_files=uploads)
    except SpecError as exc:
        raise invalid(exc, _source_field if one_source else lambda field: field) from None
    global _running
    cap = svc.settings.max_previews
    with _running_lock:
        if _running >= cap:
            raise ApiError(
                429,
                f"{cap} previews are fetching already (MAX_PREVIEWS); try again in a moment",
                "too_many_requests",
            )
        _running += 1
    try:
        result = run_preview(
            prepared, outbound_policy(svc.settings, service=True), svc.settings.max_file_size, PREVIEW_TIME_LIMIT
        )
    finally:
        with _running_lock:
            _running -= 1
    return Response(orjson.dumps(result), mimetype="application/json")
