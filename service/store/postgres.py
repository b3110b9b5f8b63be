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
- Times are epoch floats and JSON documents text, as on SQLite: both return equal dicts.
The store's logic is SqlTaskStore's (sql.py); this module adds the pool, PostgreSQL's dialect,
the per-instance claim and /metrics counted when asked."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import psycopg
from psycopg import Connection, Cursor
from psycopg.abc import Params, Query
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from service.store.owners import instance_of, owner_alive
from service.store.postgres_schema import migrate
from service.store.protocol import StoreUnavailable
from service.store.rows import METRIC_COLUMNS, STATUSES
from service.store.sql import Db, SqlTaskStore

POOL_SIZE = 4  # connections per process at most: the web threads and background loops share them
CONNECT_TIMEOUT = 10  # seconds: an unreachable server fails the start instead of hanging it
WAIT_FOR_CONNECTION = 5.0  # seconds a call waits for a pooled connection (then 503): /healthz answers in time
APPLICATION = "pageferry"


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


class QmarkConnection(Connection[DictRow]):
    """A connection that takes the store's `?` placeholders: psycopg knows only `%s`, and one
    spelling lets both stores share their SQL (sql.py; no `?` or `%` in it but placeholders)."""

    def execute(
        self, query: Query, params: Params | None = None, *, prepare: bool | None = None, binary: bool = False
    ) -> Cursor[DictRow]:
        if not isinstance(query, str):
            raise TypeError("the task store's SQL is text with ? placeholders")
        return super().execute(query.replace("%", "%%").replace("?", "%s"), params, prepare=prepare, binary=binary)


class PostgresTaskStore(SqlTaskStore):
    # the dialect (sql.py)
    INSERTION_ORDER = "seq"
    LIKE = "ILIKE"  # any case, as SQLite's LIKE (which folds ASCII letters only)
    LOCK_ROW = "FOR UPDATE"
    SKIP_LOCKED = "FOR UPDATE SKIP LOCKED"
    BYTE_ORDER = 'COLLATE "C"'  # as SQLite sorts
    DELETED_WORK = "deleted_work"  # the totals are summed when asked (counts), plus this row

    def __init__(self, dsn: str, pool_size: int = POOL_SIZE):
        self._dsn = dsn
        self._secret = _password(dsn)
        self.where = describe(dsn)
        self._pool_size = pool_size
        self._pool: ConnectionPool[QmarkConnection] | None = None
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

    def _connections(self) -> ConnectionPool[QmarkConnection]:
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
                    connection_class=QmarkConnection,
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
    def _read(self) -> Iterator[QmarkConnection]:
        try:
            with self._connections().connection() as db:
                yield db
        except psycopg.OperationalError as exc:  # unreachable, shut down, pool exhausted, deadlock
            raise StoreUnavailable(f"the PostgreSQL task store {self.where} failed: {self._scrub(exc)}") from None

    @contextmanager
    def _write(self) -> Iterator[QmarkConnection]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        with self._read() as db, db.transaction():
            yield db

    def _lock(self, db: Db, *key: str) -> None:
        """An advisory lock on `key`, held until the transaction ends."""
        digest = hashlib.blake2b("\0".join(key).encode(), digest_size=8).digest()
        db.execute("SELECT pg_advisory_xact_lock(?)", (int.from_bytes(digest, "big", signed=True),))

    def _in_list(self, column: str, values: list) -> tuple[str, list]:
        return f"{column} = ANY(?)", [values]

    def _json_value(self, column: str, *keys: str) -> str:
        return f"({column}::json #>> '{{{','.join(keys)}}}')"

    def close(self) -> None:
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.close()
        self._pool = None

    # ------------------------------------------------------------ what a shared database does its own way
    def claim(
        self, owner: str, max_running: int, lease: float, alive: Callable[[str | None], bool] = owner_alive
    ) -> dict | None:
        """Claim one task for `owner`: first a running task whose runner is gone (it resumes),
        else the oldest queued task if `owner`'s instance runs fewer than `max_running`."""
        now = time.time()
        with self._write() as db:
            resumed = self._resume(db, owner, now, lease, alive)
            if resumed is not None:
                return resumed
            instance = instance_of(owner)
            self._lock(db, "claim", instance)  # this instance's workers count and claim one at a time
            running = db.execute("SELECT owner FROM tasks WHERE status = 'running'").fetchall()
            if sum(1 for r in running if r["owner"] and instance_of(r["owner"]) == instance) >= max_running:
                return None
            row = db.execute(
                "SELECT id FROM tasks WHERE status = 'queued' ORDER BY created_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED"
            ).fetchone()
            return None if row is None else self._start(db, row["id"], owner, now, lease)

    def _resume(
        self, db: QmarkConnection, owner: str, now: float, lease: float, alive: Callable[[str | None], bool]
    ) -> dict | None:
        """Take over the oldest running task whose lease lapsed or whose owner is gone (runs + 1)."""

        def gone(row: DictRow) -> bool:
            return row["lease_until"] < now or not alive(row["owner"])

        others = "status = 'running' AND owner IS DISTINCT FROM ?"
        rows = db.execute(f"SELECT id, owner, lease_until FROM tasks WHERE {others} ORDER BY created_at, seq", (owner,))
        candidates = [r["id"] for r in rows if gone(r)]
        if not candidates:
            return None
        locked = db.execute(
            f"SELECT id, owner, lease_until FROM tasks WHERE id = ANY(?) AND {others} "
            "ORDER BY created_at, seq FOR UPDATE SKIP LOCKED",
            (candidates, owner),
        ).fetchall()
        for row in locked:
            if gone(row):  # again, on the row as locked: its owner may have renewed meanwhile
                return self._take_over(db, row["id"], owner, now, lease)
        return None

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
