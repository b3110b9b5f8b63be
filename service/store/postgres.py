"""`PostgresTaskStore`: the task store on PostgreSQL (DATABASE_URL=postgresql://...), shared by
several instances of the service.

- Connections come from a small psycopg_pool pool per process, made on first use by the
  process that uses it (gunicorn builds the app in each worker, after the fork).
- Claims lock rows with `FOR UPDATE SKIP LOCKED`, so two instances never take the same task,
  webhook attempt or schedule firing, and neither waits for rows the other holds. A claim is
  a lease, as on SQLite: a running task whose lease lapsed, or whose owner process is gone,
  is claimed again (runs + 1) and resumes from its shards.
- `max_running` (MAX_CONCURRENT_TASKS) counts the running tasks of the claiming owner's
  instance (owners.py: the workers of one gunicorn master); an advisory lock per instance
  makes "count, then claim" one step for its workers.
- Per-profile caps and read-modify-writes (profiles, incremental state) hold an advisory
  transaction lock on their key, so instances cannot interleave them (SQLite's single writer).
- Times are epoch floats and JSON documents text, as on SQLite: both return equal dicts."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import Connection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from service.background.events import append_event, initial_activity
from service.store import LimitReached, StoreUnavailable, TaskStatus
from service.store.owners import instance_of, owner_alive
from service.store.postgres_schema import migrate
from service.store.rows import (
    LIST_COLUMNS,
    METRIC_COLUMNS,
    SCHEDULE_COLUMNS,
    STATUS_COLUMNS,
    STATUSES,
    TASK_COLUMNS,
    WEBHOOK_COLUMNS,
    WEBHOOK_PENDING,
    metrics_of,
    schedule_of,
    state_of,
    task_of,
    to_json,
    with_webhook,
)

POOL_SIZE = 4  # connections per process at most: the web threads and background loops share them
CONNECT_TIMEOUT = 10  # seconds: an unreachable server fails the start instead of hanging it
WAIT_FOR_CONNECTION = 5.0  # seconds a call waits for a pooled connection (then 503): /healthz answers in time
APPLICATION = "pageferry"
Db = Connection[DictRow]


def describe(dsn: str) -> str:
    """The DSN as it may be shown: without its password."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "postgresql://(an unparsable DATABASE_URL)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host') or 'localhost'}{port}/{parts.get('dbname') or ''}"


def _password(dsn: str) -> str | None:
    try:
        found = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        found = urlsplit(dsn).password
    return str(found) if found else None


def _lock(db: Db, *key: str) -> None:
    """Hold an advisory lock on `key` until the transaction ends."""
    digest = hashlib.blake2b("\0".join(key).encode(), digest_size=8).digest()
    db.execute("SELECT pg_advisory_xact_lock(%s)", (int.from_bytes(digest, "big", signed=True),))


class PostgresTaskStore:
    def __init__(self, dsn: str, pool_size: int = POOL_SIZE):
        self._dsn = dsn
        self._secret = _password(dsn)
        self.where = describe(dsn)
        self._pool_size = pool_size
        self._pool: ConnectionPool[Db] | None = None
        self._pool_pid = 0
        self._opening = threading.Lock()
        # Every worker of every instance opens the store at start: the first migrates under an
        # advisory lock, the others wait for it and find the schema current.
        try:
            with psycopg.connect(
                dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT, application_name=APPLICATION
            ) as db:
                self.schema_version = migrate(db)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot open the PostgreSQL task store {self.where}: {self._scrub(exc)}") from None

    def __repr__(self) -> str:
        return f"PostgresTaskStore({self.where!r})"

    # ------------------------------------------------------------ plumbing
    def _scrub(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split())
        return text.replace(self._secret, "***") if self._secret else text

    def _connections(self) -> ConnectionPool[Db]:
        """This process's pool: made on first use, and again in a forked child (a connection
        must never be shared across a fork)."""
        if self._pool is not None and self._pool_pid == os.getpid():
            return self._pool
        with self._opening:
            if self._pool is None or self._pool_pid != os.getpid():
                # psycopg_pool logs every connection it hands out at INFO
                logging.getLogger("psycopg.pool").setLevel(logging.WARNING)
                self._pool = ConnectionPool(
                    self._dsn,
                    connection_class=Connection[DictRow],
                    kwargs={
                        "autocommit": True,  # a read is one statement; a write opens its transaction
                        "row_factory": dict_row,
                        "connect_timeout": CONNECT_TIMEOUT,
                        "application_name": APPLICATION,
                    },
                    min_size=1,
                    max_size=self._pool_size,
                    timeout=WAIT_FOR_CONNECTION,
                    check=ConnectionPool.check_connection,  # a server restart costs no failed call
                    name="pageferry-store",
                    open=True,
                )
                self._pool_pid = os.getpid()
            return self._pool

    @contextmanager
    def _read(self) -> Iterator[Db]:
        try:
            with self._connections().connection() as db:
                yield db
        except psycopg.OperationalError as exc:  # unreachable, shut down, pool exhausted, deadlock
            raise StoreUnavailable(f"the PostgreSQL task store {self.where} failed: {self._scrub(exc)}") from None

    @contextmanager
    def _write(self) -> Iterator[Db]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        with self._read() as db, db.transaction():
            yield db

    def close(self) -> None:
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.close()
        self._pool = None

    def ping(self) -> bool:
        with self._read() as db:
            db.execute("SELECT 1")
        return True

    # ------------------------------------------------------------ tasks
    def create_task(self, task: dict, max_queued: int | None = None) -> None:
        """Insert a queued task; with `max_queued`, only if its profile has fewer queued tasks
        (checked under the profile's lock, in the inserting transaction), else `LimitReached`."""
        with self._write() as db:
            if max_queued is not None and _queued(db, task.get("profile") or "default", max_queued) >= max_queued:
                raise LimitReached("MAX_QUEUED_PER_PROFILE", max_queued)
            _insert_task(db, task)

    def get_task(self, task_id: str, with_spec: bool = False) -> dict | None:
        """A task; its `spec` only `with_spec` (status and websocket pushes never need it)."""
        columns = TASK_COLUMNS if with_spec else STATUS_COLUMNS
        with self._read() as db:
            row = db.execute(f"SELECT {columns} FROM tasks WHERE id = %s", (task_id,)).fetchone()
        return None if row is None else task_of(row)

    def list_tasks(
        self,
        limit: int,
        status: str | None = None,
        schedule_id: str | None = None,
        q: str | None = None,
        before: str | None = None,
    ) -> list[dict]:
        """The newest tasks, without their specs or event logs (as SQLiteTaskStore.list_tasks;
        `seq` orders ties in `created_at` as SQLite's rowid does)."""
        clauses = [f"{k} = %s" for k, v in (("status", status), ("schedule_id", schedule_id)) if v]
        args: list[Any] = [v for v in (status, schedule_id) if v]
        if q:
            escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            # ILIKE: any case, as SQLite's LIKE (which folds ASCII letters only)
            clauses.append("coalesce(name, '') ILIKE %s ESCAPE '\\'")
            args.append(f"%{escaped}%")
        with self._read() as db:
            if before:
                anchor = db.execute("SELECT created_at, seq FROM tasks WHERE id = %s", (before,)).fetchone()
                if anchor is None:
                    raise LookupError(before)
                clauses.append("(created_at, seq) < (%s, %s)")
                args += [anchor["created_at"], anchor["seq"]]
            clause = ("WHERE " + " AND ".join(clauses)) if clauses else ""
            rows = db.execute(
                f"SELECT {LIST_COLUMNS} FROM tasks {clause} ORDER BY created_at DESC, seq DESC LIMIT %s",
                [*args, limit],
            ).fetchall()
        return [task_of(r) for r in rows]

    def queue_positions(self, task_ids: Iterable[str]) -> dict[str, int]:
        """Queued tasks' places in the one queue (1 = started next), in claim order."""
        ids = list(task_ids)
        if not ids:
            return {}
        with self._read() as db:
            rows = db.execute(
                "SELECT t.id, 1 + (SELECT count(*) FROM tasks o WHERE o.status = 'queued' "
                "AND (o.created_at, o.seq) < (t.created_at, t.seq)) AS position "
                "FROM tasks t WHERE t.id = ANY(%s) AND t.status = 'queued'",
                (ids,),
            ).fetchall()
        found = {r["id"]: r["position"] for r in rows}
        return {i: found[i] for i in ids if i in found}

    def save_activity(self, task_id: str, activity: dict) -> None:
        """A task's event log and throughput samples (bounded by their writer)."""
        with self._write() as db:
            db.execute("UPDATE tasks SET activity = %s WHERE id = %s", (to_json(activity), task_id))

    def delete_task(self, task_id: str) -> TaskStatus | None:
        """Remove a finished task (and its webhook outbox row); a queued or running one is left
        as it is. Returns the status found (None: unknown). Its work moves to `deleted_work`,
        so /metrics' totals stay monotonic."""
        with self._write() as db:
            row = db.execute(
                f"SELECT status, {', '.join(METRIC_COLUMNS)} FROM tasks WHERE id = %s FOR UPDATE", (task_id,)
            ).fetchone()
            if row is None:
                return None
            found = TaskStatus(row["status"])
            if not found.is_final:
                return found
            db.execute("DELETE FROM tasks WHERE id = %s", (task_id,))
            db.execute("DELETE FROM webhooks WHERE task_id = %s", (task_id,))
            db.execute(
                "UPDATE deleted_work SET " + ", ".join(f"{c} = {c} + %s" for c in METRIC_COLUMNS) + " WHERE id = 1",
                [row[c] for c in METRIC_COLUMNS],
            )
            return found

    def claim(
        self, owner: str, max_running: int, lease: float, alive: Callable[[str | None], bool] = owner_alive
    ) -> dict | None:
        """Claim one task for `owner`: first a running task whose runner is gone (it resumes),
        else the oldest queued task if `owner`'s instance runs fewer than `max_running`."""
        now = time.time()
        with self._write() as db:
            resumed = _resume(db, owner, now, lease, alive)
            if resumed is not None:
                return resumed
            instance = instance_of(owner)
            _lock(db, "claim", instance)  # this instance's workers count and claim one at a time
            running = db.execute("SELECT owner FROM tasks WHERE status = 'running'").fetchall()
            if sum(1 for r in running if r["owner"] and instance_of(r["owner"]) == instance) >= max_running:
                return None
            row = db.execute(
                "SELECT id FROM tasks WHERE status = 'queued' ORDER BY created_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED"
            ).fetchone()
            if row is None:
                return None
            claimed = db.execute(
                "UPDATE tasks SET status = 'running', phase = 'fetching', owner = %s, lease_until = %s, "
                f"started_at = coalesce(started_at, %s), runs = runs + 1 WHERE id = %s RETURNING {TASK_COLUMNS}",
                (owner, now + lease, now, row["id"]),
            ).fetchone()
            return None if claimed is None else task_of(claimed)

    def renew(self, owner: str, task_ids: Iterable[str], lease: float) -> None:
        ids = list(task_ids)
        if not ids:
            return
        with self._write() as db:
            db.execute(
                "UPDATE tasks SET lease_until = %s WHERE id = ANY(%s) AND owner = %s AND status = 'running'",
                (time.time() + lease, ids, owner),
            )

    def release(self, owner: str) -> None:
        """Give up every lease of `owner` now (a clean shutdown): others resume them at once."""
        with self._write() as db:
            db.execute("UPDATE tasks SET lease_until = 0 WHERE owner = %s AND status = 'running'", (owner,))

    def save_progress(self, task_id: str, owner: str, progress: dict) -> None:
        numbers = metrics_of(progress)
        with self._write() as db:
            db.execute(
                "UPDATE tasks SET progress = %s, phase = %s, m_pages = %s, m_requests = %s, m_retries = %s, "
                "m_bytes = %s WHERE id = %s AND owner = %s AND status = 'running'",
                (to_json(progress), progress.get("phase"), *numbers.values(), task_id, owner),
            )

    def finish(self, task_id: str, owner: str | None, status: TaskStatus, **fields: Any) -> bool:
        """Move a task to a final status (only from queued/running; by its owner when given),
        its webhook queued in the same transaction."""
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
        sets = ", ".join(f"{k} = %s" for k in values)
        where = "id = %s AND status IN ('queued', 'running')" + (" AND owner = %s" if owner else "")
        args = [*values.values(), task_id, *([owner] if owner else [])]
        with self._write() as db:
            changed = db.execute(f"UPDATE tasks SET {sets} WHERE {where}", args).rowcount == 1
            if changed:
                _enqueue_webhook(db, task_id)
            return changed

    def update_extra(self, task_id: str, extra: dict) -> None:
        with self._write() as db:
            row = db.execute("SELECT extra FROM tasks WHERE id = %s FOR UPDATE", (task_id,)).fetchone()
            merged = {**(json.loads(row["extra"]) if row and row["extra"] else {}), **extra}
            db.execute("UPDATE tasks SET extra = %s WHERE id = %s", (to_json(merged), task_id))

    def request_cancel(self, task_id: str) -> TaskStatus | None:
        """Cancel a queued task at once, flag a running one. Returns the status found first."""
        with self._write() as db:
            row = db.execute("SELECT status FROM tasks WHERE id = %s FOR UPDATE", (task_id,)).fetchone()
            if row is None:
                return None
            found = TaskStatus(row["status"])
            if found is TaskStatus.QUEUED:
                db.execute(
                    "UPDATE tasks SET status = 'cancelled', finished_at = %s, phase = NULL, error = %s WHERE id = %s",
                    (time.time(), to_json({"message": "cancelled before it started", "pages": []}), task_id),
                )
                _enqueue_webhook(db, task_id)
                _append_event(db, task_id, "cancelled", "cancelled before it started")
            elif found is TaskStatus.RUNNING:
                db.execute("UPDATE tasks SET cancel_requested = 1 WHERE id = %s", (task_id,))
            return found

    def cancel_requests(self, task_ids: Iterable[str]) -> set[str]:
        ids = list(task_ids)
        if not ids:
            return set()
        with self._read() as db:
            rows = db.execute("SELECT id FROM tasks WHERE cancel_requested = 1 AND id = ANY(%s)", (ids,)).fetchall()
        return {r["id"] for r in rows}

    def expired_results(self, ttl: float) -> list[dict]:
        with self._read() as db:
            rows = db.execute(
                f"SELECT {STATUS_COLUMNS} FROM tasks WHERE status = 'completed' AND expired = 0 AND finished_at < %s",
                (time.time() - ttl,),
            ).fetchall()
        return [task_of(r) for r in rows]

    def mark_expired(self, task_id: str) -> None:
        with self._write() as db:
            db.execute("UPDATE tasks SET expired = 1 WHERE id = %s", (task_id,))

    def task_ids(self) -> set[str]:
        with self._read() as db:
            return {r["id"] for r in db.execute("SELECT id FROM tasks").fetchall()}

    def unfinished_ids(self) -> set[str]:
        with self._read() as db:
            return {r["id"] for r in db.execute("SELECT id FROM tasks WHERE status IN ('queued', 'running')")}

    def counts(self) -> dict:
        """Tasks by status, and the work done by all tasks, deleted ones included (for /metrics).
        Counted when asked, not kept in counter rows: every instance's every progress write
        would wait on such a row's lock."""
        sums = ", ".join(f"(SELECT coalesce(sum({c}), 0) FROM tasks)::bigint + {c} AS {c}" for c in METRIC_COLUMNS)
        with self._read() as db:
            by_status = dict.fromkeys(STATUSES, 0)
            for r in db.execute("SELECT status, count(*) AS n FROM tasks GROUP BY status"):
                by_status[r["status"]] = r["n"]
            row = db.execute(f"SELECT {sums} FROM deleted_work WHERE id = 1").fetchone()
        totals = {column[2:]: (row[column] if row is not None else 0) for column in METRIC_COLUMNS}
        return {"by_status": by_status, "totals": totals}

    def queued_count(self, profile: str, cap: int) -> int:
        """Queued tasks of a profile, counted up to `cap` (by index)."""
        with self._read() as db:
            return _count_queued(db, profile, cap)

    # ------------------------------------------------------------ profiles
    def profile(self, name: str) -> dict:
        with self._read() as db:
            row = db.execute("SELECT inputs, configuration FROM profiles WHERE name = %s", (name,)).fetchone()
        if row is None:
            return {"inputs": [], "configuration": {}}
        return {"inputs": json.loads(row["inputs"]), "configuration": json.loads(row["configuration"])}

    def update_profile(self, name: str, change: Callable[[dict], dict]) -> dict:
        """Read-modify-write a profile atomically (under its lock): `change(profile) -> profile`."""
        with self._write() as db:
            _lock(db, "profile", name)
            row = db.execute("SELECT inputs, configuration FROM profiles WHERE name = %s", (name,)).fetchone()
            current = (
                {"inputs": json.loads(row["inputs"]), "configuration": json.loads(row["configuration"])}
                if row
                else {"inputs": [], "configuration": {}}
            )
            updated = change(current)
            db.execute(
                "INSERT INTO profiles (name, inputs, configuration) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET inputs = excluded.inputs, configuration = excluded.configuration",
                (name, to_json(updated["inputs"]), to_json(updated["configuration"])),
            )
            return updated

    # ------------------------------------------------------------ webhooks (outbox)
    def claim_webhooks(self, owner: str, limit: int, margin: float) -> list[dict]:
        """Claim up to `limit` due webhook attempts, each leased for twice the webhook's
        timeout (connect + read) plus `margin`. A claim counts as an attempt: one whose sender
        died is not retried forever."""
        now = time.time()
        due = "done = 0 AND due <= %s AND lease_until < %s"
        if limit < 1:
            return []
        with self._read() as db:  # most looks find nothing: no transaction for those
            if db.execute(f"SELECT 1 FROM webhooks WHERE {due} LIMIT 1", (now, now)).fetchone() is None:
                return []
        with self._write() as db:
            rows = db.execute(
                f"SELECT task_id FROM webhooks WHERE {due} ORDER BY due LIMIT %s FOR UPDATE SKIP LOCKED",
                (now, now, limit),
            ).fetchall()
            claimed = []
            for row in rows:
                leased = db.execute(
                    "UPDATE webhooks SET owner = %s, attempts = attempts + 1, lease_until = %s + %s + 2 * coalesce("
                    "(SELECT (spec::json #>> '{webhook,timeout}')::double precision FROM tasks "
                    f"WHERE tasks.id = webhooks.task_id), 10) WHERE task_id = %s RETURNING {WEBHOOK_COLUMNS}",
                    (owner, now, margin, row["task_id"]),
                ).fetchone()
                if leased is not None:
                    claimed.append(dict(leased))
            return claimed

    def settle_webhook(self, task_id: str, owner: str, outcome: dict, retry_at: float | None) -> bool:
        """Record an attempt: `retry_at` None = final (delivered or given up), else the next
        attempt's time. The task's status shows `outcome` as its `webhook` section."""
        with self._write() as db:
            if retry_at is None:
                changed = db.execute(
                    "UPDATE webhooks SET done = 1, owner = NULL, lease_until = 0 WHERE task_id = %s AND owner = %s",
                    (task_id, owner),
                ).rowcount
            else:
                changed = db.execute(
                    "UPDATE webhooks SET due = %s, owner = NULL, lease_until = 0 WHERE task_id = %s AND owner = %s",
                    (retry_at, task_id, owner),
                ).rowcount
            if changed:
                _set_webhook_outcome(db, task_id, outcome)
            return bool(changed)

    # ------------------------------------------------------------ schedules
    def create_schedule(self, schedule: dict, max_per_profile: int | None = None) -> None:
        """Insert a schedule; with `max_per_profile`, only if its profile has fewer schedules
        (checked under the profile's lock, in the inserting transaction), else `LimitReached`."""
        profile = schedule.get("profile") or "default"
        with self._write() as db:
            if max_per_profile is not None:
                _lock(db, "schedules", profile)
                found = db.execute(
                    "SELECT count(*) AS n FROM schedules WHERE coalesce(profile, 'default') = %s", (profile,)
                ).fetchone()
                if found is not None and found["n"] >= max_per_profile:
                    raise LimitReached("MAX_SCHEDULES_PER_PROFILE", max_per_profile)
            db.execute(
                "INSERT INTO schedules (id, cron, timezone, spec, created_at, next_run, base_url, profile) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
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
        with self._read() as db:
            row = db.execute(f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = %s", (schedule_id,)).fetchone()
        return None if row is None else schedule_of(row)

    def list_schedules(self) -> list[dict]:
        with self._read() as db:
            rows = db.execute(f"SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY created_at, seq").fetchall()
        return [schedule_of(r) for r in rows]

    def delete_schedule(self, schedule_id: str) -> bool:
        with self._write() as db:
            return db.execute("DELETE FROM schedules WHERE id = %s", (schedule_id,)).rowcount == 1

    def pause_schedule(self, schedule_id: str, paused: bool, next_run: float | None = None) -> dict | None:
        """Pause or resume a schedule (`next_run`: where a resumed one starts again); the
        schedule after the change, or None when unknown."""
        sets = "paused = %s" + (", next_run = %s" if next_run is not None else "")
        args: list[Any] = [int(paused), *([next_run] if next_run is not None else []), schedule_id]
        with self._write() as db:
            row = db.execute(f"UPDATE schedules SET {sets} WHERE id = %s RETURNING {SCHEDULE_COLUMNS}", args).fetchone()
        return None if row is None else schedule_of(row)

    def run_schedule_now(self, schedule_id: str, task: dict, max_queued: int | None = None) -> bool:
        """Queue `task`, a run of the schedule made on request, and note it as the schedule's
        last run (one transaction); False when the schedule is gone. `LimitReached` when its
        profile already has `max_queued` queued tasks."""
        with self._write() as db:
            # the schedule's row first, then the profile's queue lock: fire_schedules takes them
            # in that order too, so the two cannot deadlock
            moved = db.execute(
                "UPDATE schedules SET last_run = %s, last_task_id = %s WHERE id = %s",
                (task.get("created_at", time.time()), task["id"], schedule_id),
            ).rowcount
            if max_queued is not None and _queued(db, task.get("profile") or "default", max_queued) >= max_queued:
                raise LimitReached("MAX_QUEUED_PER_PROFILE", max_queued)
            if moved != 1:
                return False
            _insert_task(db, task)
            return True

    def fire_schedules(
        self,
        now: float,
        plan: Callable,
        make_task: Callable,
        stale: float,
        max_queued: int | None = None,
        on_skip: Callable | None = None,
    ) -> list[dict]:
        """Turn every due time of every schedule into a queued task, exactly once across all
        instances and restarts (as SQLiteTaskStore.fire_schedules): each due schedule is fired
        in its own transaction that holds its row (`FOR UPDATE SKIP LOCKED`: another instance
        firing it is skipped, not waited for), moves its `next_run` on and inserts its tasks."""
        with self._read() as db:
            if db.execute("SELECT 1 FROM schedules LIMIT 1").fetchone() is None:
                return []
            due = [
                r["id"]
                for r in db.execute(
                    "SELECT id FROM schedules WHERE next_run <= %s AND paused = 0 ORDER BY created_at, seq", (now,)
                )
            ]
            beat = db.execute("SELECT value FROM meta WHERE key = 'scheduler_beat'").fetchone()
            if not due and beat is not None and now - beat["value"] < 1.0:
                return []  # nothing due, and the heartbeat is fresh: no write needed
            caught_up = beat is not None and now - beat["value"] <= stale
            fired: list[dict] = []
            skipped: list[tuple[dict, dict]] = []
            for schedule_id in due:
                with db.transaction():
                    _fire(db, schedule_id, now, plan, make_task, caught_up, max_queued, fired, skipped)
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('scheduler_beat', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = greatest(meta.value, excluded.value)",
                (now,),
            )
        if on_skip is not None:
            for schedule, task in skipped:
                on_skip(schedule, task)
        return fired

    # ------------------------------------------------------------ incremental state
    def get_state(self, profile: str, name: str) -> dict | None:
        """The saved state of a job name: {"name", "profile", "state", "updated_at", "task_id"}."""
        with self._read() as db:
            row = db.execute(
                "SELECT * FROM incremental_state WHERE profile = %s AND name = %s", (profile, name)
            ).fetchone()
        return None if row is None else state_of(row)

    def list_states(self, profile: str) -> list[dict]:
        with self._read() as db:  # byte order, as SQLite sorts
            rows = db.execute(
                'SELECT * FROM incremental_state WHERE profile = %s ORDER BY name COLLATE "C"', (profile,)
            ).fetchall()
        return [state_of(r) for r in rows]

    def update_state(self, profile: str, name: str, change: Callable[[dict], dict], task_id: str | None) -> dict:
        """Read-modify-write a job name's state atomically (under its lock): `change(saved
        state or {}) -> state`."""
        with self._write() as db:
            _lock(db, "state", profile, name)
            row = db.execute(
                "SELECT state FROM incremental_state WHERE profile = %s AND name = %s", (profile, name)
            ).fetchone()
            state = change(json.loads(row["state"]) if row is not None else {})
            db.execute(
                "INSERT INTO incremental_state (profile, name, state, updated_at, task_id) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (profile, name) DO UPDATE SET state = excluded.state, "
                "updated_at = excluded.updated_at, task_id = excluded.task_id",
                (profile, name, to_json(state), time.time(), task_id),
            )
            return state

    def delete_state(self, profile: str, name: str) -> dict | None:
        """Forget a job name's state (its next run starts from `start`); what it was, or None."""
        with self._write() as db:
            row = db.execute(
                "DELETE FROM incremental_state WHERE profile = %s AND name = %s RETURNING *", (profile, name)
            ).fetchone()
        return None if row is None else state_of(row)

    def delete_states(self, profile: str) -> int:
        with self._write() as db:
            return db.execute("DELETE FROM incremental_state WHERE profile = %s", (profile,)).rowcount


def _resume(db: Db, owner: str, now: float, lease: float, alive: Callable[[str | None], bool]) -> dict | None:
    """Take over the oldest running task whose lease lapsed or whose owner is gone (runs + 1)."""

    def gone(row: DictRow) -> bool:
        return row["lease_until"] < now or not alive(row["owner"])

    others = "status = 'running' AND owner IS DISTINCT FROM %s"
    rows = db.execute(f"SELECT id, owner, lease_until FROM tasks WHERE {others} ORDER BY created_at, seq", (owner,))
    candidates = [r["id"] for r in rows if gone(r)]
    if not candidates:
        return None
    locked = db.execute(
        f"SELECT id, owner, lease_until FROM tasks WHERE id = ANY(%s) AND {others} "
        "ORDER BY created_at, seq FOR UPDATE SKIP LOCKED",
        (candidates, owner),
    ).fetchall()
    for row in locked:
        if gone(row):  # again, on the row as locked: its owner may have renewed meanwhile
            taken = db.execute(
                "UPDATE tasks SET owner = %s, lease_until = %s, runs = runs + 1 "
                f"WHERE id = %s RETURNING {TASK_COLUMNS}",
                (owner, now + lease, row["id"]),
            ).fetchone()
            return None if taken is None else task_of(taken)
    return None


def _fire(
    db: Db,
    schedule_id: str,
    now: float,
    plan: Callable,
    make_task: Callable,
    caught_up: bool,
    max_queued: int | None,
    fired: list[dict],
    skipped: list[tuple[dict, dict]],
) -> None:
    """One due schedule's runs, inside the caller's transaction (see fire_schedules)."""
    row = db.execute(
        f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = %s AND next_run <= %s AND paused = 0 "
        "FOR UPDATE SKIP LOCKED",
        (schedule_id, now),
    ).fetchone()
    if row is None:
        return  # another instance holds it (and fires it), or it fired since we looked
    schedule = schedule_of(row)
    runs, next_run = plan(schedule, now, caught_up)
    tasks = [make_task(schedule, due, missed) for due, missed in runs]
    db.execute(
        "UPDATE schedules SET next_run = %s, last_run = %s, last_task_id = %s WHERE id = %s",
        (
            next_run,
            runs[-1][0] if runs else row["last_run"],
            tasks[-1]["id"] if tasks else row["last_task_id"],
            schedule_id,
        ),
    )
    last_task_id = row["last_task_id"]
    for task in tasks:
        if max_queued is not None and _queued(db, task.get("profile") or "default", max_queued) >= max_queued:
            db.execute(
                "UPDATE schedules SET skipped_runs = skipped_runs + 1, last_skipped = %s WHERE id = %s",
                (now, schedule_id),
            )
            skipped.append((schedule, task))
            continue
        _insert_task(db, task)
        fired.append(task)
        last_task_id = task["id"]
    if tasks and last_task_id != tasks[-1]["id"]:  # the last run was skipped: no such task
        db.execute("UPDATE schedules SET last_task_id = %s WHERE id = %s", (last_task_id, schedule_id))


def _queued(db: Db, profile: str, cap: int) -> int:
    """Queued tasks of a profile, under the profile's queue lock (held until the transaction
    ends): two instances checking the cap at once cannot both insert the last place."""
    _lock(db, "queue", profile)
    return _count_queued(db, profile, cap)


def _count_queued(db: Db, profile: str, cap: int) -> int:
    row = db.execute(
        "SELECT count(*) AS n FROM (SELECT 1 FROM tasks WHERE profile = %s AND status = 'queued' LIMIT %s) q",
        (profile, cap),
    ).fetchone()
    return 0 if row is None else int(row["n"])


def _insert_task(db: Db, task: dict) -> None:
    db.execute(
        "INSERT INTO tasks (id, status, name, spec, profile, schedule_id, created_at, extra, submitted, activity) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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


def _append_event(db: Db, task_id: str, kind: str, message: str) -> None:
    """One event on a task's log, inside the caller's transaction."""
    row = db.execute("SELECT activity FROM tasks WHERE id = %s FOR UPDATE", (task_id,)).fetchone()
    if row is not None:
        activity = json.loads(row["activity"]) if row["activity"] else None
        db.execute(
            "UPDATE tasks SET activity = %s WHERE id = %s", (to_json(append_event(activity, kind, message)), task_id)
        )


def _enqueue_webhook(db: Db, task_id: str) -> None:
    """A task just reached a final status: if its spec has a webhook, queue the POST (in the
    same transaction, so no final status is ever left without its webhook)."""
    queued = db.execute(
        "INSERT INTO webhooks (task_id, due) SELECT id, %s FROM tasks "
        "WHERE id = %s AND (spec::json #>> '{webhook,url}') IS NOT NULL ON CONFLICT (task_id) DO NOTHING",
        (time.time(), task_id),
    ).rowcount
    if queued:
        _set_webhook_outcome(db, task_id, WEBHOOK_PENDING)


def _set_webhook_outcome(db: Db, task_id: str, outcome: dict) -> None:
    row = db.execute("SELECT extra FROM tasks WHERE id = %s FOR UPDATE", (task_id,)).fetchone()
    if row is not None:
        db.execute("UPDATE tasks SET extra = %s WHERE id = %s", (with_webhook(row["extra"], outcome), task_id))
