"""`rate_limit.budget`: jobs naming one budget share its limit while they run at the same time -
two CLI runs in one directory, two tasks of the real service, two jobs of one engine - with the
test API's arrival log as the judge."""

from __future__ import annotations

import bisect
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from engine.fetch.outbound import outbound_policy
from engine.run.engine import new_job_id
from engine.spec.models import parse_spec
from engine.spec.prepare import prepare
from tests.conftest import cli_env
from tests.support.readback import read_export, rows_of
from tests.testapi.faults import fault_key, is_failing

LIMIT = 30  # requests per second, shared by both jobs
# One engine process per job (`--workers 1`): the jobs' processes are still separate, and fewer
# processes on a busy machine keep each send's way to the server short.


def job(api, n: int, budget: str, requests: int = LIMIT, **params) -> dict:
    """Pages of 10 records of a dataset of `n` (each job its own `n`: the log tells them apart)."""
    return {
        "name": f"items{n}",
        "sources": [
            {
                "url": api.url("/items/page"),
                "params": {"n": n, **params},
                "pagination": {"type": "page", "size": 10, "total_pages": "meta.total_pages"},
            }
        ],
        "rate_limit": {"requests": requests, "per": 1, "budget": budget},
        "concurrency": 4,
        "retry": {"backoff": 0.01},
        "export": {"format": "csv"},
    }


def arrivals(api, n: int | None = None) -> list[float]:
    return sorted(e["t"] for e in api.log(path="/items/page") if n is None or e["query"]["n"] == str(n))


def max_in_window(times: list[float], per: float) -> int:
    return max(bisect.bisect_left(times, t + per) - i for i, t in enumerate(times))


def assert_shared(api, first: int, second: int) -> None:
    """Both jobs sent all along, side by side, and together they filled the budget's window
    without ever going over it."""
    a, b = arrivals(api, first), arrivals(api, second)
    assert len(a) == -(-first // 10) and len(b) == -(-second // 10)  # every page once
    start, end = max(a[0], b[0]), min(a[-1], b[-1])
    assert end - start > 1.0  # they ran at the same time...
    assert sum(start <= t <= end for t in a) >= 10 and sum(start <= t <= end for t in b) >= 10
    assert max_in_window(sorted(a + b), 1.0) == LIMIT  # ...and shared one limit, reaching it


def ids(rows: list[dict]) -> list[int]:
    return [int(row["id"]) for row in rows]


def test_two_cli_runs_in_one_directory_share_the_budget(api, tmp_path):
    runs = []
    for n in (900, 901):
        (tmp_path / f"{n}.json").write_text(json.dumps(job(api, n, "crm")))
        runs.append(
            subprocess.Popen(
                [sys.executable, "-m", "engine", "run", f"{n}.json", "-o", f"{n}.csv", "--workers", "1", "--quiet"],
                cwd=tmp_path,
                env=cli_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for n, run in zip((900, 901), runs):
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        summary = json.loads(out)
        assert summary["status"] == "completed" and summary["rows"] == n
        assert ids(read_export(tmp_path / f"{n}.csv", "csv")) == list(range(1, n + 1))  # type: ignore[arg-type]
    assert_shared(api, 900, 901)
    assert (tmp_path / ".pageferry" / "budgets" / "crm.limiter").is_file()  # next to the work folder


def test_two_tasks_of_the_service_share_the_budget(api, service_factory):
    service = service_factory(env={"MAX_CONCURRENT_TASKS": "2", "WORKERS": "1"}, workers=2)
    tasks = {n: service.start_task(job(api, n, "crm")) for n in (900, 901)}
    for n, task in tasks.items():
        final = service.wait(task, timeout=90)
        assert final["status"] == "completed", final
        download = service.download(task)
        assert download.status_code == 200
        assert ids(rows_of(download.content, "csv")) == list(range(1, n + 1))
    assert_shared(api, 900, 901)
    assert (service.data_dir / "budgets" / "crm.limiter").is_file()


def start(engine, tmp_path: Path, spec: dict):
    prepared = prepare(parse_spec(spec), os.environ, outbound_policy(engine.settings, service=False), base_dir=tmp_path)
    job_id = new_job_id("test")
    options = engine.options(job_id, tmp_path / "work" / job_id, tmp_path / "out" / f"{spec['name']}.csv", workers=1)
    return engine.start(prepared, options)


def test_a_job_alone_keeps_full_speed(api, engine, tmp_path):
    handle = start(engine, tmp_path, job(api, 1200, f"alone-{uuid.uuid4().hex[:8]}", requests=40))
    assert handle.wait(60) and handle.error is None
    assert handle.result.rows == 1200
    times = arrivals(api)
    assert len(times) == 120 and max_in_window(times, 1.0) <= 40
    ideal_span = (-(-len(times) // 40) - 1) * 1.0  # full bursts, a window apart
    assert ideal_span / (times[-1] - times[0]) >= 0.85


def test_a_retry_after_for_one_job_pauses_the_other(api, engine, tmp_path):
    """Job 600 gets one 429 with Retry-After: 1 early on; job 901 (no faults, started first)
    must hold back for that second too - it sends under the same budget."""
    budget = f"pause-{uuid.uuid4().hex[:8]}"

    def failing_pages(seed: int) -> list[int]:
        return [
            p
            for p in range(1, 61)
            if is_failing(fault_key("/items/page", {"n": "600", "page": str(p), "per_page": "10"}), 0.01, seed)
        ]

    seed = next(s for s in range(1000) if len(failing_pages(s)) == 1 and 10 <= failing_pages(s)[0] <= 20)
    faulty = job(api, 600, budget, fail_rate=0.01, seed=seed, fault="429", retry_after=1)
    handles = [start(engine, tmp_path, job(api, 901, budget)), start(engine, tmp_path, faulty)]
    for handle, rows in zip(handles, (901, 600)):
        assert handle.wait(60) and handle.error is None, handle.error
        assert ids(read_export(handle.result.output, "csv")) == list(range(1, rows + 1))  # type: ignore[arg-type]
    assert handles[1].result.retries == 1 and handles[0].result.retries == 0
    log = api.log(path="/items/page")
    hit = next(e for e in log if e["fault"] == "429")["t"]
    other = arrivals(api, 901)
    assert other[0] < hit and other[-1] > hit + 1.0  # the other job was sending before and after...
    assert [t for t in arrivals(api) if hit + 0.1 < t < hit + 0.9] == []  # ...but not in the pause
    assert max_in_window(arrivals(api), 1.0) <= LIMIT
