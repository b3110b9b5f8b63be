"""The task store: what the service remembers across restarts and shares between gunicorn
workers (and, on PostgreSQL, between instances). `TaskStore` is what the service needs;
`open_store(settings)` opens the one DATABASE_URL names: `SQLiteTaskStore` (the embedded
default) or `PostgresTaskStore` (several instances)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from config import Settings


class TaskStatus(StrEnum):
    """A task's status: a str, so it compares equal to, prints and serialises as its value."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class LimitReached(Exception):
    """A per-profile cap (queued tasks, schedules) is reached: nothing was written."""

    def __init__(self, limit: str, value: int):
        super().__init__(f"{limit} ({value}) reached")
        self.limit, self.value = limit, value


class StoreUnavailable(RuntimeError):
    """The task store cannot be reached or used now (PostgreSQL down, no free connection): the
    service refuses to start, or answers 503. The message names the store, password masked."""


@runtime_checkable
class TaskStore(Protocol):
    """Every store method the service calls. Both implementations return the same dicts
    (epoch-float times, JSON documents parsed); claims are leases (`owner`: owners.py), and
    `claim`'s `max_running` counts the running tasks of one instance (SQLite: of its file)."""

    def ping(self) -> bool: ...

    # tasks
    def create_task(self, task: dict, max_queued: int | None = None) -> None: ...
    def get_task(self, task_id: str, with_spec: bool = False) -> dict | None: ...
    def list_tasks(
        self,
        limit: int,
        status: str | None = None,
        schedule_id: str | None = None,
        q: str | None = None,
        before: str | None = None,
    ) -> list[dict]: ...
    def queue_positions(self, task_ids: Iterable[str]) -> dict[str, int]: ...
    def save_activity(self, task_id: str, activity: dict) -> None: ...
    def update_extra(self, task_id: str, extra: dict) -> None: ...
    def delete_task(self, task_id: str) -> TaskStatus | None: ...
    def claim(
        self, owner: str, max_running: int, lease: float, alive: Callable[[str | None], bool] = ...
    ) -> dict | None: ...
    def renew(self, owner: str, task_ids: Iterable[str], lease: float) -> None: ...
    def release(self, owner: str) -> None: ...
    def save_progress(self, task_id: str, owner: str, progress: dict) -> None: ...
    def finish(self, task_id: str, owner: str | None, status: TaskStatus, **fields: Any) -> bool: ...
    def request_cancel(self, task_id: str) -> TaskStatus | None: ...
    def cancel_requests(self, task_ids: Iterable[str]) -> set[str]: ...
    def expired_results(self, ttl: float) -> list[dict]: ...
    def mark_expired(self, task_id: str) -> None: ...
    def task_ids(self) -> set[str]: ...
    def unfinished_ids(self) -> set[str]: ...
    def counts(self) -> dict: ...
    def queued_count(self, profile: str, cap: int) -> int: ...

    # profiles
    def profile(self, name: str) -> dict: ...
    def update_profile(self, name: str, change: Callable[[dict], dict]) -> dict: ...

    # webhooks (outbox)
    def claim_webhooks(self, owner: str, limit: int, margin: float) -> list[dict]: ...
    def settle_webhook(self, task_id: str, owner: str, outcome: dict, retry_at: float | None) -> bool: ...

    # schedules
    def create_schedule(self, schedule: dict, max_per_profile: int | None = None) -> None: ...
    def get_schedule(self, schedule_id: str) -> dict | None: ...
    def list_schedules(self) -> list[dict]: ...
    def delete_schedule(self, schedule_id: str) -> bool: ...
    def pause_schedule(self, schedule_id: str, paused: bool, next_run: float | None = None) -> dict | None: ...
    def run_schedule_now(self, schedule_id: str, task: dict, max_queued: int | None = None) -> bool: ...
    def fire_schedules(
        self,
        now: float,
        plan: Callable,
        make_task: Callable,
        stale: float,
        max_queued: int | None = None,
        on_skip: Callable | None = None,
    ) -> list[dict]: ...

    # incremental state (per profile and job name)
    def get_state(self, profile: str, name: str) -> dict | None: ...
    def list_states(self, profile: str) -> list[dict]: ...
    def update_state(self, profile: str, name: str, change: Callable[[dict], dict], task_id: str | None) -> dict: ...
    def delete_state(self, profile: str, name: str) -> dict | None: ...
    def delete_states(self, profile: str) -> int: ...


# the implementations need TaskStatus and LimitReached (above) at import
from service.store.owners import HOST, new_owner, owner_alive  # noqa: E402
from service.store.sqlite import SQLiteTaskStore  # noqa: E402


def open_store(settings: Settings) -> TaskStore:
    """The task store DATABASE_URL names. PostgreSQL's driver is imported only when used."""
    if settings.uses_postgres:
        from service.store.postgres import PostgresTaskStore

        return PostgresTaskStore(settings.database_url)
    return SQLiteTaskStore(settings.db_path)


__all__ = [
    "HOST",
    "LimitReached",
    "SQLiteTaskStore",
    "StoreUnavailable",
    "TaskStatus",
    "TaskStore",
    "new_owner",
    "open_store",
    "owner_alive",
]
