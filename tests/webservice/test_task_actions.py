"""What the progress page does with tasks and schedules, through real gunicorn (2 workers):
the task list's paging (`before`/`next`), filters (`status`, `q`) and queue positions; re-run
(same spec snapshot, uploads included) and retry of only the failed or skipped pages; delete;
the event log streamed with the status; the spec as submitted beside the effective one;
pausing, resuming and running a schedule now; the cron preview; the form's settings."""

from __future__ import annotations

import json
import time

import pytest
import websocket

from engine.shards import list_shards
from service.background.events import MAX_EVENTS, MAX_SAMPLES, Activity, append_event
from service.store import SQLiteTaskStore
from tests.support.net import wait_for
from tests.support.readback import rows_of
from tests.support.specs import page_spec
from tests.testapi.faults import fault_key, is_failing

API = "/api/export"


@pytest.fixture(scope="module")
def svc(test_api, module_service_factory):
    """One service for the module (tests that need other settings start their own)."""
    return module_service_factory({"MAX_QUEUED_PER_PROFILE": "50", "PAGEFERRY_SECRET_ORDERS": "s3cr3t-value-991"})


def ids_of(content: bytes, fmt: str = "csv") -> list[int]:
    return [int(r["id"]) for r in rows_of(content, fmt)]


def store_of(service) -> SQLiteTaskStore:
    return SQLiteTaskStore(service.data_dir / "pageferry.db")


def insert_tasks(service, names_statuses: list[tuple[str, str]], start: float, per_stamp: int = 3) -> list[str]:
    """Finished tasks written straight into the service's store (listing needs no running):
    `per_stamp` tasks share each `created_at`, so ties are ordered by insertion."""
    store = store_of(service)
    ids = []
    for i, (name, status) in enumerate(names_statuses):
        task_id = f"task_{0xA00000000000 + int(start) % 100000 * 1000 + i:012x}"
        store.create_task(
            {
                "id": task_id,
                "name": name,
                "status": status,
                "spec": {"sources": [{"url": "http://127.0.0.1:9/x"}]},
                "created_at": start + i // per_stamp,
            }
        )
        ids.append(task_id)
    store.close()
    return ids


def page_through(service, query: str, limit: int) -> list[list[str]]:
    pages, before = [], None
    while True:
        suffix = f"&before={before}" if before else ""
        r = service.call("GET", f"{API}/tasks?limit={limit}{query}{suffix}")
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"tasks", "next"}
        pages.append([t["task_id"] for t in body["tasks"]])
        assert len(pages[-1]) <= limit
        before = body["next"]
        if before is None:
            return pages
        assert before == pages[-1][-1]  # `next` is the last task listed


# ------------------------------------------------------------------ the list


def test_paging_with_before_lists_every_task_exactly_once_newest_first(svc):
    statuses = ("completed", "failed", "cancelled")
    future = time.time() + 10_000  # newer than anything the other tests start
    ids = insert_tasks(svc, [(f"paged-{i:03d}", statuses[i % 3]) for i in range(210)], future)
    expected = ids[::-1]  # newest first; ties (3 per created_at) by insertion, newest inserted first
    pages = page_through(svc, "", 7)
    listed = [task_id for page in pages for task_id in page]
    assert len(listed) == len(set(listed)), "a task listed twice"
    assert [t for t in listed if t in set(ids)] == expected  # each once, in order (other tests' tasks aside)
    assert len(pages[0]) == 7 and len(pages) == -(-len(listed) // 7)
    assert [t for page in page_through(svc, "&q=paged-", 7) for t in page] == expected
    # a page holds at most 200, whatever the limit asked; `next` continues
    first = svc.call("GET", f"{API}/tasks?limit=1000&q=paged-").json()
    assert [t["task_id"] for t in first["tasks"]] == expected[:200] and first["next"] == expected[199]
    rest = svc.call("GET", f"{API}/tasks?limit=1000&q=paged-&before={first['next']}").json()
    assert [t["task_id"] for t in rest["tasks"]] == expected[200:] and rest["next"] is None
    # listings leave the event log out (it is one task's status)
    assert all("events" not in t for t in first["tasks"])


def test_status_and_name_filters_page_too(svc):
    future = time.time() + 20_000
    rows = [(f"alpha-{i}" if i % 2 else f"beta-{i}", "failed" if i % 3 == 0 else "completed") for i in range(60)]
    rows += [("50%_off", "completed"), ("500 off", "completed"), ("Alpha-CAPS", "failed")]
    ids = insert_tasks(svc, rows, future)
    by_id = dict(zip(ids, rows))
    alpha = [task_id for page in page_through(svc, "&q=alpha", 4) for task_id in page]
    assert set(alpha) == {i for i, (name, _) in by_id.items() if "alpha" in name.lower()}  # any case
    assert len(alpha) == len(set(alpha)) == 31
    failed_alpha = [t for page in page_through(svc, "&q=ALPHA&status=failed", 3) for t in page]
    assert failed_alpha == [i for i in ids[::-1] if "alpha" in by_id[i][0].lower() and by_id[i][1] == "failed"]
    # % and _ are plain characters, not patterns
    assert [t["name"] for t in svc.call("GET", f"{API}/tasks?q=0%25_").json()["tasks"]] == ["50%_off"]
    assert svc.call("GET", f"{API}/tasks?q=nothing-like-this").json() == {"tasks": [], "next": None}


@pytest.mark.parametrize(
    "query, field",
    [
        ("before=nope", "before"),
        ("before=task_ffffffffffff", "before"),  # well formed, but no such task (deleted)
        ("q=" + "x" * 201, "q"),
        ("q=a%0Ab", "q"),
        ("limit=0", "limit"),
        ("status=sleeping", "status"),
    ],
)
def test_bad_list_queries_are_400_naming_the_parameter(svc, query, field):
    r = svc.call("GET", f"{API}/tasks?{query}")
    assert r.status_code == 400, r.text[:300]
    assert r.json()["error"] == "validation_error" and r.json()["details"][0]["field"] == field


def test_queued_tasks_show_their_place_in_the_queue(api, service_factory):
    service = service_factory({"MAX_CONCURRENT_TASKS": "1"})
    running = service.start_task(page_spec(api, name="hog", n=3000, size=20, delay_ms=100))
    service.wait(running, until=("running",))
    queued = [service.start_task(page_spec(api, name=f"waiting-{i}", n=20)) for i in range(3)]
    try:
        listed = {t["task_id"]: t for t in service.call("GET", f"{API}/tasks").json()["tasks"]}
        assert [listed[t].get("queue_position") for t in queued] == [1, 2, 3]
        assert "queue_position" not in listed[running]
        assert service.status(queued[2])["queue_position"] == 3
        service.call("DELETE", f"{API}/cancel/{queued[0]}")
        assert service.status(queued[2])["queue_position"] == 2  # moves up as the queue does
        assert "queue_position" not in service.status(queued[0])
    finally:
        for task_id in [running, *queued]:
            service.call("DELETE", f"{API}/cancel/{task_id}")


# ------------------------------------------------------------------ re-run, retry, delete


def test_rerun_makes_a_new_task_with_the_same_spec_and_an_equal_result(api, svc):
    spec = page_spec(api, name="again", n=430, size=40)
    first = svc.start_task(spec)
    done = svc.wait(first)
    assert done["status"] == "completed"
    r = svc.call("POST", f"{API}/rerun/{first}")
    assert r.status_code == 202, r.text
    body = r.json()
    assert set(body) == {"task_id", "status", "status_url", "download_url", "ws_url"} and body["status"] == "queued"
    second = body["task_id"]
    assert second != first and body["status_url"].endswith(f"/api/export/status/{second}")
    again = svc.wait(second)
    assert again["status"] == "completed" and again["rerun_of"] == first and again["name"] == "again"
    assert again["result"]["sha256"] == done["result"]["sha256"]
    assert svc.download(second).content == svc.download(first).content
    assert ids_of(svc.download(second).content) == list(range(1, 431))
    one, two = (svc.call("GET", f"{API}/detail/{t}").json() for t in (first, second))
    assert one["spec"] == two["spec"] == spec  # as submitted, no defaults added
    assert one["effective_spec"] == two["effective_spec"]
    assert two["effective_spec"]["retry"]["attempts"] == 5
    # a failed task is re-run too (and fails again the same way)
    bad = page_spec(api, name="broken", n=40, size=20, fail_all=1, fault=503)
    bad["retry"] = {"attempts": 1}
    failed = svc.start_task(bad)
    assert svc.wait(failed)["status"] == "failed"
    rerun = svc.call("POST", f"{API}/rerun/{failed}").json()["task_id"]
    assert svc.wait(rerun)["status"] == "failed"


def test_rerun_includes_the_uploaded_ids_file(api, svc):
    spec = {"name": "by-file", "sources": [{"url": api.url("/items/by-id") + "/{id}", "ids": {"file": "ids.csv"}}]}
    r = svc.call(
        "POST",
        f"{API}/start",
        data={"spec": json.dumps(spec)},
        files={"ids.csv": ("ids.csv", b"id\n7\n3\n11\n", "text/csv")},
    )
    assert r.status_code == 202, r.text
    first = r.json()["task_id"]
    done = svc.wait(first)
    assert done["status"] == "completed" and done["result"]["rows"] == 9
    api.reset()
    second = svc.call("POST", f"{API}/rerun/{first}").json()["task_id"]
    again = svc.wait(second)
    assert again["status"] == "completed", again
    assert svc.download(second).content == svc.download(first).content
    assert sorted(e["path"] for e in api.log()) == ["/items/by-id/11", "/items/by-id/3", "/items/by-id/7"]


def one_failing_page(pages: int, size: int, rate: float = 0.05) -> tuple[int, int]:
    """A seed for which exactly one page of /items/page (not page 1) is a failing key, and
    that page: the task fails there, and the retry finds no other failing page it never asked."""
    n = pages * size
    for seed in range(2000):
        failing = [
            p
            for p in range(1, pages + 1)
            if is_failing(fault_key("/items/page", {"n": n, "page": p, "per_page": size}), rate, seed)
        ]
        if len(failing) == 1 and failing[0] > 1:
            return seed, failing[0]
    raise AssertionError("no such seed")


def shard_pages(folder) -> set[int]:
    return {p for info in list_shards(folder) for p in range(info.first[1], info.last[1] + 1)}


def test_retry_fetches_only_the_pages_a_failed_task_did_not_finish(api, svc):
    seed, bad_page = one_failing_page(40, 20)
    spec = page_spec(api, name="flaky", n=800, size=20, fault=503, fail_rate=0.05, fail_times=2, seed=seed)
    spec["retry"] = {"attempts": 2, "backoff": 0.01}
    failed = svc.start_task(spec)
    status = svc.wait(failed)
    assert status["status"] == "failed" and status["retry_until"], status
    assert status["error"]["pages"][0]["url"].endswith(f"page={bad_page}&per_page=20")
    kept = shard_pages(svc.data_dir / "tmp" / "work" / failed / "shards")
    assert kept and bad_page not in kept
    seen = len(api.log())
    r = svc.call("POST", f"{API}/rerun/{failed}", json={"only_failed_pages": True})
    assert r.status_code == 202, r.text
    retry = r.json()["task_id"]
    done = svc.wait(retry)
    assert done["status"] == "completed" and done["retry_of"] == failed, done
    assert ids_of(svc.download(retry).content) == list(range(1, 801))  # complete, in order, each once
    fetched = {int(e["query"]["page"]) for e in api.log()[seen:] if e["path"] == "/items/page"}
    assert fetched == set(range(1, 41)) - kept, "only the pages without a finished shard are fetched"
    assert "retry_until" not in svc.status(failed)  # its finished pages went to the retry
    again = svc.call("POST", f"{API}/rerun/{failed}", json={"only_failed_pages": True})
    assert again.status_code == 409 and again.json()["error"] == "not_retryable"
    assert done["events"][0]["message"].startswith(f"queued: retry of {failed}")


def test_retry_of_skipped_pages_where_the_spec_allows(api, svc):
    spec = page_spec(api, name="skipper", n=400, size=20, fault=503, fail_rate=0.2, fail_times=2, seed=3)
    spec["retry"] = {"attempts": 2, "backoff": 0.01}
    spec["on_error"] = "skip"
    partial = svc.start_task(spec)
    status = svc.wait(partial)
    assert status["status"] == "completed" and status["partial"] and status["skipped_pages"], status
    assert [e["kind"] for e in status["events"]].count("skipped") == len(status["skipped_pages"])
    r = svc.call("POST", f"{API}/rerun/{partial}", json={"only_failed_pages": True})
    assert r.status_code == 202, r.text
    done = svc.wait(r.json()["task_id"])
    assert done["status"] == "completed" and not done["partial"]
    assert ids_of(svc.download(done["task_id"]).content) == list(range(1, 401))
    # nothing to retry in a complete result; a cursor source's skipped page cannot be fetched alone
    r = svc.call("POST", f"{API}/rerun/{done['task_id']}", json={"only_failed_pages": True})
    assert r.status_code == 409 and r.json()["error"] == "nothing_to_retry"
    cursor = {
        "name": "cursor-skip",
        "sources": [
            {
                "url": api.url("/items/cursor"),
                "params": {"n": 200, "size": 20, "fault": 503, "fail_rate": 0.3, "fail_times": 9, "seed": 1},
                "pagination": {"type": "cursor", "param": "cursor", "next": "next_cursor"},
            }
        ],
        "retry": {"attempts": 1},
        "on_error": "skip",
    }
    skipped = svc.wait(svc.start_task(cursor))
    assert skipped["status"] == "completed" and skipped["partial"], skipped
    assert "retry_until" not in skipped
    r = svc.call("POST", f"{API}/rerun/{skipped['task_id']}", json={"only_failed_pages": True})
    assert r.status_code == 409 and r.json()["error"] == "not_retryable" and "cursor" in r.json()["message"]


def test_rerun_errors(api, svc):
    assert svc.call("POST", f"{API}/rerun/task_0123456789ab").status_code == 404
    assert svc.call("POST", f"{API}/rerun/nope").status_code == 404
    done = svc.start_task(page_spec(api, n=10))
    svc.wait(done)
    r = svc.call("POST", f"{API}/rerun/{done}", json={"only_failed_pages": "yes"})
    assert r.status_code == 400 and r.json()["details"][0]["field"] == "only_failed_pages"
    r = svc.call("POST", f"{API}/rerun/{done}", json={"pages": "all"})
    assert r.status_code == 400 and r.json()["details"][0]["field"] == "pages"
    r = svc.call("POST", f"{API}/rerun/{done}", data="{}", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_delete_removes_a_finished_task_and_refuses_an_unfinished_one(api, svc):
    done = svc.start_task(page_spec(api, name="to-delete", n=100, size=50))
    svc.wait(done)
    result = svc.data_dir / "results" / done
    assert result.is_dir()
    pages_before = svc.call("GET", "/metrics").text
    r = svc.call("DELETE", f"{API}/tasks/{done}")
    assert r.status_code == 200 and r.json() == {"task_id": done, "deleted": True}
    assert svc.call("GET", f"{API}/status/{done}").status_code == 404
    assert svc.call("GET", f"{API}/download/{done}").status_code == 404
    assert not result.exists()
    assert svc.call("DELETE", f"{API}/tasks/{done}").status_code == 404
    assert done not in [t["task_id"] for t in svc.call("GET", f"{API}/tasks?limit=200").json()["tasks"]]

    def total(text: str, name: str) -> float:
        return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))

    # counters never go down when a task is removed
    after = svc.call("GET", "/metrics").text
    assert total(after, "pageferry_pages_total") >= total(pages_before, "pageferry_pages_total")
    slow = svc.start_task(page_spec(api, name="busy", n=2000, size=20, delay_ms=100))
    svc.wait(slow, until=("running",))
    r = svc.call("DELETE", f"{API}/tasks/{slow}")
    assert r.status_code == 409 and r.json()["error"] == "not_finished"
    svc.call("DELETE", f"{API}/cancel/{slow}")
    assert svc.call("DELETE", f"{API}/tasks/nope").status_code == 404


# ------------------------------------------------------------------ what happened


def test_a_pause_the_api_asks_for_is_an_event(api, svc):
    spec = page_spec(api, name="paused", n=200, size=20, fault=429, fail_rate=1, retry_after=2, seed=1)
    spec["concurrency"] = 1
    final = svc.wait(svc.start_task(spec))
    assert final["status"] == "completed", final
    pauses = [e for e in final["events"] if e["kind"] == "pause"]
    assert pauses and "the API asked to wait" in pauses[0]["message"] and pauses[0]["seconds"] >= 0.5, final["events"]
    assert {c["cause"] for c in final["retry_causes"]} == {"HTTP 429"}


def test_the_event_log_comes_with_the_status_and_the_websocket(api, svc):
    spec = page_spec(api, name="eventful", n=1500, size=20, delay_ms=40, fault=503, fail_rate=0.1, seed=2)
    spec["retry"] = {"attempts": 4, "backoff": 0.01}
    task_id = svc.start_task(spec)
    ws = websocket.create_connection(svc.url(f"{API}/ws/{task_id}").replace("http", "ws"), timeout=60)
    messages = []
    try:
        while True:
            message = json.loads(ws.recv())
            messages.append(message)
            if message["status"] in ("completed", "failed", "cancelled"):
                break
    finally:
        ws.close()
    final = messages[-1]
    assert final["status"] == "completed", final
    kinds = [e["kind"] for e in final["events"]]
    assert kinds[0] == "created" and kinds[1] == "started" and kinds[-1] == "completed"
    retried = sum(e.get("count", 0) for e in final["events"] if e["kind"] == "retry")
    assert retried == final["progress"]["retries"] > 0  # every retry counted, none twice
    # each retry event says why: the cause with its status, counted the same way
    causes = [c for e in final["events"] if e["kind"] == "retry" for c in e["causes"]]
    assert {c["cause"] for c in causes} == {"HTTP 503"} and sum(c["count"] for c in causes) == retried
    assert all("HTTP 503 ×" in e["message"] for e in final["events"] if e["kind"] == "retry")
    assert final["retry_causes"] == [{"cause": "HTTP 503", "count": retried}]
    assert final["events"][-1]["message"].startswith("completed: 1,500 rows from 75 pages")
    assert len(final["throughput"]) >= 2 and final["throughput"][-1][1] == 75
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(final["throughput"], final["throughput"][1:]))
    assert any(m["status"] == "running" and m.get("events") for m in messages)  # streamed while it ran
    assert svc.status(task_id)["events"] == final["events"]


def test_event_log_and_samples_stay_bounded():
    activity = None
    for i in range(500):
        activity = append_event(activity, "retry", f"event {i}")
    assert len(activity["events"]) == MAX_EVENTS and activity["dropped"] == 500 - MAX_EVENTS
    assert activity["events"][0]["message"] == "event 0" and activity["events"][-1]["message"] == "event 499"
    tracker = Activity(None, {"id": "task_0123456789ab", "created_at": time.time(), "started_at": time.time() - 1})
    for i in range(1000):
        tracker.started -= 1  # a second later each time
        tracker.sample({"pages_done": i, "rows": i})
    samples = tracker.doc["throughput"]
    assert len(samples) <= MAX_SAMPLES and samples[-1][1] == 999
    assert [s[1] for s in samples] == sorted(s[1] for s in samples)


# ------------------------------------------------------------------ schedules from the page


def test_schedule_pause_resume_and_run_now(api, svc):
    spec = {"name": "nightly", "sources": [{"url": api.url("/items/page"), "params": {"n": 30}}]}
    r = svc.call("POST", f"{API}/schedules", json={"cron": "0 3 1 1 *", "spec": spec, "timezone": "UTC"})
    assert r.status_code == 201, r.text
    schedule = r.json()
    sid = schedule["schedule_id"]
    assert schedule["paused"] is False and schedule["description"] == "every year on January 1 at 03:00"
    r = svc.call("POST", f"{API}/schedules/{sid}/run")
    assert r.status_code == 202, r.text
    run = r.json()
    assert run["schedule_id"] == sid and run["status"] == "queued"
    done = svc.wait(run["task_id"])
    assert done["status"] == "completed" and done["schedule_id"] == sid and done["scheduled_for"]
    assert done["result"]["rows"] == 30
    assert svc.call("GET", f"{API}/schedules/{sid}").json()["last_task_id"] == run["task_id"]
    runs = svc.call("GET", f"{API}/tasks?schedule_id={sid}").json()["tasks"]
    assert [t["task_id"] for t in runs] == [run["task_id"]]
    assert svc.call("POST", f"{API}/schedules/{sid}/pause").json()["paused"] is True
    assert svc.call("GET", f"{API}/schedules").json()["schedules"][-1]["paused"] is True
    assert svc.call("POST", f"{API}/schedules/{sid}/run").status_code == 202  # run now works while paused
    resumed = svc.call("POST", f"{API}/schedules/{sid}/resume").json()
    assert resumed["paused"] is False and resumed["next_run"].endswith("-01-01T03:00:00.000Z")
    for action in ("pause", "resume", "run"):
        assert svc.call("POST", f"{API}/schedules/sch_0123456789ab/{action}").status_code == 404
    svc.call("DELETE", f"{API}/schedules/{sid}")


def test_a_paused_schedule_does_not_fire(api, svc):
    spec = {"name": "every-second", "sources": [{"url": api.url("/items/page"), "params": {"n": 5}}]}
    sid = svc.call("POST", f"{API}/schedules", json={"cron": "* * * * * *", "spec": spec}).json()["schedule_id"]
    try:
        svc.call("POST", f"{API}/schedules/{sid}/pause")
        count = len(svc.call("GET", f"{API}/tasks?schedule_id={sid}").json()["tasks"])
        time.sleep(2.5)
        assert len(svc.call("GET", f"{API}/tasks?schedule_id={sid}").json()["tasks"]) == count
        svc.call("POST", f"{API}/schedules/{sid}/resume")
        wait_for(
            lambda: len(svc.call("GET", f"{API}/tasks?schedule_id={sid}").json()["tasks"]) >= count + 2,
            10,
            message="runs once resumed",
        )
    finally:
        svc.call("DELETE", f"{API}/schedules/{sid}")


def test_cron_preview_says_when_a_schedule_would_run(svc):
    r = svc.call("POST", f"{API}/schedules/check", json={"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["description"] == "every Monday to Friday at 09:00"
    assert len(body["next_runs"]) == 5
    for run in body["next_runs"]:
        assert run["local"].split()[0] in ("Mon", "Tue", "Wed", "Thu", "Fri") and " 09:00:00 " in run["local"]
        assert run["at"].endswith(("T08:00:00.000Z", "T07:00:00.000Z"))  # 09:00 in Berlin, CET or CEST
    assert svc.call("POST", f"{API}/schedules/check", json={"cron": "*/15 * * * *"}).json()["description"] == (
        "every 15 minutes"
    )
    r = svc.call("POST", f"{API}/schedules/check", json={"cron": "61 * * * *", "timezone": "Mars/Base"})
    assert r.status_code == 400 and {d["field"] for d in r.json()["details"]} == {"cron", "timezone"}
    assert svc.call("GET", f"{API}/schedules").status_code == 200  # nothing stored by a check


# ------------------------------------------------------------------ the form's settings


def test_page_settings_name_the_example_and_the_secrets_without_their_values(svc, service_factory):
    body = svc.call("GET", f"{API}/page-settings").json()
    assert body["example_source_url"] == "http://127.0.0.1:8900/items/page"  # the bundled test API
    assert body["secret_names"] == ["PAGEFERRY_SECRET_*"]
    assert body["secret_names_set"] == ["PAGEFERRY_SECRET_ORDERS"]
    assert "s3cr3t-value-991" not in json.dumps(body)
    other = service_factory({"EXAMPLE_SOURCE_URL": "https://api.example.org/v1/items", "API_TOKEN": "tok-55"})
    assert other.call("GET", f"{API}/page-settings").status_code == 401
    headers = {"Authorization": "Bearer tok-55"}
    assert other.call("GET", f"{API}/page-settings", headers=headers).json()["example_source_url"] == (
        "https://api.example.org/v1/items"
    )
    for method, path in (("POST", "/rerun/task_0123456789ab"), ("DELETE", "/tasks/task_0123456789ab")):
        assert other.call(method, API + path).status_code == 401
        assert other.call(method, API + path, headers=headers).status_code == 404


def test_spec_fields_list_every_field_from_the_spec_models(svc):
    fields = {f["field"]: f for f in svc.call("GET", f"{API}/spec-fields").json()["fields"]}
    assert {"name", "sources[].url", "sources[].pagination.size", "retry.attempts", "export.format"} <= set(fields)
    assert fields["sources[].pagination.size"]["type"] == "integer ≥ 1 ≤ 1000000"
    assert fields["retry.attempts"]["default"] == 5 and fields["on_error"]["type"] == 'one of "fail", "skip"'
    assert fields["sources[].auth.token"]["when"] == ['type "bearer"']
    assert fields["sources[].auth.type"]["type"] == 'one of "bearer", "header", "query", "basic", "oauth2"'
    assert "deliver[].dsn" in fields and fields["export.format"]["default"] == "csv"
