"""The everyday combination (issues 18 and 19): a scheduled incremental job that merges into a
PostgreSQL table, run twice by the real service (gunicorn, an every-2-seconds cron). The second
run asks only for what changed since the first one's cursor, and the merge leaves one row per
id with the newest values (tests/testapi/incremental_api.py: record `i` updated at
2024-01-01 00:00Z + i minutes)."""

from __future__ import annotations

import psycopg
import requests

from tests.support.net import wait_for
from tests.support.postgres import postgres_dsn  # noqa: F401 (the fixture)

START = "2024-01-01T00:00:00Z"
SCHEMA = "t_scheduled_merge"


def minute(m: int) -> str:
    return f"2024-01-01T{m // 60:02d}:{m % 60:02d}:00Z"


def table(dsn: str) -> dict[int, tuple]:
    """The table's rows by id (checked to hold each id once)."""
    with psycopg.connect(dsn, options=f"-c search_path={SCHEMA}") as conn:
        rows = conn.execute("SELECT id, name, rev, updated_at FROM changes").fetchall()
    assert len({row[0] for row in rows}) == len(rows), "an id is in the table twice"
    return {row[0]: row[1:] for row in rows}


def scheduled_run(service, spec: dict) -> dict:
    """The first run of a new every-2-seconds schedule of `spec`, finished; the schedule is then
    deleted, so exactly one of its runs happens at a time the test controls."""
    created = service.call("POST", "/api/export/schedules", json={"cron": "* * * * * */2", "spec": spec})
    assert created.status_code == 201, created.text
    schedule_id = created.json()["schedule_id"]

    def finished() -> dict | None:
        tasks = service.call("GET", "/api/export/tasks?limit=50").json()["tasks"]
        ours = [t for t in tasks if t.get("schedule_id") == schedule_id]
        if ours:  # the first firing is in: no second one
            service.call("DELETE", f"/api/export/schedules/{schedule_id}")
        done = [t for t in ours if t["status"] in ("completed", "failed", "cancelled")]
        return done[-1] if done else None

    run = wait_for(finished, timeout=60)
    assert run["status"] == "completed", run
    tasks = service.call("GET", "/api/export/tasks?limit=50").json()["tasks"]
    assert [t["task_id"] for t in tasks if t.get("schedule_id") == schedule_id] == [run["task_id"]]
    return run


def test_a_scheduled_incremental_job_merges_only_the_changes_into_postgres(api, service_factory, postgres_dsn):  # noqa: F811
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{SCHEMA}"')
    requests.post(api.base_url + "/changes/_setup", json={"n": 30}, timeout=10).raise_for_status()
    service = service_factory({"PAGEFERRY_SECRET_PG_DSN": postgres_dsn, "MAX_CONCURRENT_TASKS": "1"})
    spec = {
        "name": "changes",
        "sources": [
            {
                "name": "changes",
                "url": api.url("/changes"),
                "pagination": {"type": "page", "size_param": "per_page", "size": 10, "total_pages": "meta.total_pages"},
                "incremental": {"cursor": "updated_at", "param": "since", "start": START, "lookback": 120},
            }
        ],
        "columns": [
            {"name": "id", "source": "id", "type": "int"},
            {"name": "name", "source": "name"},
            {"name": "rev", "source": "rev", "type": "int"},
            {"name": "updated_at", "source": "updated_at"},
        ],
        "export": {"format": "parquet"},
        "deliver": [
            {
                "type": "postgres",
                "dsn": "${PAGEFERRY_SECRET_PG_DSN}",
                "schema": SCHEMA,
                "table": "changes",
                "mode": "merge",
                "key": ["id"],
            }
        ],
    }
    first = scheduled_run(service, spec)
    assert first["status"] == "completed", first
    status = service.call("GET", f"/api/export/status/{first['task_id']}").json()
    assert status["state"] == {"changes": {"cursor": minute(30)}}
    assert [(d["ok"], d["error"]) for d in status["deliveries"]] == [(True, None)], status["deliveries"]
    loaded = table(postgres_dsn)
    assert sorted(loaded) == list(range(1, 31))
    assert loaded[7] == ("item-7", 1, minute(7))

    # Two records change and one appears (at 00:31); the next run asks from 00:30 less the 120 s lookback.
    touch = {"ids": [5, 29, 31], "at": minute(31)}
    requests.post(api.base_url + "/changes/_touch", json=touch, timeout=10).raise_for_status()
    seen = len(api.log())
    second = scheduled_run(service, spec)  # a new schedule of the same job name: the same state
    asked = {e["query"].get("since") for e in api.log(since=seen) if e["path"] == "/changes"}
    assert asked == {minute(28)}, asked
    status = service.call("GET", f"/api/export/status/{second['task_id']}").json()
    assert status["result"]["rows"] == 5  # ids 28, 30 (within the lookback), then 5, 29, 31 as touched
    assert status["state"] == {"changes": {"cursor": minute(31)}}

    merged = table(postgres_dsn)
    assert sorted(merged) == list(range(1, 32))  # one row per id: merged, not appended
    assert merged[5] == ("item-5-r2", 2, minute(31))
    assert merged[29] == ("item-29-r2", 2, minute(31))
    assert merged[31] == ("item-31", 1, minute(31))
    assert merged[7] == ("item-7", 1, minute(7))  # untouched rows keep their values
