"""Shared fixtures: the local test API (tests/testapi), an in-process engine whose jobs run in
real pool processes, and a runner for the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from config import load_settings
from engine.fetch.outbound import outbound_policy
from engine.run.engine import Engine, new_job_id
from engine.spec.models import parse_spec
from engine.spec.prepare import prepare
from tests.support.service_process import ServiceProcess

pytest_plugins = ["tests.testapi.fixtures", "tests.support.redis_server"]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    """One engine (one Manager, one forkserver) for the session: jobs start fast."""
    data = tmp_path_factory.mktemp("engine-data")
    settings = load_settings({"DATA_DIR": str(data), "WORKERS": "2"})
    eng = Engine(settings)
    yield eng
    eng.close()


@pytest.fixture
def run_job(engine, tmp_path):
    """Run a spec (dict) to completion in real pool processes; returns the JobResult or raises
    the job's error (JobFailed, JobCancelled, SpecError)."""

    def run(
        spec: dict,
        env: dict | None = None,
        output: Path | None = None,
        workers: int | None = None,
        workdir: Path | None = None,
    ):
        parsed = parse_spec(spec)
        prepared = prepare(
            parsed,
            env if env is not None else os.environ,
            outbound_policy(engine.settings, service=engine.service),
            base_dir=tmp_path,
        )
        job_id = new_job_id("test")
        output = output or tmp_path / "out" / parsed.output_name
        options = engine.options(job_id, workdir or tmp_path / "work" / job_id, output, workers=workers)
        return engine.runner(prepared, options).run()

    return run


@dataclass
class CliRun:
    code: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict:
        lines = self.stdout.splitlines()
        assert len(lines) == 1, f"stdout must be exactly one line, got {lines!r}\nstderr: {self.stderr}"
        return json.loads(lines[0])


def cli_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("WORKERS", "2")
    env.update(extra or {})
    return env


@pytest.fixture
def cli(tmp_path):
    """Run `python -m engine ...` in a subprocess (cwd: tmp_path)."""

    def run(*args: str, env: dict | None = None, stdin: str | None = None, timeout: float = 120) -> CliRun:
        proc = subprocess.run(
            [sys.executable, "-m", "engine", *args],
            cwd=tmp_path,
            env=cli_env(env),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CliRun(proc.returncode, proc.stdout, proc.stderr)

    return run


# ------------------------------------------------------------------ the real service (gunicorn)


class ServiceFactory:
    """Starts the real service (gunicorn, tests/support/service_process.py) - `env`: settings on
    top of the defaults, `headers`: sent with every `call` (e.g. the API token), other keywords
    go to ServiceProcess (workers, port) - and stops every one it started at `close()`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.started: list[ServiceProcess] = []

    def __call__(
        self, env: dict | None = None, data_dir: Path | None = None, headers: dict | None = None, **kwargs
    ) -> ServiceProcess:
        service = ServiceProcess(data_dir or self.folder / f"data{len(self.started)}", env, **kwargs).start()
        if headers:
            service.headers = dict(headers)
        self.started.append(service)
        return service

    def close(self) -> None:
        for service in self.started:
            service.stop()
            service.kill_group()


@pytest.fixture
def service_factory(tmp_path):
    """Services that live for one test (data in tmp_path)."""
    factory = ServiceFactory(tmp_path)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def module_service_factory(tmp_path_factory):
    """Services shared by a module's tests: a module's own module-scoped `service` fixture
    starts one with its settings, e.g. `return module_service_factory({"API_TOKEN": ...})`."""
    factory = ServiceFactory(tmp_path_factory.mktemp("services"))
    yield factory
    factory.close()


@pytest.fixture
def service(service_factory):
    """A service with the default settings, for one test."""
    return service_factory()


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(json.dumps(spec))
    return path


# Markers by folder (registered in pyproject.toml; `pytest -m "unit or integration"` etc.), and
# `slow` for the tests that take more than ~10 s. Node ids or whole files, relative to the repo.
FOLDER_MARKERS = {
    "unit": "unit",
    "integration": "integration",
    "webservice": "service",
    "browser": "browser",
    "security": "security",
}
SLOW = {
    "tests/integration/test_fuzz.py",  # hypothesis: 300-600 examples each, one against the HTTP API
    "tests/integration/test_reliability.py::test_killed_pool_process_is_replaced_and_both_jobs_finish_exactly",
    "tests/integration/test_cli.py::test_ctrl_c_stops_within_2_seconds_and_resume_completes_exactly",
    "tests/integration/test_cli.py::test_sigkill_then_resume_completes_exactly_and_leaves_no_orphans",
    "tests/webservice/test_service.py::test_sigkill_mid_task_then_restart_resumes_with_identical_output",
    "tests/webservice/test_service.py::test_clean_shutdown_hands_tasks_back_for_the_next_start",
}


def pytest_collection_modifyitems(config, items):
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        try:
            folder = Path(item.path).resolve().relative_to(tests_dir).parts[0]
        except ValueError:
            continue
        if folder in FOLDER_MARKERS:
            item.add_marker(FOLDER_MARKERS[folder])
        file_id, _, _ = item.nodeid.partition("::")
        if file_id in SLOW or item.nodeid.partition("[")[0] in SLOW:
            item.add_marker(pytest.mark.slow)
