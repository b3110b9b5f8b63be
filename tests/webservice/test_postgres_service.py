"""The real service (gunicorn) on a PostgreSQL task store (DATABASE_URL=postgresql://...):
an export end to end, two instances sharing the work, a refusal to start when the server is
unreachable - and the DSN's password in no log line, status or error."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from config import load_settings
from service import create_app
from service.store import HOST
from service.store.owners import instance_of
from tests.support.postgres import PASSWORD, postgres_databases, postgres_dsn  # noqa: F401 (the fixtures)
from tests.support.readback import rows_of
from tests.support.specs import page_spec


def stored_tasks(dsn: str) -> dict[str, tuple[str, str]]:
    with psycopg.connect(dsn) as db:
        return {r[0]: (r[1], r[2]) for r in db.execute("SELECT id, status, owner FROM tasks")}


def test_an_export_runs_end_to_end_on_postgres(postgres_databases, api, service_factory):  # noqa: F811
    dsn = postgres_databases()
    service = service_factory({"DATABASE_URL": dsn, "LOG_LEVEL": "DEBUG"})
    task_id = service.start_task(page_spec(api, n=300))
    status = service.wait(task_id)
    assert status["status"] == "completed" and status["result"]["rows"] == 300, status
    download = service.download(task_id)
    assert download.status_code == 200
    assert [int(r["id"]) for r in rows_of(download.content, "csv")] == list(range(1, 301))
    # the task lives in PostgreSQL (no SQLite file), claimed by a worker of this instance
    assert stored_tasks(dsn)[task_id][0] == "completed"
    assert instance_of(stored_tasks(dsn)[task_id][1]) == f"{HOST}:{service.proc.pid}"
    assert not (service.data_dir / "pageferry.db").exists()
    seen = [
        service.call("GET", path).text for path in ("/healthz", f"/api/export/status/{task_id}", "/api/export/tasks")
    ]
    service.stop()
    log = service.log_path.read_text(errors="replace")
    assert f'"task_id":"{task_id}"' in log and "[DEBUG]" in log  # the service's log, at its most detailed
    assert PASSWORD not in log and not any(PASSWORD in text for text in seen)


def test_two_instances_share_the_queue_each_within_its_own_limit(postgres_databases, api, service_factory, tmp_path):  # noqa: F811
    dsn = postgres_databases()
    env = {"DATABASE_URL": dsn, "MAX_CONCURRENT_TASKS": "1"}
    shared = tmp_path / "shared-data"  # one volume for results: any instance serves any download
    first = service_factory(env, data_dir=shared, workers=1)
    second = service_factory(env, data_dir=shared, workers=1)
    spec = page_spec(api, n=200, size=20, concurrency=1, delay_ms=150)  # ~2 s each
    started = [first.start_task(spec) for _ in range(4)]  # all sent to the first instance
    both = False
    busiest: Counter = Counter()  # the most tasks each instance was seen running at once
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        tasks = stored_tasks(dsn)
        running = Counter(instance_of(owner) for status, owner in tasks.values() if status == "running")
        busiest |= running
        if len(running) == 2:
            both = True
        if all(tasks[t][0] == "completed" for t in started):
            break
        time.sleep(0.05)
    assert busiest == {f"{HOST}:{first.proc.pid}": 1, f"{HOST}:{second.proc.pid}": 1}
    assert both  # at one moment each instance ran one: the limit is per instance, not global
    for task_id in started:
        assert second.status(task_id)["status"] == "completed" and second.download(task_id).status_code == 200


def test_the_service_refuses_to_start_when_postgres_is_unreachable(service_factory, postgres_dsn):  # noqa: F811
    closed = postgres_dsn.rsplit(":", 1)[0] + ":1/postgres"  # nothing listens on port 1
    with pytest.raises(RuntimeError) as refused:
        service_factory({"DATABASE_URL": closed})
    said = str(refused.value)
    assert "cannot open the PostgreSQL task store postgresql://pageferry@127.0.0.1:1/postgres" in said
    assert "Connection refused" in said and PASSWORD not in said


def test_a_lost_database_answers_503_and_is_used_again_when_back(tmp_path, postgres_dsn, postgres_databases):  # noqa: F811
    dsn = postgres_databases()
    name = dsn.rsplit("/", 1)[1]
    app = create_app(load_settings({"DATA_DIR": str(tmp_path), "DATABASE_URL": dsn}), run_tasks=False)
    client = app.test_client()
    try:
        assert client.get("/healthz").status_code == 200
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            with ThreadPoolExecutor(2) as pool:  # each waits out the pool's timeout: side by side
                lost, listing = pool.map(lambda path: app.test_client().get(path), ["/healthz", "/api/export/tasks"])
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        assert lost.status_code == listing.status_code == 503 and lost.headers["Retry-After"] == "5"
        assert lost.get_json()["error"] == "unavailable" and PASSWORD not in lost.get_data(as_text=True)
        deadline = time.monotonic() + 40  # the pool reconnects by itself (its retries back off)
        while client.get("/healthz").status_code != 200:
            assert time.monotonic() < deadline, "the store did not come back"
    finally:
        app.extensions["pageferry"].store.close()
