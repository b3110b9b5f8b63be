"""Table targets: the shaped rows loaded into DuckDB or PostgreSQL (docs/delivery.md, "Tables").

Runs in the job's export process (never in the coordinator): the reducer has written each
source's shaped rows as Parquet (`write_shaped_parquet`), and `load_all` loads them, one
table per source, with the database's bulk path - DuckDB reads the Parquet itself
(`read_parquet`), PostgreSQL gets `COPY ... FROM STDIN (FORMAT csv)` fed from Arrow batches
(nulls unquoted, empty strings quoted: they stay distinct). Never row by row.

Each target is all or nothing: every table of a target is loaded in one transaction.
`append` copies into the table; `replace` builds `<table>__new` and swaps it in (DROP + RENAME
in the same transaction: readers see the old table or the new one, never an empty or half one);
`merge` stages the load, keeps the newest row of each key (the last in row order) and upserts
(`INSERT ... ON CONFLICT (key) DO UPDATE`, on a unique index made when missing).
`schema_change: evolve` adds columns and widens types (int -> bigint -> double, anything ->
text; never narrows or drops); `freeze` fails the target, naming the column, when a column
is added, missing or retyped - checked before anything is written.
"""

from __future__ import annotations

import io
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from engine.deliver.common import DeliveryFailure, checked_address
from engine.deliver.table_targets import TableJob, is_table_target
from engine.fetch.outbound import OutboundPolicy, OutboundRefused
from engine.spec.redact import Redactor

log = logging.getLogger("pageferry.deliver")

BATCH_ROWS = 65_536  # rows per Arrow batch fed to COPY (bounded memory)
CONNECT_ATTEMPTS = 3

# Canonical column kinds and the order they widen in (int -> bigint -> decimal -> double; any
# two kinds that do not meet that way -> text). "null": a column with no value in this load
# (no type): it fits any column, and a new one becomes text.
NUMERIC = ("int", "bigint", "decimal", "double")
PG_TYPES = {
    "bool": "boolean",
    "int": "integer",
    "bigint": "bigint",
    "decimal": "numeric",
    "double": "double precision",
    "text": "text",
    "date": "date",
    "time": "time",
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
    "json": "jsonb",
    "binary": "bytea",
    "null": "text",
}
DUCK_TYPES = {
    "bool": "BOOLEAN",
    "int": "INTEGER",
    "bigint": "BIGINT",
    "decimal": "DECIMAL(38,10)",
    "double": "DOUBLE",
    "text": "VARCHAR",
    "date": "DATE",
    "time": "TIME",
    "timestamp": "TIMESTAMP",
    "timestamptz": "TIMESTAMPTZ",
    "json": "JSON",
    "binary": "BLOB",
    "null": "VARCHAR",
}


class TargetFailed(Exception):
    """A table target that cannot be loaded (the message names the table and the column)."""


# ---------------------------------------------------------------- the shaped rows


def shaped_path(job: TableJob, index: int) -> Path:
    return job.tables_dir / f"{index}.parquet"


def write_shaped_parquet(frames: Sequence[tuple[str, pl.LazyFrame]], job: TableJob) -> None:
    """Each source's shaped rows as Parquet in the work directory (streamed: `sink_parquet`)."""
    job.tables_dir.mkdir(parents=True, exist_ok=True)
    for index, (_, frame) in enumerate(frames):
        target = shaped_path(job, index)
        temp = target.with_suffix(".tmp")
        frame.sink_parquet(temp, compression="lz4", row_group_size=BATCH_ROWS)
        temp.replace(target)


# ---------------------------------------------------------------- column kinds


def arrow_kind(dtype: pa.DataType) -> str:
    t = pa.types
    if t.is_null(dtype):
        return "null"
    if t.is_boolean(dtype):
        return "bool"
    if t.is_int8(dtype) or t.is_int16(dtype) or t.is_int32(dtype) or t.is_uint8(dtype) or t.is_uint16(dtype):
        return "int"
    if t.is_int64(dtype) or t.is_uint32(dtype):
        return "bigint"
    if t.is_uint64(dtype) or t.is_decimal(dtype):
        return "decimal"
    if t.is_floating(dtype):
        return "double"
    if t.is_date(dtype):
        return "date"
    if t.is_time(dtype):
        return "time"
    if t.is_timestamp(dtype):
        return "timestamptz" if dtype.tz else "timestamp"
    if t.is_list(dtype) or t.is_large_list(dtype) or t.is_struct(dtype) or t.is_map(dtype):
        return "json"
    if t.is_fixed_size_list(dtype) or (hasattr(t, "is_list_view") and t.is_list_view(dtype)):
        return "json"
    if t.is_binary(dtype) or t.is_large_binary(dtype) or t.is_fixed_size_binary(dtype):
        return "binary"
    if t.is_dictionary(dtype):
        return arrow_kind(dtype.value_type)
    return "text"  # strings (and anything else, as its text)


def widen(table: str, load: str) -> str:
    """The kind a column of kind `table` needs to hold values of kind `load` (never narrower)."""
    if load in (table, "null"):
        return table
    if table == "null":
        return load
    if table in NUMERIC and load in NUMERIC:
        return NUMERIC[max(NUMERIC.index(table), NUMERIC.index(load))]
    if {table, load} == {"timestamp", "timestamptz"}:
        return "timestamptz"
    return "text"


def pg_kind(type_name: str) -> str:
    name = type_name.lower()
    if name.startswith(("character varying", "character", "text", "varchar", "name", "citext")):
        return "text"
    if name.startswith("numeric"):
        return "decimal"
    if name.startswith("timestamp"):
        return "timestamptz" if "with time zone" in name else "timestamp"
    if name.startswith("time"):
        return "time"
    simple = {
        "boolean": "bool",
        "smallint": "int",
        "integer": "int",
        "bigint": "bigint",
        "real": "double",
        "double precision": "double",
        "date": "date",
        "jsonb": "json",
        "json": "json",
        "bytea": "binary",
    }
    return simple.get(name, "other:" + name)


def duck_kind(type_name: str) -> str:
    name = type_name.upper()
    if name.startswith("DECIMAL") or name in ("HUGEINT", "UBIGINT", "UHUGEINT"):
        return "decimal"
    if name.startswith("TIMESTAMP"):
        return "timestamptz" if "TIME ZONE" in name or name == "TIMESTAMPTZ" else "timestamp"
    simple = {
        "BOOLEAN": "bool",
        "TINYINT": "int",
        "SMALLINT": "int",
        "INTEGER": "int",
        "UTINYINT": "int",
        "USMALLINT": "int",
        "BIGINT": "bigint",
        "UINTEGER": "bigint",
        "FLOAT": "double",
        "DOUBLE": "double",
        "VARCHAR": "text",
        "DATE": "date",
        "TIME": "time",
        "JSON": "json",
        "BLOB": "binary",
    }
    if name in simple:
        return simple[name]
    if name.endswith("[]") or name.startswith(("STRUCT", "MAP", "LIST")):
        return "json"
    return "other:" + name


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ---------------------------------------------------------------- planning (no database yet)


@dataclass
class TablePlan:
    """One source's table: what the load holds and what the table becomes."""

    source: str
    table: str
    parquet: Path
    load: dict[str, str]  # column -> kind, in the load's order
    rows: int
    existing: dict[str, str] | None = None  # column -> kind of the table now (None: no table)
    final: dict[str, str] | None = None  # column -> kind after the load (table order)

    @property
    def added(self) -> list[str]:
        return [c for c in self.load if self.existing is not None and c not in self.existing]

    @property
    def widened(self) -> list[str]:
        if self.existing is None or self.final is None:
            return []
        return [c for c, kind in self.existing.items() if self.final[c] != kind]


def plan_tables(target, job: TableJob, sources: Sequence[str]) -> list[TablePlan]:
    """Per source: its table name, the load's columns and kinds; the key checks, before any
    connection (a null key or a missing key column fails the target with nothing written)."""
    plans = []
    names: set[str] = set()
    for index, source in enumerate(sources):
        path = shaped_path(job, index)
        table = target.table.replace("{source}", source)
        if table in names:
            raise TargetFailed(f"table {table!r}: two sources load into it (use {{source}} in table)")
        names.add(table)
        schema = pq.read_schema(path)
        rows = pq.ParquetFile(path).metadata.num_rows
        load = {f.name: arrow_kind(f.type) for f in schema}
        plan = TablePlan(source, table, path, load, rows)
        if target.mode == "merge":
            _check_key(plan, tuple(target.key or ()))
        plans.append(plan)
    return plans


def _check_key(plan: TablePlan, key: tuple[str, ...]) -> None:
    for column in key:
        if column not in plan.load:
            raise TargetFailed(f"table {plan.table!r}: key column {column!r} is not among the rows' columns")
        if plan.load[column] == "json":
            raise TargetFailed(f"table {plan.table!r}: key column {column!r} holds lists/objects")
    if plan.rows == 0:
        return
    nulls = _null_counts(plan.parquet, key)
    for column in key:
        if nulls.get(column):
            raise TargetFailed(
                f"table {plan.table!r}: {nulls[column]} row(s) have a null key column {column!r}; nothing was written"
            )


def _null_counts(path: Path, columns: Sequence[str]) -> dict[str, int]:
    """Nulls per column from the Parquet statistics; read from the column itself when missing."""
    meta = pq.ParquetFile(path).metadata
    schema = meta.schema.to_arrow_schema()
    counts: dict[str, int] = {}
    for column in columns:
        index = schema.get_field_index(column)
        total = 0
        for rg in range(meta.num_row_groups):
            stats = meta.row_group(rg).column(index).statistics
            if stats is None or not stats.has_null_count:
                total = -1
                break
            total += stats.null_count
        if total < 0:
            total = pq.read_table(path, columns=[column]).column(0).null_count
        counts[column] = total
    return counts


def settle_schema(plan: TablePlan, existing: dict[str, str] | None, freeze: bool) -> None:
    """The table's columns after the load (`plan.final`); with `freeze`, any added, missing or
    retyped column fails the target naming it."""
    plan.existing = existing
    if existing is None:
        plan.final = {c: ("text" if k == "null" else k) for c, k in plan.load.items()}
        return
    if freeze:
        for column, kind in plan.load.items():
            if column not in existing:
                raise TargetFailed(f"table {plan.table!r}: column {column!r} is new (schema_change: freeze)")
            if kind != "null" and kind != existing[column]:
                raise TargetFailed(
                    f"table {plan.table!r}: column {column!r} is {existing[column]} in the table but {kind} "
                    f"in the rows (schema_change: freeze)"
                )
        for column in existing:
            if column not in plan.load:
                raise TargetFailed(
                    f"table {plan.table!r}: column {column!r} is missing from the rows (schema_change: freeze)"
                )
        plan.final = dict(existing)
        return
    final = dict(existing)
    for column, kind in plan.load.items():
        if column in final:
            if final[column].startswith("other:") and kind != "null":
                if final[column] != "other:text":
                    raise TargetFailed(
                        f"table {plan.table!r}: column {column!r} has a type the rows cannot be loaded into "
                        f"({final[column][6:]})"
                    )
                continue
            final[column] = widen(final[column], kind)
        else:
            final[column] = "text" if kind == "null" else kind
    plan.final = final


# ---------------------------------------------------------------- outcomes


def load_all(targets: Sequence, job: TableJob, sources: Sequence[str]) -> list[dict]:
    """Load every table target of `targets` (the spec's `deliver`, resolved) in turn; one
    outcome per table target - `{"target", "ok", "error", "rows", "mode", "seconds", "tables",
    "attempts"}` - never raising for a target that fails."""
    outcomes = []
    redactor = Redactor(set(job.secrets))
    try:
        for target in targets:
            if is_table_target(target):
                outcomes.append(_load_target(target, job, sources, redactor))
    finally:
        shutil.rmtree(job.tables_dir, ignore_errors=True)  # the shaped rows: loaded, or not needed
    return outcomes


def _load_target(target, job: TableJob, sources: Sequence[str], redactor: Redactor) -> dict:
    started = time.monotonic()
    loader = DuckdbLoader(target) if target.type == "duckdb" else PostgresLoader(target, job.outbound)
    outcome: dict[str, Any] = {
        "target": redactor.text(loader.describe()),
        "ok": False,
        "error": None,
        "rows": 0,
        "mode": target.mode,
        "seconds": 0.0,
        "tables": {},
        "attempts": 1,
    }
    scrub = Redactor(set(redactor.secrets) | loader.credentials())
    try:
        plans = plan_tables(target, job, sources)
        written = loader.load(plans)
        outcome.update(ok=True, rows=sum(written.values()), tables=written)
    except (TargetFailed, DeliveryFailure) as exc:
        outcome["error"] = scrub.text(str(exc))[:1000]
    except OutboundRefused as exc:
        outcome["error"] = scrub.text(f"refused: {exc}")
    except Exception as exc:  # a database error: reported, never raised into the job
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        outcome["error"] = scrub.text(f"{type(exc).__name__}: {text}")[:1000]
    outcome["seconds"] = round(time.monotonic() - started, 3)
    log.info("table target %s: %s", outcome["target"], "ok" if outcome["ok"] else outcome["error"])
    return outcome


def _upsert_action(columns: Sequence[str], key: Sequence[str]) -> str:
    """`ON CONFLICT (key) …`'s action: every other column takes the new row's value."""
    others = [c for c in columns if c not in key]
    if not others:
        return "DO NOTHING"
    return "DO UPDATE SET " + ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in others)


# ---------------------------------------------------------------- DuckDB


class DuckdbLoader:
    def __init__(self, target, connection: Any = None):
        self.target = target
        self.connection = connection  # tests: a cursor of an open database

    def describe(self) -> str:
        return f"duckdb:{self.target.path}#{self.target.table}"

    def credentials(self) -> set[str]:
        return set()

    def load(self, plans: Sequence[TablePlan]) -> dict[str, int]:
        import duckdb

        if self.connection is None:
            Path(self.target.path).parent.mkdir(parents=True, exist_ok=True)
        con = self.connection if self.connection is not None else duckdb.connect(self.target.path)
        try:
            con.execute("BEGIN TRANSACTION")
            try:
                written = {plan.table: self._one(con, plan) for plan in plans}
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return written
        finally:
            if self.connection is None:
                con.close()

    def _existing(self, con, table: str) -> dict[str, str] | None:
        rows = con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
            [table],
        ).fetchall()
        return {name: duck_kind(kind) for name, kind in rows} if rows else None

    def _create(self, con, table: str, columns: dict[str, str]) -> None:
        spec = ", ".join(f"{quote(c)} {DUCK_TYPES[k]}" for c, k in columns.items())
        con.execute(f"CREATE TABLE {quote(table)} ({spec})")

    @staticmethod
    def _expr(column: str, load: str, kind: str) -> str:
        if load == "json":
            value = f"to_json({quote(column)})"
            return value if kind == "json" else f"CAST({value} AS {DUCK_TYPES[kind]})"
        return f"CAST({quote(column)} AS {DUCK_TYPES[kind]})"

    def _one(self, con, plan: TablePlan) -> int:
        target = self.target
        table = plan.table
        if not plan.load:
            return 0  # a source without columns (no rows): nothing to load
        settle_schema(plan, self._existing(con, table), target.schema_change == "freeze")
        assert plan.final is not None
        final = plan.final
        source = "read_parquet(" + "'" + str(plan.parquet).replace("'", "''") + "', file_row_number = true)"
        columns = [c for c in final if c in plan.load]
        select = ", ".join(self._expr(c, plan.load[c], final[c]) for c in columns)
        names = ", ".join(quote(c) for c in columns)
        if target.mode == "replace":
            new = f"{table}__new"
            con.execute(f"DROP TABLE IF EXISTS {quote(new)}")
            self._create(con, new, final)
            con.execute(f"INSERT INTO {quote(new)} ({names}) SELECT {select} FROM {source}")
            if plan.existing is not None:
                con.execute(f"DROP TABLE {quote(table)}")
            con.execute(f"ALTER TABLE {quote(new)} RENAME TO {quote(table)}")
            return plan.rows
        self._evolve(con, plan)
        if target.mode == "append":
            con.execute(f"INSERT INTO {quote(table)} ({names}) SELECT {select} FROM {source}")
            return plan.rows
        key = list(target.key or ())
        self._unique_key(con, table, key)
        newest = (
            f"(SELECT * FROM {source} QUALIFY row_number() OVER "
            f"(PARTITION BY {', '.join(quote(k) for k in key)} ORDER BY file_row_number DESC) = 1)"
        )
        action = _upsert_action(columns, key)
        conflict = ", ".join(quote(k) for k in key)
        count = con.execute(
            f"INSERT INTO {quote(table)} ({names}) SELECT {select} FROM {newest} ON CONFLICT ({conflict}) {action}"
        ).fetchone()
        return int(count[0]) if count else 0

    def _evolve(self, con, plan: TablePlan) -> None:
        """Creates the table, adds new columns; a widened column rebuilds the table (DuckDB
        cannot retype a column that an index depends on) - all inside the load's transaction."""
        assert plan.final is not None
        table = plan.table
        if plan.existing is None:
            self._create(con, table, plan.final)
            return
        if plan.widened:
            new = f"{table}__new"
            con.execute(f"DROP TABLE IF EXISTS {quote(new)}")
            self._create(con, new, plan.final)
            select = ", ".join(
                self._expr(c, plan.existing[c], plan.final[c]) if c in plan.existing else "NULL" for c in plan.final
            )
            con.execute(f"INSERT INTO {quote(new)} SELECT {select} FROM {quote(table)}")
            con.execute(f"DROP TABLE {quote(table)}")
            con.execute(f"ALTER TABLE {quote(new)} RENAME TO {quote(table)}")
            return
        for column in plan.added:
            con.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(column)} {DUCK_TYPES[plan.final[column]]}")

    def _unique_key(self, con, table: str, key: list[str]) -> None:
        try:
            con.execute(
                f"CREATE UNIQUE INDEX IF NOT EXISTS {quote(table + '__pf_key')} ON {quote(table)} "
                f"({', '.join(quote(k) for k in key)})"
            )
        except Exception as exc:
            raise TargetFailed(
                f"table {table!r}: cannot make key ({', '.join(key)}) unique for merge "
                f"(the table holds duplicate keys?): {str(exc).splitlines()[0]}"
            ) from None


# ---------------------------------------------------------------- PostgreSQL


class PostgresLoader:
    def __init__(self, target, policy: OutboundPolicy | None = None):
        self.target = target
        self.policy = policy or OutboundPolicy()
        try:
            from psycopg.conninfo import conninfo_to_dict

            self.params = {k: str(v) for k, v in conninfo_to_dict(target.dsn).items() if v is not None}
        except Exception:
            self.params = {}

    def describe(self) -> str:
        p = self.params
        user = f"{p['user']}@" if p.get("user") else ""
        host = p.get("host") or p.get("hostaddr") or "localhost"
        port = p.get("port") or "5432"
        return f"postgres://{user}{host}:{port}/{p.get('dbname', '')}#{self.target.schema_}.{self.target.table}"

    def credentials(self) -> set[str]:
        return {v for k, v in self.params.items() if k in ("password", "sslpassword") and v} | {self.target.dsn}

    def connect(self) -> Any:
        import psycopg

        if not self.params:
            raise TargetFailed("dsn is not a valid PostgreSQL connection string")
        host = self.params.get("host") or self.params.get("hostaddr") or ""
        if not host or "," in host or host.startswith("/"):
            raise TargetFailed("dsn must name one TCP host (host=... or postgresql://host/...)")
        port = int((self.params.get("port") or "5432").split(",")[0])
        # The outbound policy: resolved once, each address checked; connect to the checked one
        # (`hostaddr`), so a second lookup cannot answer differently.
        addresses = [checked_address(host, port, self.policy, "database host")]
        last: Exception | None = None
        for attempt in range(CONNECT_ATTEMPTS):
            for address in addresses:
                try:
                    return psycopg.connect(
                        self.target.dsn,
                        hostaddr=address,
                        connect_timeout=max(1, int(self.target.timeout)),
                        application_name="pageferry",
                    )
                except psycopg.OperationalError as exc:
                    last = exc
                    if "password authentication failed" in str(exc) or "does not exist" in str(exc):
                        raise
            time.sleep(0.5 * 2**attempt)
        assert last is not None
        raise last

    def load(self, plans: Sequence[TablePlan]) -> dict[str, int]:
        with self.connect() as conn:
            written = {}
            with conn.transaction():
                for index, plan in enumerate(plans):
                    written[plan.table] = self._one(conn, plan, index)
            return written

    def _name(self, table: str) -> str:
        if len(table.encode()) > 63:
            raise TargetFailed(f"table {table!r}: PostgreSQL names are at most 63 bytes")
        return f"{quote(self.target.schema_)}.{quote(table)}"

    def _existing(self, conn, table: str) -> dict[str, str] | None:
        rows = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p') AND a.attnum > 0 "
            "AND NOT a.attisdropped ORDER BY a.attnum",
            (self.target.schema_, table),
        ).fetchall()
        if rows:
            return {name: pg_kind(kind) for name, kind in rows}
        exists = conn.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s",
            (self.target.schema_, table),
        ).fetchone()
        return {} if exists else None

    def _create(self, conn, name: str, columns: dict[str, str], temp: bool = False) -> None:
        spec = ", ".join(f"{quote(c)} {PG_TYPES[k]}" for c, k in columns.items())
        conn.execute(f"CREATE {'TEMP ' if temp else ''}TABLE {name} ({spec}){' ON COMMIT DROP' if temp else ''}")

    def _copy(self, conn, name: str, plan: TablePlan) -> int:
        columns = list(plan.load)
        with conn.cursor() as cur:
            with cur.copy(f"COPY {name} ({', '.join(quote(c) for c in columns)}) FROM STDIN (FORMAT csv)") as copy:
                for chunk in csv_chunks(plan.parquet, plan.load):
                    copy.write(chunk)
            return cur.rowcount

    def _one(self, conn, plan: TablePlan, index: int) -> int:
        target = self.target
        table = plan.table
        name = self._name(table)
        if not plan.load:
            return 0  # a source without columns (no rows): nothing to load
        settle_schema(plan, self._existing(conn, table), target.schema_change == "freeze")
        assert plan.final is not None
        if target.mode == "replace":
            new = self._name(f"{table}__new")
            conn.execute(f"DROP TABLE IF EXISTS {new}")
            self._create(conn, new, plan.final)
            rows = self._copy(conn, new, plan) if plan.rows else 0
            if plan.existing is not None:
                conn.execute(f"DROP TABLE {name}")
            conn.execute(f"ALTER TABLE {new} RENAME TO {quote(table)}")
            return rows
        if target.mode == "append":
            self._evolve(conn, name, plan)
            return self._copy(conn, name, plan) if plan.rows else 0
        # merge: stage (with each row's position), then upsert the newest row of each key
        stage = quote(f"pageferry_stage_{index}")
        self._create(conn, stage, {c: plan.final[c] for c in plan.load}, True)
        conn.execute(f"ALTER TABLE {stage} ADD COLUMN pageferry_row bigint GENERATED ALWAYS AS IDENTITY")
        if plan.rows:
            self._copy(conn, stage, plan)
        self._evolve(conn, name, plan)
        key = list(target.key or ())
        self._unique_key(conn, name, table, key)
        columns = list(plan.load)
        keys = ", ".join(quote(k) for k in key)
        action = _upsert_action(columns, key)
        names = ", ".join(quote(c) for c in columns)
        with conn.cursor() as cur:
            cur.execute(
                f"INSERT INTO {name} ({names}) SELECT {names} FROM "
                f"(SELECT DISTINCT ON ({keys}) * FROM {stage} ORDER BY {keys}, pageferry_row DESC) AS newest "
                f"ON CONFLICT ({keys}) {action}"
            )
            return cur.rowcount

    def _evolve(self, conn, name: str, plan: TablePlan) -> None:
        assert plan.final is not None
        if plan.existing is None:
            self._create(conn, name, plan.final)
            return
        for column in plan.widened:
            kind = PG_TYPES[plan.final[column]]
            using = f"{quote(column)}::text" if plan.final[column] == "text" else f"{quote(column)}::{kind}"
            conn.execute(f"ALTER TABLE {name} ALTER COLUMN {quote(column)} TYPE {kind} USING {using}")
        for column in plan.added:
            conn.execute(f"ALTER TABLE {name} ADD COLUMN {quote(column)} {PG_TYPES[plan.final[column]]}")

    def _unique_key(self, conn, name: str, table: str, key: list[str]) -> None:
        import psycopg

        index = quote(f"{table}__pf_key"[:63])
        try:
            with conn.transaction():  # a savepoint: a failure here is reported, not a dead transaction
                conn.execute(
                    f"CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {name} ({', '.join(quote(k) for k in key)})"
                )
        except psycopg.Error as exc:
            raise TargetFailed(
                f"table {table!r}: cannot make key ({', '.join(key)}) unique for merge "
                f"(the table holds duplicate keys?): {str(exc).splitlines()[0]}"
            ) from None


def csv_chunks(path: Path, load: dict[str, str]) -> Iterator[bytes]:
    """The Parquet file as CSV for `COPY ... (FORMAT csv)`, batch by batch: nulls unquoted and
    empty, strings always quoted (an empty string stays ''), lists/objects as JSON text,
    binary as bytea hex."""
    nested = [c for c, k in load.items() if k == "json"]
    binary = [c for c, k in load.items() if k == "binary"]
    options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=list(load)):
        table = pa.Table.from_batches([batch])
        if nested or binary:
            table = _text_ready(table, nested, binary)
        sink = io.BytesIO()
        pacsv.write_csv(table, sink, options)
        yield sink.getvalue()


def _text_ready(table: pa.Table, nested: list[str], binary: list[str]) -> pa.Table:
    from engine.export.encode import json_text

    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    exprs = [json_text(pl.col(c), frame.schema[c]).alias(c) for c in nested]
    exprs += [(pl.lit("\\x") + pl.col(c).bin.encode("hex")).alias(c) for c in binary]
    return frame.with_columns(exprs).to_arrow()
