"""GET /api/export/detail/{id}: what the progress page shows beyond the status JSON (the
redacted spec, the manifest summary), kept apart so every websocket push stays small."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine import MASK, Redactor
from service.store import TaskStatus
from service.views.status import iso

MANIFEST_NAME = "manifest.json"
MANIFEST_KEYS = ("job_id", "name", "partial", "sources", "skipped_pages", "files", "started_at", "finished_at")


def _masked_values(original: Any, masked: Any) -> Iterator[str]:
    """The literal values that redaction replaced by the mask (secrets written into the spec)."""
    if isinstance(original, dict) and isinstance(masked, dict):
        for key, value in original.items():
            yield from _masked_values(value, masked.get(key))
    elif isinstance(original, list) and isinstance(masked, list):
        for value, other in zip(original, masked):
            yield from _masked_values(value, other)
    elif isinstance(original, str) and masked == MASK and original != MASK and "${" not in original:
        yield original


def redacted_spec(spec: dict) -> dict:
    """The stored spec (${NAME} references kept) with secret fields masked, shape kept; a secret
    written literally into a secret field is also masked wherever else it appears (in a URL)."""
    first = Redactor().spec(spec)
    return Redactor(set(_masked_values(spec, first))).spec(spec)


def _zip_manifest(path: Path) -> dict | None:
    if path.suffix != ".zip" or not path.is_file():
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            document = json.loads(archive.read(MANIFEST_NAME))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return document if isinstance(document, dict) else None


def manifest_summary(task: dict, results_dir: Path) -> dict | None:
    result = task.get("result")
    if task.get("status") != TaskStatus.COMPLETED or not result:
        return None
    extra = task.get("extra") or {}
    summary = {
        "job_id": task["id"],
        "name": task.get("name"),
        "partial": bool(task.get("partial")),
        "sources": (extra.get("summary") or {}).get("sources") or [],
        "skipped_pages": extra.get("skipped_pages") or [],
        "files": [
            {
                "name": result.get("filename"),
                "bytes": result.get("bytes"),
                "sha256": result.get("sha256"),
                "rows": result.get("rows"),
            }
        ],
        "started_at": iso(task.get("started_at")),
        "finished_at": iso(task.get("finished_at")),
    }
    filename = result.get("filename") or ""
    if filename and not task.get("expired") and "/" not in filename and "\\" not in filename:
        document = _zip_manifest(results_dir / task["id"] / filename)
        if document is not None:
            summary.update({k: document[k] for k in MANIFEST_KEYS if k in document})
    return summary


def task_detail(task: dict, results_dir: Path) -> dict:
    """{"task_id", "spec": <redacted spec as submitted>, "effective_spec": <redacted spec with
    its defaults>, "manifest": <summary> | null}. The manifest
    summary (a completed task only) is
        {"job_id", "name", "partial", "sources": [{name, pages, records, requests, retries, skipped_pages}],
         "skipped_pages": [...], "files": [{name, bytes, sha256, rows}], "started_at", "finished_at"}
    taken from the zip's own manifest.json when the result is a zip still on disk, else from
    what the runner recorded with the result (the same numbers; `files` is then the one file)."""
    return {
        "task_id": task["id"],
        # as the client sent it (tasks stored before it was kept: the effective spec)
        "spec": redacted_spec(task.get("submitted") or task.get("spec") or {}),
        "effective_spec": redacted_spec(task.get("spec") or {}),  # with every default filled in
        "manifest": manifest_summary(task, results_dir),
    }
