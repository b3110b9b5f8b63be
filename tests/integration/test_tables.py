"""Table targets (issue 19): DuckDB and PostgreSQL tables loaded from the shaped rows - append,
replace (atomic swap), merge (upsert, newest wins, null keys refused), schema_change evolve /
freeze - through the real CLI, against the local test API (tests/testapi) or a scripted API for
exact values, a throwaway PostgreSQL cluster (tests/support/postgres.py) and DuckDB files."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path

import duckdb
import psycopg
import pytest

from engine.deliver.table_targets import TableJob
from engine.deliver.tables import DuckdbLoader, plan_tables
from engine.spec.models import parse_spec
from tests.conftest import write_spec
from tests.support.postgres import PASSWORD, postgres_dsn  # noqa: F401 (the fixture)
from tests.support.scripted_server import Reply, ScriptedServer
from tests.testapi.records import record

DATABASES = ["duckdb", "postgres"]


@pytest.fixture
def scripted():
    server = ScriptedServer()
    yield server
    server.close()


class Db:
    """One database under test: the target to put in a spec, and queries to read it back."""

    def __init__(self, kind: str, tmp_path: Path, dsn: str, schema: str):
        self.kind, self.dsn, self.schema = kind, dsn, schema
        self.path = tmp_path / "warehouse.duckdb"
        if kind == "postgres":
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                conn.execute(f'CREATE SCHEMA "{schema}"')

    def target(self, **fields) -> dict:
        if self.kind == "duckdb":
            return {"type": "duckdb", "path": str(self.path), **fields}
        return {"type": "postgres", "dsn": "${PG_DSN}", "schema": self.schema, **fields}

    @property
    def env(self) -> dict:
        return {"PG_DSN": self.dsn}

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        if self.kind == "duckdb":
            with duckdb.connect(str(self.path), read_only=True) as con:
                return con.execute(sql, list(params)).fetchall()
        with psycopg.connect(self.dsn, options=f"-c search_path={self.schema}") as conn:
            return conn.execute(sql.replace("?", "%s"), params).fetchall()

    def count(self, table: str) -> int:
        return self.query(f'SELECT count(*) FROM "{table}"')[0][0]

    def columns(self, table: str) -> dict[str, str]:
        schema = "main" if self.kind == "duckdb" else self.schema
        rows = self.query(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            (schema, table),
        )
        return {name: kind.lower() for name, kind in rows}

    def json_value(self, value):
        return json.loads(value) if isinstance(value, str) else value


@pytest.fixture(params=DATABASES)
def db(request, tmp_path) -> Db:
    dsn = request.getfixturevalue("postgres_dsn") if request.param == "postgres" else ""
    schema = "t_" + request.node.name.split("[")[0].removeprefix("test_")[:40]
    return Db(request.param, tmp_path, dsn, schema)


def run_spec(cli, tmp_path: Path, db: Db, spec: dict, name: str = "spec"):
    path = write_spec(tmp_path / f"{name}.json", spec)
    return cli("run", str(path), "-o", str(tmp_path / f"{name}-out"), env=db.env)


def items_spec(api, n: int, target: dict, name: str = "items", **extra) -> dict:
    return {
        "name": name,
        "sources": [{"url": api.url("/items/page"), "params": {"n": n}, "pagination": {"type": "page", "size": 100}}],
        "deliver": [target],
        **extra,
    }


def rows_spec(server: ScriptedServer, path: str, rows: list[dict], target: dict, name: str = "rows", **extra) -> dict:
    server.replace("GET", path, Reply.json(rows))
    return {"name": name, "sources": [{"url": server.url(path)}], "deliver": [target], **extra}


def delivery(run) -> dict:
    assert run.code in (0, 3), run.stderr
    (outcome,) = run.summary["deliveries"]
    return outcome


def assert_no_dsn(run, db: Db) -> None:
    for text in (run.stdout, run.stderr):
        assert PASSWORD not in text
        if db.dsn:
            assert db.dsn not in text


# ------------------------------------------------------------------ append


def test_append_rows_and_values(cli, tmp_path, api, scripted, db):
    spec = items_spec(api, 250, db.target(table="{source}"))
    first = run_spec(cli, tmp_path, db, spec)
    assert first.code == 0, first.stderr
    outcome = delivery(first)
    assert outcome["ok"] and outcome["rows"] == 250 and outcome["mode"] == "append"
    assert outcome["seconds"] >= 0
    assert db.count("items") == 250
    second = run_spec(cli, tmp_path, db, spec)
    assert second.code == 0 and delivery(second)["rows"] == 250
    assert db.count("items") == 500
    got = db.query("SELECT id, name, sku, price, note, active FROM items WHERE id IN (1, 5, 250) ORDER BY id LIMIT 3")
    for row in got:
        rec = record(row[0])
        assert row[1:] == (rec["name"], rec["sku"], rec["price"], rec["note"], rec["active"])
    assert_no_dsn(first, db)

    # text that looks like numbers stays text; null and empty string stay distinct
    rows = [
        {"id": 1, "code": "007", "s": "", "n": None, "big": "12345678901234567890"},
        {"id": 2, "code": "1e3", "s": None, "n": "x", "big": "0.10"},
        {"id": 3, "code": " 42 ", "s": 'a,"b"\nc', "n": "", "big": "-0"},
    ]
    run = run_spec(cli, tmp_path, db, rows_spec(scripted, "/rows", rows, db.target(table="exact")), "exact")
    assert run.code == 0, run.stderr
    got = db.query("SELECT id, code, s, n, big FROM exact ORDER BY id")
    assert got == [tuple(r[k] for k in ("id", "code", "s", "n", "big")) for r in rows]
    assert db.query("SELECT count(*) FROM exact WHERE s IS NULL")[0][0] == 1
    assert db.query("SELECT count(*) FROM exact WHERE s = ''")[0][0] == 1
    assert db.columns("exact")["code"] in ("text", "varchar", "character varying")


# ------------------------------------------------------------------ replace


def test_replace_swaps_the_table(cli, tmp_path, api, db):
    first = run_spec(cli, tmp_path, db, items_spec(api, 300, db.target(mode="replace")))
    assert first.code == 0 and delivery(first)["rows"] == 300
    second = run_spec(cli, tmp_path, db, items_spec(api, 120, db.target(mode="replace")))
    assert second.code == 0, second.stderr
    assert delivery(second)["mode"] == "replace"
    assert db.count("items") == 120
    assert db.query("SELECT min(id), max(id) FROM items") == [(1, 120)]


def test_replace_concurrent_reader_postgres(cli, tmp_path, api, postgres_dsn):  # noqa: F811
    db = Db("postgres", tmp_path, postgres_dsn, "t_replace_reader")
    assert run_spec(cli, tmp_path, db, items_spec(api, 3000, db.target(mode="replace"))).code == 0
    seen: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def reader():
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            while not stop.is_set():
                try:
                    seen.append(conn.execute('SELECT count(*) FROM "t_replace_reader".items').fetchone()[0])
                except psycopg.Error as exc:
                    errors.append(str(exc))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for n in (5000, 3000, 5000):
            run = run_spec(cli, tmp_path, db, items_spec(api, n, db.target(mode="replace")))
            assert run.code == 0, run.stderr
    finally:
        stop.set()
        thread.join(10)
    assert not errors, errors[:3]
    assert len(seen) > 10
    assert set(seen) <= {3000, 5000}, sorted(set(seen))
    assert db.count("items") == 5000


def test_replace_concurrent_reader_duckdb(tmp_path):
    """DuckDB allows one writing process per file: the reader is another connection of the
    same database, as a reader of a DuckDB file would be; the swap is seen whole or not at all."""
    import polars as pl

    path = tmp_path / "w.duckdb"
    job = TableJob(str(tmp_path))
    job.tables_dir.mkdir()
    target = {"type": "duckdb", "path": str(path), "table": "t", "mode": "replace"}
    model = parse_spec({"sources": [{"url": "http://x.invalid/"}], "deliver": [target]}).deliver[0]
    con = duckdb.connect(str(path))
    seen: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def reader():
        cur = con.cursor()
        while not stop.is_set():
            try:
                seen.append(cur.execute("SELECT count(*) FROM t").fetchone()[0])
            except duckdb.Error as exc:
                if "does not exist" not in str(exc) or seen:
                    errors.append(str(exc))

    for n in (20_000, 50_000, 20_000, 50_000):
        pl.DataFrame({"id": range(n), "v": [f"v{i}" for i in range(n)]}).write_parquet(job.tables_dir / "0.parquet")
        DuckdbLoader(model, con.cursor()).load(plan_tables(model, job, ["t"]))
        if n == 20_000 and not seen:
            thread = threading.Thread(target=reader, daemon=True)
            thread.start()
            time.sleep(0.05)
    stop.set()
    thread.join(10)
    assert not errors, errors[:3]
    assert seen and set(seen) <= {20_000, 50_000}
    con.close()


# ------------------------------------------------------------------ merge


def test_merge_upserts_newest_wins(cli, tmp_path, scripted, db):
    target = db.target(table="people", mode="merge", key=["id"])
    load1 = [{"id": i, "name": f"old-{i}", "score": i} for i in (1, 2, 3)]
    run = run_spec(cli, tmp_path, db, rows_spec(scripted, "/p", load1, target))
    assert run.code == 0, run.stderr
    load2 = [
        {"id": 3, "name": "three-first", "score": 30},
        {"id": 4, "name": "four", "score": 40},
        {"id": 2, "name": "two-new", "score": 20},
        {"id": 3, "name": "three-last", "score": 33},
    ]
    run = run_spec(cli, tmp_path, db, rows_spec(scripted, "/p", load2, target))
    assert run.code == 0, run.stderr
    outcome = delivery(run)
    assert outcome["ok"] and outcome["mode"] == "merge" and outcome["rows"] == 3
    got = db.query("SELECT id, name, score FROM people ORDER BY id")
    assert got == [(1, "old-1", 1), (2, "two-new", 20), (3, "three-last", 33), (4, "four", 40)]
    assert db.query("SELECT count(DISTINCT id) = count(*) FROM people") == [(True,)]

    # a null key fails the target; nothing is written
    load3 = [{"id": 5, "name": "five", "score": 5}, {"id": None, "name": "nobody", "score": 0}]
    run = run_spec(cli, tmp_path, db, rows_spec(scripted, "/p", load3, target))
    assert run.code == 3, run.stderr
    outcome = delivery(run)
    assert not outcome["ok"] and "null key" in outcome["error"] and "'id'" in outcome["error"]
    assert db.query("SELECT id, name, score FROM people ORDER BY id") == got
    assert_no_dsn(run, db)


# ------------------------------------------------------------------ schema_change


def test_freeze_fails_naming_the_column(cli, tmp_path, scripted, db):
    target = db.target(table="frozen", schema_change="freeze")
    base = [{"id": 1, "name": "a"}]
    assert run_spec(cli, tmp_path, db, rows_spec(scripted, "/f", base, target)).code == 0
    for rows, column in (
        ([{"id": 2, "name": "b", "extra": "x"}], "extra"),  # added
        ([{"id": 2}], "name"),  # missing
        ([{"id": "two", "name": "b"}], "id"),  # retyped
    ):
        run = run_spec(cli, tmp_path, db, rows_spec(scripted, "/f", rows, target))
        assert run.code == 3, run.stderr
        outcome = delivery(run)
        assert not outcome["ok"] and f"column '{column}'" in outcome["error"], outcome
        assert f"'{column}'" in run.stderr
        assert db.query("SELECT id, name FROM frozen") == [(1, "a")]
        assert list(db.columns("frozen")) == ["id", "name"]
    assert run_spec(cli, tmp_path, db, rows_spec(scripted, "/f", [{"id": 2, "name": "b"}], target)).code == 0
    assert db.count("frozen") == 2


def test_evolve_adds_columns_and_widens(cli, tmp_path, scripted, db):
    target = db.target(table="evolving")
    assert run_spec(cli, tmp_path, db, rows_spec(scripted, "/e", [{"id": 1, "amount": 5, "code": 7}], target)).code == 0
    before = db.columns("evolving")
    assert before["amount"] in ("bigint",)
    rows = [{"id": 2, "amount": 2.5, "code": "X-7", "added": "new"}]
    run = run_spec(cli, tmp_path, db, rows_spec(scripted, "/e", rows, target))
    assert run.code == 0, run.stderr
    after = db.columns("evolving")
    assert list(after) == ["id", "amount", "code", "added"]
    assert after["amount"] in ("double", "double precision")
    assert after["code"] in ("text", "varchar")
    got = db.query("SELECT id, amount, code, added FROM evolving ORDER BY id")
    assert got == [(1, 5.0, "7", None), (2, 2.5, "X-7", "new")]
    # a column missing from a load is left NULL; a narrower value is not a narrowing
    run = run_spec(cli, tmp_path, db, rows_spec(scripted, "/e", [{"id": 3, "amount": 1}], target))
    assert run.code == 0, run.stderr
    assert db.query("SELECT amount, code, added FROM evolving WHERE id = 3") == [(1.0, None, None)]
    assert db.columns("evolving") == after


# ------------------------------------------------------------------ types, several sources, secrets


def test_timestamps_and_json(cli, tmp_path, scripted, db):
    rows = [
        {
            "id": 1,
            "at": "2024-03-01T10:30:00+02:00",
            "day": "2024-03-01",
            "tags": ["a", "b"],
            "meta": [{"k": 1, "s": "x"}],
        },
        {"id": 2, "at": "2024-03-01T08:30:00Z", "day": None, "tags": [], "meta": None},
    ]
    columns = [
        {"name": "id"},
        {"name": "at", "type": "datetime"},
        {"name": "day", "type": "date"},
        {"name": "tags"},
        {"name": "meta"},  # objects are flattened to meta.k...; a list of objects stays whole
    ]
    run = run_spec(cli, tmp_path, db, rows_spec(scripted, "/t", rows, db.target(table="typed"), columns=columns))
    assert run.code == 0, run.stderr
    kinds = db.columns("typed")
    assert kinds["at"] in ("timestamp with time zone",)
    assert kinds["day"] == "date"
    assert kinds["tags"] in ("json", "jsonb") and kinds["meta"] in ("json", "jsonb")
    got = db.query('SELECT id, "at", "day", tags, meta FROM typed ORDER BY id')
    utc = dt.UTC
    assert [r[1].astimezone(utc) for r in got] == [dt.datetime(2024, 3, 1, 8, 30, tzinfo=utc)] * 2
    assert got[0][2] == dt.date(2024, 3, 1) and got[1][2] is None
    assert db.json_value(got[0][3]) == ["a", "b"] and db.json_value(got[1][3]) == []
    assert db.json_value(got[0][4]) == [{"k": 1, "s": "x"}] and got[1][4] is None


def test_several_sources_several_tables(cli, tmp_path, api, db):
    spec = {
        "name": "multi",
        "sources": [
            {
                "name": "alpha",
                "url": api.url("/items/page"),
                "params": {"n": 120},
                "pagination": {"type": "page", "size": 50},
            },
            {
                "name": "beta",
                "url": api.url("/items/page"),
                "params": {"n": 70},
                "pagination": {"type": "page", "size": 50},
            },
        ],
        "export": {"format": "zip"},
        "deliver": [db.target(table="raw_{source}")],
    }
    run = run_spec(cli, tmp_path, db, spec)
    assert run.code == 0, run.stderr
    outcome = delivery(run)
    assert outcome["tables"] == {"raw_alpha": 120, "raw_beta": 70} and outcome["rows"] == 190
    assert db.count("raw_alpha") == 120 and db.count("raw_beta") == 70


def test_dsn_never_shown(cli, tmp_path, api, postgres_dsn):  # noqa: F811
    db = Db("postgres", tmp_path, postgres_dsn, "t_secret")
    wrong = postgres_dsn.replace(PASSWORD, "wrong-pw-Qz81")
    spec = items_spec(api, 30, db.target(table="items"), webhook=None)
    spec.pop("webhook")
    run = cli("run", str(write_spec(tmp_path / "s.json", spec)), env={"PG_DSN": wrong})
    assert run.code == 3
    outcome = delivery(run)
    assert not outcome["ok"] and outcome["error"]
    for text in (run.stdout, run.stderr):
        assert "wrong-pw-Qz81" not in text and wrong not in text
    good = cli("run", str(write_spec(tmp_path / "s.json", spec)), env={"PG_DSN": postgres_dsn})
    assert good.code == 0, good.stderr
    assert_no_dsn(good, db)
    assert PASSWORD not in json.dumps(good.summary)
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".log", ".txt", ".csv"):
            assert PASSWORD not in path.read_text(errors="replace"), path


def test_spec_errors_name_the_field():
    from engine.errors import SpecError

    def problems(target: dict) -> list[tuple[str, str]]:
        with pytest.raises(SpecError) as info:
            parse_spec({"sources": [{"url": "http://x.invalid/"}], "deliver": [target]})
        return [(d.field, d.message) for d in info.value.details]

    assert problems({"type": "postgres", "dsn": "${PG}", "mode": "merge"})[0][0] == "deliver.0.key"
    assert problems({"type": "duckdb", "path": "w.duckdb", "mode": "merge", "key": []})[0][0] == "deliver.0.key"
    assert problems({"type": "duckdb", "path": "w.duckdb", "mode": "upsert"})[0][0] == "deliver.0.mode"
    assert problems({"type": "duckdb", "path": "w.duckdb", "schema_change": "x"})[0][0] == "deliver.0.schema_change"
    assert problems({"type": "postgres"})[0][0] == "deliver.0.dsn"


def test_empty_source_writes_nothing(cli, tmp_path, api, scripted, db):
    target = db.target(table="maybe", schema_change="freeze")
    assert run_spec(cli, tmp_path, db, rows_spec(scripted, "/m", [{"id": 1}], target)).code == 0
    spec = {"name": "empty", "sources": [{"url": api.url("/empty"), "records": "data"}], "deliver": [target]}
    run = run_spec(cli, tmp_path, db, spec, "empty")
    assert run.code == 0, run.stderr
    assert delivery(run)["rows"] == 0
    assert db.query("SELECT id FROM maybe") == [(1,)]


def test_dsn_is_a_secret_in_the_spec():
    from engine.spec.models import spec_to_json
    from engine.spec.redact import resolve

    dsn = f"postgresql://loader:{PASSWORD}@db.example.com:5432/analytics"
    for given, env in (("${PG_DSN}", {"PG_DSN": dsn}), (dsn, {})):
        spec = parse_spec({"sources": [{"url": "http://x.invalid/"}], "deliver": [{"type": "postgres", "dsn": given}]})
        resolved, redactor = resolve(spec, env)
        shown = redactor.spec(spec_to_json(resolved))
        assert shown["deliver"][0]["dsn"] == "***"
        assert PASSWORD not in json.dumps(shown)
        assert PASSWORD not in redactor.text(f"could not connect with {dsn}")
