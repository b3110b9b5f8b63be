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
from engine.run.engine import Engine, new_job_id
from engine.spec.prepare import prepare
from engine.spec.models import parse_spec

pytest_plugins = ["tests.testapi.fixtures"]

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
    def run(spec: dict, env: dict | None = None, output: Path | None = None, workers: int | None = None,
            workdir: Path | None = None):
        parsed = parse_spec(spec)
        prepared = prepare(parsed, env if env is not None else os.environ,
                           engine.settings.allowed_source_hosts, base_dir=tmp_path)
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
        proc = subprocess.run([sys.executable, "-m", "engine", *args], cwd=tmp_path, env=cli_env(env),
                              input=stdin, capture_output=True, text=True, timeout=timeout)
        return CliRun(proc.returncode, proc.stdout, proc.stderr)
    return run


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(json.dumps(spec))
    return path
