"""EXECUTOR=dask://: a job's pieces on a Dask cluster - here a scheduler and two single-thread
workers started as subprocesses on 127.0.0.1 (no nanny: a SIGKILLed worker process stays dead,
and the job must finish on the other one). The test API's log is the judge."""

from __future__ import annotations

import bisect
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import cast

import distributed
import pytest
import redis

from config import load_settings
from engine.errors import JobCancelled, JobFailed
from engine.fetch.budget import open_for_job
from engine.fetch.outbound import outbound_policy
from engine.run import dask_pool
from engine.run.coordinator import JobOptions
from engine.run.engine import Engine, new_job_id
from engine.run.hub import HostedLimiter, JobHub
from engine.run.messages import UNKNOWN_END, WorkerJob
from engine.shards import NAME
from engine.spec.models import parse_spec
from engine.spec.prepare import PreparedJob, prepare
from engine.storage import StoreConfig
from tests.support.delivery_servers import S3_KEY, S3_SECRET, S3Server
from tests.support.net import free_port, wait_for
from tests.support.readback import read_export
from tests.support.specs import page_spec
from tests.testapi.parents_api import children_of, parent_order

REPO = Path(__file__).resolve().parents[2]


class DaskCluster:
    """`dask scheduler` and `dask worker`s as subprocesses; stops exactly the pids it started."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PYTHONPATH": str(REPO)}  # the workers import the engine
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.client: distributed.Client | None = None

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 - the process holds it
        return subprocess.Popen([sys.executable, "-m", "dask", *args], env=self.env, stdout=log, stderr=log)

    def start(self) -> DaskCluster:
        self.scheduler = self._spawn(
            "scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"
        )
        self.client = distributed.Client(self.address, timeout=30, set_as_default=False)
        self.ensure_workers(2)
        return self

    def ensure_workers(self, count: int) -> None:
        """Start workers until `count` are alive (a killed one is replaced for the next test)."""
        self.workers = [w for w in self.workers if w.poll() is None]
        while len(self.workers) < count:
            self.workers.append(
                self._spawn(
                    f"worker{len(self.workers)}",
                    "worker",
                    self.address,
                    "--host",
                    "127.0.0.1",
                    "--nthreads",
                    "1",
                    "--nworkers",
                    "1",
                    "--no-nanny",
                    "--no-dashboard",
                )
            )
        assert self.client is not None
        wait_for(lambda: len(self.client.scheduler_info()["workers"]) == count, 60, 0.2, f"{count} dask workers")

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        for process in [*self.workers, self.scheduler]:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    cluster = DaskCluster(tmp_path_factory.mktemp("dask"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def dask_engine(dask_cluster, tmp_path_factory):
    data = tmp_path_factory.mktemp("dask-engine-data")
    settings = load_settings(
        {"DATA_DIR": str(data), "WORKERS": "2", "EXECUTOR": f"dask://127.0.0.1:{dask_cluster.port}"}
    )
    engine = Engine(settings)
    yield engine
    engine.close()


@pytest.fixture
def cluster(dask_cluster):
    """The cluster with both its workers (one killed by an earlier test is replaced)."""
    dask_cluster.ensure_workers(2)
    return dask_cluster


def job_for(engine: Engine, spec: dict, folder: Path) -> tuple[PreparedJob, JobOptions]:
    parsed = parse_spec(spec)
    prepared = prepare(parsed, os.environ, outbound_policy(engine.settings, service=engine.service), base_dir=folder)
    job_id = new_job_id("test")
    return prepared, engine.options(job_id, folder / "work" / job_id, folder / "out" / job_id / parsed.output_name)


def run_on(engine: Engine, spec: dict, folder: Path):
    """Run `spec` to completion with `engine` (local pool or Dask, as its settings say)."""
    return engine.runner(*job_for(engine, spec, folder)).run()


def max_in_window(times: list[float], per: float) -> int:
    return max(bisect.bisect_left(times, t + per) - i for i, t in enumerate(times))


def test_a_killed_worker_mid_job_leaves_the_output_exact(api, cluster, dask_engine, tmp_path, caplog):
    """2,000 pages; one worker process SIGKILLed while both run pieces. Dask re-runs its task
    elsewhere (refused: it may have written some of its shards) or reports it lost; the job
    re-plans from the ledger and finishes on the other worker: every id exactly once."""
    n, size = 20_000, 10
    spec = page_spec(api, n=n, size=size, fmt="csv", concurrency=8, delay_ms=5)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = run_on(dask_engine, spec, tmp_path)
        except Exception as exc:  # reported below
            outcome["error"] = exc

    caplog.set_level(logging.WARNING, logger="pageferry.engine")
    job = threading.Thread(target=run)
    job.start()
    wait_for(lambda: len(api.log(path="/items/page")) >= 400, 60, 0.02, "the job to get going")
    victim = cluster.workers[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    before = len(api.log(path="/items/page"))
    job.join(180)
    assert not job.is_alive(), "the job did not finish"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert before < 2000  # the worker died mid-job
    assert any("rebuilding the pool" in r.getMessage() for r in caplog.records)  # the loss was seen
    assert result.rows == n and result.pages == n // size
    ids = [int(row["id"]) for row in read_export(result.output, "csv")]
    assert ids == list(range(1, n + 1))  # every id exactly once, in order
    requested = len(api.log(path="/items/page"))
    assert n // size <= requested < n // size + 400  # only the lost worker's unfinished pages again


@pytest.mark.parametrize(
    "source",
    [
        {"path": "/items/page", "pagination": {"type": "page", "size": 25, "total_pages": "meta.total_pages"}},
        {"path": "/items/cursor", "pagination": {"type": "cursor", "size": 25, "size_param": "size"}},
    ],
    ids=["page", "cursor"],
)
def test_a_job_on_dask_writes_the_same_bytes_as_on_the_local_pool(api, cluster, dask_engine, engine, tmp_path, source):
    spec = {
        "name": "same",
        "sources": [{"url": api.url(source["path"]), "params": {"n": 3000}, "pagination": source["pagination"]}],
        "concurrency": 4,
        "export": {"format": "csv"},
    }
    local = run_on(engine, spec, tmp_path / "local")
    api.reset()
    on_dask = run_on(dask_engine, spec, tmp_path / "dask")
    assert on_dask.rows == local.rows == 3000
    assert Path(on_dask.output).read_bytes() == Path(local.output).read_bytes()
    assert on_dask.requests == local.requests == len(api.log(path=source["path"]))  # progress counted too


def test_a_dependent_source_on_dask_reads_its_parents_on_the_workers(api, cluster, dask_engine, tmp_path):
    """`ids.from`: the parent's values are read from its shards (on a worker), then the child's
    units run in a new epoch - one request per parent id, each once."""
    spec = {
        "name": "family",
        "sources": [
            {
                "name": "parents",
                "url": api.url("/parents"),
                "params": {"n": 120, "order": "desc"},
                "pagination": {"type": "page", "size": 20, "total_pages": "meta.total_pages"},
                "export": False,
            },
            {"name": "children", "url": api.url("/children") + "?ids={id}", "ids": {"from": "parents"}},
        ],
        "concurrency": 4,
        "export": {"format": "ndjson"},
    }
    result = run_on(dask_engine, spec, tmp_path)
    requested = sorted(int(e["query"]["ids"]) for e in api.log(path="/children"))
    assert requested == list(range(1, 121))
    rows = read_export(result.output, "ndjson")
    assert rows == [{"_fanout_id": p, **child} for p in parent_order(120, "desc") for child in children_of(p)]
    assert result.rows_by_source == {"children": 240}


def test_concurrency_is_the_number_of_requests_in_flight_across_workers(api, cluster, dask_engine, tmp_path):
    """7 over 2 workers (4 lanes each): the hub's slots cap the sum - the server sees exactly 7
    requests at once, never more."""
    result = run_on(dask_engine, page_spec(api, n=800, size=10, concurrency=7, delay_ms=100), tmp_path)
    assert result.rows == 800 and result.pages == 80
    log = api.log(path="/items/page")
    events = sorted([(e["t"], 1) for e in log] + [(e["t_done"], -1) for e in log])
    in_flight = [0]
    for _, change in events:
        in_flight.append(in_flight[-1] + change)
    assert max(in_flight) == 7


@pytest.mark.parametrize("rate_limit", [40, {"requests": 40, "per": 1, "budget": "dask-test"}], ids=["own", "budget"])
def test_a_rate_limited_job_on_dask_obeys_its_limit(api, cluster, dask_engine, tmp_path, rate_limit):
    """Both workers send under the one limiter the hub runs (over the budget's file, with one):
    no 1-s window over the limit."""
    limit = 40
    result = run_on(dask_engine, page_spec(api, n=1200, size=10, concurrency=8) | {"rate_limit": rate_limit}, tmp_path)
    assert result.rows == 1200
    times = sorted(e["t"] for e in api.log(path="/items/page"))
    assert len(times) == 120
    assert max_in_window(times, 1.0) <= limit
    assert (len(times) - limit) / (times[-1] - times[0]) >= 0.8 * limit  # and not far below it
    # Let go once the job is over (the hub's process too): an idle budget takes a new limit.
    looser = parse_spec(page_spec(api) | {"rate_limit": {"requests": 80, "per": 1, "budget": "dask-test"}}).rate_limit
    assert looser is not None
    state, joined = open_for_job(looser, dask_engine.settings.data_dir / "budgets")
    state.close()
    assert joined.requests == 80


def test_with_redis_the_workers_send_under_the_jobs_limiter_in_redis(api, cluster, redis_url, tmp_path):
    """REDIS_URL: the workers take their tickets from Redis themselves (not through the hub)."""
    limit = 40
    settings = load_settings(
        {"DATA_DIR": str(tmp_path / "data"), "EXECUTOR": f"dask://127.0.0.1:{cluster.port}", "REDIS_URL": redis_url}
    )
    engine = Engine(settings)
    try:
        result = run_on(engine, page_spec(api, n=1200, size=10, concurrency=8) | {"rate_limit": limit}, tmp_path)
    finally:
        engine.close()
    assert result.rows == 1200
    times = sorted(e["t"] for e in api.log(path="/items/page"))
    assert len(times) == 120 and max_in_window(times, 1.0) <= limit
    sends = redis.Redis.from_url(redis_url).hget(f"pageferry:limit:job:{result.job_id}", "seq")
    assert sends is not None and float(sends) == 120  # every send's ticket came from Redis


def test_an_unreachable_scheduler_fails_the_job_clearly(api, tmp_path, monkeypatch):
    monkeypatch.setattr(dask_pool, "CONNECT_TIMEOUT", 1.0)  # nothing listens there: no need to wait 5 s
    port = free_port()
    settings = load_settings({"DATA_DIR": str(tmp_path / "data"), "EXECUTOR": f"dask://127.0.0.1:{port}"})
    engine = Engine(settings)
    try:
        with pytest.raises(JobFailed) as failed:
            run_on(engine, page_spec(api, n=100, size=10), tmp_path)
    finally:
        engine.close()
    assert str(failed.value) == f"EXECUTOR: cannot reach dask scheduler at tcp://127.0.0.1:{port}"
    assert api.log() == []


def test_with_an_s3_result_store_the_workers_store_every_shard(api, cluster, dask_engine, tmp_path):
    """RESULT_STORE=s3://: the store's settings reach the workers with the job, each worker
    uploads its shards - the bucket alone holds every page exactly once, so a resumed run in an
    empty work directory fetches nothing."""
    with S3Server() as s3:
        s3.bucket("dask-work")
        config = StoreConfig("dask-work", "dask", s3.endpoint, "us-east-1", S3_KEY, S3_SECRET)
        spec = page_spec(api, n=3000, size=20, concurrency=4)
        prepared, options = job_for(dask_engine, spec, tmp_path / "first")
        options.result_store = config
        first = dask_engine.runner(prepared, options).run()
        prefix = config.key(f"work/{options.job_id}/shards/")
        stored = s3.client().list_objects_v2(Bucket="dask-work", Prefix=prefix)["Contents"]
        spans = [NAME.match(item["Key"][len(prefix) :]) for item in stored]  # shards only: no other object
        pages = sorted(page for span in spans for page in range(int(span[3]), int(span[5]) + 1))
        assert pages == list(range(1, 151))
        api.reset()
        again = replace(options, workdir=tmp_path / "empty" / "work", output=tmp_path / "empty" / "out.csv")
        resumed = dask_engine.runner(prepared, again).run()
    assert api.log(path="/items/page") == []
    assert Path(resumed.output).read_bytes() == Path(first.output).read_bytes()
    assert [int(row["id"]) for row in read_export(first.output, "csv")] == list(range(1, 3001))


def test_a_cancelled_job_on_dask_stops_its_pieces_at_once(api, cluster, dask_engine, tmp_path):
    spec = page_spec(api, n=20_000, size=10, concurrency=4, delay_ms=20)
    handle = dask_engine.start(*job_for(dask_engine, spec, tmp_path))
    wait_for(lambda: len(api.log(path="/items/page")) >= 100, 60, 0.02, "the job to get going")
    asked = time.monotonic()
    handle.cancel("cancelled by the test")
    assert handle.wait(10)
    assert isinstance(handle.error, JobCancelled)
    assert time.monotonic() - asked < 2.0
    sent = len(api.log(path="/items/page"))
    time.sleep(0.5)
    assert len(api.log(path="/items/page")) == sent  # nothing sends after the job has stopped
    assert sent < 2000


# ------------------------------------------------------------------ the hub's rules (no cluster)


def hub(units: int = 3, concurrency: int = 2) -> JobHub:
    return JobHub(cast(WorkerJob, "job"), concurrency, units, HostedLimiter(None, 10, 1.0, 10))


def test_a_piece_runs_once_per_epoch_and_a_second_claim_stops_the_epoch():
    h = hub()
    assert h.claim(0, 7) == "run"
    assert h.claim(0, 8) == "run"
    assert h.claim(0, 7) == "again"  # Dask re-running a lost worker's piece
    assert h.cancelled(0) and h.claim(0, 9) == "over"  # the epoch's other pieces stop
    assert h.renew(cast(WorkerJob, "job2"), 5) == 1
    assert h.claim(0, 10) == "over" and h.job(0) is None  # a late task of the old epoch
    assert h.claim(1, 7) == "run" and h.job(1) == "job2" and not h.cancelled(1)


def test_renew_frees_the_slots_a_lost_worker_held_and_keeps_the_ends():
    h = hub(units=2, concurrency=2)
    assert h.acquire_slot(0) and h.acquire_slot(0) and not h.acquire_slot(0)
    assert h.acquire_token_lock(0) and not h.acquire_token_lock(0)
    h.lower_end(1, 40)
    h.lower_end(1, 55)  # an end only ever goes down
    h.stop()
    h.renew(cast(WorkerJob, "job"), 4)
    h.release_slots(0, 2)  # a late release of the old epoch counts for nothing
    assert h.acquire_slot(1) and h.acquire_slot(1) and not h.acquire_slot(1)
    assert h.acquire_token_lock(1)
    assert [h.end_of(i) for i in range(4)] == [UNKNOWN_END, 40, UNKNOWN_END, UNKNOWN_END]


def test_the_hubs_limiter_keeps_its_history_across_epochs():
    h = hub()  # 10 per second
    wait, probe = h.take()  # the job's first send asks what the API says about its quota
    h.settle(probe, None, True, False)  # nothing: no quota signals, the other sends may go
    taken = [h.take() for _ in range(10)]
    assert wait == 0.0 and [wait for wait, _ in taken] == [0.0] * 9 + [taken[-1][0]] and taken[-1][0] > 0
    h.renew(cast(WorkerJob, "job"), 3)
    assert h.take()[0] > 0  # the 10 sends of the last second still count
