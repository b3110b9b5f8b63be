"""The /api/export task routes: validate and start a job spec, list tasks, their status and
detail, download a result, cancel. Starting only queues: the background runner does the work."""

from __future__ import annotations

import shutil
import time

from flask import Blueprint, Response, jsonify, request, send_file
from werkzeug.datastructures import ContentRange

from engine import FieldError, SpecError, StoredObject, parse_spec, spec_to_json
from service import profiles
from service.auth import require_token
from service.background import shared_copies
from service.background.runner import uploads_dir
from service.errors import ApiError, invalid
from service.limits import check_spec_size
from service.routes.common import (
    TASK_ID,
    base_url,
    find_task,
    json_body,
    parse_json,
    profile_name,
    services,
    urls,
)
from service.store import LimitReached, TaskStatus
from service.views.detail import task_detail
from service.views.status import status_json

bp = Blueprint("export", __name__, url_prefix="/api/export")
bp.before_request(require_token)

CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "ndjson": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "zip": "application/zip",
}
CANCEL_WAIT = 3.0
MAX_PAGE = 200  # tasks in one answer of GET /tasks (`next` continues)
STATUSES = tuple(s.value for s in TaskStatus)


# ------------------------------------------------------------------ tasks


def _spec_and_uploads():
    """The job spec document of a /start request, and ids files uploaded with it."""
    if request.mimetype == "multipart/form-data":
        text = request.form.get("spec")
        if text is None and "spec" in request.files:
            text = request.files["spec"].read()
        if not text:
            raise ApiError(
                400,
                "a multipart start needs a `spec` field holding the job spec (JSON)",
                "validation_error",
                [{"field": "spec", "message": "field required"}],
            )
        document = parse_json(text, "spec")
        files = [f for key, f in request.files.items(multi=True) if key != "spec"]
        return document, files
    body = json_body(required=False)
    if body is None:
        try:
            return profiles.spec_from_profile(services().store.profile(profile_name())), []
        except SpecError as exc:
            raise invalid(exc) from None
    return body, []


def _match_uploads(spec, files) -> dict[int, bytes]:
    """Which uploaded file feeds which source's `ids.file` (by file name, or the only one)."""
    wanted = {i: s.ids.file for i, s in enumerate(spec.sources) if s.ids is not None and s.ids.file}
    by_name = {f.filename: f for f in files if f.filename}
    matched: dict[int, bytes] = {}
    problems = []
    limit = services().settings.max_file_size
    for i, name in wanted.items():
        upload = by_name.get(name) or by_name.get(name.rsplit("/", 1)[-1])
        if upload is None and len(wanted) == 1 and len(files) == 1:
            upload = files[0]
        if upload is None:
            problems.append(FieldError(f"sources.{i}.ids.file", f"upload {name!r} with the spec (multipart/form-data)"))
            continue
        data = upload.read(limit + 1)
        if len(data) > limit:
            raise ApiError(
                413,
                f"{upload.filename} exceeds MAX_FILE_SIZE",
                "payload_too_large",
                [{"field": f"sources.{i}.ids.file", "message": "file too large"}],
            )
        matched[i] = data
    if problems:
        raise invalid(SpecError(problems))
    return matched


def _checked_spec():
    """The request's job spec, its uploaded ids files and the document as sent, checked as a
    task would need them (the same checks for /start and /validate); a 4xx naming the fields
    when not."""
    from service.rules import prepare_for_service

    svc = services()
    document, files = _spec_and_uploads()
    check_spec_size(document, svc.settings.max_spec_bytes)  # before the (costly) validation
    try:
        spec = parse_spec(document)
        check_spec_size(spec_to_json(spec), svc.settings.max_spec_bytes)  # as it would be stored
        uploads = _match_uploads(spec, files)
        prepare_for_service(spec, svc.settings, svc.env, id_files=uploads)
    except SpecError as exc:
        raise invalid(exc) from None
    return spec, uploads, document


@bp.post("/validate")
def validate():
    """Validate a job spec exactly as /start would (body, multipart or stored profile), without
    starting anything: 200 {"valid": true}, or the same 4xx error JSON as /start."""
    _checked_spec()
    return jsonify({"valid": True})


@bp.post("/start")
def start():
    from engine import new_job_id

    svc = services()
    _check_queue(svc, profile_name())  # before reading and checking the spec: cheap to refuse
    spec, uploads, document = _checked_spec()
    task_id = new_job_id("task")
    task = {
        "id": task_id,
        "name": spec.name,
        "spec": spec_to_json(spec),
        "profile": profile_name(),
        "created_at": time.time(),
        "extra": {"base_url": base_url()},
        "submitted": document,  # as the client wrote it: the page shows it beside the effective spec
    }
    try:
        if uploads:
            folder = uploads_dir(svc.settings, task_id)
            folder.mkdir(parents=True, exist_ok=True)
            for i, data in uploads.items():
                (folder / f"source-{i}.csv").write_bytes(data)
            shared_copies.store_uploads(svc.settings, task_id, folder)  # any instance may run the task
        try:  # the cap again, atomically with the insert
            svc.store.create_task(task, max_queued=svc.settings.max_queued_per_profile)
        except LimitReached as exc:
            raise _queue_full(exc.value) from None
    except BaseException:
        # nothing half-written: no task without its uploads, no uploads without a task (a
        # full disk is a 507, an unavailable store a 503 - service.errors)
        shutil.rmtree(uploads_dir(svc.settings, task_id).parent, ignore_errors=True)
        raise
    svc.runner.wake()
    return jsonify({"task_id": task_id, "status": TaskStatus.QUEUED, **urls(task_id)}), 202


def _queue_full(cap: int) -> ApiError:
    return ApiError(
        429,
        f"this profile already has MAX_QUEUED_PER_PROFILE ({cap}) queued tasks; start more once some have run",
        "too_many_requests",
        [{"field": "X-Profile", "message": f"at most {cap} queued tasks (MAX_QUEUED_PER_PROFILE)"}],
    )


def _check_queue(svc, profile: str) -> None:
    cap = svc.settings.max_queued_per_profile
    if svc.store.queued_count(profile, cap) >= cap:
        raise _queue_full(cap)


def _bad_query(field: str, message: str) -> ApiError:
    return ApiError(400, f"{field} {message}", "validation_error", [{"field": field, "message": message}])


@bp.get("/tasks")
def list_tasks():
    """One page of tasks, newest first: `{"tasks": [...], "next": <task id> | null}` - `next`
    goes back as `?before=` for the following page (the same filters). `limit` up to 1000 is
    accepted, a page holds at most MAX_PAGE; queued tasks carry their `queue_position`."""
    limit = request.args.get("limit", "50")
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        raise _bad_query("limit", "must be an integer from 1 to 1000")
    status = request.args.get("status") or None
    if status is not None and status not in STATUSES:
        raise _bad_query("status", f"must be one of {', '.join(STATUSES)}")
    schedule_id = request.args.get("schedule_id") or None
    q = request.args.get("q", "").strip() or None
    if q is not None and (len(q) > 200 or not q.isprintable()):
        raise _bad_query("q", "must be at most 200 printable characters")
    before = request.args.get("before") or None
    if before is not None and not TASK_ID.fullmatch(before):
        raise _bad_query("before", "must be a task id (the `next` of the page before)")
    size = min(int(limit), MAX_PAGE)
    store = services().store
    try:
        tasks = store.list_tasks(size + 1, status, schedule_id, q=q, before=before)
    except LookupError:
        raise _bad_query("before", f"no task {before}: it was deleted; list from the first page") from None
    page, more = tasks[:size], len(tasks) > size
    positions = store.queue_positions(t["id"] for t in page if t["status"] == TaskStatus.QUEUED)
    root = base_url()
    return jsonify(
        {
            "tasks": [status_json({**t, "queue_position": positions.get(t["id"])}, root) for t in page],
            "next": page[-1]["id"] if more else None,
        }
    )


@bp.get("/status/<task_id>")
def status(task_id: str):
    task = find_task(task_id)
    if task["status"] == TaskStatus.QUEUED:  # its place in the queue, for the page
        task["queue_position"] = services().store.queue_positions([task_id]).get(task_id)
    return jsonify(status_json(task, base_url()))


@bp.get("/detail/<task_id>")
def detail(task_id: str):
    """Read-only extras for the progress page: the redacted spec and the manifest summary."""
    return jsonify(task_detail(find_task(task_id, with_spec=True), services().settings.results_dir))


@bp.get("/download/<task_id>")
def download(task_id: str):
    task = find_task(task_id)
    svc = services()
    if task["status"] != TaskStatus.COMPLETED:
        raise ApiError(409, f"task is {task['status']}; only a completed task has a result", "not_completed")
    expired = task["expired"] or (task["finished_at"] or 0) + svc.settings.result_ttl < time.time()
    result = task.get("result") or {}
    path = svc.settings.results_dir / task_id / result.get("filename", "")
    stored = None
    if not expired and not path.is_file() and path.name:  # written by another instance: RESULT_STORE's copy
        stored = shared_copies.stored_result(svc.settings, task_id, path.name)
    if expired or not (stored or path.is_file()):
        raise ApiError(410, "the result has expired (RESULT_TTL) and was removed", "expired")
    fmt = path.suffix.lstrip(".")
    mimetype = CONTENT_TYPES.get(fmt, "application/octet-stream")
    if stored is not None:
        response = _stream_stored(stored, mimetype, path.name)
    else:
        response = send_file(
            path, mimetype=mimetype, as_attachment=True, download_name=path.name, conditional=True, etag=False
        )
    response.headers["X-Content-SHA256"] = result.get("sha256", "")
    return response


def _stream_stored(stored: StoredObject, mimetype: str, filename: str) -> Response:
    """The result streamed from RESULT_STORE a chunk at a time (memory stays bounded), with the
    headers `send_file` gives a local file, Range requests included. Streamed rather than a
    redirect to a presigned URL: the bucket may be reachable from this instance only, and the
    client keeps one origin (and its API token) for the whole download."""
    span = request.range.range_for_length(stored.size) if request.range is not None else None
    if request.range is not None and span is None:
        response = Response(status=416)
        response.headers["Content-Range"] = f"bytes */{stored.size}"
        return response
    body = shared_copies.store_of(services().settings).stream(stored.key, span)
    response = Response(body, status=206 if span else 200, mimetype=mimetype, direct_passthrough=True)
    response.content_length = span[1] - span[0] if span else stored.size
    if span:
        response.content_range = ContentRange("bytes", span[0], span[1], stored.size)
    response.accept_ranges = "bytes"
    response.last_modified = stored.last_modified
    response.cache_control.no_cache = True
    response.headers.set("Content-Disposition", "attachment", filename=filename)  # names are ASCII (NAME_PATTERN)
    return response


@bp.delete("/cancel/<task_id>")
def cancel(task_id: str):
    svc = services()
    task = find_task(task_id)
    found = svc.store.request_cancel(task_id)
    if found is not None and found.is_final:
        raise ApiError(409, f"task already {found}", "already_finished")
    svc.runner.wake()
    deadline = time.monotonic() + CANCEL_WAIT
    while time.monotonic() < deadline:  # a running task stops within ~2 s; answer with the outcome
        task = find_task(task_id)  # tasks are never deleted: as get_task, but typed as found
        if task["status"] != TaskStatus.RUNNING:
            break
        time.sleep(0.1)
    return jsonify(status_json(task, base_url()))
