"""What is kept of a task's work directory once it has ended.

- A failed task, and a completed one with skipped pages, keep their finished shards for
  RESULT_TTL (a `kept.json` marker says until when; the runner's sweep removes them after).
  A retry (`POST /rerun/{id}` with `{"only_failed_pages": true}`) moves them to the new task,
  which resumes from them: only the pages no finished shard holds are fetched.
- Every other task's work directory is removed, but the ids files uploaded with it are moved
  beside its result (`results/<id>/uploads`), so a re-run has them as long as the task is kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from config import Settings
from service.background import shared_copies

MARKER = "kept.json"


SEQUENTIAL = ("cursor", "next_url", "link")


def retry_refused(spec, partial: bool) -> str | None:
    """Why a retry of only the failed (`partial`: the skipped) pages does not suit this job
    spec (a `JobSpec`), or None when it does. Incremental sources move their saved state on;
    a skipped page of a cursor, next-URL or Link source cannot be fetched on its own (the pages
    after it hang on it): both need a whole re-run."""
    for i, source in enumerate(spec.sources):
        if source.incremental is not None:
            return f"sources.{i} is incremental: its saved state moves on, so re-run the whole task"
        if partial and source.pagination.type in SEQUENTIAL:
            return (
                f"sources.{i} uses {source.pagination.type} pagination: a skipped page cannot be fetched "
                "on its own, so re-run the whole task"
            )
    return None


def uploads_folder(settings: Settings, task_id: str) -> Path | None:
    """Where the task's uploaded ids files are now (its work directory while it runs or is
    kept, else beside its result), or None when it has none."""
    for folder in (settings.work_dir / task_id / "uploads", settings.results_dir / task_id / "uploads"):
        if folder.is_dir():
            return folder
    folder = settings.results_dir / task_id / "uploads"  # another instance ran the task: RESULT_STORE's copy
    if shared_copies.fetch_uploads(settings, task_id, folder, kept_as_result=True):
        return folder
    return None


def kept_until(folder: Path) -> float | None:
    """Until when a work directory is kept for a retry (None: not kept)."""
    try:
        return float(json.loads((folder / MARKER).read_text())["until"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def settle(settings: Settings, task_id: str, keep_until: float | None) -> bool:
    """After a task ended: keep its shards until `keep_until` (when given and there are any),
    else remove its work directory, saving its uploads. Returns whether the shards were kept."""
    folder = settings.work_dir / task_id
    if keep_until is not None and (folder / "shards").is_dir():
        temp = folder / f".{MARKER}.tmp"
        temp.write_text(json.dumps({"until": keep_until}))
        os.replace(temp, folder / MARKER)
        return True
    shared_copies.settle(settings, task_id)
    uploads = folder / "uploads"
    if uploads.is_dir():
        target = settings.results_dir / task_id / "uploads"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(uploads, target)
        except OSError:
            shutil.copytree(uploads, target, dirs_exist_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    return False


def take_for_retry(settings: Settings, old_id: str, new_id: str, skipped: list[tuple[int, int, int]]) -> bool:
    """Move the kept work of `old_id` to `new_id`'s work directory, dropping the shards that
    hold a page of `skipped` ((source index, unit, page) each), so those pages are fetched
    again. False when nothing is kept (any more): expired, removed, or taken by another retry."""
    old, new = settings.work_dir / old_id, settings.work_dir / new_id
    until = kept_until(old)
    if until is None or until < time.time():
        return False
    try:
        os.rename(old, new)  # atomic: of two retries at once, one gets the shards
    except OSError:
        return False
    (new / MARKER).unlink(missing_ok=True)
    drop_shards(new / "shards", skipped)
    shared_copies.take_work(settings, old_id, new_id)
    return True


def give_back(settings: Settings, old_id: str, new_id: str, until: float) -> None:
    """Undo `take_for_retry` (the new task could not be stored)."""
    new = settings.work_dir / new_id
    try:
        os.rename(new, settings.work_dir / old_id)
    except OSError:
        shutil.rmtree(new, ignore_errors=True)
        return
    settle(settings, old_id, until)


# A finished shard's file name says what it covers (engine/shards.py): source, then the first
# and the last (unit, page) of its contiguous run of pages. Its checksum is a sidecar beside it.
SHARD_NAME = re.compile(r"^s(\d{3})_u(\d{7})_p(\d{7})_u(\d{7})_p(\d{7})\.arrow\Z")
CHECKSUM_SUFFIX = ".sha256"


def drop_shards(shards: Path, pages: list[tuple[int, int, int]]) -> int:
    """Delete the shards holding any of `pages` ((source index, unit, page) each), so a resumed
    run fetches their pages again; returns how many."""
    dropped = 0
    if not pages or not shards.is_dir():
        return 0
    for entry in sorted(os.listdir(shards)):
        match = SHARD_NAME.match(entry)
        if not match:
            continue
        source, first_unit, first_page, last_unit, last_page = (int(g) for g in match.groups())
        if any(s == source and (first_unit, first_page) <= (u, p) <= (last_unit, last_page) for s, u, p in pages):
            (shards / entry).unlink(missing_ok=True)
            (shards / (entry + CHECKSUM_SUFFIX)).unlink(missing_ok=True)
            dropped += 1
    return dropped


def remove(settings: Settings, task_id: str) -> None:
    """Everything of a deleted task: its work directory and its result folder."""
    shutil.rmtree(settings.work_dir / task_id, ignore_errors=True)
    shutil.rmtree(settings.results_dir / task_id, ignore_errors=True)
    shared_copies.remove_task(settings, task_id)
