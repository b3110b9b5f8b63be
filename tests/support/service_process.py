"""Run the real service - gunicorn with gunicorn.conf.py - in a subprocess for tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

from tests.support.net import free_port

REPO = Path(__file__).resolve().parents[2]


class ServiceProcess:
    def __init__(self, data_dir: Path, env: dict | None = None, workers: int = 2, port: int | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        self.env.update(
            {
                "DATA_DIR": str(self.data_dir),
                "PORT": str(self.port),
                "BIND": f"127.0.0.1:{self.port}",
                "WEB_CONCURRENCY": str(workers),
                "WORKERS": "2",
                "PYTHONPATH": str(REPO),
                # The service refuses loopback by default; the tests' APIs and peers are there.
                "ALLOWED_SOURCE_HOSTS": "127.0.0.1,localhost",
            }
        )
        self.env.update(env or {})
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"gunicorn-{self.port}.log"
        self.base = f"http://127.0.0.1:{self.port}"
        self.session = requests.Session()
        self.headers: dict = {}

    # ------------------------------------------------------------ life
    def start(self, timeout: float = 30) -> ServiceProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.log()}")
            try:
                if requests.get(self.base + "/healthz", timeout=1).status_code == 200 and len(self.workers()) >= 1:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not come up:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def started_tasks(self) -> set[str]:
        """The tasks this instance's runners started or resumed (its JSON log lines, whole log)."""
        found = set()
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("event") in ("task_started", "task_resumed"):
                    found.add(entry["task_id"])
        return found

    def workers(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children()
        except psutil.Error:
            return []

    def tree(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []

    def stop(self, timeout: float = 20) -> None:
        """A clean stop (SIGTERM to the master, as a supervisor would)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill_group()
        self.session.close()

    def kill_hard(self) -> list[psutil.Process]:
        """SIGKILL the gunicorn master and its workers (not their children: the engine's
        processes must notice by themselves). Returns the processes left below them."""
        below = [p for w in self.workers() for p in _children(w)]
        for worker in self.workers():
            worker.kill()
        self.proc.kill()
        self.proc.wait(timeout=10)
        return below

    def kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    # ------------------------------------------------------------ API
    def url(self, path: str) -> str:
        return self.base + path

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.session.request(
            method, self.url(path), headers=headers, timeout=kwargs.pop("timeout", 30), **kwargs
        )

    def start_task(self, spec: dict, **kwargs) -> str:
        response = self.call("POST", "/api/export/start", json=spec, **kwargs)
        assert response.status_code == 202, response.text
        return response.json()["task_id"]

    def status(self, task_id: str) -> dict:
        return self.call("GET", f"/api/export/status/{task_id}").json()

    def wait(self, task_id: str, timeout: float = 60, until=("completed", "failed", "cancelled")) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(task_id)
            if status["status"] in until:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} still {status['status']}: {status}\n{self.log()}")
            time.sleep(0.1)

    def download(self, task_id: str) -> requests.Response:
        return self.call("GET", f"/api/export/download/{task_id}")


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []
