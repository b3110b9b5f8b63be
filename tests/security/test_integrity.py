"""Security review findings F10, F11 and F13, each reproduced: a queued task whose upload is
gone must not read a file of the server's choosing, a tampered shard must not reach a result,
and nothing a client sends may answer 500."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.ipc as ipc

from engine.shards import list_shards
from tests.support.net import wait_for
from tests.support.readback import rows_of

SERVER_SIDE = "SERVER-SIDE-FILE-CONTENT-42"


def test_f10_a_queued_task_whose_upload_is_gone_never_reads_the_named_server_file(api, service_factory, tmp_path):
    server_file = tmp_path / "serverfile.csv"
    server_file.write_text(f"url\n{api.url('/items/by-id/' + SERVER_SIDE)}\n")
    service = service_factory(env={"MAX_CONCURRENT_TASKS": "1"}, workers=1)
    blocker = service.start_task(
        {
            "sources": [
                {
                    "url": api.url("/items/page"),
                    "params": {"n": 100_000, "delay_ms": 300},
                    "pagination": {"type": "page", "size": 10},
                }
            ],
            "concurrency": 1,
        }
    )
    wait_for(lambda: service.status(blocker)["status"] == "running", 30, message="the blocker runs")
    spec = {"sources": [{"url": "{id}", "ids": {"file": str(server_file), "column": "url"}}]}
    upload = f"url\n{api.url('/items/by-id/7')}\n".encode()
    started = service.call(
        "POST", "/api/export/start", data={"spec": json.dumps(spec)}, files={"ids": ("serverfile.csv", upload)}
    )
    assert started.status_code == 202, started.text
    task = started.json()["task_id"]
    assert service.status(task)["status"] == "queued"
    # an ephemeral TEMP_DIR after a restart: the upload is gone while the task waits
    shutil.rmtree(service.data_dir / "tmp" / "work" / task / "uploads")
    assert service.call("DELETE", f"/api/export/cancel/{blocker}").status_code == 200
    final = service.wait(task, timeout=60)
    assert final["status"] == "failed", final
    assert "uploaded ids file is missing" in json.dumps(final["error"])
    assert not [e for e in api.log() if SERVER_SIDE in e["path"]]  # the server's file was never read


def test_f11_a_shard_changed_on_disk_never_reaches_the_result(api, run_job, tmp_path):
    spec = {
        "sources": [{"url": api.url("/items/page"), "params": {"n": 60}, "pagination": {"type": "page", "size": 10}}],
        "export": {"format": "csv"},
    }
    workdir = tmp_path / "work"
    first = run_job(spec, workdir=workdir, output=tmp_path / "first.csv")
    shards = list_shards(workdir / "shards") if (workdir / "shards").exists() else list_shards(workdir)
    assert shards, "the run keeps its shards in its work dir"
    target = shards[0].path
    assert target is not None
    with ipc.open_file(str(target)) as reader:
        table = reader.read_all()
    ids = table.column("id").to_pylist()
    changed = table.set_column(table.schema.get_field_index("id"), "id", pa.array([999_999] + ids[1:], pa.int64()))
    with pa.OSFile(str(target), "wb") as sink, ipc.new_file(sink, changed.schema) as writer:
        writer.write_table(changed)  # same name, same metadata: only the value differs
    again = run_job(spec, workdir=workdir, output=tmp_path / "again.csv")
    rows = rows_of((tmp_path / "again.csv").read_bytes(), "csv")
    assert [int(r["id"]) for r in rows] == list(range(1, 61))
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "first.csv").read_bytes()
    assert again.rows == first.rows == 60


def test_f13_client_input_that_used_to_answer_500(service_factory):
    service = service_factory()
    deep = "[" * 100_000 + "]" * 100_000
    for route in ("/api/export/validate", "/api/export/start", "/api/export/configure", "/api/export/schedules"):
        answer = service.call("POST", route, data=deep, headers={"Content-Type": "application/json"})
        assert 400 <= answer.status_code < 500 and answer.json()["error"], (route, answer.status_code)
    nested_body = {"sources": [{"url": "https://api.example.com/x", "body": {}}]}
    node = nested_body["sources"][0]["body"]
    for _ in range(800):
        node["a"] = {}
        node = node["a"]
    answer = service.call("POST", "/api/export/validate", json=nested_body)
    assert answer.status_code == 400, answer.text
    for name in ("rep\n", "x" * 10_000):
        answer = service.call("POST", "/api/export/start", json={"name": name, "sources": [{"url": "https://a.b/"}]})
        assert answer.status_code in (400, 413), (name[:10], answer.status_code)
    assert service.call("GET", "/api/export/download/task_0123456789ab%0A").status_code == 404
