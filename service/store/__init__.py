"""The task store: what the service remembers across restarts and shares between gunicorn
workers (and, on PostgreSQL, between instances). `TaskStore` is what the service needs;
`open_store(settings)` opens the one DATABASE_URL names: `SQLiteTaskStore` (the embedded
default) or `PostgresTaskStore` (several instances). Both are `SqlTaskStore`s (sql.py): one
implementation of the store's logic, each database adding its connections and dialect."""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.store.owners import HOST, new_owner, owner_alive
from service.store.protocol import LimitReached, StoreUnavailable, TaskStatus, TaskStore
from service.store.sqlite import SQLiteTaskStore

if TYPE_CHECKING:
    from config import Settings


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
