"""The service as deployed: real gunicorn (2 workers, gthread), real websockets, the local
test API as the source."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile

import psutil
import requests
import websocket

from tests.support.readback import rows_of
from tests.support.specs import page_spec
from tests.testapi.records import record

# `service` and `service_factory` (real gunicorn, one test long) come from tests/conftest.py.


def ids_of(content: bytes, fmt: str = "csv") -> list[int]:
    return [int(r["id"]) for r in rows_of(content, fmt)]


# ------------------------------------------------------------------ the seed flow


def test_seed_flow_end_to_end(api, service):
    base = "/api/export"
    assert service.call("POST", f"{base}/inputs", json={"name": "ident", "column": 0, "change_order": 1}).ok
    r = service.call("POST", f"{base}/bulk-inputs", json=[{"name": "label", "source": "name", "change_order": 2}])
    assert r.status_code == 200 and [i["name"] for i in r.json()["inputs"]] == ["ident", "label"]
    r = service.call(
        "POST",
        f"{base}/configure",
        json={
            "source_url": api.url("/items/page"),
            "file_type": "zip",
            "rate_limit": 50,
            "page_limit": 100,
            "pagination": {"type": "page", "size": 100},
            "params": {"n": 730},
        },
    )
    assert r.status_code == 200, r.text
    r = service.call("POST", f"{base}/start")
    assert r.status_code == 202
    body = r.json()
    assert set(body) >= {"task_id", "status", "status_url", "download_url", "ws_url"}
    assert body["status"] == "queued" and body["task_id"].startswith("task_") and len(body["task_id"]) == 17
    final = service.wait(body["task_id"])
    assert final["status"] == "completed", final
    assert final["result"]["rows"] == 730 and final["progress"]["percent"] == 100.0
    download = requests.get(body["download_url"], timeout=30)
    assert download.status_code == 200 and download.headers["Content-Type"] == "application/zip"
    assert "filename=export.zip" in download.headers["Content-Disposition"]
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        assert sorted(archive.namelist()) == ["export.csv", "manifest.json"]
        rows = rows_of(archive.read("export.csv"), "csv")
        manifest = json.loads(archive.read("manifest.json"))
    assert manifest["job_id"] == body["task_id"] and manifest["sources"][0]["pages"] == 8
    # the stored inputs shaped it: column 0 (`id`) as `ident`, then `name` as `label`
    assert list(rows[0]) == ["ident", "label"]
    assert [int(r["ident"]) for r in rows] == list(range(1, 731))
    assert rows[0]["label"] == record(1)["name"] and rows[-1]["label"] == record(730)["name"]


def test_full_spec_start_and_status_shape(api, service):
    task_id = service.start_task(page_spec(api, n=300, fmt="ndjson"))
    status = service.wait(task_id)
    assert set(status) >= {
        "task_id",
        "status",
        "phase",
        "progress",
        "sources",
        "created_at",
        "started_at",
        "finished_at",
        "partial",
        "error",
        "result",
    }
    assert set(status["progress"]) == {
        "pages_done",
        "pages_total",
        "rows",
        "bytes",
        "requests",
        "retries",
        "rate",
        "percent",
        "eta_seconds",
    }
    assert status["sources"] == [{"name": "items", "pages_done": 6, "pages_total": 6, "rows": 300}]
    assert status["result"]["filename"] == "items.ndjson" and status["result"]["rows"] == 300
    content = service.download(task_id)
    assert content.headers["Content-Type"] == "application/x-ndjson"
    assert ids_of(content.content, "ndjson") == list(range(1, 301))
    import hashlib

    assert hashlib.sha256(content.content).hexdigest() == status["result"]["sha256"]


def test_any_worker_answers_for_any_task(api, service):
    task_id = service.start_task(page_spec(api, n=200))
    service.wait(task_id)
    answered_by = set()
    for _ in range(40):  # fresh connections spread over both workers
        r = requests.get(service.url(f"/api/export/status/{task_id}"), headers={"Connection": "close"}, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "completed"
        answered_by.add(r.headers["X-Pageferry-Worker"])
        d = requests.get(service.url(f"/api/export/download/{task_id}"), headers={"Connection": "close"}, timeout=10)
        assert d.status_code == 200
        answered_by.add(d.headers["X-Pageferry-Worker"])
    assert len(answered_by) == 2


# ------------------------------------------------------------------ websockets


def ws_messages(service, task_id, timeout=60):
    ws = websocket.create_connection(service.url(f"/api/export/ws/{task_id}").replace("http", "ws"), timeout=timeout)
    messages = []
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            return messages, code
        if opcode == websocket.ABNF.OPCODE_TEXT:
            messages.append(json.loads(data))


def test_websocket_pushes_progress_until_the_final_status(api, service):
    task_id = service.start_task(page_spec(api, n=1200, size=20, delay_ms=80))
    messages, close_code = ws_messages(service, task_id)
    assert close_code == 1000
    assert messages[-1]["status"] == "completed" and messages[-1]["result"]["rows"] == 1200
    running = [m for m in messages if m["status"] == "running"]
    assert len(running) >= 3
    done = [m["progress"]["pages_done"] for m in running]
    assert done == sorted(done) and done[-1] > done[0]
    assert all(m["phase"] in ("fetching", "merging", "exporting", "delivering") for m in running)
    assert len({json.dumps(m) for m in messages}) == len(messages)  # pushes on change only


def test_websocket_rate_is_at_most_about_five_per_second(api, service):
    task_id = service.start_task(page_spec(api, n=2000, size=10, delay_ms=20))
    ws = websocket.create_connection(service.url(f"/api/export/ws/{task_id}").replace("http", "ws"), timeout=60)
    stamps = []
    try:
        while True:
            message = ws.recv()
            if not message:
                break
            stamps.append(time.monotonic())
            if json.loads(message)["status"] not in ("queued", "running"):  # queued: an earlier test's task
                break
    except websocket.WebSocketConnectionClosedException:
        pass
    span = stamps[-1] - stamps[0]
    assert len(stamps) >= 3 and (len(stamps) - 1) / span <= 6.5


def test_websocket_on_a_finished_task_and_an_unknown_one(api, service):
    task_id = service.start_task(page_spec(api, n=100))
    service.wait(task_id)
    messages, code = ws_messages(service, task_id)
    assert [m["status"] for m in messages] == ["completed"] and code == 1000
    messages, code = ws_messages(service, "task_0123456789ab")
    assert messages == [{"error": "not_found", "message": "no task 'task_0123456789ab'", "details": []}]
    assert code == 1000


# ------------------------------------------------------------------ cancel, queue, timeouts, expiry


def test_cancel_a_running_task_within_two_seconds(api, service):
    task_id = service.start_task(page_spec(api, n=4000, size=20, delay_ms=100))
    service.wait(task_id, until=("running",))
    time.sleep(1.0)
    started = time.monotonic()
    r = service.call("DELETE", f"/api/export/cancel/{task_id}")
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled" and time.monotonic() - started < 2.5
    sent = len(api.log())
    time.sleep(1.0)
    assert len(api.log()) <= sent + 1  # nothing more is fetched
    assert not (service.data_dir / "tmp" / "work" / task_id).exists()  # temp files removed
    assert service.download(task_id).status_code == 409
    assert service.call("DELETE", f"/api/export/cancel/{task_id}").status_code == 409


def test_max_concurrent_tasks_queues_the_rest_and_cancel_of_a_queued_one(api, service_factory):
    service = service_factory({"MAX_CONCURRENT_TASKS": "1"})
    first = service.start_task(page_spec(api, n=600, size=20, delay_ms=60))
    second = service.start_task(page_spec(api, n=100))
    third = service.start_task(page_spec(api, n=100))
    service.wait(first, until=("running",))
    time.sleep(0.8)
    assert service.status(second)["status"] == "queued" and service.status(third)["status"] == "queued"
    r = service.call("DELETE", f"/api/export/cancel/{third}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert service.wait(first)["status"] == "completed"
    second_status = service.wait(second)
    assert second_status["status"] == "completed"
    assert second_status["started_at"] >= service.status(first)["finished_at"]
    assert service.status(third)["status"] == "cancelled"


def test_worker_timeout_fails_a_task_that_runs_too_long(api, service_factory):
    service = service_factory({"WORKER_TIMEOUT": "2"})
    task_id = service.start_task(page_spec(api, n=4000, size=20, delay_ms=100))
    status = service.wait(task_id, timeout=30)
    assert status["status"] == "failed" and "timed out" in status["error"]["message"]
    assert "WORKER_TIMEOUT" in status["error"]["message"]


def test_result_ttl_expiry_gives_410(api, service_factory):
    service = service_factory({"RESULT_TTL": "2"})
    task_id = service.start_task(page_spec(api, n=100))
    service.wait(task_id)
    assert service.download(task_id).status_code == 200
    time.sleep(2.5)
    r = service.download(task_id)
    assert r.status_code == 410 and r.json()["error"] == "expired"


def test_sweeper_removes_expired_results_and_orphans(api, tmp_path):
    from config import load_settings
    from service.background.runner import TaskRunner
    from service.store import SQLiteTaskStore

    settings = load_settings({"DATA_DIR": str(tmp_path / "d"), "RESULT_TTL": "1"})
    store = SQLiteTaskStore(settings.db_path)
    store.create_task({"id": "task_aaaaaaaaaaaa", "spec": {}, "created_at": time.time() - 100})
    store.finish("task_aaaaaaaaaaaa", None, "completed", result={"filename": "x.csv"}, finished_at=time.time() - 10)
    result = settings.results_dir / "task_aaaaaaaaaaaa"
    result.mkdir(parents=True)
    (result / "x.csv").write_text("id\n")
    orphan = settings.work_dir / "task_bbbbbbbbbbbb"
    orphan.mkdir(parents=True)
    import os

    os.utime(orphan, (time.time() - 120, time.time() - 120))
    removed = TaskRunner(settings, store).sweep()
    assert removed["results"] == 1 and removed["work"] == 1
    assert not result.exists() and not orphan.exists()
    assert store.get_task("task_aaaaaaaaaaaa")["expired"] is True


# ------------------------------------------------------------------ restarts


def test_sigkill_mid_task_then_restart_resumes_with_identical_output(api, service_factory, tmp_path):
    spec = page_spec(api, n=3000, size=20, delay_ms=60)
    reference = service_factory(data_dir=tmp_path / "ref")
    ref_id = reference.start_task(spec)
    assert reference.wait(ref_id)["status"] == "completed"
    expected = reference.download(ref_id).content
    reference.stop()

    api.reset()
    service = service_factory(data_dir=tmp_path / "data")
    task_id = service.start_task(spec)
    deadline = time.monotonic() + 30
    while len(api.log()) < 40:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    left = service.kill_hard()
    assert left, "the engine runs in child processes of the workers"
    deadline = time.monotonic() + 10
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in left):
        assert time.monotonic() < deadline, "engine processes outlived the killed service"
        time.sleep(0.2)
    first_run = len(api.log())

    restarted = service_factory(data_dir=tmp_path / "data", port=service.port)
    status = restarted.wait(task_id, timeout=90)
    assert status["status"] == "completed", status
    assert restarted.download(task_id).content == expected
    assert len(api.log()) - first_run < 150  # resumed from the shards, not refetched from page 1


def test_clean_shutdown_hands_tasks_back_for_the_next_start(api, service_factory, tmp_path):
    spec = page_spec(api, n=2000, size=20, delay_ms=60)
    service = service_factory(data_dir=tmp_path / "data")
    task_id = service.start_task(spec)
    service.wait(task_id, until=("running",))
    time.sleep(1.0)
    service.stop()
    restarted = service_factory(data_dir=tmp_path / "data", port=service.port)
    status = restarted.wait(task_id, timeout=90)
    assert status["status"] == "completed" and status["result"]["rows"] == 2000
    assert ids_of(restarted.download(task_id).content) == list(range(1, 2001))


# ------------------------------------------------------------------ profiles


def test_two_profiles_editing_at_once_keep_their_own_inputs(service):
    def edit(profile: str, n: int):
        for i in range(n):
            r = service.call(
                "POST",
                "/api/export/inputs",
                headers={"X-Profile": profile},
                json={"name": f"{profile}-{i}", "column": i},
            )
            assert r.status_code == 200

    threads = [threading.Thread(target=edit, args=(p, 15)) for p in ("alice", "bob")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for profile in ("alice", "bob"):
        names = [
            i["name"]
            for i in service.call("GET", "/api/export/inputs-list", headers={"X-Profile": profile}).json()["inputs"]
        ]
        assert names == [f"{profile}-{i}" for i in range(15)]
    assert service.call("GET", "/api/export/inputs-list").json()["inputs"] == []  # the default profile
    r = service.call("DELETE", "/api/export/inputs-clear", headers={"X-Profile": "alice"})
    assert r.json() == {"inputs": [], "cleared": 15}
    assert len(service.call("GET", "/api/export/inputs-list", headers={"X-Profile": "bob"}).json()["inputs"]) == 15


def test_start_snapshots_the_profile(api, service):
    service.call(
        "POST",
        "/api/export/configure",
        json={"source_url": api.url("/items/page"), "params": {"n": 50}, "file_type": "json"},
    )
    r = service.call("POST", "/api/export/start")
    task_id = r.json()["task_id"]
    service.call("POST", "/api/export/configure", json={"file_type": "csv", "params": {"n": 7}})
    status = service.wait(task_id)
    assert status["result"]["filename"] == "export.json" and status["result"]["rows"] == 50


def test_inputs_list_is_in_output_order(service):
    service.call(
        "POST",
        "/api/export/bulk-inputs",
        json={
            "inputs": [
                {"name": "c", "column": 2, "change_order": 3},
                {"name": "a", "column": 0, "change_order": 1},
                {"name": "b", "column": 1, "change_order": 2},
            ]
        },
    )
    service.call("POST", "/api/export/inputs", json={"name": "a", "column": 5, "change_order": 4})  # update by name
    inputs = service.call("GET", "/api/export/inputs-list").json()["inputs"]
    assert [i["name"] for i in inputs] == ["b", "c", "a"] and inputs[-1]["column"] == 5


# ------------------------------------------------------------------ errors

BAD_REQUESTS = [
    ("POST", "/api/export/start", {"data": "{not json", "headers": {"Content-Type": "application/json"}}, 400),
    ("POST", "/api/export/start", {"data": "[1,2]", "headers": {"Content-Type": "application/json"}}, 400),
    ("POST", "/api/export/start", {"data": "{}", "headers": {"Content-Type": "text/plain"}}, 415),
    ("POST", "/api/export/start", {"json": {"sources": []}}, 400),
    ("POST", "/api/export/start", {"json": {"sources": [{"url": "ftp://x"}]}}, 400),
    ("POST", "/api/export/start", {"json": {"sources": [{"url": "http://x", "pagination": {"type": "nope"}}]}}, 400),
    ("POST", "/api/export/start", {"json": {"sources": [{"url": "http://x"}], "concurrency": -1}}, 400),
    ("POST", "/api/export/start", {"json": {"sources": [{"url": "http://x"}], "export": {"format": "pdf"}}}, 400),
    ("POST", "/api/export/start", {"json": {"sources": [{"url": "http://x"}], "surprise": 1}}, 400),
    (
        "POST",
        "/api/export/start",
        {"json": {"sources": [{"url": "http://x", "auth": {"type": "bearer", "token": "${NOPE_X}"}}]}},
        400,
    ),
    (
        "POST",
        "/api/export/start",
        {"json": {"sources": [{"url": "http://x", "ids": {"file": "ids.csv"}, "params": {}}]}},
        400,
    ),
    (
        "POST",
        "/api/export/start",
        {"json": {"sources": [{"url": "http://x", "auth": {"type": "bearer", "token": "${API_TOKEN}"}}]}},
        400,
    ),
    # (the server answers 413 without reading the body: this connection is not reused after it)
    (
        "POST",
        "/api/export/start",
        {"data": b"x" * (2 * 1024 * 1024), "headers": {"Content-Type": "application/json", "Connection": "close"}},
        413,
    ),
    ("POST", "/api/export/start", {"files": {"other": ("a.txt", b"x")}}, 400),
    ("POST", "/api/export/start", {"files": {"spec": (None, "{bad")}}, 400),
    ("POST", "/api/export/start", {}, 400),  # no body, nothing configured
    ("PUT", "/api/export/start", {}, 405),
    ("GET", "/api/export/start", {}, 405),
    ("POST", "/api/export/inputs", {"json": {"column": 1}}, 400),
    ("POST", "/api/export/inputs", {"json": {"name": "x", "column": -1}}, 400),
    ("POST", "/api/export/inputs", {"json": {"name": "x", "column": "3"}}, 400),
    ("POST", "/api/export/inputs", {"json": {"name": "x", "type": "money"}}, 400),
    ("POST", "/api/export/inputs", {"json": {"name": "x", "colour": 1}}, 400),
    ("POST", "/api/export/inputs", {"json": ["x"]}, 400),
    (
        "POST",
        "/api/export/inputs",
        {"data": "name=x", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        415,
    ),
    ("POST", "/api/export/bulk-inputs", {"json": {"inputs": "x"}}, 400),
    ("POST", "/api/export/bulk-inputs", {"json": [{"name": "a"}, {"name": "a"}]}, 400),
    ("POST", "/api/export/configure", {"json": {"file_type": "pdf"}}, 400),
    ("POST", "/api/export/configure", {"json": {"rate_limit": "fast"}}, 400),
    ("POST", "/api/export/configure", {"json": {"page_limit": 0}}, 400),
    ("POST", "/api/export/configure", {"json": {"whatever": 1}}, 400),
    ("POST", "/api/export/configure", {"json": "text"}, 400),
    ("POST", "/api/export/inputs", {"json": {"name": "x"}, "headers": {"X-Profile": "../../etc"}}, 400),
    ("GET", "/api/export/status/task_zzzzzzzzzzzz", {}, 404),
    ("GET", "/api/export/status/..%2F..%2Fetc%2Fpasswd", {}, 404),
    ("GET", "/api/export/status/task_0123456789abc", {}, 404),
    ("GET", "/api/export/download/task_0123456789ab", {}, 404),
    ("GET", "/api/export/download/../../pageferry.db", {}, 404),
    ("GET", "/api/export/download/%2e%2e%2fpageferry.db", {}, 404),
    ("DELETE", "/api/export/cancel/task_0123456789ab", {}, 404),
    ("GET", "/api/export/cancel/task_0123456789ab", {}, 405),
    ("GET", "/api/export/tasks?limit=abc", {}, 400),
    ("GET", "/api/export/tasks?limit=0", {}, 400),
    ("GET", "/api/export/tasks?status=sleeping", {}, 400),
    ("GET", "/api/export/nothing-here", {}, 404),
    ("POST", "/healthz", {}, 405),
]


def test_bad_requests_get_4xx_json_never_5xx(service_factory):
    service = service_factory({"MAX_FILE_SIZE": "1"})
    for method, path, kwargs, expected in BAD_REQUESTS:
        r = service.call(method, path, **kwargs)
        assert r.status_code == expected, (method, path, r.status_code, r.text[:300])
        body = r.json()
        assert set(body) == {"error", "message", "details"} and isinstance(body["details"], list), body
        assert "Traceback" not in r.text


def test_validation_errors_name_the_field(service):
    r = service.call(
        "POST", "/api/export/start", json={"sources": [{"url": "http://x", "pagination": {"type": "page", "size": 0}}]}
    )
    assert r.status_code == 400 and r.json()["details"][0]["field"] == "sources.0.pagination.size"
    r = service.call("POST", "/api/export/configure", json={"page_limit": -5})
    assert r.json()["details"][0]["field"] == "page_limit"


def test_api_token(api, service_factory):
    service = service_factory({"API_TOKEN": "tok-123456"})
    assert service.call("GET", "/api/export/tasks").status_code == 401
    assert service.call("GET", "/api/export/tasks", headers={"Authorization": "Bearer wrong"}).status_code == 401
    service.headers = {"Authorization": "Bearer tok-123456"}
    assert service.call("GET", "/api/export/tasks").status_code == 200
    task_id = service.start_task(page_spec(api, n=50))
    service.wait(task_id)
    # the token only as a header: `?token=` is refused; browsers download through a signed link
    assert requests.get(service.url(f"/api/export/download/{task_id}?token=tok-123456")).status_code == 401
    link = service.call("POST", f"/api/export/download-link/{task_id}").json()
    assert "tok-123456" not in link["url"]
    assert requests.get(link["url"]).status_code == 200
    assert requests.get(service.url("/metrics")).status_code == 401
    assert requests.get(service.url("/healthz")).status_code == 200  # outside /api


# ------------------------------------------------------------------ listing, health, metrics


def test_tasks_listing_newest_first_with_filters(api, service):
    ids = [service.start_task(page_spec(api, n=20)) for _ in range(3)]
    for task_id in ids:
        service.wait(task_id)
    tasks = service.call("GET", "/api/export/tasks").json()["tasks"]
    assert [t["task_id"] for t in tasks[:3]] == ids[::-1]
    assert len(service.call("GET", "/api/export/tasks?limit=2").json()["tasks"]) == 2
    assert service.call("GET", "/api/export/tasks?status=failed").json()["tasks"] == []


def test_health_and_metrics(api, service):
    task_id = service.start_task(page_spec(api, n=100, size=50))
    service.wait(task_id)
    assert service.call("GET", "/healthz").json()["status"] == "ok"
    text = service.call("GET", "/metrics").text
    assert 'pageferry_tasks{status="completed"} 1.0' in text
    assert "pageferry_requests_total 2.0" in text and "pageferry_pages_total 2.0" in text
