"""RESULT_STORE=s3://bucket/prefix in the real service (gunicorn; moto's S3 server on 127.0.0.1):
uploads and results go to the bucket, so an instance that did not run a task serves its download
(streamed from the bucket, the same bytes and headers) and one that did not receive the upload
runs it; expiry and deletion empty the bucket; the secret key is shown nowhere."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.delivery_servers import S3_KEY, S3_SECRET, S3Server
from tests.support.readback import rows_of
from tests.support.specs import page_spec

API = "/api/export"
BUCKET = "pageferry-results"
PREFIX = "svc"
SAME_HEADERS = ("Content-Type", "Content-Disposition", "Content-Length", "X-Content-SHA256", "Accept-Ranges")


@pytest.fixture(scope="module")
def s3():
    with S3Server() as server:
        server.bucket(BUCKET)
        yield server


def store_env(s3, bucket: str = BUCKET) -> dict:
    return {
        "RESULT_STORE": f"s3://{bucket}/{PREFIX}",
        "RESULT_STORE_ENDPOINT_URL": s3.endpoint,
        "RESULT_STORE_ACCESS_KEY": S3_KEY,
        "RESULT_STORE_SECRET_KEY": S3_SECRET,
        "RESULT_STORE_REGION": "us-east-1",
    }


def keys(s3, below: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/{below}").get("Contents", [])
    return sorted(o["Key"].removeprefix(f"{PREFIX}/") for o in listing)


def test_an_instance_runs_a_task_it_did_not_receive_and_the_other_serves_it_from_the_bucket(
    api, s3, service_factory, tmp_path
):
    # two instances, each its own DATA_DIR, one task store (a SQLite file both can open here)
    shared = {**store_env(s3), "DATABASE_URL": f"sqlite:///{tmp_path / 'tasks.db'}"}
    a = service_factory({**shared, "MAX_CONCURRENT_TASKS": "1"}, data_dir=tmp_path / "a")
    busy = a.start_task(page_spec(api, name="busy", n=20000, size=20, delay_ms=200))
    assert a.wait(busy, timeout=30, until=("running",))["status"] == "running"  # a's one slot is taken
    b = service_factory(shared, data_dir=tmp_path / "b")

    # a receives the ids file; b runs the task (a has no free slot): b takes the file from the bucket
    spec = {"name": "by-file", "sources": [{"url": api.url("/items/by-id") + "/{id}", "ids": {"file": "ids.csv"}}]}
    files = {"ids.csv": ("ids.csv", b"id\n7\n3\n11\n", "text/csv")}
    r = a.call("POST", f"{API}/start", data={"spec": json.dumps(spec)}, files=files)
    assert r.status_code == 202, r.text
    task_id = r.json()["task_id"]
    done = b.wait(task_id)
    assert done["status"] == "completed" and done["result"]["rows"] == 9, done
    assert task_id in b.started_tasks() and task_id not in a.started_tasks()
    assert a.call("DELETE", f"{API}/cancel/{busy}").ok

    # the result and the kept upload are in the bucket; the work (shards) is gone from it
    assert keys(s3, f"results/{task_id}/") == [
        f"results/{task_id}/by-file.csv",
        f"results/{task_id}/uploads/source-0.csv",
    ]
    assert keys(s3, f"work/{task_id}/") == []

    local = b.download(task_id)  # b ran it: from its disk
    assert local.status_code == 200
    streamed = a.download(task_id)  # a never had it: from the bucket
    assert streamed.status_code == 200, streamed.text
    assert streamed.content == local.content == s3.read(BUCKET, f"{PREFIX}/results/{task_id}/by-file.csv")
    expected = sorted(i * 1000 + k for i in (7, 3, 11) for k in (1, 2, 3))  # /items/by-id/{i}: 3 records each
    assert sorted(int(row["id"]) for row in rows_of(streamed.content, "csv")) == expected
    assert {h: streamed.headers.get(h) for h in SAME_HEADERS} == {h: local.headers.get(h) for h in SAME_HEADERS}
    part = a.call("GET", f"{API}/download/{task_id}", headers={"Range": "bytes=10-99"})
    assert part.status_code == 206 and part.content == local.content[10:100]
    assert part.headers["Content-Range"] == f"bytes 10-99/{len(local.content)}"

    # a re-run on a, which never had the upload: taken from beside the result in the bucket
    again = a.call("POST", f"{API}/rerun/{task_id}")
    assert again.status_code == 202, again.text
    assert a.wait(again.json()["task_id"])["result"]["rows"] == 9

    for instance in (a, b):
        assert S3_SECRET not in instance.log_path.read_text(errors="replace")
        assert S3_SECRET not in json.dumps(instance.status(task_id))


def test_expiry_and_deletion_remove_the_tasks_objects(api, s3, service_factory, tmp_path):
    from config import load_settings
    from service.background.runner import TaskRunner
    from service.store import open_store

    service = service_factory(store_env(s3), data_dir=tmp_path / "d")
    deleted, expiring = (service.start_task(page_spec(api, name=name, n=200, size=20)) for name in ("gone", "old"))
    for task_id in (deleted, expiring):
        assert service.wait(task_id)["status"] == "completed"
        assert keys(s3, f"results/{task_id}/") != []

    assert service.call("DELETE", f"{API}/tasks/{deleted}").json()["deleted"] is True
    assert keys(s3, f"results/{deleted}/") == [] and keys(s3, f"work/{deleted}/") == []
    assert keys(s3, f"results/{expiring}/") != []

    # the sweep of any instance whose RESULT_TTL has passed (here: 1 s)
    settings = load_settings({"DATA_DIR": str(tmp_path / "d"), "RESULT_TTL": "1", **store_env(s3)})
    time.sleep(1.1)
    assert TaskRunner(settings, open_store(settings)).sweep()["results"] == 1
    assert keys(s3, f"results/{expiring}/") == []
    assert service.download(expiring).status_code == 410


def test_a_bucket_it_cannot_use_stops_the_service_saying_why(s3, service_factory, tmp_path):
    with pytest.raises(RuntimeError) as refused:
        service_factory(store_env(s3, bucket="no-such-bucket"), data_dir=tmp_path / "x")
    log = str(refused.value)
    assert "RESULT_STORE s3://no-such-bucket/svc: cannot list the bucket: S3 NoSuchBucket" in log
    assert S3_SECRET not in log
