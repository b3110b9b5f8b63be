"""Incremental loading in the service: the state saved per profile and job name when a task
completes, the /api/export/state endpoints, and a restart (the state persists; a task resumed
after it asks with the bounds it started with). The source is the test API's changes-since
endpoint (tests/testapi/incremental_api.py)."""

from __future__ import annotations

import json
import sqlite3
import time

import psutil
import requests

from service.store.sqlite import MIGRATIONS, SQLiteTaskStore, _incremental_state

START = "2024-01-01T00:00:00Z"
ALICE = {"X-Profile": "alice"}


def minute(m: int) -> str:
    return f"2024-01-01T{m // 60:02d}:{m % 60:02d}:00Z"


def control(api, path: str, body: dict) -> dict:
    response = requests.post(api.base_url + path, json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def spec(api, size: int = 20, concurrency: int = 4, **params) -> dict:
    return {
        "name": "changes",
        "sources": [
            {
                "name": "changes",
                "url": api.url("/changes"),
                "params": {"per_page": size, **params},
                "pagination": {
                    "type": "page",
                    "size_param": "per_page",
                    "size": size,
                    "total_pages": "meta.total_pages",
                },
                "incremental": {"cursor": "updated_at", "param": "since", "start": START, "lookback": 300},
            }
        ],
        "retry": {"attempts": 1},
        "concurrency": concurrency,
        "export": {"format": "ndjson"},
    }


def ids(service, task_id: str) -> list[int]:
    return [json.loads(line)["id"] for line in service.download(task_id).text.splitlines()]


def since_asked(api, since: int = 0) -> set:
    return {e["query"].get("since") for e in api.log(since=since) if e["path"] == "/changes"}


def run(service, document: dict, headers: dict = ALICE) -> dict:
    return service.wait(service.start_task(document, headers=headers))


def test_state_endpoints_per_profile_and_the_next_task_fetches_only_changes(api, service):
    first = run(service, spec(api))
    assert first["status"] == "completed" and first["result"]["rows"] == 100, first
    assert first["state"] == {"changes": {"cursor": minute(100)}}
    listed = service.call("GET", "/api/export/state", headers=ALICE).json()
    assert listed["profile"] == "alice" and [s["name"] for s in listed["states"]] == ["changes"]
    shown = service.call("GET", "/api/export/state/changes", headers=ALICE).json()
    assert shown["state"] == {"changes": {"cursor": minute(100)}} and shown["task_id"] == first["task_id"]
    assert shown["profile"] == "alice" and shown["updated_at"].endswith("Z")
    # another profile has its own (none)
    assert service.call("GET", "/api/export/state").json() == {"profile": "default", "states": []}
    missing = service.call("GET", "/api/export/state/changes")
    assert missing.status_code == 404
    assert set(missing.json()) == {"error", "message", "details"} and missing.json()["error"] == "not_found"

    control(api, "/changes/_touch", {"ids": [3, 50]})
    seen = len(api.log())
    second = run(service, spec(api))
    assert second["status"] == "completed", second
    assert since_asked(api, seen) == {minute(95)}  # 01:40 less the 300 s lookback
    assert ids(service, second["task_id"]) == [95, 96, 97, 98, 99, 100, 3, 50]
    assert second["state"] == {"changes": {"cursor": minute(101)}}

    control(api, "/changes/_fail", {"page": 1})
    failed = run(service, spec(api))
    assert failed["status"] == "failed" and "state" not in failed
    kept = service.call("GET", "/api/export/state/changes", headers=ALICE).json()
    assert kept["state"] == {"changes": {"cursor": minute(101)}} and kept["task_id"] == second["task_id"]
    control(api, "/changes/_fail", {"page": None})

    assert service.call("DELETE", "/api/export/state").json() == {"profile": "default", "deleted": 0}
    reset = service.call("DELETE", "/api/export/state/changes", headers=ALICE)
    assert reset.status_code == 200 and reset.json()["deleted"] is True
    assert service.call("GET", "/api/export/state/changes", headers=ALICE).status_code == 404
    assert service.call("DELETE", "/api/export/state/changes", headers=ALICE).status_code == 404
    seen = len(api.log())
    third = run(service, spec(api))  # after a reset: from `start` again
    assert since_asked(api, seen) == {START} and third["result"]["rows"] == 100
    assert service.call("DELETE", "/api/export/state", headers=ALICE).json() == {"profile": "alice", "deleted": 1}
    assert service.call("GET", "/api/export/state", headers=ALICE).json()["states"] == []


def test_state_survives_a_restart_and_a_resumed_task_keeps_its_bounds(api, service_factory, tmp_path):
    control(api, "/changes/_setup", {"n": 20})
    data = tmp_path / "data"
    service = service_factory(data_dir=data)
    first = run(service, spec(api))
    assert first["state"] == {"changes": {"cursor": minute(20)}}, first
    control(api, "/changes/_touch", {"ids": [3, 7, 11]})  # 00:21
    seen = len(api.log())
    # slow pages, one at a time: the service dies while the task is under way
    task_id = service.start_task(spec(api, size=2, concurrency=1, delay_ms=300), headers=ALICE)
    deadline = time.monotonic() + 30
    while not [e for e in api.log(since=seen) if e["path"] == "/changes" and e["t_done"]]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    left = service.kill_hard()
    deadline = time.monotonic() + 10
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in left):
        assert time.monotonic() < deadline, "engine processes outlived the killed service"
        time.sleep(0.1)
    stopped = len(api.log())
    store = SQLiteTaskStore(data / "pageferry.db")
    assert store.get_task(task_id)["status"] == "running"
    # the saved state changes while the service is down: the resumed task must not notice
    assert store.delete_state("alice", "changes")["state"] == {"changes": {"cursor": minute(20)}}
    store.close()

    restarted = service_factory(data_dir=data, port=service.port)
    status = restarted.wait(task_id, timeout=60)
    assert status["status"] == "completed", status
    assert since_asked(api, seen) == {minute(15)}  # before the restart
    assert since_asked(api, stopped) == {minute(15)}  # and after it (pages were left to fetch)
    assert ids(restarted, task_id) == [15, 16, 17, 18, 19, 20, 3, 7, 11]
    assert status["state"] == {"changes": {"cursor": minute(21)}}
    saved = restarted.call("GET", "/api/export/state/changes", headers=ALICE).json()
    assert saved["state"] == {"changes": {"cursor": minute(21)}} and saved["task_id"] == task_id


def test_the_state_table_is_added_to_an_older_store(tmp_path):
    path = tmp_path / "old.sqlite3"
    SQLiteTaskStore(path).close()
    step = MIGRATIONS.index(_incremental_state)
    with sqlite3.connect(path) as db:  # as a store made before the table existed
        db.execute("DROP TABLE incremental_state")
        db.execute(f"PRAGMA user_version = {step}")
    store = SQLiteTaskStore(path)
    saved = store.update_state("p", "job", lambda current: {**current, "s": {"cursor": 1}}, "task_0")
    assert saved == {"s": {"cursor": 1}} and store.get_state("p", "job")["state"] == saved
    assert store.update_state("p", "job", lambda current: {**current, "t": {"cursor": 2}}, None) == {
        "s": {"cursor": 1},
        "t": {"cursor": 2},
    }
    assert store.get_state("q", "job") is None and store.list_states("q") == []
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
