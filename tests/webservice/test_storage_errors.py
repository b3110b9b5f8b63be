"""Contract §3: when the server itself cannot - its store's volume is full, the store is locked
or cannot be opened - the answer is 507 / 503 (with Retry-After) JSON, never a 500, and nothing
is half-written: no task, no upload, no schedule, the configuration unchanged; once space is
freed everything works and the database passes `PRAGMA integrity_check`."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest

from config import load_settings
from service import create_app

SPEC = {"name": "full-disk", "sources": [{"url": "http://127.0.0.1:9/items"}]}
ENV = {"ALLOWED_SOURCE_HOSTS": "127.0.0.1"}  # the specs' loopback sources
BIG = "x" * 300_000  # more than a full volume has left; less than MAX_SPEC_BYTES


@pytest.fixture
def small_volume(tmp_path):
    """A 6 MiB tmpfs (the review's setup). Mounting needs root, as in CI: without it this fails."""
    mount = tmp_path / f"vol-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True)
    assert done.returncode == 0, f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(volume: Path) -> Path:
    filler = volume / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return filler


def assert_storage_error(response, status: int) -> dict:
    assert response.status_code == status, f"{response.status_code} {response.text[:300]}"
    body = response.json()
    assert set(body) >= {"error", "message", "details"}, body
    if status == 503:
        assert response.headers.get("Retry-After"), response.headers
    return body


def test_full_volume_answers_507_and_nothing_is_half_written(service_factory, small_volume):
    data = small_volume / "data"
    service = service_factory(data_dir=data, env=ENV)
    assert service.call("POST", "/api/export/configure", json={"source_url": "http://127.0.0.1:9/a"}).status_code == 200
    assert service.call("POST", "/api/export/inputs", json={"name": "id", "column": 0}).status_code == 200
    profile_before = service.call("GET", "/api/export/configure").json()
    inputs_before = service.call("GET", "/api/export/inputs-list").json()
    filler = fill(small_volume)

    big_spec = {**SPEC, "sources": [{"url": "http://127.0.0.1:9/items", "params": {"q": BIG}}]}
    attempts = [
        ("POST", "/api/export/configure", {"json": {"params": {"q": BIG}}}),
        ("POST", "/api/export/inputs", {"json": {"name": "n" * 100, "source": "a." + "b" * len(BIG)}}),
        ("POST", "/api/export/bulk-inputs", {"json": [{"name": f"c{i}", "source": "x" * 5000} for i in range(80)]}),
        ("POST", "/api/export/start", {"json": big_spec}),
        ("POST", "/api/export/start", {}),  # the stored profile, with its (large) configuration
        ("POST", "/api/export/schedules", {"json": {"cron": "0 1 * * *", "spec": big_spec}}),
    ]
    for method, path, kwargs in attempts:
        assert_storage_error(service.call(method, path, **kwargs), 507)
    # an ids file uploaded with the spec: its write hits ENOSPC -> 507, no upload left behind
    ids_spec = {**SPEC, "sources": [{"url": "http://127.0.0.1:9/items?id={id}", "ids": {"file": "ids.csv"}}]}
    upload = ("ids.csv", b"id\n" + b"1234567890\n" * 200_000, "text/csv")
    response = service.call("POST", "/api/export/start", data={"spec": json.dumps(ids_spec)}, files={"ids": upload})
    assert_storage_error(response, 507)

    # nothing half-written
    assert service.call("GET", "/api/export/tasks").json()["tasks"] == []
    assert service.call("GET", "/api/export/schedules").json()["schedules"] == []
    assert service.call("GET", "/api/export/configure").json() == profile_before
    assert service.call("GET", "/api/export/inputs-list").json() == inputs_before
    work = load_settings({"DATA_DIR": str(data)}).work_dir
    assert not work.exists() or not any(work.iterdir()), list(work.rglob("*"))
    assert service.call("GET", "/healthz").status_code == 200

    # space freed: everything works again, on the same workers
    filler.unlink()
    assert service.call("POST", "/api/export/configure", json={"params": {"q": BIG}}).status_code == 200
    task_id = service.start_task(big_spec)
    response = service.call("POST", "/api/export/schedules", json={"cron": "0 1 * * *", "spec": SPEC})
    assert response.status_code == 201, response.text
    response = service.call("POST", "/api/export/start", data={"spec": json.dumps(ids_spec)}, files={"ids": upload})
    assert response.status_code == 202, response.text
    assert len(service.call("GET", "/api/export/tasks").json()["tasks"]) == 2
    assert service.status(task_id)["task_id"] == task_id
    db = sqlite3.connect(load_settings({"DATA_DIR": str(data)}).db_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()


# ------------------------------------------------------------------ 503: in process, real SQLite errors


@pytest.fixture
def app(tmp_path):
    return create_app(load_settings({"DATA_DIR": str(tmp_path / "data"), **ENV}), run_tasks=False)


def test_locked_store_answers_503_with_retry_after_and_changes_nothing(app):
    client = app.test_client()
    store = app.extensions["pageferry"].store
    assert client.post("/api/export/configure", json={"source_url": "http://127.0.0.1:9/a"}).status_code == 200
    store._connection().execute("PRAGMA busy_timeout=200")  # the test client runs in this thread
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holding the write lock past the busy timeout
    try:
        for path, body in [
            ("/api/export/configure", {"source_url": "http://127.0.0.1:9/b"}),
            ("/api/export/inputs", {"name": "id", "column": 0}),
            ("/api/export/start", SPEC),
            ("/api/export/schedules", {"cron": "0 1 * * *", "spec": SPEC}),
        ]:
            response = client.post(path, json=body)
            assert response.status_code == 503, (path, response.get_data(as_text=True))
            assert response.headers["Retry-After"]
            assert response.get_json()["error"] == "unavailable"
    finally:
        other.execute("ROLLBACK")
        other.close()
    # the lock is gone: the same connection works, nothing was written meanwhile
    assert client.get("/api/export/configure").get_json()["configuration"] == {"source_url": "http://127.0.0.1:9/a"}
    assert client.get("/api/export/tasks").get_json()["tasks"] == []
    assert client.post("/api/export/start", json=SPEC).status_code == 202


def test_store_that_cannot_be_opened_answers_503(app, tmp_path):
    client = app.test_client()
    store = app.extensions["pageferry"].store
    store.close()
    store.path = tmp_path / "gone" / "pageferry.sqlite3"  # its folder removed under the service
    response = client.get("/api/export/tasks")
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.headers["Retry-After"]
    response = client.post("/api/export/configure", json={"source_url": "http://127.0.0.1:9/b"})
    assert response.status_code == 503


def test_upload_write_hitting_enospc_is_507_and_leaves_no_folder(app, monkeypatch):
    client = app.test_client()
    work = app.extensions["pageferry"].settings.work_dir

    def no_space(self, data):
        raise OSError(28, os.strerror(28), str(self))

    monkeypatch.setattr(Path, "write_bytes", no_space)
    ids_spec = {**SPEC, "sources": [{"url": "http://127.0.0.1:9/items?id={id}", "ids": {"file": "ids.csv"}}]}
    response = client.post(
        "/api/export/start",
        data={"spec": json.dumps(ids_spec), "ids": (io.BytesIO(b"id\n1\n"), "ids.csv")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 507, response.get_data(as_text=True)
    assert response.get_json()["error"] == "insufficient_storage"
    assert not work.exists() or not any(work.iterdir())
    assert client.get("/api/export/tasks").get_json()["tasks"] == []


def test_result_write_hitting_enospc_fails_the_task_and_leaves_no_partial_file(service_factory, small_volume, api):
    """The result (or its shards) does not fit: the task fails with a clear error, no partial
    result is left, the download is a 409 - never a 500 - and after space is freed a rerun
    completes."""
    from tests.support.specs import page_spec

    data = small_volume / "data"
    service = service_factory(data_dir=data, env=ENV)
    filler = small_volume / "filler"
    filler.write_bytes(b"\0" * (5 * 1024 * 1024))  # about 1 MiB left; the export needs several
    spec = page_spec(api, n=40_000, size=1000)
    task_id = service.start_task(spec)
    status = service.wait(task_id, timeout=120)
    assert status["status"] == "failed", status
    message = (status["error"] or {}).get("message", "")
    assert "space" in message.lower() or "full" in message.lower(), status["error"]
    response = service.download(task_id)
    assert response.status_code == 409, response.text
    results = load_settings({"DATA_DIR": str(data)}).results_dir
    assert not any(p.is_file() for p in results.rglob("*")), list(results.rglob("*"))
    filler.unlink()
    task_id = service.start_task(page_spec(api, n=2000, size=500))
    assert service.wait(task_id, timeout=120)["status"] == "completed"
    assert service.download(task_id).status_code == 200
    db = sqlite3.connect(load_settings({"DATA_DIR": str(data)}).db_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()
