"""Small jobs start like a script: the pool starts one fetch process and adds the others only
when page 1 has shown work for them (engine/run/coordinator.py `_new_pool`)."""

from __future__ import annotations

import os

from engine import new_job_id, outbound_policy, parse_spec, prepare
from tests.support.specs import page_spec


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
