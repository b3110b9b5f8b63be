"""The PostgreSQL task store's tables, as versioned steps: `MIGRATIONS[n]` takes a database
from version n to n + 1, and `schema_version` records every step applied. Append a step for a
change; never edit one once shipped.

The columns mirror SQLite's (service/store/schema.sql and its migrations): JSON documents as
text (a `jsonb` column would reorder their keys), times as epoch floats, flags as 0/1; `seq`
orders tasks and schedules created in the same instant, as SQLite's rowid does."""

from __future__ import annotations

import time
from typing import Any, LiteralString

from psycopg import Connection

# pg_advisory_xact_lock key: instances starting at once migrate one after the other
MIGRATION_LOCK = 0x7061_6765_6672_7901  # "pagefry\x01"

_FIRST = """
CREATE TABLE tasks (
    id text PRIMARY KEY,
    status text NOT NULL,
    phase text,
    name text,
    spec text NOT NULL,
    profile text,
    schedule_id text,
    created_at double precision NOT NULL,
    started_at double precision,
    finished_at double precision,
    progress text,
    result text,
    error text,
    extra text,
    partial integer NOT NULL DEFAULT 0,
    cancel_requested integer NOT NULL DEFAULT 0,
    owner text,
    lease_until double precision NOT NULL DEFAULT 0,
    runs integer NOT NULL DEFAULT 0,
    expired integer NOT NULL DEFAULT 0,
    m_pages bigint NOT NULL DEFAULT 0,
    m_requests bigint NOT NULL DEFAULT 0,
    m_retries bigint NOT NULL DEFAULT 0,
    m_bytes bigint NOT NULL DEFAULT 0,
    m_rows bigint NOT NULL DEFAULT 0,
    activity text,
    submitted text,
    seq bigint GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX tasks_status ON tasks (status, created_at, seq);
CREATE INDEX tasks_created ON tasks (created_at, seq);
CREATE INDEX tasks_schedule ON tasks (schedule_id, created_at);
CREATE INDEX tasks_profile ON tasks (profile, status);
-- the work of deleted tasks (one row): /metrics' totals stay monotonic when a task is deleted
CREATE TABLE deleted_work (
    id integer PRIMARY KEY CHECK (id = 1),
    m_pages bigint NOT NULL DEFAULT 0,
    m_requests bigint NOT NULL DEFAULT 0,
    m_retries bigint NOT NULL DEFAULT 0,
    m_bytes bigint NOT NULL DEFAULT 0,
    m_rows bigint NOT NULL DEFAULT 0
);
INSERT INTO deleted_work (id) VALUES (1);
CREATE TABLE profiles (
    name text PRIMARY KEY,
    inputs text NOT NULL DEFAULT '[]',
    configuration text NOT NULL DEFAULT '{}'
);
CREATE TABLE schedules (
    id text PRIMARY KEY,
    cron text NOT NULL,
    timezone text NOT NULL,
    spec text NOT NULL,
    created_at double precision NOT NULL,
    next_run double precision NOT NULL,
    last_run double precision,
    last_task_id text,
    base_url text,
    profile text,
    skipped_runs integer NOT NULL DEFAULT 0,
    last_skipped double precision,
    paused integer NOT NULL DEFAULT 0,
    seq bigint GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX schedules_profile ON schedules (profile);
CREATE INDEX schedules_due ON schedules (next_run);
CREATE TABLE webhooks (
    task_id text PRIMARY KEY,
    due double precision NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    done integer NOT NULL DEFAULT 0,
    owner text,
    lease_until double precision NOT NULL DEFAULT 0
);
CREATE INDEX webhooks_due ON webhooks (done, due);
CREATE TABLE meta (key text PRIMARY KEY, value double precision);
CREATE TABLE incremental_state (
    profile text NOT NULL,
    name text NOT NULL,
    state text NOT NULL,
    updated_at double precision NOT NULL,
    task_id text,
    PRIMARY KEY (profile, name)
);
"""

MIGRATIONS: list[LiteralString] = [_FIRST]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: Connection[Any]) -> int:
    """Bring the database to SCHEMA_VERSION in one transaction; returns the version it is at
    (a newer database - a rollback of the code - is left as it is)."""
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version integer PRIMARY KEY, applied_at double precision NOT NULL)"
        )
        row = db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        current = int(row[0]) if row is not None else 0
        for version, step in enumerate(MIGRATIONS[current:], start=current + 1):
            db.execute(step)  # several statements: allowed in a query without parameters
            db.execute("INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)", (version, time.time()))
        return max(current, SCHEMA_VERSION)
