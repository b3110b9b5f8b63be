"""The task store: opened by several gunicorn workers at the same moment on a new data dir,
and databases made by earlier versions of the service (schema versions)."""

from __future__ import annotations

import json
import sqlite3
import threading

from service.store import SQLiteTaskStore, TaskStatus, TaskStore
from service.store.sqlite import MIGRATIONS, SCHEMA_VERSION


def test_workers_opening_a_new_store_at_once_all_succeed(tmp_path):
    for round_ in range(15):
        path = tmp_path / f"r{round_}" / "pageferry.sqlite3"
        errors: list[Exception] = []
        barrier = threading.Barrier(4)

        def open_store():
            barrier.wait()
            try:
                SQLiteTaskStore(path).list_tasks(10, None)
            except Exception as exc:  # collected: every opener must succeed
                errors.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors


# ------------------------------------------------------------------ schema versions (PRAGMA user_version)

OLD_SCHEMA = """  -- service/store.py before user_version (git show cc99a3d:service/store.py)
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    phase TEXT,
    name TEXT,
    spec TEXT NOT NULL,               -- the job spec as submitted (${NAME} references kept)
    profile TEXT,
    schedule_id TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    progress TEXT,                    -- JSON: {"phase", "progress", "sources"}
    result TEXT,                      -- JSON, when completed
    error TEXT,                       -- JSON, when failed
    extra TEXT,                       -- JSON: webhook/deliveries/summary outcomes
    partial INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    runs INTEGER NOT NULL DEFAULT 0,  -- how many times a runner claimed it (restarts resume)
    expired INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks(status, created_at);
CREATE INDEX IF NOT EXISTS tasks_created ON tasks(created_at);
CREATE TABLE IF NOT EXISTS profiles (
    name TEXT PRIMARY KEY,
    inputs TEXT NOT NULL DEFAULT '[]',
    configuration TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS schedules (
    id TEXT PRIMARY KEY,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at REAL NOT NULL,
    next_run REAL NOT NULL,
    last_run REAL,
    last_task_id TEXT
);
CREATE INDEX IF NOT EXISTS tasks_schedule ON tasks(schedule_id, created_at);
CREATE TABLE IF NOT EXISTS webhooks (  -- outbox: one row per finished task whose spec has a webhook
    task_id TEXT PRIMARY KEY,
    due REAL NOT NULL,                 -- next attempt not before
    attempts INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS webhooks_due ON webhooks(done, due);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value REAL);
"""


def _layout(path) -> dict:
    """Every table's columns (name, type, not null, default, primary key) and every index."""
    db = sqlite3.connect(path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        layout = {t: [tuple(c[1:]) for c in db.execute(f"PRAGMA table_info({t})")] for t in tables}
        layout["indexes"] = sorted(
            r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'")
        )
        return layout
    finally:
        db.close()


def _user_version(path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def _old_database(path, *, base_url: bool = True, tables=None) -> None:
    """A database as the code before user_version left it: OLD_SCHEMA, then (as its column check
    did) `schedules.base_url` added by ALTER. `tables` keeps only those tables (older code)."""
    db = sqlite3.connect(path)
    for statement in OLD_SCHEMA.split(";"):
        if not statement.strip():
            continue
        name = statement.split("EXISTS", 1)[1].split()[0]
        table = statement.split(" ON ")[1].split("(")[0].strip() if " INDEX " in statement else name
        if tables is None or table in tables:
            db.execute(statement)
    if base_url:
        db.execute("ALTER TABLE schedules ADD COLUMN base_url TEXT")
    db.execute(
        "INSERT INTO tasks (id, status, name, spec, created_at, extra) VALUES "
        "('task_0123456789ab', 'completed', 'old', '{\"sources\": []}', 1.0, '{}')"
    )
    db.execute(
        "INSERT INTO schedules (id, cron, timezone, spec, created_at, next_run) VALUES "
        "('sch_0123456789ab', '* * * * *', 'UTC', '{\"name\": \"s\"}', 1.0, 2.0)"
    )
    db.commit()
    db.close()


def test_a_new_store_is_at_the_latest_schema_version(tmp_path):
    path = tmp_path / "new.sqlite3"
    SQLiteTaskStore(path).close()
    assert _user_version(path) == SCHEMA_VERSION == len(MIGRATIONS)
    SQLiteTaskStore(path).close()  # opening again changes nothing
    assert _user_version(path) == SCHEMA_VERSION


def test_a_store_made_before_user_version_opens_and_migrates(tmp_path):
    fresh, old = tmp_path / "fresh.sqlite3", tmp_path / "old.sqlite3"
    SQLiteTaskStore(fresh).close()
    _old_database(old)
    assert _user_version(old) == 0
    store = SQLiteTaskStore(old)
    assert _user_version(old) == SCHEMA_VERSION
    assert _layout(old) == _layout(fresh)
    assert store.get_task("task_0123456789ab")["name"] == "old"
    assert store.list_schedules()[0]["base_url"] is None
    store.create_schedule(
        {
            "id": "sch_ba5e0000000a",
            "cron": "* * * * *",
            "timezone": "UTC",
            "spec": {},
            "next_run": 5.0,
            "base_url": "http://x",
        }
    )
    assert store.get_schedule("sch_ba5e0000000a")["base_url"] == "http://x"
    store.close()


def test_an_older_store_without_base_url_or_outbox_gets_them(tmp_path):
    fresh, old = tmp_path / "fresh.sqlite3", tmp_path / "old.sqlite3"
    SQLiteTaskStore(fresh).close()
    _old_database(old, base_url=False, tables={"tasks", "profiles", "schedules"})
    store = SQLiteTaskStore(old)
    assert _layout(old) == _layout(fresh)
    assert store.claim_webhooks("me", 4, 1.0) == []
    store.close()


def test_a_newer_store_is_left_as_it_is(tmp_path):
    path = tmp_path / "newer.sqlite3"
    SQLiteTaskStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    SQLiteTaskStore(path).close()  # e.g. a rollback to this code: it opens, nothing is undone
    assert _user_version(path) == SCHEMA_VERSION + 1


def test_the_sqlite_store_is_a_task_store(tmp_path):
    assert isinstance(SQLiteTaskStore(tmp_path / "s.sqlite3"), TaskStore)


def test_a_task_status_is_its_string_everywhere(tmp_path):
    from flask import Flask

    assert [s.value for s in TaskStatus] == ["queued", "running", "completed", "failed", "cancelled"]
    assert [s for s in TaskStatus if s.is_final] == [TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED]
    assert TaskStatus.QUEUED == "queued" and {"queued": 1}[TaskStatus.QUEUED] == 1
    assert f"{TaskStatus.FAILED}" == str(TaskStatus.FAILED) == "failed"
    assert json.dumps({"status": TaskStatus.RUNNING}) == '{"status": "running"}'
    with Flask(__name__).app_context():
        from flask import json as flask_json

        assert flask_json.dumps({"status": TaskStatus.RUNNING}) == '{"status": "running"}'
    store = SQLiteTaskStore(tmp_path / "s.sqlite3")
    store.create_task({"id": "task_0123456789ab", "spec": {}})
    assert store.finish("task_0123456789ab", None, TaskStatus.CANCELLED)
    assert type(store.get_task("task_0123456789ab")["status"]) is str
    assert store.request_cancel("task_0123456789ab") is TaskStatus.CANCELLED
