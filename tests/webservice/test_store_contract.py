"""The task store's contract, on both implementations: every behaviour the service relies on
runs against SQLite and PostgreSQL (a fresh database each) with the same clock, asserting what
it names; then each runs on both and the two transcripts must be equal, key order included.
PostgreSQL alone: instances racing for tasks, webhooks and schedule firings (each taken exactly
once), MAX_CONCURRENT_TASKS per instance, and instances migrating a new database at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable

import psycopg
import pytest

from config import load_settings
from service.cron import plan_runs
from service.store import (
    HOST,
    LimitReached,
    SQLiteTaskStore,
    StoreUnavailable,
    TaskStatus,
    TaskStore,
    open_store,
)
from service.store.owners import instance_of, new_owner
from service.store.postgres import PostgresTaskStore
from service.store.postgres_schema import SCHEMA_VERSION
from tests.support.postgres import PASSWORD, postgres_databases, postgres_dsn  # noqa: F401 (the fixtures)

T0 = 1_700_000_000.0
# owners on another machine: only their leases say whether they are gone
X = "elsewhere:101:aaaaaa:100"
Y = "elsewhere:102:bbbbbb:100"  # X's instance (the same parent): SQLite and PostgreSQL count alike
WEBHOOK = {"url": "http://127.0.0.1:9/hook", "timeout": 3}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """time.time() for both stores (and the event log), moved by hand."""
    fixed = Clock()
    monkeypatch.setattr(time, "time", fixed)
    return fixed


@pytest.fixture
def make_store(tmp_path, request) -> Callable[[str], TaskStore]:
    """Opens a store of a kind on a new file or database; all are closed after the test."""
    opened: list = []

    def make(kind: str) -> TaskStore:
        if kind == "sqlite":
            store: TaskStore = SQLiteTaskStore(tmp_path / f"store{len(opened)}.db")
        else:
            store = PostgresTaskStore(request.getfixturevalue("postgres_databases")())
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def task(task_id: str, created_at: float, name: str | None = "t", **more) -> dict:
    return {
        "id": task_id,
        "spec": {"sources": [], **more.pop("spec", {})},
        "name": name,
        "created_at": created_at,
        **more,
    }


def ids(tasks: list[dict]) -> list[str]:
    return [t["id"] for t in tasks]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ------------------------------------------------------------------ behaviours (each returns a transcript)


def listing_and_paging(store: TaskStore, clock: Clock) -> list:
    for n, (created, name) in enumerate(
        [(100.0, "Alpha One"), (100.0, "beta"), (100.0, "ALPHA two"), (101.0, None), (102.0, "gamma_50%")], 1
    ):
        store.create_task(task(f"task_{n:012d}", created, name, profile="p", schedule_id="sch_1" if n % 2 else None))
    seen: list = []
    newest = store.list_tasks(10)
    assert ids(newest) == [f"task_{n:012d}" for n in (5, 4, 3, 2, 1)]  # ties: the later insert first
    assert "spec" not in newest[0] and "activity" not in newest[0]
    pages, before = [], None
    while True:
        page = store.list_tasks(2, before=before)
        if not page:
            break
        pages.append(ids(page))
        before = page[-1]["id"]
    assert pages == [ids(newest)[:2], ids(newest)[2:4], ids(newest)[4:]]
    with pytest.raises(LookupError):
        store.list_tasks(2, before="task_unknown")
    assert ids(store.list_tasks(10, q="alpha")) == ["task_000000000003", "task_000000000001"]
    assert ids(store.list_tasks(10, q="_")) == ids(store.list_tasks(10, q="%")) == ["task_000000000005"]
    assert ids(store.list_tasks(10, schedule_id="sch_1")) == [
        "task_000000000005",
        "task_000000000003",
        "task_000000000001",
    ]
    assert store.queue_positions(["task_000000000004", "task_000000000001", "task_unknown"]) == {
        "task_000000000004": 4,
        "task_000000000001": 1,
    }
    assert store.request_cancel("task_000000000002") is TaskStatus.QUEUED
    assert ids(store.list_tasks(10, status="cancelled")) == ["task_000000000002"]
    assert store.queue_positions(["task_000000000003"]) == {"task_000000000003": 2}
    status = store.get_task("task_000000000001")
    full = store.get_task("task_000000000001", with_spec=True)
    assert "spec" not in status and status["activity"]["events"][0]["message"] == "queued by schedule sch_1 (due now)"
    assert full["spec"] == {"sources": []} and full["submitted"] is None and status["extra"] == {}
    assert store.get_task("task_unknown") is None
    assert store.task_ids() == {f"task_{n:012d}" for n in range(1, 6)}
    assert store.unfinished_ids() == store.task_ids() - {"task_000000000002"}
    seen += [pages, newest, status, full, sorted(store.unfinished_ids())]
    return seen


def claims_and_max_running(store: TaskStore, clock: Clock) -> list:
    store.create_task(task("task_a", 10.0))
    store.create_task(task("task_b", 5.0))
    store.create_task(task("task_c", 5.0))
    first = store.claim(X, 2, 15.0)
    assert first is not None and first["id"] == "task_b"
    assert (first["status"], first["phase"], first["owner"], first["runs"]) == ("running", "fetching", X, 1)
    assert first["started_at"] == T0 and first["lease_until"] == T0 + 15.0 and first["spec"] == {"sources": []}
    second = store.claim(Y, 2, 15.0)
    assert second is not None and second["id"] == "task_c"
    assert store.claim(X, 2, 15.0) is None  # two running in this instance
    assert store.claim(X, 3, 15.0)["id"] == "task_a"
    assert store.claim(X, 9, 15.0) is None  # nothing queued
    return [first, second, store.get_task("task_a")]


def lease_expiry_renew_release(store: TaskStore, clock: Clock) -> list:
    store.create_task(task("task_a", 1.0))
    store.create_task(task("task_b", 2.0))
    assert store.claim(X, 5, 15.0)["id"] == "task_a"
    assert store.claim(X, 5, 15.0)["id"] == "task_b"
    clock.now += 10
    store.renew(X, ["task_b"], 15.0)  # task_b's lease runs to T0 + 25, task_a's still to T0 + 15
    store.renew(Y, ["task_a"], 100.0)  # not Y's: no effect
    assert store.claim(Y, 5, 15.0) is None
    clock.now += 6
    resumed = store.claim(Y, 5, 15.0)
    assert resumed["id"] == "task_a" and resumed["owner"] == Y and resumed["runs"] == 2
    assert resumed["started_at"] == T0 and resumed["lease_until"] == T0 + 31
    assert store.claim(Y, 5, 15.0) is None  # task_b's lease holds
    store.save_progress("task_a", X, {"phase": "merging", "progress": {"pages_done": 9}})  # X lost it
    assert store.finish("task_a", X, TaskStatus.COMPLETED) is False
    store.release(X)  # a clean shutdown: task_b can be resumed at once
    taken = store.claim(Y, 5, 15.0)
    assert taken["id"] == "task_b" and taken["runs"] == 2
    after = store.get_task("task_a")
    assert after["progress"] is None and after["status"] == "running"
    return [resumed, taken, after]


def dead_owner_resumes_at_once(store: TaskStore, clock: Clock) -> list:
    dead = f"{HOST}:{dead_pid()}:cccccc:1"
    alive = f"{HOST}:{os.getpid()}:dddddd:1"
    store.create_task(task("task_a", 1.0))
    store.create_task(task("task_b", 2.0))
    assert store.claim(alive, 5, 600.0)["id"] == "task_a"
    assert store.claim(dead, 5, 600.0)["id"] == "task_b"
    resumed = store.claim(X, 5, 600.0)  # task_b's lease holds, but its process is gone
    assert resumed["id"] == "task_b" and resumed["runs"] == 2 and resumed["owner"] == X
    assert store.claim(Y, 5, 600.0) is None  # task_a's owner lives
    return [resumed]


def progress_finish_and_webhooks(store: TaskStore, clock: Clock) -> list:
    store.create_task(task("task_hook", 1.0, spec={"webhook": WEBHOOK}))
    store.create_task(task("task_plain", 2.0))
    assert store.claim(X, 5, 15.0)["id"] == "task_hook"
    progress = {"phase": "merging", "progress": {"pages_done": 4, "requests": 5, "retries": 1, "bytes": 700}}
    store.save_progress("task_hook", X, progress)
    saved = store.get_task("task_hook")
    assert saved["progress"] == progress and saved["phase"] == "merging"
    assert store.finish("task_hook", Y, TaskStatus.COMPLETED) is False  # not Y's task
    assert store.claim_webhooks("sender", 4, 1.0) == []
    clock.now += 1
    done = store.finish(
        "task_hook", X, TaskStatus.COMPLETED, result={"rows": 40}, progress=progress, extra={"summary": {"a": 1}}
    )
    assert done is True and store.finish("task_hook", X, TaskStatus.FAILED) is False
    finished = store.get_task("task_hook")
    assert finished["status"] == "completed" and finished["finished_at"] == T0 + 1 and finished["phase"] is None
    assert finished["extra"] == {
        "summary": {"a": 1},
        "webhook": {"delivered": False, "attempts": 0, "error": None, "pending": True},
    }
    assert store.finish("task_plain", None, TaskStatus.FAILED, error={"message": "x"}, partial=True)
    assert store.get_task("task_plain")["partial"] is True
    first = store.claim_webhooks("sender", 4, 1.0)
    assert first == [
        {"task_id": "task_hook", "due": T0 + 1, "attempts": 1, "done": 0, "owner": "sender", "lease_until": T0 + 8}
    ]
    assert store.claim_webhooks("other", 4, 1.0) == []  # leased
    assert store.settle_webhook("task_hook", "other", {"delivered": False}, T0 + 5) is False
    outcome = {"delivered": False, "attempts": 1, "error": "refused", "pending": True}
    assert store.settle_webhook("task_hook", "sender", outcome, T0 + 5) is True
    assert store.get_task("task_hook")["extra"]["webhook"] == outcome
    assert store.claim_webhooks("sender", 4, 1.0) == []  # not due yet
    clock.now = T0 + 5
    again = store.claim_webhooks("other", 4, 1.0)
    assert [(w["task_id"], w["attempts"], w["owner"]) for w in again] == [("task_hook", 2, "other")]
    assert store.settle_webhook("task_hook", "other", {"delivered": True, "attempts": 2}, None) is True
    clock.now += 100
    assert store.claim_webhooks("sender", 4, 1.0) == []  # settled for good
    counts = store.counts()
    assert counts == {
        "by_status": {"queued": 0, "running": 0, "completed": 1, "failed": 1, "cancelled": 0},
        "totals": {"pages": 4, "requests": 5, "retries": 1, "bytes": 700, "rows": 40},
    }
    return [saved, finished, first, again, store.get_task("task_hook", with_spec=True), counts]


def cancels(store: TaskStore, clock: Clock) -> list:
    store.create_task(task("task_q", 1.0, spec={"webhook": WEBHOOK}))
    store.create_task(task("task_r", 2.0))
    store.create_task(task("task_d", 3.0))
    assert store.claim(X, 5, 15.0)["id"] == "task_q"
    assert store.claim(X, 5, 15.0)["id"] == "task_r"
    store.finish("task_q", X, TaskStatus.COMPLETED, result={"rows": 1})
    store.create_task(task("task_w", 4.0, spec={"webhook": WEBHOOK}))
    assert store.request_cancel("task_w") is TaskStatus.QUEUED
    cancelled = store.get_task("task_w")
    assert cancelled["status"] == "cancelled" and cancelled["error"]["message"] == "cancelled before it started"
    assert cancelled["activity"]["events"][-1]["kind"] == "cancelled" and cancelled["extra"]["webhook"]["pending"]
    assert store.request_cancel("task_r") is TaskStatus.RUNNING
    assert store.cancel_requests(["task_r", "task_d", "task_unknown"]) == {"task_r"}
    assert store.request_cancel("task_q") is TaskStatus.COMPLETED
    assert store.request_cancel("task_unknown") is None
    assert store.finish("task_r", X, TaskStatus.CANCELLED) and store.cancel_requests(["task_r"]) == set()
    webhooks = store.claim_webhooks("sender", 9, 0.0)
    assert sorted(w["task_id"] for w in webhooks) == ["task_q", "task_w"]
    return [cancelled, store.get_task("task_r"), sorted(webhooks, key=lambda w: w["task_id"])]


def deletes_and_expiry(store: TaskStore, clock: Clock) -> list:
    store.create_task(task("task_old", 1.0, spec={"webhook": WEBHOOK}))
    store.create_task(task("task_new", 2.0))
    store.create_task(task("task_run", 3.0))
    for _ in range(3):
        store.claim(X, 5, 15.0)
    progress = {"phase": "exporting", "progress": {"pages_done": 3, "bytes": 10}}
    store.finish("task_old", X, TaskStatus.COMPLETED, result={"rows": 7}, progress=progress)
    clock.now += 50
    store.finish("task_new", X, TaskStatus.COMPLETED, result={"rows": 2})
    clock.now += 20
    expired = store.expired_results(60.0)
    assert ids(expired) == ["task_old"] and "activity" in expired[0]
    store.mark_expired("task_old")
    assert store.expired_results(60.0) == [] and store.get_task("task_old")["expired"] is True
    before = store.counts()["totals"]
    assert store.delete_task("task_run") is TaskStatus.RUNNING and store.get_task("task_run") is not None
    assert store.delete_task("task_old") is TaskStatus.COMPLETED and store.get_task("task_old") is None
    assert store.delete_task("task_old") is None
    assert store.claim_webhooks("sender", 9, 0.0) == []  # its outbox row went with it
    after = store.counts()
    assert after["totals"] == before == {"pages": 3, "requests": 0, "retries": 0, "bytes": 10, "rows": 9}
    assert after["by_status"]["completed"] == 1 and after["by_status"]["running"] == 1
    return [expired, after]


def profiles(store: TaskStore, clock: Clock) -> list:
    assert store.profile("p") == {"inputs": [], "configuration": {}}
    configured = {"zeta": 1, "alpha": {"b": 2, "a": 1}, "page_limit": 5}
    updated = store.update_profile("p", lambda p: {**p, "configuration": configured})
    assert updated["configuration"] == configured
    store.update_profile("p", lambda p: {**p, "inputs": [*p["inputs"], {"name": "id", "column": 0}]})
    stored = store.profile("p")
    assert stored == {"inputs": [{"name": "id", "column": 0}], "configuration": configured}
    assert list(stored["configuration"]) == ["zeta", "alpha", "page_limit"]  # as written
    assert store.profile("other") == {"inputs": [], "configuration": {}}
    return [updated, stored]


def queue_caps(store: TaskStore, clock: Clock) -> list:
    for n in range(2):
        store.create_task(task(f"task_p{n}", float(n), profile="p"), max_queued=2)
    with pytest.raises(LimitReached) as raised:
        store.create_task(task("task_p9", 9.0, profile="p"), max_queued=2)
    assert (raised.value.limit, raised.value.value) == ("MAX_QUEUED_PER_PROFILE", 2)
    store.create_task(task("task_o", 3.0, profile="o"), max_queued=2)  # another profile's queue
    assert store.queued_count("p", 5) == 2 and store.queued_count("p", 1) == 1 and store.queued_count("z", 5) == 0
    store.claim(X, 5, 15.0)
    store.create_task(task("task_p9", 9.0, profile="p"), max_queued=2)  # a place is free again
    assert store.get_task("task_p9")["profile"] == "p"
    return [store.queued_count("p", 5), ids(store.list_tasks(10))]


def schedules(store: TaskStore, clock: Clock) -> list:
    def schedule(schedule_id: str, created_at: float, **more) -> dict:
        return {
            "id": schedule_id,
            "cron": "* * * * * *",
            "timezone": "UTC",
            "spec": {"name": "s", "sources": []},
            "created_at": created_at,
            "next_run": T0,
            **more,
        }

    def make_task(sched: dict, due: float, missed: int) -> dict:
        return {
            "id": f"task_{sched['id']}_{int(due - T0)}",
            "spec": sched["spec"],
            "name": sched["spec"]["name"],
            "schedule_id": sched["id"],
            "profile": sched["profile"],
            "created_at": due,
            "extra": {"scheduled_for": due, **({"missed_runs": missed} if missed else {})},
        }

    store.create_schedule(schedule("sch_b", 5.0, profile="p", base_url="http://here"), max_per_profile=2)
    store.create_schedule(schedule("sch_a", 5.0, profile="p"), max_per_profile=2)
    with pytest.raises(LimitReached):
        store.create_schedule(schedule("sch_c", 6.0, profile="p"), max_per_profile=2)
    store.create_schedule(schedule("sch_q", 7.0), max_per_profile=2)  # the default profile
    listed = store.list_schedules()
    assert [s["id"] for s in listed] == ["sch_b", "sch_a", "sch_q"] and listed[2]["profile"] == "default"
    assert listed[0]["spec"] == {"name": "s", "sources": []} and listed[0]["paused"] == 0
    paused = store.pause_schedule("sch_a", True)
    assert paused["paused"] == 1 and store.pause_schedule("sch_unknown", True) is None
    skipped: list = []
    fired = store.fire_schedules(T0 + 2.5, plan_runs, make_task, 10.0, None, lambda s, t: skipped.append(t["id"]))
    # no scheduler looked before: each due schedule makes one run for its latest due time
    assert ids(fired) == ["task_sch_b_2", "task_sch_q_2"] and fired[0]["extra"]["missed_runs"] == 2
    assert store.fire_schedules(T0 + 2.5, plan_runs, make_task, 10.0) == []  # fired once only
    caught_up = store.fire_schedules(
        T0 + 4.5, plan_runs, make_task, 10.0, max_queued=2, on_skip=lambda s, t: skipped.append(t["id"])
    )
    # caught up: every due time, one task each; each profile's queue takes one more (cap 2)
    assert ids(caught_up) == ["task_sch_b_3", "task_sch_q_3"]
    assert skipped == ["task_sch_b_4", "task_sch_q_4"]
    b = store.get_schedule("sch_b")
    assert (b["next_run"], b["last_run"], b["last_task_id"], b["skipped_runs"], b["last_skipped"]) == (
        T0 + 5,
        T0 + 4,
        "task_sch_b_3",
        1,
        T0 + 4.5,
    )
    assert store.get_schedule("sch_a")["next_run"] == T0  # paused: untouched
    resumed = store.pause_schedule("sch_a", False, T0 + 10)
    assert resumed["paused"] == 0 and resumed["next_run"] == T0 + 10
    clock.now = T0 + 6
    assert store.run_schedule_now("sch_q", make_task(store.get_schedule("sch_q"), T0 + 6, 0)) is True
    assert store.get_schedule("sch_q")["last_task_id"] == "task_sch_q_6"
    assert store.run_schedule_now("sch_unknown", make_task(b, T0 + 7, 0)) is False
    assert store.get_task("task_sch_b_7") is None
    with pytest.raises(LimitReached):
        store.run_schedule_now("sch_b", make_task(b, T0 + 8, 0), max_queued=2)
    assert store.get_schedule("sch_b")["last_task_id"] == "task_sch_b_3"  # nothing was written
    assert store.delete_schedule("sch_b") is True and store.delete_schedule("sch_b") is False
    by_schedule = ids(store.list_tasks(20, schedule_id="sch_q"))
    assert by_schedule == ["task_sch_q_6", "task_sch_q_3", "task_sch_q_2"]
    return [listed, fired, caught_up, b, resumed, store.list_schedules(), store.get_task("task_sch_q_6")]


def incremental_state(store: TaskStore, clock: Clock) -> list:
    assert store.get_state("p", "job") is None and store.list_states("p") == []
    first = store.update_state("p", "job", lambda s: {**s, "items": {"cursor": "c1"}}, "task_1")
    assert first == {"items": {"cursor": "c1"}}
    clock.now += 5
    second = store.update_state("p", "job", lambda s: {**s, "more": {"cursor": 2}}, "task_2")
    assert second == {"items": {"cursor": "c1"}, "more": {"cursor": 2}}
    saved = store.get_state("p", "job")
    assert saved == {"name": "job", "profile": "p", "state": second, "updated_at": T0 + 5, "task_id": "task_2"}
    for name in ("beta", "Zeta", "alpha"):
        store.update_state("p", name, lambda s: {"x": 1}, None)
    store.update_state("q", "job", lambda s: {"y": 1}, None)
    assert [s["name"] for s in store.list_states("p")] == ["Zeta", "alpha", "beta", "job"]  # byte order
    assert store.delete_state("p", "job") == saved and store.delete_state("p", "job") is None
    assert store.delete_states("p") == 3 and store.list_states("p") == []
    assert store.get_state("q", "job")["state"] == {"y": 1}
    return [saved, store.list_states("q")]


BEHAVIOURS = [
    listing_and_paging,
    claims_and_max_running,
    lease_expiry_renew_release,
    dead_owner_resumes_at_once,
    progress_finish_and_webhooks,
    cancels,
    deletes_and_expiry,
    profiles,
    queue_caps,
    schedules,
    incremental_state,
]


@pytest.mark.parametrize("behaviour", BEHAVIOURS, ids=lambda b: b.__name__)
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_store_behaviour(kind, behaviour, make_store, clock):
    store = make_store(kind)
    assert isinstance(store, TaskStore)
    behaviour(store, clock)


@pytest.mark.parametrize("behaviour", BEHAVIOURS, ids=lambda b: b.__name__)
def test_both_stores_give_equal_results(behaviour, make_store, clock):
    transcripts = []
    for kind in ("sqlite", "postgres"):
        clock.now = T0
        transcripts.append(json.dumps(behaviour(make_store(kind), clock), default=str))
    assert transcripts[0] == transcripts[1]


# ------------------------------------------------------------------ PostgreSQL: several instances


def race(workers: list[Callable[[], None]]) -> None:
    """Run each callable in its own thread, all starting together; re-raise the first error."""
    barrier = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def run(work: Callable[[], None]) -> None:
        barrier.wait()
        try:
            work()
        except BaseException as exc:  # collected: every worker must succeed
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


def test_two_instances_claim_each_of_50_tasks_exactly_once(postgres_databases):  # noqa: F811
    dsn = postgres_databases()
    instances = [PostgresTaskStore(dsn), PostgresTaskStore(dsn)]  # two pools, as two instances
    try:
        for n in range(50):
            instances[0].create_task(task(f"task_{n:03d}", 1000.0 + n))
        claimed: list[tuple[str, str]] = []

        def worker(store: PostgresTaskStore, owner: str) -> Callable[[], None]:
            def work() -> None:
                while (got := store.claim(owner, 1000, 60.0)) is not None:
                    claimed.append((got["id"], owner))

            return work

        race(
            [worker(store, f"{HOST}:{os.getpid()}:w{i}{j}:{i}") for i, store in enumerate(instances) for j in range(3)]
        )
        assert Counter(task_id for task_id, _ in claimed) == {f"task_{n:03d}": 1 for n in range(50)}
        assert len({owner for _, owner in claimed}) > 1  # they did race
        running = instances[1].list_tasks(100, status="running")
        assert {t["id"]: t["owner"] for t in running} == dict(claimed) and {t["runs"] for t in running} == {1}
    finally:
        for store in instances:
            store.close()


def test_max_concurrent_tasks_counts_the_claiming_instance_only(postgres_databases):  # noqa: F811
    dsn = postgres_databases()
    instances = [PostgresTaskStore(dsn), PostgresTaskStore(dsn)]
    try:
        for n in range(30):
            instances[0].create_task(task(f"task_{n:03d}", 1000.0 + n))
        owners = [f"host-{i}:{100 + j}:abcdef:{i}" for i in range(2) for j in range(4)]  # 2 instances x 4 workers
        assert instance_of(owners[0]) == instance_of(owners[3]) != instance_of(owners[4])

        def worker(owner: str) -> Callable[[], None]:
            store = instances[int(owner.rsplit(":", 1)[1])]
            return lambda: [store.claim(owner, 3, 60.0) for _ in range(4)]

        for round_ in range(5):  # every worker of both instances claims at once, five times over
            race([worker(owner) for owner in owners])
            running = instances[0].list_tasks(100, status="running")
            assert Counter(instance_of(t["owner"]) for t in running) == {"host-0:0": 3, "host-1:1": 3}
            assert ids(running) == [f"task_{n:03d}" for n in range(6 * round_ + 5, 6 * round_ - 1, -1)]  # oldest
            for t in running:
                assert instances[1].finish(t["id"], t["owner"], TaskStatus.COMPLETED)
    finally:
        for store in instances:
            store.close()


def test_two_instances_fire_each_due_time_exactly_once(postgres_databases):  # noqa: F811
    dsn = postgres_databases()
    instances = [PostgresTaskStore(dsn), PostgresTaskStore(dsn)]
    try:
        for n in range(4):
            instances[0].create_schedule(
                {"id": f"sch_{n}", "cron": "* * * * * *", "timezone": "UTC", "spec": {"name": "s"}, "next_run": T0}
            )

        def make_task(schedule: dict, due: float, missed: int) -> dict:
            return {"id": f"task_{schedule['id']}_{int(due - T0)}_{missed}", "spec": {}, "schedule_id": schedule["id"]}

        fired: list[str] = []
        for step in range(25):  # both instances look at every instant, at the same moment
            now = T0 + step + 0.5
            race(
                [
                    lambda s=s, now=now: fired.extend(ids(s.fire_schedules(now, plan_runs, make_task, 10.0)))
                    for s in instances
                ]
            )
        expected = [f"task_sch_{n}_{step}_0" for n in range(4) for step in range(25)]
        assert sorted(fired) == sorted(expected) and len(fired) == len(set(fired))
        assert sorted(instances[1].task_ids()) == sorted(expected)
        assert {s["next_run"] for s in instances[1].list_schedules()} == {T0 + 25}
    finally:
        for store in instances:
            store.close()


def test_two_instances_claim_each_webhook_exactly_once(postgres_databases):  # noqa: F811
    dsn = postgres_databases()
    instances = [PostgresTaskStore(dsn), PostgresTaskStore(dsn)]
    try:
        for n in range(30):
            instances[0].create_task(task(f"task_{n:03d}", float(n), spec={"webhook": WEBHOOK}))
            assert instances[0].finish(f"task_{n:03d}", None, TaskStatus.FAILED, error={"message": "x"})
        claimed: list[str] = []

        def sender(store: PostgresTaskStore, owner: str) -> Callable[[], None]:
            def work() -> None:
                while batch := store.claim_webhooks(owner, 3, 60.0):
                    claimed.extend(w["task_id"] for w in batch)

            return work

        race([sender(store, f"sender-{i}{j}") for i, store in enumerate(instances) for j in range(2)])
        assert Counter(claimed) == {f"task_{n:03d}": 1 for n in range(30)}
    finally:
        for store in instances:
            store.close()


def test_instances_opening_a_new_database_at_once_migrate_it_once(postgres_databases):  # noqa: F811
    for _ in range(3):
        dsn = postgres_databases()
        opened: list[PostgresTaskStore] = []
        race([lambda dsn=dsn: opened.append(PostgresTaskStore(dsn)) for _ in range(5)])
        try:
            assert len(opened) == 5 and {s.schema_version for s in opened} == {SCHEMA_VERSION}
            opened[0].create_task(task("task_a", 1.0))
            assert opened[4].get_task("task_a")["status"] == "queued"
        finally:
            for store in opened:
                store.close()
        with psycopg.connect(dsn) as db:
            versions = [r[0] for r in db.execute("SELECT version FROM schema_version ORDER BY version")]
        assert versions == list(range(1, SCHEMA_VERSION + 1))
        PostgresTaskStore(dsn).close()  # opening again changes nothing


def test_a_newer_database_is_left_as_it_is(postgres_databases):  # noqa: F811
    dsn = postgres_databases()
    PostgresTaskStore(dsn).close()
    with psycopg.connect(dsn) as db:
        db.execute("INSERT INTO schema_version (version, applied_at) VALUES (%s, 0)", (SCHEMA_VERSION + 1,))
    store = PostgresTaskStore(dsn)  # e.g. a rollback to this code: it opens, nothing is undone
    store.close()
    assert store.schema_version == SCHEMA_VERSION + 1


def test_an_unreachable_server_is_named_without_its_password(postgres_dsn):  # noqa: F811
    closed = postgres_dsn.rsplit(":", 1)[0] + ":1/postgres"  # nothing listens on port 1
    with pytest.raises(StoreUnavailable) as raised:
        PostgresTaskStore(closed)
    message = str(raised.value)
    assert "postgresql://pageferry@127.0.0.1:1/postgres" in message and "refused" in message.lower()
    assert PASSWORD not in message and raised.value.__cause__ is None
    wrong = postgres_dsn.replace(PASSWORD, PASSWORD + "x")
    with pytest.raises(StoreUnavailable) as raised:
        PostgresTaskStore(wrong)
    assert "password authentication failed" in str(raised.value) and PASSWORD not in str(raised.value)


def test_the_password_is_in_no_repr(postgres_databases):  # noqa: F811
    store = PostgresTaskStore(postgres_databases())
    try:
        assert PASSWORD not in repr(store) and PASSWORD not in str(vars(store).get("where"))
        assert store.ping() is True
    finally:
        store.close()


def test_a_runner_owner_names_its_instance():
    owner = new_owner()
    host, pid, _, parent = owner.split(":")
    assert (host, int(pid), int(parent)) == (HOST, os.getpid(), os.getppid())
    assert instance_of(owner) == f"{HOST}:{os.getppid()}" and instance_of("h:1:abc") == "h:1:abc"


def test_open_store_follows_database_url(tmp_path, postgres_databases):  # noqa: F811
    default = open_store(load_settings({"DATA_DIR": str(tmp_path)}))
    assert isinstance(default, SQLiteTaskStore) and default.path == tmp_path / "pageferry.db"
    default.close()
    shared = open_store(load_settings({"DATA_DIR": str(tmp_path), "DATABASE_URL": postgres_databases()}))
    assert isinstance(shared, PostgresTaskStore) and shared.ping()
    shared.close()
