"""`SqlTaskStore`: the task store's logic, written once for SQLite and PostgreSQL.

Every method here is the same SQL on both databases (`?` placeholders; the PostgreSQL store's
connections translate them), written against a small dialect each backend fills in:
`INSERTION_ORDER`, `LIKE`, `LOCK_ROW`, `SKIP_LOCKED`, `BYTE_ORDER`, `DELETED_WORK`, `_lock`,
`_in_list` and `_json_value`. A backend adds `_read()` (a connection: each statement commits
on its own), `_write()` (one transaction: committed when the block ends, rolled back when it
raises), `claim` and `counts`, the parts whose design differs between one file on one machine
and a database shared by several instances."""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from service.background.events import append_event, initial_activity
from service.store.protocol import LimitReached, TaskStatus
from service.store.rows import (
    LIST_COLUMNS,
    METRIC_COLUMNS,
    SCHEDULE_COLUMNS,
    STATUS_COLUMNS,
    TASK_COLUMNS,
    WEBHOOK_COLUMNS,
    WEBHOOK_PENDING,
    metrics_of,
    profile_of,
    schedule_of,
    state_of,
    task_of,
    to_json,
    with_webhook,
)


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Db(Protocol):
    """A connection of either driver: rows are read by column name."""

    def execute(self, sql: str, args: Sequence[Any] = ..., /) -> Cursor: ...


class SqlTaskStore(ABC):
    """Every TaskStore method but `claim` and `counts` (see the module's docstring)."""

    # ------------------------------------------------------------ the dialect
    INSERTION_ORDER: str  # the column that orders rows created in the same instant
    LIKE: str  # a LIKE that ignores case
    LOCK_ROW: str  # ends a SELECT whose rows the transaction then changes
    SKIP_LOCKED: str  # ends a SELECT that claims rows: rows another transaction holds are passed over
    BYTE_ORDER: str  # follows ORDER BY <text column>: sort by bytes
    DELETED_WORK: str  # the one-row table a deleted task's work goes to (/metrics' totals stay monotonic)

    @abstractmethod
    def _read(self) -> AbstractContextManager[Db]: ...

    @abstractmethod
    def _write(self) -> AbstractContextManager[Db]: ...

    @abstractmethod
    def _lock(self, db: Db, *key: str) -> None:
        """Hold a lock on `key` until the transaction ends: a capped insert or a
        read-modify-write of one key cannot interleave with another transaction's."""

    @abstractmethod
    def _in_list(self, column: str, values: list) -> tuple[str, list]:
        """A condition `column is one of values`, and its arguments."""

    @abstractmethod
    def _json_value(self, column: str, *keys: str) -> str:
        """The value at `keys` in a JSON text column, as an SQL expression (NULL when absent)."""

    def ping(self) -> bool:
        with self._read() as db:
            db.execute("SELECT 1").fetchone()
        return True

    # ------------------------------------------------------------ tasks
    def create_task(self, task: dict, max_queued: int | None = None) -> None:
        """Insert a queued task; with `max_queued`, only if its profile has fewer queued tasks
        (checked in the inserting transaction), else `LimitReached`."""
        with self._write() as db:
            if max_queued is not None and self._queue_full(db, task, max_queued):
                raise LimitReached("MAX_QUEUED_PER_PROFILE", max_queued)
            _insert_task(db, task)

    def get_task(self, task_id: str, with_spec: bool = False) -> dict | None:
        """A task; its `spec` only `with_spec` (status and websocket pushes never need it)."""
        with self._read() as db:
            return _select_task(db, task_id, TASK_COLUMNS if with_spec else STATUS_COLUMNS)

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
        clauses = [f"{k} = ?" for k, v in (("status", status), ("schedule_id", schedule_id)) if v]
        args: list[Any] = [v for v in (status, schedule_id) if v]
        if q:
            escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append(f"coalesce(name, '') {self.LIKE} ? ESCAPE '\\'")
            args.append(f"%{escaped}%")
        order = self.INSERTION_ORDER
        with self._read() as db:
            if before:
                anchor = db.execute(f"SELECT created_at, {order} AS seq FROM tasks WHERE id = ?", (before,)).fetchone()
                if anchor is None:
                    raise LookupError(before)
                clauses.append(f"(created_at, {order}) < (?, ?)")
                args += [anchor["created_at"], anchor["seq"]]
            clause = ("WHERE " + " AND ".join(clauses)) if clauses else ""
            rows = db.execute(
                f"SELECT {LIST_COLUMNS} FROM tasks {clause} ORDER BY created_at DESC, {order} DESC LIMIT ?",
                [*args, limit],
            ).fetchall()
        return [task_of(r) for r in rows]

    def queue_positions(self, task_ids: Iterable[str]) -> dict[str, int]:
        """Queued tasks' places in the one queue (1 = started next), in claim order."""
        ids = list(task_ids)
        if not ids:
            return {}
        among, args = self._in_list("t.id", ids)
        order = self.INSERTION_ORDER
        with self._read() as db:
            rows = db.execute(
                "SELECT t.id, 1 + (SELECT count(*) FROM tasks o WHERE o.status = 'queued' "
                f"AND (o.created_at, o.{order}) < (t.created_at, t.{order})) AS position "
                f"FROM tasks t WHERE {among} AND t.status = 'queued'",
                args,
            ).fetchall()
        found = {r["id"]: r["position"] for r in rows}
        return {i: found[i] for i in ids if i in found}

    def save_activity(self, task_id: str, activity: dict) -> None:
        """A task's event log and throughput samples (bounded by their writer)."""
        with self._write() as db:
            db.execute("UPDATE tasks SET activity = ? WHERE id = ?", (to_json(activity), task_id))

    def delete_task(self, task_id: str) -> TaskStatus | None:
        """Remove a finished task (and its webhook outbox row); a queued or running one is left
        as it is. Returns the status found (None: unknown). Its work is added to DELETED_WORK,
        so /metrics' totals stay monotonic."""
        with self._write() as db:
            row = db.execute(
                f"SELECT status, {', '.join(METRIC_COLUMNS)} FROM tasks WHERE id = ? {self.LOCK_ROW}", (task_id,)
            ).fetchone()
            if row is None:
                return None
            found = TaskStatus(row["status"])
            if not found.is_final:
                return found
            db.execute("DELETE FROM tasks WHERE id = ?", (task_id,))
            db.execute("DELETE FROM webhooks WHERE task_id = ?", (task_id,))
            db.execute(
                f"UPDATE {self.DELETED_WORK} SET "
                + ", ".join(f"{c} = {c} + ?" for c in METRIC_COLUMNS)
                + " WHERE id = 1",
                [row[c] for c in METRIC_COLUMNS],
            )
            return found

    def _start(self, db: Db, task_id: str, owner: str, now: float, lease: float) -> dict | None:
        """A queued task, claimed by `owner`: running, leased until `now + lease`."""
        db.execute(
            "UPDATE tasks SET status = 'running', phase = 'fetching', owner = ?, lease_until = ?, "
            "started_at = coalesce(started_at, ?), runs = runs + 1 WHERE id = ?",
            (owner, now + lease, now, task_id),
        )
        return _select_task(db, task_id, TASK_COLUMNS)

    def _take_over(self, db: Db, task_id: str, owner: str, now: float, lease: float) -> dict | None:
        """A running task whose runner is gone, claimed by `owner` (runs + 1): it resumes."""
        db.execute(
            "UPDATE tasks SET owner = ?, lease_until = ?, runs = runs + 1 WHERE id = ?", (owner, now + lease, task_id)
        )
        return _select_task(db, task_id, TASK_COLUMNS)

    def renew(self, owner: str, task_ids: Iterable[str], lease: float) -> None:
        ids = list(task_ids)
        if not ids:
            return
        among, args = self._in_list("id", ids)
        with self._write() as db:
            db.execute(
                f"UPDATE tasks SET lease_until = ? WHERE {among} AND owner = ? AND status = 'running'",
                [time.time() + lease, *args, owner],
            )

    def release(self, owner: str) -> None:
        """Give up every lease of `owner` now (a clean shutdown): others resume them at once."""
        with self._write() as db:
            db.execute("UPDATE tasks SET lease_until = 0 WHERE owner = ? AND status = 'running'", (owner,))

    def save_progress(self, task_id: str, owner: str, progress: dict) -> None:
        numbers = metrics_of(progress)
        with self._write() as db:
            db.execute(
                "UPDATE tasks SET progress = ?, phase = ?, m_pages = ?, m_requests = ?, m_retries = ?, m_bytes = ? "
                "WHERE id = ? AND owner = ? AND status = 'running'",
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
        sets = ", ".join(f"{k} = ?" for k in values)
        where = "id = ? AND status IN ('queued', 'running')" + (" AND owner = ?" if owner else "")
        args = [*values.values(), task_id, *([owner] if owner else [])]
        with self._write() as db:
            changed = db.execute(f"UPDATE tasks SET {sets} WHERE {where}", args).rowcount == 1
            if changed:
                self._enqueue_webhook(db, task_id)
            return changed

    def update_extra(self, task_id: str, extra: dict) -> None:
        with self._write() as db:
            row = db.execute(f"SELECT extra FROM tasks WHERE id = ? {self.LOCK_ROW}", (task_id,)).fetchone()
            merged = {**(json.loads(row["extra"]) if row and row["extra"] else {}), **extra}
            db.execute("UPDATE tasks SET extra = ? WHERE id = ?", (to_json(merged), task_id))

    def request_cancel(self, task_id: str) -> TaskStatus | None:
        """Cancel a queued task at once, flag a running one. Returns the status found first."""
        with self._write() as db:
            row = db.execute(f"SELECT status FROM tasks WHERE id = ? {self.LOCK_ROW}", (task_id,)).fetchone()
            if row is None:
                return None
            found = TaskStatus(row["status"])
            if found is TaskStatus.QUEUED:
                db.execute(
                    "UPDATE tasks SET status = 'cancelled', finished_at = ?, phase = NULL, error = ? WHERE id = ?",
                    (time.time(), to_json({"message": "cancelled before it started", "pages": []}), task_id),
                )
                self._enqueue_webhook(db, task_id)
                self._append_event(db, task_id, "cancelled", "cancelled before it started")
            elif found is TaskStatus.RUNNING:
                db.execute("UPDATE tasks SET cancel_requested = 1 WHERE id = ?", (task_id,))
            return found

    def cancel_requests(self, task_ids: Iterable[str]) -> set[str]:
        ids = list(task_ids)
        if not ids:
            return set()
        among, args = self._in_list("id", ids)
        with self._read() as db:
            rows = db.execute(f"SELECT id FROM tasks WHERE cancel_requested = 1 AND {among}", args).fetchall()
        return {r["id"] for r in rows}

    def expired_results(self, ttl: float) -> list[dict]:
        with self._read() as db:
            rows = db.execute(
                f"SELECT {STATUS_COLUMNS} FROM tasks WHERE status = 'completed' AND expired = 0 AND finished_at < ?",
                (time.time() - ttl,),
            ).fetchall()
        return [task_of(r) for r in rows]

    def mark_expired(self, task_id: str) -> None:
        with self._write() as db:
            db.execute("UPDATE tasks SET expired = 1 WHERE id = ?", (task_id,))

    def task_ids(self) -> set[str]:
        with self._read() as db:
            return {r["id"] for r in db.execute("SELECT id FROM tasks").fetchall()}

    def unfinished_ids(self) -> set[str]:
        with self._read() as db:
            return {
                r["id"] for r in db.execute("SELECT id FROM tasks WHERE status IN ('queued', 'running')").fetchall()
            }

    def queued_count(self, profile: str, cap: int) -> int:
        """Queued tasks of a profile, counted up to `cap` (by index)."""
        with self._read() as db:
            return _count_queued(db, profile, cap)

    def _queue_full(self, db: Db, task: dict, cap: int) -> bool:
        """Has the task's profile `cap` queued tasks? Counted under the profile's queue lock
        (held until the transaction ends): two instances cannot both take the last place."""
        profile = task.get("profile") or "default"
        self._lock(db, "queue", profile)
        return _count_queued(db, profile, cap) >= cap

    def _append_event(self, db: Db, task_id: str, kind: str, message: str) -> None:
        """One event on a task's log, inside the caller's transaction."""
        row = db.execute(f"SELECT activity FROM tasks WHERE id = ? {self.LOCK_ROW}", (task_id,)).fetchone()
        if row is not None:
            activity = json.loads(row["activity"]) if row["activity"] else None
            db.execute(
                "UPDATE tasks SET activity = ? WHERE id = ?", (to_json(append_event(activity, kind, message)), task_id)
            )

    # ------------------------------------------------------------ profiles
    def profile(self, name: str) -> dict:
        with self._read() as db:
            return profile_of(
                db.execute("SELECT inputs, configuration FROM profiles WHERE name = ?", (name,)).fetchone()
            )

    def update_profile(self, name: str, change: Callable[[dict], dict]) -> dict:
        """Read-modify-write a profile atomically (under its lock): `change(profile) -> profile`."""
        with self._write() as db:
            self._lock(db, "profile", name)
            row = db.execute("SELECT inputs, configuration FROM profiles WHERE name = ?", (name,)).fetchone()
            updated = change(profile_of(row))
            db.execute(
                "INSERT INTO profiles (name, inputs, configuration) VALUES (?, ?, ?) "
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
        due = "done = 0 AND due <= ? AND lease_until < ?"
        if limit < 1:
            return []
        with self._read() as db:  # most looks find nothing: no write transaction for those
            if db.execute(f"SELECT 1 FROM webhooks WHERE {due} LIMIT 1", (now, now)).fetchone() is None:
                return []
        timeout = self._json_value("spec", "webhook", "timeout")
        with self._write() as db:
            rows = db.execute(
                f"SELECT task_id FROM webhooks WHERE {due} ORDER BY due LIMIT ? {self.SKIP_LOCKED}", (now, now, limit)
            ).fetchall()
            claimed = []
            for row in rows:
                db.execute(
                    "UPDATE webhooks SET owner = ?, attempts = attempts + 1, lease_until = ? + ? + 2 * coalesce("
                    f"(SELECT CAST({timeout} AS double precision) FROM tasks WHERE tasks.id = webhooks.task_id), 10) "
                    "WHERE task_id = ?",
                    (owner, now, margin, row["task_id"]),
                )
                leased = db.execute(f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE task_id = ?", (row["task_id"],))
                claimed.append(dict(leased.fetchone()))
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
                self._set_webhook_outcome(db, task_id, outcome)
            return bool(changed)

    def _enqueue_webhook(self, db: Db, task_id: str) -> None:
        """A task just reached a final status: if its spec has a webhook, queue the POST (in the
        same transaction, so no final status is ever left without its webhook)."""
        queued = db.execute(
            "INSERT INTO webhooks (task_id, due) SELECT id, ? FROM tasks "
            f"WHERE id = ? AND {self._json_value('spec', 'webhook', 'url')} IS NOT NULL "
            "ON CONFLICT (task_id) DO NOTHING",
            (time.time(), task_id),
        ).rowcount
        if queued:
            self._set_webhook_outcome(db, task_id, WEBHOOK_PENDING)

    def _set_webhook_outcome(self, db: Db, task_id: str, outcome: dict) -> None:
        row = db.execute(f"SELECT extra FROM tasks WHERE id = ? {self.LOCK_ROW}", (task_id,)).fetchone()
        if row is not None:
            db.execute("UPDATE tasks SET extra = ? WHERE id = ?", (with_webhook(row["extra"], outcome), task_id))

    # ------------------------------------------------------------ schedules
    def create_schedule(self, schedule: dict, max_per_profile: int | None = None) -> None:
        """Insert a schedule; with `max_per_profile`, only if its profile has fewer schedules
        (checked under the profile's lock, in the inserting transaction), else `LimitReached`."""
        profile = schedule.get("profile") or "default"
        with self._write() as db:
            if max_per_profile is not None:
                self._lock(db, "schedules", profile)
                found = db.execute(
                    "SELECT count(*) AS n FROM schedules WHERE coalesce(profile, 'default') = ?", (profile,)
                ).fetchone()
                if found["n"] >= max_per_profile:
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
        with self._read() as db:
            row = db.execute(f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = ?", (schedule_id,)).fetchone()
        return None if row is None else schedule_of(row)

    def list_schedules(self) -> list[dict]:
        with self._read() as db:
            rows = db.execute(
                f"SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY created_at, {self.INSERTION_ORDER}"
            ).fetchall()
        return [schedule_of(r) for r in rows]

    def delete_schedule(self, schedule_id: str) -> bool:
        with self._write() as db:
            return db.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,)).rowcount == 1

    def pause_schedule(self, schedule_id: str, paused: bool, next_run: float | None = None) -> dict | None:
        """Pause or resume a schedule (`next_run`: where a resumed one starts again); the
        schedule after the change, or None when unknown."""
        sets = "paused = ?" + (", next_run = ?" if next_run is not None else "")
        args: list[Any] = [int(paused), *([next_run] if next_run is not None else []), schedule_id]
        with self._write() as db:
            if db.execute(f"UPDATE schedules SET {sets} WHERE id = ?", args).rowcount != 1:
                return None
            row = db.execute(f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = ?", (schedule_id,)).fetchone()
        return schedule_of(row)

    def run_schedule_now(self, schedule_id: str, task: dict, max_queued: int | None = None) -> bool:
        """Queue `task`, a run of the schedule made on request, and note it as the schedule's
        last run (one transaction); False when the schedule is gone. `LimitReached` when its
        profile already has `max_queued` queued tasks."""
        with self._write() as db:
            # the schedule's row first, then the profile's queue lock: fire_schedules takes them
            # in that order too, so the two cannot deadlock
            moved = db.execute(
                "UPDATE schedules SET last_run = ?, last_task_id = ? WHERE id = ?",
                (task.get("created_at", time.time()), task["id"], schedule_id),
            ).rowcount
            if max_queued is not None and self._queue_full(db, task, max_queued):
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
        workers, instances and restarts: each due schedule is fired in a transaction of its own
        that holds its row (PostgreSQL: `SKIP LOCKED`, another instance firing it is passed
        over, not waited for), moves its `next_run` on and inserts its tasks.

        `plan(schedule, now, caught_up) -> ([(due, missed), ...], next_run)` decides which runs
        to make; `caught_up` says some scheduler looked within the last `stale` seconds (a
        gap shorter than that is caught up run by run; after a longer downtime `plan` makes
        one run). `make_task(schedule, due, missed) -> task dict`. Returns the new tasks.

        `max_queued`: a run whose profile already has that many queued tasks is skipped, not
        queued: the schedule counts it (`skipped_runs`, `last_skipped`) and `on_skip(schedule,
        task)` is told (after the commit)."""
        with self._read() as db:
            if db.execute("SELECT 1 FROM schedules LIMIT 1").fetchone() is None:
                return []
            due = [
                r["id"]
                for r in db.execute(
                    "SELECT id FROM schedules WHERE next_run <= ? AND paused = 0 "
                    f"ORDER BY created_at, {self.INSERTION_ORDER}",
                    (now,),
                ).fetchall()
            ]
            beat = db.execute("SELECT value FROM meta WHERE key = 'scheduler_beat'").fetchone()
        if not due and beat is not None and now - beat["value"] < 1.0:
            return []  # nothing due, and the heartbeat is fresh: no write needed
        caught_up = beat is not None and now - beat["value"] <= stale
        fired: list[dict] = []
        skipped: list[tuple[dict, dict]] = []
        for schedule_id in due:
            with self._write() as db:
                self._fire(db, schedule_id, now, plan, make_task, caught_up, max_queued, fired, skipped)
        with self._write() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('scheduler_beat', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE meta.value < excluded.value",
                (now,),
            )
        if on_skip is not None:
            for schedule, task in skipped:
                on_skip(schedule, task)
        return fired

    def _fire(
        self,
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
            f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = ? AND next_run <= ? AND paused = 0 "
            f"{self.SKIP_LOCKED}",
            (schedule_id, now),
        ).fetchone()
        if row is None:
            return  # another instance holds it (and fires it), or it fired since we looked
        schedule = schedule_of(row)
        runs, next_run = plan(schedule, now, caught_up)
        tasks = [make_task(schedule, due, missed) for due, missed in runs]
        db.execute(
            "UPDATE schedules SET next_run = ?, last_run = ?, last_task_id = ? WHERE id = ?",
            (
                next_run,
                runs[-1][0] if runs else row["last_run"],
                tasks[-1]["id"] if tasks else row["last_task_id"],
                schedule_id,
            ),
        )
        last_task_id = row["last_task_id"]
        for task in tasks:
            if max_queued is not None and self._queue_full(db, task, max_queued):
                db.execute(
                    "UPDATE schedules SET skipped_runs = skipped_runs + 1, last_skipped = ? WHERE id = ?",
                    (now, schedule_id),
                )
                skipped.append((schedule, task))
                continue
            _insert_task(db, task)
            fired.append(task)
            last_task_id = task["id"]
        if tasks and last_task_id != tasks[-1]["id"]:  # the last run was skipped: no such task
            db.execute("UPDATE schedules SET last_task_id = ? WHERE id = ?", (last_task_id, schedule_id))

    # ------------------------------------------------------------ incremental state
    def get_state(self, profile: str, name: str) -> dict | None:
        """The saved state of a job name: {"name", "profile", "state", "updated_at", "task_id"}."""
        with self._read() as db:
            row = db.execute(
                "SELECT * FROM incremental_state WHERE profile = ? AND name = ?", (profile, name)
            ).fetchone()
        return None if row is None else state_of(row)

    def list_states(self, profile: str) -> list[dict]:
        with self._read() as db:
            rows = db.execute(
                f"SELECT * FROM incremental_state WHERE profile = ? ORDER BY name {self.BYTE_ORDER}", (profile,)
            ).fetchall()
        return [state_of(r) for r in rows]

    def update_state(self, profile: str, name: str, change: Callable[[dict], dict], task_id: str | None) -> dict:
        """Read-modify-write a job name's state atomically (under its lock): `change(saved
        state or {}) -> state`."""
        with self._write() as db:
            self._lock(db, "state", profile, name)
            row = db.execute(
                "SELECT state FROM incremental_state WHERE profile = ? AND name = ?", (profile, name)
            ).fetchone()
            state = change(json.loads(row["state"]) if row is not None else {})
            db.execute(
                "INSERT INTO incremental_state (profile, name, state, updated_at, task_id) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (profile, name) DO UPDATE SET state = excluded.state, "
                "updated_at = excluded.updated_at, task_id = excluded.task_id",
                (profile, name, to_json(state), time.time(), task_id),
            )
            return state

    def delete_state(self, profile: str, name: str) -> dict | None:
        """Forget a job name's state (its next run starts from `start`); what it was, or None."""
        where = "FROM incremental_state WHERE profile = ? AND name = ?"
        with self._write() as db:
            row = db.execute(f"SELECT * {where} {self.LOCK_ROW}", (profile, name)).fetchone()
            if row is None:
                return None
            db.execute(f"DELETE {where}", (profile, name))
        return state_of(row)

    def delete_states(self, profile: str) -> int:
        with self._write() as db:
            return db.execute("DELETE FROM incremental_state WHERE profile = ?", (profile,)).rowcount


def _select_task(db: Db, task_id: str, columns: str) -> dict | None:
    # a changed task is read back with this, not with RETURNING: SQLite's RETURNING gives a REAL
    # column's whole-number value as an integer (5, not 5.0), and the stores must return equal dicts
    row = db.execute(f"SELECT {columns} FROM tasks WHERE id = ?", (task_id,)).fetchone()
    return None if row is None else task_of(row)


def _count_queued(db: Db, profile: str, cap: int) -> int:
    row = db.execute(
        "SELECT count(*) AS n FROM (SELECT 1 FROM tasks WHERE profile = ? AND status = 'queued' LIMIT ?) q",
        (profile, cap),
    ).fetchone()
    return int(row["n"])


def _insert_task(db: Db, task: dict) -> None:
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
