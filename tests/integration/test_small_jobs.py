"""Small jobs start like a script: the pool starts one fetch process and adds the others only
when page 1 has shown work for them (engine/run/coordinator.py `_new_pool`)."""

from __future__ import annotations

import collections
import os
import threading
import time

import pytest

from config import load_settings
from engine import Engine, new_job_id, outbound_policy, parse_spec, prepare
from tests.support.specs import page_spec
from tests.testapi import creds


def run_runner(engine, spec: dict, tmp_path):
    prepared = prepare(parse_spec(spec), os.environ, outbound_policy(engine.settings, service=False), base_dir=tmp_path)
    job_id = new_job_id("test")
    options = engine.options(job_id, tmp_path / "work" / job_id, tmp_path / "out.csv", workers=2)
    runner = engine.runner(prepared, options)
    return runner, runner.run()


def test_a_one_page_job_starts_one_fetch_process(api, engine, tmp_path):
    runner, result = run_runner(engine, page_spec(api, n=40, size=50, concurrency=4), tmp_path)
    assert (result.rows, result.pages, result.requests) == (40, 1, 1)
    assert runner.fetch_processes == 1


def test_a_job_with_work_for_two_processes_starts_both(api, engine, tmp_path):
    runner, result = run_runner(engine, page_spec(api, n=4000, size=50, concurrency=4, delay_ms=20), tmp_path)
    assert (result.rows, result.pages) == (4000, 80)
    assert runner.fetch_processes == 2


def test_export_here_runs_the_export_in_this_process(api, engine, tmp_path, monkeypatch):
    import engine.run.coordinator as coordinator

    calls: list[int] = []
    real = coordinator.run_export

    def spy(request):  # a local function: a process pool could not even send it
        calls.append(os.getpid())
        return real(request)

    monkeypatch.setattr(coordinator, "run_export", spy)
    prepared = prepare(
        parse_spec(page_spec(api, n=120, size=50)),
        os.environ,
        outbound_policy(engine.settings, service=False),
        base_dir=tmp_path,
    )
    job_id = new_job_id("test")
    options = engine.options(job_id, tmp_path / "work" / job_id, tmp_path / "out.csv", workers=2)
    options.export_here = True
    result = engine.runner(prepared, options).run()
    assert calls == [os.getpid()]
    assert result.rows == 120 and (tmp_path / "out.csv").read_text().count("\n") == 121


# ---------------------------------------------------------------- inline start (the CLI's)


@pytest.fixture
def fresh_engine(tmp_path):
    """An engine of its own: whether a run started its Manager shows."""
    eng = Engine(load_settings({"DATA_DIR": str(tmp_path / "data"), "WORKERS": "2"}))
    yield eng
    eng.close()


def run_inline(engine, spec: dict, tmp_path, fmt: str = "csv", workers: int = 2):
    prepared = prepare(parse_spec(spec), os.environ, outbound_policy(engine.settings, service=False), base_dir=tmp_path)
    job_id = new_job_id("test")
    options = engine.options(job_id, tmp_path / "work" / job_id, tmp_path / f"out.{fmt}", workers=workers)
    options.inline_start = options.export_here = True
    runner = engine.runner(prepared, options)
    return runner, runner.run()


def test_a_one_page_job_started_inline_starts_no_process(api, fresh_engine, tmp_path):
    runner, result = run_inline(fresh_engine, page_spec(api, n=40, size=50), tmp_path)
    assert (result.rows, result.pages, result.requests) == (40, 1, 1)
    assert runner.fetch_processes == 0  # the page was fetched on a thread of this process
    assert fresh_engine._manager is None  # nor was the progress Manager started
    ids = [int(line.split(",")[0]) for line in (tmp_path / "out.csv").read_text().splitlines()[1:]]
    assert ids == list(range(1, 41))


def test_a_larger_job_moves_from_inline_to_the_pool(api, fresh_engine, tmp_path):
    spec = page_spec(api, n=3000, size=50, concurrency=4, delay_ms=10)
    runner, result = run_inline(fresh_engine, spec, tmp_path)
    assert (result.rows, result.pages) == (3000, 60)
    assert runner.fetch_processes == 2 and fresh_engine._manager is not None
    ids = [int(line.split(",")[0]) for line in (tmp_path / "out.csv").read_text().splitlines()[1:]]
    assert ids == list(range(1, 3001))  # every id once, in order, across both
    pages = collections.Counter(entry["query"]["page"] for entry in api.log(path="/items/page"))
    assert pages == collections.Counter(str(p) for p in range(1, 61))  # each page fetched once
    assert runner.progress()["progress"]["pages_done"] == 60  # the inline pages counted too


@pytest.mark.parametrize("limits", [{"workers": 1}, {"concurrency": 1}], ids=["workers-1", "concurrency-1"])
def test_a_one_process_job_runs_wholly_inline(api, fresh_engine, tmp_path, limits):
    # one process's worth of work: the CLI's own loop is that process (no pool, no Manager)
    spec = page_spec(api, n=3000, size=50, concurrency=limits.get("concurrency", 4), delay_ms=5)
    runner, result = run_inline(fresh_engine, spec, tmp_path, workers=limits.get("workers", 2))
    assert (result.rows, result.pages) == (3000, 60)
    assert runner.fetch_processes == 0 and fresh_engine._manager is None
    ids = [int(line.split(",")[0]) for line in (tmp_path / "out.csv").read_text().splitlines()[1:]]
    assert ids == list(range(1, 3001))
    pages = collections.Counter(entry["query"]["page"] for entry in api.log(path="/items/page"))
    assert pages == collections.Counter(str(p) for p in range(1, 61))  # each page fetched once
    assert runner.progress()["progress"]["pages_done"] == 60


def test_an_oauth2_token_obtained_inline_goes_to_the_pool(api, fresh_engine, tmp_path):
    spec = page_spec(api, n=2000, size=50, concurrency=4, delay_ms=10)
    spec["sources"][0]["auth"] = {
        "type": "oauth2",
        "token_url": api.url("/oauth/token"),
        "client_id": creds.OAUTH_CLIENT_ID,
        "client_secret": creds.OAUTH_CLIENT_SECRET,
    }
    spec["sources"][0]["url"] = api.url("/auth/oauth2")
    runner, result = run_inline(fresh_engine, spec, tmp_path)
    assert result.rows == 2000 and runner.fetch_processes == 2
    assert api.tokens_issued() == 1  # one token for the job, inline and pool processes alike


def test_progress_shows_while_the_first_piece_runs_inline(api, fresh_engine, tmp_path):
    # a cursor run's first chunk (64 pages, 20 ms each) runs inline, before any pool exists
    spec = {
        "name": "cursor",
        "sources": [
            {
                "url": api.url("/items/cursor"),
                "params": {"n": 1000, "size": 10, "delay_ms": 20},
                "pagination": {"type": "cursor", "param": "cursor", "next": "next_cursor"},
            }
        ],
        "export": {"format": "csv"},
    }
    prepared = prepare(parse_spec(spec), os.environ, outbound_policy(fresh_engine.settings, service=False), tmp_path)
    job_id = new_job_id("test")
    options = fresh_engine.options(job_id, tmp_path / "work" / job_id, tmp_path / "out.csv", workers=2)
    options.inline_start = options.export_here = True
    runner = fresh_engine.runner(prepared, options)
    seen: list[int] = []
    worker = threading.Thread(target=runner.run)
    worker.start()
    while worker.is_alive():
        if fresh_engine._manager is None:  # no pool yet: what progress shows is the inline piece's
            seen.append(runner.progress()["progress"]["pages_done"])
        time.sleep(0.05)
    assert runner.result is not None and runner.result.rows == 1000
    assert any(0 < done < 64 for done in seen)  # it grew while the piece ran, not only at its end


def test_a_parents_children_started_after_an_inline_page_report_to_the_job(api, fresh_engine, tmp_path):
    # page 1 holds every parent: the children's pool is the job's first, and its processes
    # must report to the Manager's board (an inline pool's own board reaches no process)
    spec = {
        "name": "family",
        "sources": [
            {
                "name": "parents",
                "url": api.url("/parents"),
                "params": {"n": 20},
                "pagination": {"type": "page", "size": 20, "total_pages": "meta.total_pages"},
                "export": False,
            },
            {"name": "children", "url": api.url("/children") + "?ids={id}", "ids": {"from": "parents"}},
        ],
        "concurrency": 4,
        "export": {"format": "csv"},
    }
    runner, result = run_inline(fresh_engine, spec, tmp_path)
    assert result.rows == 40 and len(api.log(path="/children")) == 20
    assert runner.progress()["progress"]["pages_done"] == 21  # the parents' page and 20 children's
