"""`SQLiteTaskStore`: one file under DATA_DIR in WAL mode, so readers never block the writer.
Claims run in `BEGIN IMMEDIATE` transactions, so two workers never claim the same task; a
claim is a lease (`owner`: service/store/owners.py) that the runner renews, and a task whose
lease lapsed or whose owner process is gone is claimed again and resumes from its shards. One
file serves one machine: `max_running` counts every running task in it."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from service.store import LimitReached, TaskStatus
from service.store.owners import owner_alive
from service.store.rows import (
    LIST_COLUMNS,
    METRIC_COLUMNS,
    STATUS_COLUMNS,
    STATUSES,
    WEBHOOK_PENDING,
    metrics_of,
    schedule_of,
    state_of,
    task_of,
    to_json,
)

SCHEMA = (Path(__file__).parent / "schema.sql").read_text(encoding="utf-8")


def _statements(script: str) -> list[str]:
    return [s for s in script.split(";") if s.strip()]


def _adopt_unversioned(db: sqlite3.Connection) -> None:
    """0 -> 1: schema.sql. A database made before the store kept `user_version` has some of
    its tables already, and its `schedules` may lack `base_url` (added later, by ALTER)."""
    for statement in _statements(SCHEMA):
        db.execute(statement)
    if "base_url" not in {r["name"] for r in db.execute("PRAGMA table_info(schedules)")}:
        db.execute("ALTER TABLE schedules ADD COLUMN base_url TEXT")


def _counters(db: sqlite3.Connection) -> None:
    """1 -> 2: what status calls and /metrics read without parsing JSON or scanning every task.

    - `m_pages`..`m_rows`: a task's work as numbers (from its progress and result), written
      with them; `task_totals` (one row) and `task_counts` (one row per status) are kept up to
      date by triggers, in the writing transaction itself, so /metrics reads 6 rows.
    - `tasks(profile, status)`: the per-profile queue cap counts queued tasks by index.
    - `schedules.profile` (the X-Profile that created it; NULL = "default"), and
      `skipped_runs`/`last_skipped` (firings skipped because the profile's queue was full)."""
    for column in METRIC_COLUMNS:
        db.execute(f"ALTER TABLE tasks ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
    db.execute(
        "UPDATE tasks SET "
        "m_pages = coalesce(json_extract(progress, '$.progress.pages_done'), 0), "
        "m_requests = coalesce(json_extract(progress, '$.progress.requests'), 0), "
        "m_retries = coalesce(json_extract(progress, '$.progress.retries'), 0), "
        "m_bytes = coalesce(json_extract(progress, '$.progress.bytes'), 0), "
        "m_rows = coalesce(json_extract(result, '$.rows'), 0) "
        "WHERE progress IS NOT NULL"
    )
    db.execute("CREATE TABLE IF NOT EXISTS task_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL DEFAULT 0)")
    db.executemany("INSERT OR IGNORE INTO task_counts (status, n) VALUES (?, 0)", [(s,) for s in STATUSES])
    db.execute("UPDATE task_counts SET n = (SELECT count(*) FROM tasks WHERE tasks.status = task_counts.status)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS task_totals (id INTEGER PRIMARY KEY CHECK (id = 1), "
        + ", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in METRIC_COLUMNS)
        + ")"
    )
    db.execute(
        "INSERT OR REPLACE INTO task_totals (id, {cols}) SELECT 1, {sums} FROM tasks".format(
            cols=", ".join(METRIC_COLUMNS), sums=", ".join(f"coalesce(sum({c}), 0)" for c in METRIC_COLUMNS)
        )
    )
    plus = ", ".join(f"{c} = {c} + NEW.{c}" for c in METRIC_COLUMNS)
    minus = ", ".join(f"{c} = {c} - OLD.{c}" for c in METRIC_COLUMNS)
    delta = ", ".join(f"{c} = {c} + NEW.{c} - OLD.{c}" for c in METRIC_COLUMNS)
    db.execute(
        "CREATE TRIGGER IF NOT EXISTS tasks_counted AFTER INSERT ON tasks BEGIN "
        "INSERT OR IGNORE INTO task_counts (status, n) VALUES (NEW.status, 0); "
        "UPDATE task_counts SET n = n + 1 WHERE status = NEW.status; "
        f"UPDATE task_totals SET {plus} WHERE id = 1; END"
    )
    db.execute(
        "CREATE TRIGGER IF NOT EXISTS tasks_recounted AFTER UPDATE OF status ON tasks "
        "WHEN OLD.status IS NOT NEW.status BEGIN "
        "INSERT OR IGNORE INTO task_counts (status, n) VALUES (NEW.status, 0); "
        "UPDATE task_counts SET n = n - 1 WHERE status = OLD.status; "
        "UPDATE task_counts SET n = n + 1 WHERE status = NEW.status; END"
    )
    db.execute(
        f"CREATE TRIGGER IF NOT EXISTS tasks_totalled AFTER UPDATE OF {', '.join(METRIC_COLUMNS)} ON tasks BEGIN "
        f"UPDATE task_totals SET {delta} WHERE id = 1; END"
    )
    db.execute(
        "CREATE TRIGGER IF NOT EXISTS tasks_uncounted AFTER DELETE ON tasks BEGIN "
        "UPDATE task_counts SET n = n - 1 WHERE status = OLD.status; "
        f"UPDATE task_totals SET {minus} WHERE id = 1; END"
    )
    db.execute("CREATE INDEX IF NOT EXISTS tasks_profile ON tasks(profile, status)")
    db.execute("ALTER TABLE schedules ADD COLUMN profile TEXT")
    db.execute("ALTER TABLE schedules ADD COLUMN skipped_runs INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE schedules ADD COLUMN last_skipped REAL")
    db.execute("CREATE INDEX IF NOT EXISTS schedules_profile ON schedules(profile)")


def _page_actions(db: sqlite3.Connection) -> None:
    """2 -> 3: what the progress page's task and schedule actions need.

    - `tasks.activity`: the task's event log and throughput samples (service/background/events.py),
      bounded, read with the status (not with listings).
    - `tasks.submitted`: the job spec document as the client sent it (no defaults added), shown
      beside the effective spec; NULL for tasks stored before.
    - `schedules.paused`: a paused schedule does not fire; resuming moves `next_run` past now."""
    columns = {r["name"] for r in db.execute("PRAGMA table_info(tasks)")}
    for column in ("activity", "submitted"):
        if column not in columns:
            db.execute(f"ALTER TABLE tasks ADD COLUMN {column} TEXT")
    if "paused" not in {r["name"] for r in db.execute("PRAGMA table_info(schedules)")}:
        db.execute("ALTER TABLE schedules ADD COLUMN paused INTEGER NOT NULL DEFAULT 0")


def _incremental_state(db: sqlite3.Connection) -> None:
    """-> +1: `incremental_state`, the saved state of incremental jobs (docs/incremental.md):
    one row per profile and job name, written when a task of that name completes."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS incremental_state ("
        "profile TEXT NOT NULL, "
        "name TEXT NOT NULL, "
        "state TEXT NOT NULL, "  # JSON: {"<source>": {"cursor", "units"?}}
        "updated_at REAL NOT NULL, "
        "task_id TEXT, "  # the task whose completion wrote it last
        "PRIMARY KEY (profile, name))"
    )


# MIGRATIONS[n] takes a database from user_version n to n + 1, a new one included (step 0
# creates schema.sql). Append a step for a change; never edit schema.sql or a step once shipped.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _adopt_unversioned,
    _counters,
    _page_actions,
    _incremental_state,
]
SCHEMA_VERSION = len(MIGRATIONS)


def _row(row: sqlite3.Row | None) -> dict | None:
    return None if row is None else task_of(row)


class SQLiteTaskStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connection() as db:
            # Every gunicorn worker opens the store at start: create and migrate under one
            # write lock, so a second worker finds the first one's user_version.
            db.execute("BEGIN IMMEDIATE")
            try:
                _migrate(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------ plumbing
    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            for attempt in range(100):
                # switching a new file to WAL answers "locked" at once (no busy wait) while
                # another worker is doing the same: try again shortly
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == 99:
                        raise
                    time.sleep(0.05)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    def _write(self):
        return _Transaction(self._connection())

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def ping(self) -> bool:
        self._connection().execute("SELECT 1").fetchone()
        return True

    # ------------------------------------------------------------ tasks
    def create_task(self, task: dict, max_queued: int | None = None) -> None:
        """Insert a queued task; with `max_queued`, only if its profile has fewer queued tasks
        (checked in the inserting transaction), else `LimitReached`."""
        with self._write() as db:
            if max_queued is not None and _queued(db, task.get("profile") or "default", max_queued) >= max_queued:
                raise LimitReached("MAX_QUEUED_PER_PROFILE", max_queued)
            _insert_task(db, task)

    def get_task(self, task_id: str, with_spec: bool = False) -> dict | None:
        """A task; its `spec` only `with_spec` (status and websocket pushes never need it)."""
        columns = "*" if with_spec else STATUS_COLUMNS
        return _row(self._connection().execute(f"SELECT {columns} FROM tasks WHERE id = ?", (task_id,)).fetchone())

    def list_tasks(
        self,
        limit: int,
        status: str | None = None,
        schedule_id: str | None = None,
        q: str | None = None,
        before: str | None = None,
    ) -> list[dict]:
        """The newest tasks, without their specs or event logs. `q`: the name contains it (any
        case); `before`: only tasks listed after that task (the next page; a `LookupError` when
        no such task is stored). Ties in `created_at` are ordered by insertion, so paging with
        `before` lists every task exactly once."""
        db = self._connection()
        where = [(f"{k} = ?", v) for k, v in (("status", status), ("schedule_id", schedule_id)) if v]
        if q:
            escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append(("coalesce(name, '') LIKE ? ESCAPE '\\'", f"%{escaped}%"))
        args: list[Any] = [v for _, v in where]
        clauses = [c for c, _ in where]
        if before:
            anchor = db.execute("SELECT created_at, rowid FROM tasks WHERE id = ?", (before,)).fetchone()
            if anchor is None:
                raise LookupError(before)
            clauses.append("(created_at < ? OR (created_at = ? AND rowid < ?))")
            args += [anchor["created_at"], anchor["created_at"], anchor["rowid"]]
        clause = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = db.execute(
            f"SELECT {LIST_COLUMNS} FROM tasks {clause} ORDER BY created_at DESC, rowid DESC LIMIT ?",
            args + [limit],
        )
        return [task_of(r) for r in rows.fetchall()]

    def queue_positions(self, task_ids: Iterable[str]) -> dict[str, int]:
        """Queued tasks' places in the one queue (1 = started next), in claim order."""
        db = self._connection()
        positions = {}
        for task_id in task_ids:
            row = db.execute(
                "SELECT 1 + (SELECT count(*) FROM tasks o WHERE o.status = 'queued' AND (o.created_at < t.created_at "
                "OR (o.created_at = t.created_at AND o.rowid < t.rowid))) AS position "
                "FROM tasks t WHERE t.id = ? AND t.status = 'queued'",
                (task_id,),
            ).fetchone()
            if row is not None:
                positions[task_id] = row["position"]
        return positions

    def save_activity(self, task_id: str, activity: dict) -> None:
        """A task's event log and throughput samples (bounded by their writer)."""
        with self._write() as db:
            db.execute("UPDATE tasks SET activity = ? WHERE id = ?", (to_json(activity), task_id))

    def delete_task(self, task_id: str) -> TaskStatus | None:
        """Remove a finished task (and its webhook outbox row); a queued or running one is left
        as it is. Returns the status found (None: unknown). /metrics' counters stay monotonic:
        the work the task did is added back after the delete trigger took it off the totals."""
        with self._write() as db:
            row = db.execute(
                f"SELECT status, {', '.join(METRIC_COLUMNS)} FROM tasks WHERE id = ?", (task_id,)
            ).fetchone()
            if row is None:
                return None
            found = TaskStatus(row["status"])
            if not found.is_final:
                return found
            db.execute("DELETE FROM tasks WHERE id = ?", (task_id,))
            db.execute("DELETE FROM webhooks WHERE task_id = ?", (task_id,))
            db.execute(
                "UPDATE task_totals SET " + ", ".join(f"{c} = {c} + ?" for c in METRIC_COLUMNS) + " WHERE id = 1",
                [row[c] for c in METRIC_COLUMNS],
            )
            return found

    def claim(self, owner: str, max_running: int, lease: float, alive=owner_alive) -> dict | None:
        """Claim one task for `owner`: first a running task whose runner is gone (it resumes),
        else the oldest queued task if fewer than `max_running` tasks are running."""
        now = time.time()
        with self._write() as db:
            for row in db.execute(
                "SELECT id, owner, lease_until FROM tasks WHERE status = 'running' "
                "AND owner IS NOT ? ORDER BY created_at",
                (owner,),
            ).fetchall():
                if row["lease_until"] < now or not alive(row["owner"]):
                    db.execute(
                        "UPDATE tasks SET owner = ?, lease_until = ?, runs = runs + 1 WHERE id = ?",
                        (owner, now + lease, row["id"]),
                    )
                    return _row(db.execute("SELECT * FROM tasks WHERE id = ?", (row["id"],)).fetchone())
            running = db.execute("SELECT count(*) FROM tasks WHERE status = 'running'").fetchone()[0]
            if running >= max_running:
                return None
            row = db.execute(
                "SELECT id FROM tasks WHERE status = 'queued' ORDER BY created_at, rowid LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE tasks SET status = 'running', phase = 'fetching', owner = ?, lease_until = ?, "
                "started_at = coalesce(started_at, ?), runs = runs + 1 WHERE id = ?",
                (owner, now + lease, now, row["id"]),
            )
            return _row(db.execute("SELECT * FROM tasks WHERE id = ?", (row["id"],)).fetchone())

    def renew(self, owner: str, task_ids: Iterable[str], lease: float) -> None:
        ids = list(task_ids)
        if not ids:
            return
        with self._write() as db:
            db.executemany(
                "UPDATE tasks SET lease_until = ? WHERE id = ? AND owner = ? AND status = 'running'",
                [(time.time() + lease, i, owner) for i in ids],
            )

    def release(self, owner: str) -> None:
        """Give up every lease of `owner` now (a clean shutdown): others resume them at once."""
        with self._write() as db:
            db.execute("UPDATE tasks SET lease_until = 0 WHERE owner = ? AND status = 'running'", (owner,))

    def save_progress(self, task_id: str, owner: str, progress: dict) -> None:
        with self._write() as db:
            numbers = metrics_of(progress)
            db.execute(
                "UPDATE tasks SET progress = ?, phase = ?, m_pages = ?, m_requests = ?, m_retries = ?, m_bytes = ? "
                "WHERE id = ? AND owner = ? AND status = 'running'",
                (to_json(progress), progress.get("phase"), *numbers.values(), task_id, owner),
            )

    def finish(self, task_id: str, owner: str | None, status: TaskStatus, **fields: Any) -> bool:
        """Move a task to a final status (only from queued/running; by its owner when given)."""
        assert TaskStatus(status).is_final
        values = {
            "status": TaskStatus(status).value,
            "finished_at": fields.pop("finished_at", time.time()),
            "phase": None,
            "cancel_requested": 0,
        }
        if "progress" in fields:
            values.update(metrics_of(fields["progress"]))
        if "result" in fields:
            values["m_rows"] = (fields["result"] or {}).get("rows") or 0
        for key in ("result", "error", "extra", "progress", "activity"):
            if key in fields:
                values[key] = to_json(fields.pop(key))
        if "partial" in fields:
            values["partial"] = int(bool(fields.pop("partial")))
        assert not fields, f"unknown fields {fields}"
        sets = ", ".join(f"{k} = ?" for k in values)
        where = "id = ? AND status IN ('queued', 'running')" + (" AND owner = ?" if owner else "")
        args = list(values.values()) + [task_id] + ([owner] if owner else [])
        with self._write() as db:
            changed = db.execute(f"UPDATE tasks SET {sets} WHERE {where}", args).rowcount == 1
            if changed:
                _enqueue_webhook(db, task_id)
            return changed

    def update_extra(self, task_id: str, extra: dict) -> None:
        with self._write() as db:
            row = db.execute("SELECT extra FROM tasks WHERE id = ?", (task_id,)).fetchone()
            merged = {**(json.loads(row["extra"]) if row and row["extra"] else {}), **extra}
            db.execute("UPDATE tasks SET extra = ? WHERE id = ?", (to_json(merged), task_id))

    def request_cancel(self, task_id: str) -> TaskStatus | None:
        """Cancel a queued task at once, flag a running one. Returns the status found first."""
        with self._write() as db:
            row = db.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                return None
            found = TaskStatus(row["status"])
            if found is TaskStatus.QUEUED:
                db.execute(
                    "UPDATE tasks SET status = 'cancelled', finished_at = ?, phase = NULL, error = ? WHERE id = ?",
                    (time.time(), to_json({"message": "cancelled before it started", "pages": []}), task_id),
                )
                _enqueue_webhook(db, task_id)
                _append_event(db, task_id, "cancelled", "cancelled before it started")
            elif found is TaskStatus.RUNNING:
                db.execute("UPDATE tasks SET cancel_requested = 1 WHERE id = ?", (task_id,))
            return found

    def cancel_requests(self, task_ids: Iterable[str]) -> set[str]:
        ids = list(task_ids)
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        rows = (
            self._connection()
            .execute(f"SELECT id FROM tasks WHERE cancel_requested = 1 AND id IN ({marks})", ids)
            .fetchall()
        )
        return {r["id"] for r in rows}

    def expired_results(self, ttl: float) -> list[dict]:
        cutoff = time.time() - ttl
        rows = self._connection().execute(
            f"SELECT {STATUS_COLUMNS} FROM tasks WHERE status = 'completed' AND expired = 0 AND finished_at < ?",
            (cutoff,),
        )
        return [task_of(r) for r in rows.fetchall()]

    def mark_expired(self, task_id: str) -> None:
        with self._write() as db:
            db.execute("UPDATE tasks SET expired = 1 WHERE id = ?", (task_id,))

    def task_ids(self) -> set[str]:
        return {r["id"] for r in self._connection().execute("SELECT id FROM tasks").fetchall()}

    def unfinished_ids(self) -> set[str]:
        rows = self._connection().execute("SELECT id FROM tasks WHERE status IN ('queued', 'running')").fetchall()
        return {r["id"] for r in rows}

    def counts(self) -> dict:
        """Tasks by status, and work done by all tasks (for /metrics): read from the counters
        the triggers keep (`task_counts`, `task_totals`), not from the tasks themselves."""
        db = self._connection()
        by_status = {r["status"]: r["n"] for r in db.execute("SELECT status, n FROM task_counts")}
        row = db.execute(f"SELECT {', '.join(METRIC_COLUMNS)} FROM task_totals WHERE id = 1").fetchone()
        totals = {column[2:]: (row[column] if row is not None else 0) for column in METRIC_COLUMNS}
        return {"by_status": by_status, "totals": totals}

    def queued_count(self, profile: str, cap: int) -> int:
        """Queued tasks of a profile, counted up to `cap` (by index)."""
        return _queued(self._connection(), profile, cap)

    # ------------------------------------------------------------ profiles
    def profile(self, name: str) -> dict:
        row = self._connection().execute("SELECT * FROM profiles WHERE name = ?", (name,)).fetchone()
        if row is None:
            return {"inputs": [], "configuration": {}}
        return {"inputs": json.loads(row["inputs"]), "configuration": json.loads(row["configuration"])}

    def save_profile(self, name: str, inputs: list | None = None, configuration: dict | None = None) -> None:
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO profiles (name) VALUES (?)", (name,))
            if inputs is not None:
                db.execute("UPDATE profiles SET inputs = ? WHERE name = ?", (to_json(inputs), name))
            if configuration is not None:
                db.execute("UPDATE profiles SET configuration = ? WHERE name = ?", (to_json(configuration), name))

    def update_profile(self, name: str, change) -> dict:
        """Read-modify-write a profile atomically: `change(profile) -> profile`."""
        with self._write() as db:
            row = db.execute("SELECT * FROM profiles WHERE name = ?", (name,)).fetchone()
            current = (
                {"inputs": json.loads(row["inputs"]), "configuration": json.loads(row["configuration"])}
                if row
                else {"inputs": [], "configuration": {}}
            )
            updated = change(current)
            db.execute(
                "INSERT INTO profiles (name, inputs, configuration) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET inputs = excluded.inputs, "
                "configuration = excluded.configuration",
                (name, to_json(updated["inputs"]), to_json(updated["configuration"])),
            )
            return updated

    # ------------------------------------------------------------ webhooks (outbox)
    def claim_webhooks(self, owner: str, limit: int, margin: float) -> list[dict]:
        """Claim up to `limit` due webhook attempts, each leased for twice the webhook's
        timeout (connect + read) plus `margin`. A claim counts as an attempt: one whose sender
        died is not retried forever."""
        now = time.time()
        if (
            limit < 1
            or self._connection()
            .execute("SELECT 1 FROM webhooks WHERE done = 0 AND due <= ? AND lease_until < ? LIMIT 1", (now, now))
            .fetchone()
            is None
        ):
            return []
        with self._write() as db:
            rows = db.execute(
                "SELECT task_id FROM webhooks WHERE done = 0 AND due <= ? AND lease_until < ? ORDER BY due LIMIT ?",
                (now, now, limit),
            ).fetchall()
            claimed = []
            for row in rows:
                db.execute(
                    "UPDATE webhooks SET owner = ?, attempts = attempts + 1, lease_until = ? + ? + 2 * coalesce("
                    "(SELECT json_extract(spec, '$.webhook.timeout') FROM tasks WHERE id = webhooks.task_id), 10) "
                    "WHERE task_id = ?",
                    (owner, now, margin, row["task_id"]),
                )
                claimed.append(
                    dict(db.execute("SELECT * FROM webhooks WHERE task_id = ?", (row["task_id"],)).fetchone())
                )
            return claimed

    def settle_webhook(self, task_id: str, owner: str, outcome: dict, retry_at: float | None) -> bool:
        """Record an attempt: `retry_at` None = final (delivered or given up), else the next
        attempt's time. The task's status shows `outcome` as its `webhook` section."""
        with self._write() as db:
            if retry_at is None:
                changed = db.execute(
                    "UPDATE webhooks SET done = 1, owner = NULL, lease_until = 0 WHERE task_id = ? AND owner = ?",
                    (task_id, owner),
                ).rowcount
            else:
                changed = db.execute(
                    "UPDATE webhooks SET due = ?, owner = NULL, lease_until = 0 WHERE task_id = ? AND owner = ?",
                    (retry_at, task_id, owner),
                ).rowcount
            if changed:
                db.execute(
                    "UPDATE tasks SET extra = json_set(coalesce(extra, '{}'), '$.webhook', json(?)) WHERE id = ?",
                    (to_json(outcome), task_id),
                )
            return bool(changed)

    # ------------------------------------------------------------ schedules
    def create_schedule(self, schedule: dict, max_per_profile: int | None = None) -> None:
        """Insert a schedule; with `max_per_profile`, only if its profile has fewer schedules
        (checked in the inserting transaction), else `LimitReached`."""
        profile = schedule.get("profile") or "default"
        with self._write() as db:
            if max_per_profile is not None:
                found = db.execute(
                    "SELECT count(*) FROM schedules WHERE coalesce(profile, 'default') = ?", (profile,)
                ).fetchone()[0]
                if found >= max_per_profile:
                    raise LimitReached("MAX_SCHEDULES_PER_PROFILE", max_per_profile)
            db.execute(
                "INSERT INTO schedules (id, cron, timezone, spec, created_at, next_run, base_url, profile) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    schedule["id"],
                    schedule["cron"],
                    schedule["timezone"],
                    to_json(schedule["spec"]),
                    schedule.get("created_at", time.time()),
                    schedule["next_run"],
                    schedule.get("base_url"),
                    profile,
                ),
            )

    def get_schedule(self, schedule_id: str) -> dict | None:
        row = self._connection().execute("SELECT * FROM schedules WHERE id = ?", (schedule_id,)).fetchone()
        return _schedule(row)

    def list_schedules(self) -> list[dict]:
        rows = self._connection().execute("SELECT * FROM schedules ORDER BY created_at, rowid").fetchall()
        return [schedule_of(r) for r in rows]

    def delete_schedule(self, schedule_id: str) -> bool:
        with self._write() as db:
            return db.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,)).rowcount == 1

    def pause_schedule(self, schedule_id: str, paused: bool, next_run: float | None = None) -> dict | None:
        """Pause or resume a schedule (`next_run`: where a resumed one starts again); the
        schedule after the change, or None when unknown."""
        with self._write() as db:
            sets = "paused = ?" + (", next_run = ?" if next_run is not None else "")
            args: list[Any] = [int(paused)] + ([next_run] if next_run is not None else []) + [schedule_id]
            if db.execute(f"UPDATE schedules SET {sets} WHERE id = ?", args).rowcount != 1:
                return None
            return _schedule(db.execute("SELECT * FROM schedules WHERE id = ?", (schedule_id,)).fetchone())

    def run_schedule_now(self, schedule_id: str, task: dict, max_queued: int | None = None) -> bool:
        """Queue `task`, a run of the schedule made on request, and note it as the schedule's
        last run (one transaction); False when the schedule is gone. `LimitReached` when its
        profile already has `max_queued` queued tasks."""
        with self._write() as db:
            profile = task.get("profile") or "default"
            if max_queued is not None and _queued(db, profile, max_queued) >= max_queued:
                raise LimitReached("MAX_QUEUED_PER_PROFILE", max_queued)
            moved = db.execute(
                "UPDATE schedules SET last_run = ?, last_task_id = ? WHERE id = ?",
                (task.get("created_at", time.time()), task["id"], schedule_id),
            )
            if moved.rowcount != 1:
                return False
            _insert_task(db, task)
            return True

    def fire_schedules(
        self, now: float, plan, make_task, stale: float, max_queued: int | None = None, on_skip=None
    ) -> list[dict]:
        """Turn every due time of every schedule into a queued task, exactly once across all
        workers and restarts: the schedule's `next_run` moves on and its tasks are inserted in
        one write transaction (guarded by `next_run = <the value read>`).

        `plan(schedule, now, caught_up) -> ([(due, missed), ...], next_run)` decides which runs
        to make; `caught_up` says some scheduler looked within the last `stale` seconds (a
        gap shorter than that is caught up run by run; after a longer downtime `plan` makes
        one run). `make_task(schedule, due, missed) -> task dict`. Returns the new tasks.

        `max_queued`: a run whose profile already has that many queued tasks is skipped, not
        queued: the schedule counts it (`skipped_runs`, `last_skipped`) and `on_skip(schedule,
        task)` is told (after the commit)."""
        db = self._connection()
        if db.execute("SELECT 1 FROM schedules LIMIT 1").fetchone() is None:
            return []
        if db.execute("SELECT 1 FROM schedules WHERE next_run <= ? AND NOT paused LIMIT 1", (now,)).fetchone() is None:
            beat = db.execute("SELECT value FROM meta WHERE key = 'scheduler_beat'").fetchone()
            if beat is not None and now - beat["value"] < 1.0:
                return []  # nothing due, and the heartbeat is fresh: no write needed
        fired: list[dict] = []
        skipped: list[tuple[dict, dict]] = []
        with self._write() as db:
            beat = db.execute("SELECT value FROM meta WHERE key = 'scheduler_beat'").fetchone()
            caught_up = beat is not None and now - beat["value"] <= stale
            for row in db.execute("SELECT * FROM schedules WHERE next_run <= ? AND NOT paused", (now,)).fetchall():
                schedule = schedule_of(row)
                runs, next_run = plan(schedule, now, caught_up)
                tasks = [make_task(schedule, due, missed) for due, missed in runs]
                moved = db.execute(
                    "UPDATE schedules SET next_run = ?, last_run = ?, last_task_id = ? WHERE id = ? AND next_run = ?",
                    (
                        next_run,
                        runs[-1][0] if runs else row["last_run"],
                        tasks[-1]["id"] if tasks else row["last_task_id"],
                        row["id"],
                        row["next_run"],
                    ),
                )
                if moved.rowcount != 1:
                    continue
                last_task_id = row["last_task_id"]
                for task in tasks:
                    profile = task.get("profile") or "default"
                    if max_queued is not None and _queued(db, profile, max_queued) >= max_queued:
                        db.execute(
                            "UPDATE schedules SET skipped_runs = skipped_runs + 1, last_skipped = ? WHERE id = ?",
                            (now, row["id"]),
                        )
                        skipped.append((schedule, task))
                        continue
                    _insert_task(db, task)
                    fired.append(task)
                    last_task_id = task["id"]
                if tasks and last_task_id != tasks[-1]["id"]:  # the last run was skipped: no such task
                    db.execute("UPDATE schedules SET last_task_id = ? WHERE id = ?", (last_task_id, row["id"]))
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('scheduler_beat', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                (now,),
            )
        if on_skip is not None:
            for schedule, task in skipped:
                on_skip(schedule, task)
        return fired

    # ------------------------------------------------------------ incremental state
    def get_state(self, profile: str, name: str) -> dict | None:
        """The saved state of a job name: {"name", "profile", "state", "updated_at", "task_id"}."""
        row = (
            self._connection()
            .execute("SELECT * FROM incremental_state WHERE profile = ? AND name = ?", (profile, name))
            .fetchone()
        )
        return None if row is None else state_of(row)

    def list_states(self, profile: str) -> list[dict]:
        rows = self._connection().execute("SELECT * FROM incremental_state WHERE profile = ? ORDER BY name", (profile,))
        return [state_of(r) for r in rows.fetchall()]

    def update_state(self, profile: str, name: str, change: Callable[[dict], dict], task_id: str | None) -> dict:
        """Read-modify-write a job name's state atomically: `change(saved state or {}) -> state`."""
        with self._write() as db:
            row = db.execute(
                "SELECT state FROM incremental_state WHERE profile = ? AND name = ?", (profile, name)
            ).fetchone()
            state = change(json.loads(row["state"]) if row is not None else {})
            db.execute(
                "INSERT INTO incremental_state (profile, name, state, updated_at, task_id) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(profile, name) DO UPDATE SET state = excluded.state, "
                "updated_at = excluded.updated_at, task_id = excluded.task_id",
                (profile, name, to_json(state), time.time(), task_id),
            )
            return state

    def delete_state(self, profile: str, name: str) -> dict | None:
        """Forget a job name's state (its next run starts from `start`); what it was, or None."""
        with self._write() as db:
            row = db.execute(
                "SELECT * FROM incremental_state WHERE profile = ? AND name = ?", (profile, name)
            ).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM incremental_state WHERE profile = ? AND name = ?", (profile, name))
            return state_of(row)

    def delete_states(self, profile: str) -> int:
        with self._write() as db:
            return db.execute("DELETE FROM incremental_state WHERE profile = ?", (profile,)).rowcount


def _migrate(db: sqlite3.Connection) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    for step in MIGRATIONS[version:]:
        step(db)
    if version < SCHEMA_VERSION:  # a newer database (a rollback) is left as it is
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _queued(db: sqlite3.Connection, profile: str, cap: int) -> int:
    return db.execute(
        "SELECT count(*) FROM (SELECT 1 FROM tasks WHERE profile = ? AND status = 'queued' LIMIT ?)", (profile, cap)
    ).fetchone()[0]


def _insert_task(db: sqlite3.Connection, task: dict) -> None:
    from service.background.events import initial_activity

    db.execute(
        "INSERT INTO tasks (id, status, name, spec, profile, schedule_id, created_at, extra, submitted, activity) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            task["id"],
            TaskStatus(task.get("status", TaskStatus.QUEUED)).value,
            task.get("name"),
            to_json(task["spec"]),
            task.get("profile"),
            task.get("schedule_id"),
            task.get("created_at", time.time()),
            to_json(task.get("extra") or {}),
            to_json(task.get("submitted")),
            to_json(task.get("activity") or initial_activity(task)),
        ),
    )


def _append_event(db: sqlite3.Connection, task_id: str, kind: str, message: str) -> None:
    """One event on a task's log, inside the caller's write transaction."""
    from service.background.events import append_event

    row = db.execute("SELECT activity FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if row is not None:
        activity = json.loads(row["activity"]) if row["activity"] else None
        db.execute(
            "UPDATE tasks SET activity = ? WHERE id = ?", (to_json(append_event(activity, kind, message)), task_id)
        )


def _enqueue_webhook(db: sqlite3.Connection, task_id: str) -> None:
    """A task just reached a final status: if its spec has a webhook, queue the POST (in the
    same transaction, so no final status is ever left without its webhook)."""
    queued = db.execute(
        "INSERT OR IGNORE INTO webhooks (task_id, due) SELECT id, ? FROM tasks "
        "WHERE id = ? AND json_extract(spec, '$.webhook.url') IS NOT NULL",
        (time.time(), task_id),
    ).rowcount
    if queued:
        db.execute(
            "UPDATE tasks SET extra = json_set(coalesce(extra, '{}'), '$.webhook', json(?)) WHERE id = ?",
            (to_json(WEBHOOK_PENDING), task_id),
        )


def _schedule(row: sqlite3.Row | None) -> dict | None:
    return None if row is None else schedule_of(row)


class _Transaction:
    """`BEGIN IMMEDIATE` ... COMMIT/ROLLBACK: the write lock is taken up front, so a
    read-then-write (a claim) cannot interleave with another writer."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, traceback) -> None:
        # SQLite may already have rolled back (SQLITE_FULL, an I/O error): a second ROLLBACK
        # would fail and hide the first error; a failed COMMIT must not leave the connection
        # inside a transaction (the thread's next request would find it open).
        if kind is None:
            try:
                self.db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the error being raised says more
