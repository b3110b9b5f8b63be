-- The task store's tables (SQLite): PRAGMA user_version 1, the first step of MIGRATIONS in
-- sqlite.py. Later changes are further steps there, not edits here.
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
    last_task_id TEXT,
    base_url TEXT                      -- the service's URL when it was created (absolute URLs in tasks)
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
