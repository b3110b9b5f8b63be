"""Schedules (issue 9): cron arithmetic, exactly-once firing across workers and restarts (with
an injected clock against the real SQLite store, and end to end on real gunicorn with two
workers and an every-second cron), the API's validation, and the run summary."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import pytest

from config import load_settings
from service import create_app
from service.background.schedule_clock import STALE, ScheduleClock
from service.cron import check_cron, check_timezone, next_after, plan_runs
from service.store import SQLiteTaskStore
from tests.support.net import wait_for
from tests.support.service_process import ServiceProcess


def ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def iso_z(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ------------------------------------------------------------------ cron arithmetic


def test_cron_and_timezone_checks():
    for good in ("23 22 * * *", "*/5 * * * 1-5", "* * * * * */10", "@daily"):
        assert check_cron(good) is None, good
    for bad in ("61 * * * *", "* * * *", "* * * * * * *", "", "every day", None, 5):
        assert check_cron(bad), bad
    assert check_timezone("UTC") is None and check_timezone("Europe/Berlin") is None
    for bad in ("Mars/Olympus", "../../etc/passwd", "", None):
        assert check_timezone(bad), bad


def test_next_run_is_computed_in_the_schedules_timezone():
    # 09:00 in Berlin is 07:00 UTC in summer and 08:00 UTC in winter
    assert next_after("0 9 * * *", "Europe/Berlin", ts("2024-06-01T10:00:00+00:00")) == ts("2024-06-02T07:00:00+00:00")
    assert next_after("0 9 * * *", "Europe/Berlin", ts("2024-12-01T10:00:00+00:00")) == ts("2024-12-02T08:00:00+00:00")
    assert next_after("23 22 * * *", "UTC", ts("2024-06-01T22:23:00+00:00")) == ts("2024-06-02T22:23:00+00:00")
    # a sixth field is seconds
    assert next_after("* * * * * */15", "UTC", ts("2024-06-01T10:00:01+00:00")) == ts("2024-06-01T10:00:15+00:00")


def test_missed_due_times_run_one_by_one_when_caught_up_else_once():
    schedule = {"cron": "* * * * * *", "timezone": "UTC", "next_run": 1000.0}
    runs, following = plan_runs(schedule, 1004.5, caught_up=True)
    assert runs == [(1000.0, 0), (1001.0, 0), (1002.0, 0), (1003.0, 0), (1004.0, 0)] and following == 1005.0
    runs, following = plan_runs(schedule, 1004.5, caught_up=False)
    assert runs == [(1004.0, 4)] and following == 1005.0
    started = time.monotonic()  # a day of per-second due times after a downtime: one run, quickly
    runs, following = plan_runs(schedule, 1000.0 + 86_400.5, caught_up=False)
    assert len(runs) == 1 and runs[0][1] >= 999 and following == 1000.0 + 86_401
    assert time.monotonic() - started < 5


# ------------------------------------------------------------------ exactly once (injected clock, real store)


class FakeClock:
    def __init__(self, now: float):
        self.now = now
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def add_schedule(store, cron: str, now: float, spec: dict | None = None) -> str:
    schedule_id = "sch_0123456789ab"
    store.create_schedule(
        {
            "id": schedule_id,
            "cron": cron,
            "timezone": "UTC",
            "created_at": now,
            "spec": spec or {"name": "nightly", "sources": [{"url": "http://x.invalid/"}]},
            "next_run": next_after(cron, "UTC", now),
        }
    )
    return schedule_id


def fired(store, schedule_id: str) -> list[dict]:
    return sorted(store.list_tasks(1000, schedule_id=schedule_id), key=lambda t: t["extra"]["scheduled_for"])


def test_two_workers_fire_each_due_time_exactly_once(tmp_path):
    path = tmp_path / "store.sqlite3"
    clock = FakeClock(ts("2024-06-01T10:00:00.500+00:00"))
    schedule_id = add_schedule(SQLiteTaskStore(path), "* * * * * *", clock())
    workers = [ScheduleClock(SQLiteTaskStore(path), clock=clock) for _ in range(2)]  # two connections
    stop = threading.Event()

    def work(worker):
        while not stop.is_set():
            worker.tick()

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    [t.start() for t in threads]
    for _ in range(50):  # 5 seconds of fake time in 0.1 s steps: due times 10:00:01 .. 10:00:05
        clock.advance(0.1)
        time.sleep(0.01)
    stop.set()
    [t.join() for t in threads]
    tasks = fired(SQLiteTaskStore(path), schedule_id)
    assert [t["extra"]["scheduled_for"] for t in tasks] == [f"2024-06-01T10:00:0{s}.000Z" for s in range(1, 6)]
    assert all(t["status"] == "queued" and t["schedule_id"] == schedule_id for t in tasks)
    assert len({t["id"] for t in tasks}) == 5


def test_a_short_restart_catches_up_each_run_a_long_downtime_runs_once(tmp_path):
    path = tmp_path / "store.sqlite3"
    clock = FakeClock(ts("2024-06-01T10:00:00.500+00:00"))
    schedule_id = add_schedule(SQLiteTaskStore(path), "* * * * * *", clock())
    before = ScheduleClock(SQLiteTaskStore(path), clock=clock)
    for _ in range(3):
        clock.advance(1.0)
        before.tick()  # 10:00:01 .. 10:00:03
    clock.advance(4.0)  # down for 4 s (< STALE): 10:00:04 .. 10:00:07 were missed
    after = ScheduleClock(SQLiteTaskStore(path), clock=clock)
    assert len(after.tick()) == 4
    clock.advance(STALE + 50)  # down for a minute: ~60 due times missed
    [catch_up] = after.tick()
    assert catch_up["extra"]["missed_runs"] >= 55
    clock.advance(1.0)
    assert len(after.tick()) == 1  # then on schedule again
    tasks = fired(SQLiteTaskStore(path), schedule_id)
    stamps = [t["extra"]["scheduled_for"] for t in tasks]
    assert stamps[:7] == [f"2024-06-01T10:00:0{s}.000Z" for s in range(1, 8)]
    assert len(tasks) == 9 and len(set(stamps)) == 9
    schedule = SQLiteTaskStore(path).get_schedule(schedule_id)
    assert schedule["next_run"] > clock() and schedule["last_task_id"] == tasks[-1]["id"]


# ------------------------------------------------------------------ the API (validation; Flask's test client)


@pytest.fixture
def client(tmp_path):
    settings = load_settings({"DATA_DIR": str(tmp_path / "data")})
    app = create_app(settings, run_tasks=False, env={"PAGEFERRY_SECRET_ORDERS_TOKEN": "tok-from-env"})
    return app.test_client()


BAD_SCHEDULES = [
    ({"cron": "61 * * * *", "spec": {"sources": [{"url": "http://a.example/"}]}}, "cron"),
    ({"cron": "* * * *", "spec": {"sources": [{"url": "http://a.example/"}]}}, "cron"),
    ({"spec": {"sources": [{"url": "http://a.example/"}]}}, "cron"),
    ({"cron": "0 * * * *", "spec": {"sources": [{"url": "http://a.example/"}]}, "timezone": "Mars/Base"}, "timezone"),
    ({"cron": "0 * * * *"}, "spec"),
    ({"cron": "0 * * * *", "spec": "orders"}, "spec"),
    ({"cron": "0 * * * *", "spec": {"sources": [{"url": "ftp://a.example/"}]}}, "spec.sources.0.url"),
    (
        {"cron": "0 * * * *", "spec": {"sources": [{"url": "http://a.example/"}], "export": {"format": "pdf"}}},
        "spec.export.format",
    ),
    (
        {
            "cron": "0 * * * *",
            "spec": {
                "sources": [{"url": "http://a.example/", "auth": {"type": "bearer", "token": "${NOT_SET_ANYWHERE}"}}]
            },
        },
        "spec.sources.0.auth.token",
    ),
    (
        {
            "cron": "0 * * * *",
            "spec": {"sources": [{"url": "http://a.example/{id}", "ids": {"file": "ids.csv"}, "params": {}}]},
        },
        "spec.sources.0.ids.file",
    ),
    ({"cron": "0 * * * *", "spec": {"sources": [{"url": "http://a.example/"}]}, "every": "day"}, "every"),
]


@pytest.mark.parametrize("body, field", BAD_SCHEDULES)
def test_invalid_schedules_are_400_naming_the_field(client, body, field):
    r = client.post("/api/export/schedules", json=body)
    assert r.status_code == 400, r.get_data(as_text=True)
    assert set(r.json) == {"error", "message", "details"} and field in [d["field"] for d in r.json["details"]]
    assert client.get("/api/export/schedules").json == {"schedules": []}


def test_schedule_requests_that_are_not_json_or_unknown(client):
    r = client.post("/api/export/schedules", data="cron=1", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 415 and r.json["error"] == "unsupported_media_type"
    for path in ("/api/export/schedules/sch_0123456789ab", "/api/export/schedules/nope"):
        assert client.delete(path).status_code == 404 and client.get(path).status_code == 404
        assert client.delete(path).json["error"] == "not_found"


def test_create_list_delete_a_schedule(client):
    spec = {
        "name": "orders",
        "sources": [
            {"url": "https://api.example.com/orders", "auth": {"type": "bearer", "token": "literal-token-123"}},
            {
                "url": "https://api.example.com/refunds",
                "auth": {"type": "bearer", "token": "${PAGEFERRY_SECRET_ORDERS_TOKEN}"},
            },
        ],
        "export": {"format": "zip"},
        "webhook": {"url": "https://hooks.example.com/x", "secret": "hook-s3cret"},
    }
    before = time.time()
    r = client.post("/api/export/schedules", json={"cron": "23 22 * * *", "spec": spec, "timezone": "Europe/Berlin"})
    assert r.status_code == 201, r.json
    created = r.json
    assert created["schedule_id"].startswith("sch_") and len(created["schedule_id"]) == 16
    assert created["next_run"] == iso_z(next_after("23 22 * * *", "Europe/Berlin", before))
    listed = client.get("/api/export/schedules").json["schedules"]
    assert [s["schedule_id"] for s in listed] == [created["schedule_id"]]
    text = json.dumps(listed)
    assert "literal-token-123" not in text and "hook-s3cret" not in text
    assert listed[0]["spec"]["sources"][0]["auth"] == {"type": "bearer", "token": "***"}
    assert listed[0]["timezone"] == "Europe/Berlin" and listed[0]["cron"] == "23 22 * * *"
    assert client.get(f"/api/export/schedules/{created['schedule_id']}").json["next_run"] == created["next_run"]
    r = client.delete(f"/api/export/schedules/{created['schedule_id']}")
    assert r.status_code == 200 and r.json["deleted"] is True
    assert client.get("/api/export/schedules").json == {"schedules": []}
    assert client.delete(f"/api/export/schedules/{created['schedule_id']}").status_code == 404


def test_schedules_need_the_api_token(tmp_path):
    settings = load_settings({"DATA_DIR": str(tmp_path / "data"), "API_TOKEN": "tok-998877"})
    client = create_app(settings, run_tasks=False).test_client()
    assert client.get("/api/export/schedules").status_code == 401
    assert client.get("/api/export/schedules", headers={"Authorization": "Bearer tok-998877"}).status_code == 200


# ------------------------------------------------------------------ end to end: real gunicorn, two workers


def scheduled_tasks(service, schedule_id: str) -> list[dict]:
    r = service.call("GET", f"/api/export/tasks?limit=1000&schedule_id={schedule_id}")
    assert r.status_code == 200
    return r.json()["tasks"]


def test_every_second_schedule_on_two_workers_and_a_restart(api, tmp_path):
    data = tmp_path / "data"
    first = ServiceProcess(data, workers=2).start()
    spec = {"name": "tick", "sources": [{"url": api.url("/items/page"), "params": {"n": 20}}]}
    try:
        ad_hoc = first.start_task(spec)  # an ordinary task: not in the schedule's listing
        r = first.call("POST", "/api/export/schedules", json={"cron": "* * * * * *", "spec": spec, "timezone": "UTC"})
        assert r.status_code == 201, r.text
        schedule_id = r.json()["schedule_id"]
        wait_for(
            lambda: len(scheduled_tasks(first, schedule_id)) >= 3, 30, interval=0.2, message="three scheduled runs"
        )
    finally:
        first.stop()
    time.sleep(1.0)  # a couple of due times pass while nothing runs
    second = ServiceProcess(data, workers=2, port=first.port).start()
    try:
        wait_for(
            lambda: len(scheduled_tasks(second, schedule_id)) >= 8, 40, interval=0.2, message="runs after the restart"
        )
        assert second.call("DELETE", f"/api/export/schedules/{schedule_id}").status_code == 200
        deleted_at = time.time()
        tasks = wait_for(
            lambda: (lambda ts_: ts_ if all(t["status"] == "completed" for t in ts_) else None)(
                scheduled_tasks(second, schedule_id)
            ),
            90,
            interval=0.2,
            message="every scheduled run to complete",
        )
        time.sleep(1.5)
        assert len(scheduled_tasks(second, schedule_id)) == len(tasks)  # nothing fires after the delete
        # every due time between the first and the last run exactly once: no duplicate, no gap,
        # across two workers and a restart
        due = sorted(ts(t["scheduled_for"].replace("Z", "+00:00")) for t in tasks)
        assert due == [due[0] + i for i in range(len(due))], due
        assert len(tasks) >= 8 and due[-1] <= deleted_at + 1
        for task in tasks:
            assert task["schedule_id"] == schedule_id and task["result"]["rows"] == 20
            summary = task["summary"]
            assert summary["status"] == "completed" and summary["schedule_id"] == schedule_id
            assert summary["sources"][0]["name"] == "tick" and summary["sources"][0]["rows"] == 20
            assert summary["sources"][0]["ok"] is True and summary["sources"][0]["seconds"] is not None
            assert summary["scheduled_for"] == task["scheduled_for"]
        # (a run resumed after the restart counts only what it fetched itself)
        assert max(t["summary"]["sources"][0]["bytes"] for t in tasks) > 4000
        assert ad_hoc not in {t["task_id"] for t in tasks}
        assert second.status(ad_hoc)["schedule_id"] is None
        status = second.status(tasks[0]["task_id"])
        assert status["schedule_id"] == schedule_id and status["summary"] == tasks[0]["summary"]
        # the summary is one structured JSON log line per run
        lines = [
            json.loads(line)
            for line in second.log_path.read_text().splitlines()
            if line.startswith("{") and '"run_summary"' in line
        ]
        logged = {line["task_id"]: line for line in lines if line.get("schedule_id") == schedule_id}
        assert set(logged) >= {t["task_id"] for t in tasks[:3]}
        assert logged[tasks[0]["task_id"]]["sources"][0]["rows"] == 20
    finally:
        second.stop()
        second.kill_group()
