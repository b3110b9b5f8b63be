"""`REDIS_URL`: the rate limiter and budgets in Redis, end to end against the test API, whose
arrival log is the judge. Three jobs in two processes (an engine running two, a CLI run in
another directory running one) share one budget; a job without a budget keeps its own limit
across its pool processes; an unreachable Redis fails the job at start, clearly, without the
password."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from config import load_settings
from engine.fetch.outbound import outbound_policy
from engine.run.engine import Engine, new_job_id
from engine.spec.models import parse_spec
from engine.spec.prepare import prepare
from tests.conftest import cli_env
from tests.integration.test_budgets import arrivals, ids, job, max_in_window
from tests.support.net import free_port
from tests.support.readback import read_export
from tests.support.redis_server import PASSWORD

LIMIT = 30  # requests per second: test_budgets.job's default


@pytest.fixture(scope="module")
def redis_engine(tmp_path_factory, redis_url):
    """An engine whose settings carry REDIS_URL (the service and the CLI get it the same way)."""
    data = tmp_path_factory.mktemp("redis-engine")
    engine = Engine(load_settings({"DATA_DIR": str(data), "WORKERS": "1", "REDIS_URL": redis_url}))
    yield engine
    engine.close()


def start(engine: Engine, folder: Path, spec: dict, workers: int = 1):
    prepared = prepare(parse_spec(spec), os.environ, outbound_policy(engine.settings, service=False), base_dir=folder)
    job_id = new_job_id("test")
    options = engine.options(job_id, folder / "work" / job_id, folder / "out" / f"{spec['name']}.csv", workers=workers)
    return engine.start(prepared, options)


def test_three_jobs_in_two_processes_share_a_redis_budget(api, redis_engine, redis_url, tmp_path):
    budget = f"crm-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "cli"  # not the engine's folder: only Redis can join them
    folder.mkdir()
    (folder / "902.json").write_text(json.dumps(job(api, 902, budget)))
    cli = subprocess.Popen(
        [sys.executable, "-m", "engine", "run", "902.json", "-o", "902.csv", "--workers", "1", "--quiet"],
        cwd=folder,
        env=cli_env({"REDIS_URL": redis_url}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        handles = {n: start(redis_engine, tmp_path, job(api, n, budget)) for n in (900, 901)}
        for n, handle in handles.items():
            assert handle.wait(120) and handle.error is None, handle.error
            assert ids(read_export(handle.result.output, "csv")) == list(range(1, n + 1))  # type: ignore[arg-type]
        out, err = cli.communicate(timeout=120)
    finally:
        cli.kill()
        cli.wait(10)
    assert cli.returncode == 0, err
    assert json.loads(out)["rows"] == 902
    assert ids(read_export(folder / "902.csv", "csv")) == list(range(1, 903))  # type: ignore[arg-type]

    jobs = {n: arrivals(api, n) for n in (900, 901, 902)}
    assert {n: len(times) for n, times in jobs.items()} == {900: 90, 901: 91, 902: 91}  # every page once
    start_all, end_all = max(t[0] for t in jobs.values()), min(t[-1] for t in jobs.values())
    assert end_all - start_all > 1.0  # all three ran at the same time...
    assert all(sum(start_all <= t <= end_all for t in times) >= 10 for times in jobs.values())
    together = sorted(t for times in jobs.values() for t in times)
    assert max_in_window(together, 1.0) == LIMIT  # ...and shared one limit, reaching it
    assert not (folder / ".pageferry" / "budgets").exists()  # the files were not used
    assert not (redis_engine.settings.data_dir / "budgets").exists()
    users = redis.Redis.from_url(redis_url).zcard(f"pageferry:limit:budget:{budget}:users")
    assert users == 0  # every job let go of the budget


def test_a_job_without_a_budget_keeps_its_limit_across_its_processes(api, redis_engine, redis_url, tmp_path):
    spec = job(api, 1200, "unused", requests=40)
    del spec["rate_limit"]["budget"]
    handle = start(redis_engine, tmp_path, spec, workers=2)
    assert handle.wait(60) and handle.error is None, handle.error
    assert ids(read_export(handle.result.output, "csv")) == list(range(1, 1201))  # type: ignore[arg-type]
    times = arrivals(api)
    assert len(times) == 120 and max_in_window(times, 1.0) <= 40
    assert (2 * 1.0) / (times[-1] - times[0]) >= 0.7  # 3 windows' bursts: close to full speed
    key = f"pageferry:limit:job:{handle.runner.options.job_id}"
    assert redis.Redis.from_url(redis_url).hget(key, "seq") == b"120"  # every send went through Redis


def test_redis_unreachable_at_start_fails_the_cli_run_clearly(api, cli, tmp_path):
    port = free_port()
    (tmp_path / "spec.json").write_text(json.dumps(job(api, 100, "crm")))
    run = cli(
        "run", "spec.json", "-o", "out.csv", "--quiet", env={"REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{port}/0"}
    )
    assert run.code != 0
    summary = run.summary
    assert summary["status"] == "failed"
    assert summary["error"].startswith(f"REDIS_URL: cannot connect to 127.0.0.1:{port}")
    assert PASSWORD not in run.stdout + run.stderr
    assert api.log(path="/items/page") == []  # never sent unlimited
