"""`SQLiteTaskStore`: one file under DATA_DIR in WAL mode, so readers never block the writer.
Claims run in `BEGIN IMMEDIATE` transactions, so two workers never claim the same task; a
claim is a lease (`owner`: service/store/owners.py) that the runner renews, and a task whose
lease lapsed or whose owner process is gone is claimed again and resumes from its shards. One
file serves one machine: `max_running` counts every running task in it. The store's logic is
SqlTaskStore's (sql.py); this module adds the file, its migrations and SQLite's dialect."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from service.store.owners import owner_alive
from service.store.rows import METRIC_COLUMNS, STATUSES
from service.store.sql import Db, SqlTaskStore

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


class SQLiteTaskStore(SqlTaskStore):
    # the dialect (sql.py)
    INSERTION_ORDER = "rowid"
    LIKE = "LIKE"  # folds ASCII letters
    LOCK_ROW = ""  # a write transaction holds the file's one write lock (BEGIN IMMEDIATE)
    SKIP_LOCKED = ""
    BYTE_ORDER = ""  # BINARY, SQLite's default collation
    DELETED_WORK = "task_totals"  # the delete trigger took the task's work off the totals: add it back

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

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        yield self._connection()  # in WAL mode readers never wait for the writer

    def _write(self) -> _Transaction:
        return _Transaction(self._connection())

    def _lock(self, db: Db, *key: str) -> None:
        pass  # a write transaction already holds the one write lock: nothing interleaves

    def _in_list(self, column: str, values: list) -> tuple[str, list]:
        return f"{column} IN ({', '.join('?' * len(values))})", values

    def _json_value(self, column: str, *keys: str) -> str:
        return f"json_extract({column}, '$.{'.'.join(keys)}')"

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # ------------------------------------------------------------ what one file does its own way
    def claim(self, owner: str, max_running: int, lease: float, alive=owner_alive) -> dict | None:
        """Claim one task for `owner`: first a running task whose runner is gone (it resumes),
        else the oldest queued task if fewer than `max_running` tasks are running (one file
        serves one machine: every running task in it counts)."""
        now = time.time()
        with self._write() as db:
            for row in db.execute(
                "SELECT id, owner, lease_until FROM tasks WHERE status = 'running' "
                "AND owner IS NOT ? ORDER BY created_at",
                (owner,),
            ).fetchall():
                if row["lease_until"] < now or not alive(row["owner"]):
                    return self._take_over(db, row["id"], owner, now, lease)
            if db.execute("SELECT count(*) AS n FROM tasks WHERE status = 'running'").fetchone()["n"] >= max_running:
                return None
            row = db.execute(
                "SELECT id FROM tasks WHERE status = 'queued' ORDER BY created_at, rowid LIMIT 1"
            ).fetchone()
            return None if row is None else self._start(db, row["id"], owner, now, lease)

    def counts(self) -> dict:
        """Tasks by status, and work done by all tasks (for /metrics): read from the counters
        the triggers keep (`task_counts`, `task_totals`), not from the tasks themselves."""
        with self._read() as db:
            by_status = {r["status"]: r["n"] for r in db.execute("SELECT status, n FROM task_counts")}
            row = db.execute(f"SELECT {', '.join(METRIC_COLUMNS)} FROM task_totals WHERE id = 1").fetchone()
        totals = {column[2:]: (row[column] if row is not None else 0) for column in METRIC_COLUMNS}
        return {"by_status": by_status, "totals": totals}


def _migrate(db: sqlite3.Connection) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    for step in MIGRATIONS[version:]:
        step(db)
    if version < SCHEMA_VERSION:  # a newer database (a rollback) is left as it is
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


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
