"""Two service instances behind one load balancer: each its own DATA_DIR, sharing the task store
(PostgreSQL, DATABASE_URL) and the result store (an S3 API, RESULT_STORE). Either answers for any
task; one SIGKILLed mid-task, the other resumes the task from the shards in the bucket and serves
its download."""

from __future__ import annotations

import time
import uuid

import psutil
import psycopg
import pytest

from tests.support.delivery_servers import S3_KEY, S3_SECRET, S3Server
from tests.support.postgres import PASSWORD, postgres_dsn  # noqa: F401 - the fixture
from tests.support.readback import rows_of
from tests.support.specs import page_spec

PAGES = 150  # 3,000 records of 20


@pytest.fixture
def shared_env(postgres_dsn):  # noqa: F811 - the fixture imported above
    """A fresh database and bucket: the settings every instance gets."""
    name = f"two_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    with S3Server() as s3:
        s3.bucket("shared")
        yield (
            {
                "DATABASE_URL": postgres_dsn.rsplit("/", 1)[0] + f"/{name}",
                "RESULT_STORE": "s3://shared/pageferry",
                "RESULT_STORE_ENDPOINT_URL": s3.endpoint,
                "RESULT_STORE_ACCESS_KEY": S3_KEY,
                "RESULT_STORE_SECRET_KEY": S3_SECRET,
                "RESULT_STORE_REGION": "us-east-1",
            },
            s3,
        )


def ids_of(content: bytes) -> list[int]:
    return [int(row["id"]) for row in rows_of(content, "csv")]


def test_an_instance_killed_mid_task_is_finished_by_the_other_from_the_bucket(
    api, service_factory, shared_env, tmp_path
):
    env, s3 = shared_env
    instances = {name: service_factory(env=env, data_dir=tmp_path / name) for name in ("a", "b")}
    task_id = instances["a"].start_task(page_spec(api, n=PAGES * 20, size=20, delay_ms=100, concurrency=2))
    deadline = time.monotonic() + 30
    while len(api.log()) < 40:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    runs = [name for name, instance in instances.items() if task_id in instance.started_tasks()]
    assert len(runs) == 1, runs  # claimed once
    killed, survivor = instances[runs[0]], instances["b" if runs[0] == "a" else "a"]
    assert survivor.status(task_id)["status"] == "running"  # any instance answers for any task
    left = killed.kill_hard()
    deadline = time.monotonic() + 10
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in left):
        assert time.monotonic() < deadline, "engine processes outlived the killed instance"
        time.sleep(0.2)
    assert len(api.log()) < PAGES

    status = survivor.wait(task_id, timeout=120)
    assert status["status"] == "completed", status
    assert task_id in survivor.started_tasks()  # resumed there, from the bucket (its DATA_DIR has no shards)
    assert status["result"]["rows"] == PAGES * 20
    content = survivor.download(task_id).content
    assert ids_of(content) == list(range(1, PAGES * 20 + 1))
    assert len(api.log()) < 1.4 * PAGES, "resumed from the shards in the bucket, not from page 1"
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket="shared").get("Contents", [])]
    assert any(f"results/{task_id}/" in key for key in keys), keys

    # the killed instance, started again on its own data directory, serves the result the other
    # one produced: from the bucket
    again = service_factory(env=env, data_dir=killed.data_dir, port=killed.port)
    assert again.status(task_id)["status"] == "completed"
    assert again.download(task_id).content == content
    for instance in (survivor, again):
        log = instance.log_path.read_text(errors="replace")
        assert PASSWORD not in log and S3_SECRET not in log
        assert PASSWORD not in str(instance.status(task_id))


def test_tasks_spread_over_both_instances_each_run_once(api, service_factory, shared_env, tmp_path):
    env, _ = shared_env
    env = {**env, "MAX_CONCURRENT_TASKS": "1"}  # per instance: two tasks at once need both
    one = service_factory(env=env, data_dir=tmp_path / "one")
    two = service_factory(env=env, data_dir=tmp_path / "two")
    tasks = [(one if i % 2 else two).start_task(page_spec(api, n=400, size=20, delay_ms=20)) for i in range(6)]
    finals = [one.wait(t, timeout=120) for t in tasks]
    assert [f["status"] for f in finals] == ["completed"] * 6
    for task_id in tasks:
        assert ids_of(two.download(task_id).content) == list(range(1, 401))
    assert len(api.log()) == 6 * 20  # every page fetched once: no task ran twice
    started = {name: instance.started_tasks() & set(tasks) for name, instance in (("one", one), ("two", two))}
    assert started["one"] and started["two"], started  # both instances worked
    assert not started["one"] & started["two"], started  # none of the tasks ran on both
