"""The service's part of RESULT_STORE (engine/storage): what a task leaves in the shared store
besides its shards - its uploaded ids files and its result - so that any instance can run the
task and serve its download, and the removal of all of it when the task ends, expires or is
deleted. With RESULT_STORE unset every function here does nothing (local disk only)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from config import Settings
from engine import ResultStore, StoredObject, result_path, result_store_for, work_path

if TYPE_CHECKING:
    from engine import JobResult

log = logging.getLogger("pageferry.result_store")


def store_of(settings: Settings) -> ResultStore:
    return result_store_for(settings, service=True)


def check(settings: Settings) -> None:
    """At start: a RESULT_STORE that cannot be listed (missing bucket, refused keys, no
    endpoint) stops the service with a message naming it (ResultStoreError, keys masked)."""
    store_of(settings).check()


# ------------------------------------------------------------------ uploaded ids files


def store_uploads(settings: Settings, task_id: str, folder: Path) -> None:
    """The ids files uploaded with a task (its work directory's `uploads/`), for the instance
    that runs it."""
    store = store_of(settings)
    for path in sorted(folder.iterdir()):
        store.upload(path, work_path(task_id, f"uploads/{path.name}"))


def fetch_uploads(settings: Settings, task_id: str, folder: Path, kept_as_result: bool = False) -> bool:
    """Bring a task's uploaded ids files from the store into `folder` when it is not there
    (another instance took the upload); `kept_as_result`: look where they are kept once the
    task has ended. Whether any came."""
    store = store_of(settings)
    if not store.shared or folder.is_dir():
        return False
    source = result_path(task_id, "uploads/") if kept_as_result else work_path(task_id, "uploads/")
    names = store.names(source)
    for name in names:
        store.download(source + name, folder / name)
    return bool(names)


# ------------------------------------------------------------------ results


def result_saver(settings: Settings, task_id: str) -> Callable[[JobResult], None]:
    """What the job runs once its result is written (in the job's thread, not the runner's
    loop): the file stored as results/<task id>/<file>. A failure fails the task, saying so -
    never a completed task whose result only one instance has."""

    def save(result: JobResult) -> None:
        store_of(settings).upload(result.output, result_path(task_id, result.output.name))

    return save


def stored_result(settings: Settings, task_id: str, filename: str) -> StoredObject | None:
    """The task's result in the store (None: not there, or no shared store)."""
    return store_of(settings).stored(result_path(task_id, filename))


# ------------------------------------------------------------------ removal


def settle(settings: Settings, task_id: str) -> None:
    """After a task ended without keeping its shards for a retry (kept_work.settle): its work
    goes from the store too, its uploads moved beside its result (as on disk)."""
    store = store_of(settings)
    if not store.shared:
        return
    _quietly(f"settle {task_id}", lambda: _settle(store, task_id))


def _settle(store: ResultStore, task_id: str) -> None:
    uploads = work_path(task_id, "uploads/")
    for name in store.names(uploads):
        store.copy(uploads + name, result_path(task_id, f"uploads/{name}"))
    store.remove(work_path(task_id))


def take_work(settings: Settings, old_id: str, new_id: str) -> None:
    """A retry took over the kept work of `old_id` on disk: the new task stores it again under
    its own id when it starts (engine/storage/work.py); the old copy goes."""
    store = store_of(settings)
    if store.shared:
        _quietly(f"remove the work of {old_id}", lambda: store.remove(work_path(old_id)))


def remove_work(settings: Settings, task_id: str) -> None:
    """Kept work that expired (the runner's sweep)."""
    store = store_of(settings)
    if store.shared:
        _quietly(f"remove the work of {task_id}", lambda: store.remove(work_path(task_id)))


def remove_result(settings: Settings, task_id: str) -> None:
    """An expired result (RESULT_TTL), its kept uploads with it."""
    store = store_of(settings)
    if store.shared:
        _quietly(f"remove the result of {task_id}", lambda: store.remove(result_path(task_id)))


def remove_task(settings: Settings, task_id: str) -> None:
    """A deleted task: everything of it."""
    remove_work(settings, task_id)
    remove_result(settings, task_id)


def _quietly(what: str, action: Callable[[], object]) -> None:
    """Removal is housekeeping: a store that fails now is logged (without keys), not raised -
    the sweep or an operator's lifecycle rule gets the objects later."""
    try:
        action()
    except Exception as exc:
        log.warning("RESULT_STORE: could not %s: %s", what, exc)
