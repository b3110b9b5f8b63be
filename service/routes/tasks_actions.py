"""What the progress page does with a task beyond starting it, and what its form needs:

    POST   /api/export/rerun/{id}     a new task with the task's spec snapshot (uploads included); 202 as /start
                                      body {"only_failed_pages": true}: continue from its finished pages instead
    DELETE /api/export/tasks/{id}     remove a finished task, its result and kept work; 409 while queued/running
    GET    /api/export/page-settings  the form's example URL and the ${NAME} secrets it may reference

All behind the API token like every /api/export route (the `bp` blueprint)."""

from __future__ import annotations

import functools
import json
import shutil
import time

from flask import jsonify

from engine import SpecError, parse_spec
from service.background import kept_work, shared_copies
from service.background.runner import uploads_dir
from service.errors import ApiError, invalid
from service.logs import log_event
from service.routes.common import base_url, find_task, json_body, services, urls
from service.routes.exports import _check_queue, _queue_full, bp
from service.store import LimitReached, TaskStatus

# The bundled test API (`python -m tests.testapi.server --port 8900`): the form's example
# works against it unless the operator names another URL (EXAMPLE_SOURCE_URL).
DEFAULT_EXAMPLE_URL = "http://127.0.0.1:8900/items/page"
MAX_SECRET_NAMES = 200


def _field_error(status: int, code: str, field: str, message: str) -> ApiError:
    return ApiError(status, message, code, [{"field": field, "message": message}])


def _rerun_options() -> bool:
    body = json_body(required=False)
    if body is None:
        return False
    if not isinstance(body, dict):
        raise _field_error(400, "validation_error", "body", 'send nothing, or {"only_failed_pages": true}')
    for key in body:
        if key != "only_failed_pages":
            raise _field_error(400, "validation_error", str(key)[:100], "unknown field")
    only = body.get("only_failed_pages", False)
    if not isinstance(only, bool):
        raise _field_error(400, "validation_error", "only_failed_pages", "must be true or false")
    return only


def _uploads_of(task: dict, spec) -> dict[int, bytes]:
    """The ids files uploaded with the task, by source index; 410 when one is needed and gone."""
    wanted = [i for i, s in enumerate(spec.sources) if s.ids is not None and s.ids.file]
    if not wanted:
        return {}
    folder = kept_work.uploads_folder(services().settings, task["id"])
    files = {}
    for i in wanted:
        path = folder / f"source-{i}.csv" if folder is not None else None
        if path is None or not path.is_file():
            raise _field_error(
                410,
                "expired",
                f"sources.{i}.ids.file",
                f"the ids file uploaded with {task['id']} is no longer kept: start the task again with the file",
            )
        files[i] = path.read_bytes()
    return files


def _skipped_pages(task: dict, spec) -> list[tuple[int, int, int]]:
    """(source index, unit, page) of each page the task skipped: their shards are fetched again."""
    index = {source.name: i for i, source in enumerate(spec.sources)}
    pages = []
    for page in (task.get("extra") or {}).get("skipped_pages") or []:
        source = index.get(page.get("source"), 0 if len(spec.sources) == 1 else None)
        if source is not None and isinstance(page.get("unit"), int) and isinstance(page.get("page"), int):
            pages.append((source, page["unit"], page["page"]))
    return pages


@bp.post("/rerun/<task_id>")
def rerun(task_id: str):
    """A new task with the spec snapshot of `task_id` (its uploads included), checked again as
    /start checks a spec (a secret or an allowed host may have gone since). With
    `{"only_failed_pages": true}` the new task takes over the finished pages of a failed task
    (or one that skipped pages) and fetches only the rest - where the spec allows it
    (service/background/kept_work.py)."""
    from engine import new_job_id
    from service.rules import prepare_for_service

    svc = services()
    old = find_task(task_id, with_spec=True)
    only_failed = _rerun_options()
    profile = old.get("profile") or "default"  # the re-run belongs where the task did
    _check_queue(svc, profile)
    try:
        spec = parse_spec(old["spec"])
        uploads = _uploads_of(old, spec)
        prepare_for_service(spec, svc.settings, svc.env, id_files=uploads)
    except SpecError as exc:
        raise invalid(exc) from None
    status = TaskStatus(old["status"])
    new_id = new_job_id("task")
    extra: dict = {"base_url": base_url(), "rerun_of": task_id}
    until = (old.get("extra") or {}).get("retry_until")
    if only_failed:
        partial = status is TaskStatus.COMPLETED
        if not (status is TaskStatus.FAILED or (partial and (old.get("extra") or {}).get("skipped_pages"))):
            raise _field_error(
                409, "nothing_to_retry", "only_failed_pages", f"task is {status}: it has no failed or skipped pages"
            )
        refused = kept_work.retry_refused(spec, partial=partial)
        if refused is not None:
            raise _field_error(409, "not_retryable", "only_failed_pages", refused)
        if not until or not kept_work.take_for_retry(svc.settings, task_id, new_id, _skipped_pages(old, spec)):
            raise _field_error(
                409,
                "not_retryable",
                "only_failed_pages",
                "the finished pages of this task are no longer kept (RESULT_TTL), or another retry took them: "
                "re-run the whole task",
            )
        extra = {"base_url": base_url(), "retry_of": task_id}
    task = {
        "id": new_id,
        "name": old.get("name"),
        "spec": old["spec"],
        "submitted": old.get("submitted"),
        "profile": profile,
        "created_at": time.time(),
        "extra": extra,
    }
    try:
        if uploads and not only_failed:
            folder = uploads_dir(svc.settings, new_id)
            folder.mkdir(parents=True, exist_ok=True)
            for i, data in uploads.items():
                (folder / f"source-{i}.csv").write_bytes(data)
            shared_copies.store_uploads(svc.settings, new_id, folder)
        try:
            svc.store.create_task(task, max_queued=svc.settings.max_queued_per_profile)
        except LimitReached as exc:
            raise _queue_full(exc.value) from None
    except BaseException:
        if only_failed:
            kept_work.give_back(svc.settings, task_id, new_id, float(until or 0))
        else:
            shutil.rmtree(uploads_dir(svc.settings, new_id).parent, ignore_errors=True)
        raise
    if only_failed:
        svc.store.update_extra(task_id, {"retry_until": None})  # its shards are the new task's now
    svc.runner.wake()
    log_event("task_rerun", task_id=new_id, rerun_of=task_id, only_failed_pages=only_failed)
    return jsonify({"task_id": new_id, "status": TaskStatus.QUEUED, **urls(new_id)}), 202


@bp.delete("/tasks/<task_id>")
def delete_task(task_id: str):
    """Remove a finished task from the list, with its result and kept work; 409 while it is
    queued or running (cancel it first)."""
    svc = services()
    find_task(task_id)
    found = svc.store.delete_task(task_id)
    if found is None:
        raise ApiError(404, f"no task {task_id[:40]!r}", "not_found")
    if not found.is_final:
        raise ApiError(409, f"task is {found}: cancel it before deleting it", "not_finished")
    kept_work.remove(svc.settings, task_id)
    log_event("task_deleted", task_id=task_id)
    return jsonify({"task_id": task_id, "deleted": True})


@bp.get("/spec-fields")
def spec_fields():
    """Every field of a job spec - dotted path (`[]` for a list's items), type, default,
    choices - taken from the spec's own models, so the page's field reference is never out of
    step with what the service accepts."""
    return jsonify({"fields": _spec_fields()})


@functools.lru_cache(maxsize=1)
def _spec_fields() -> list[dict]:
    from engine import JobSpec

    schema = JobSpec.model_json_schema(by_alias=True)
    defs = schema.get("$defs", {})
    fields: dict[str, dict] = {}

    def resolve(node: dict) -> dict:
        while "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[-1]]
        return node

    def variants(node: dict) -> list[dict]:
        node = resolve(node)
        options = node.get("anyOf") or node.get("oneOf")
        if options:
            return [v for option in options for v in variants(option)]
        return [node]

    def kind(node: dict) -> tuple[str, list]:
        names, choices = [], []
        for v in variants(node):
            if v.get("type") == "null":
                continue
            if "enum" in v or "const" in v:
                choices += v.get("enum", [v.get("const")])
                continue
            name = v.get("type", "value")
            if name == "array":
                items = kind(v.get("items", {}))[0]
                name = f"list of {items}"
            if name == "object" and v.get("title") and "properties" in v:
                name = "object"
            bounds = [f"≥ {v['minimum']}" if "minimum" in v else "", f"≤ {v['maximum']}" if "maximum" in v else ""]
            bound = " ".join(b for b in bounds if b)
            names.append(f"{name} {bound}".strip())
        if choices:
            names.insert(0, "one of " + ", ".join(json.dumps(c) for c in dict.fromkeys(choices)))
        return " or ".join(dict.fromkeys(names)) or "value", choices

    def walk(node: dict, prefix: str, depth: int) -> None:
        if depth > 6:
            return
        for variant in variants(node):
            if variant.get("type") == "array":
                walk(variant.get("items", {}), prefix + "[]", depth + 1)
                continue
            properties = variant.get("properties") or {}
            tag = properties.get("type", {}).get("enum") or [properties.get("type", {}).get("const")]
            when = f'type "{tag[0]}"' if len(tag) == 1 and tag[0] and len(variants(node)) > 1 else None
            for name, prop in properties.items():
                path = f"{prefix}.{name}" if prefix else name
                text, choices = kind(prop)
                entry = fields.get(path)
                if entry is None:
                    entry = fields[path] = {"field": path, "type": text, "choices": list(choices), "when": []}
                elif choices:
                    entry["choices"] += [c for c in choices if c not in entry["choices"]]
                if when and name != "type" and when not in entry["when"]:
                    entry["when"].append(when)
                default = prop.get("default")
                if default not in (None, [], {}) and not isinstance(default, dict):
                    entry["default"] = default
                described = resolve(prop).get("description") or prop.get("description")
                if described and "note" not in entry:
                    entry["note"] = " ".join(described.split())[:300]
                walk(prop, path, depth + 1)

    walk(schema, "", 0)
    for entry in fields.values():
        if entry["choices"]:
            entry["type"] = "one of " + ", ".join(json.dumps(c) for c in entry["choices"])
        del entry["choices"]
        if not entry["when"]:
            del entry["when"]
    return list(fields.values())


@bp.get("/page-settings")
def page_settings():
    """What the page's new-task form offers: the example's source URL (EXAMPLE_SOURCE_URL, by
    default the bundled test API on port 8900), and the names (never the values) of the
    environment variables a spec may reference as `${NAME}` (SECRET_NAMES)."""
    from engine import service_secret_names

    svc = services()
    names = service_secret_names(svc.settings)
    usable = sorted(name for name in svc.env if names.permits(name))
    return jsonify(
        {
            "example_source_url": svc.env.get("EXAMPLE_SOURCE_URL", "").strip() or DEFAULT_EXAMPLE_URL,
            "secret_names": list(svc.settings.secret_names),
            "secret_names_set": usable[:MAX_SECRET_NAMES],
            "allowed_source_hosts": list(svc.settings.allowed_source_hosts),
            "max_queued_per_profile": svc.settings.max_queued_per_profile,
            "result_ttl": svc.settings.result_ttl,
        }
    )
