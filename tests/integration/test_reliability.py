"""Issue 6: faults survived, nothing lost. A killed pool process, disk trouble, hostile or
broken sources, SSRF — each either recovers exactly or fails loudly saying why."""

from __future__ import annotations

import collections
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import cli_env, write_spec
from tests.support.net import wait_for
from tests.support.readback import read_export
from tests.support.specs import page_spec


def pool_processes(engine) -> list[psutil.Process]:
    """The engine's pool processes: forkserver children other than the Manager."""
    manager_pid = engine.manager()._process.pid
    me = psutil.Process()
    found = []
    for child in me.children(recursive=True):
        try:
            if child.pid != manager_pid and "forkserver" in " ".join(child.cmdline()) and child.ppid() != me.pid:
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


# ------------------------------------------------------------------ a killed pool process


def test_killed_pool_process_is_replaced_and_both_jobs_finish_exactly(api, run_job, engine):
    # two output files: slow.parquet, other.parquet
    slow = page_spec(api, name="slow", n=3000, size=20, fmt="parquet", delay_ms=40)  # 150 pages
    other = page_spec(api, "/items/offset", name="other", n=2000, size=20, fmt="parquet", delay_ms=40)  # 100 pages
    results, errors = {}, []

    def run(name, spec):
        try:
            results[name] = run_job(spec, workers=2)
        except Exception as exc:  # reported below
            errors.append((name, exc))

    threads = [threading.Thread(target=run, args=(n, s)) for n, s in (("slow", slow), ("other", other))]
    for t in threads:
        t.start()
    wait_for(
        lambda: len([e for e in api.log() if e["path"] == "/items/page"]) >= 30,
        30,
        interval=0.02,
        message="the jobs to get going",
    )
    victims = pool_processes(engine)
    assert len(victims) >= 4, victims  # two jobs, two processes each
    victims[0].kill()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert [r["id"] for r in read_export(results["slow"].output, "parquet")] == list(range(1, 3001))
    assert [r["id"] for r in read_export(results["other"].output, "parquet")] == list(range(1, 2001))
    # only what no finished shard held was fetched again: a few pages, not the job
    pages = collections.Counter((e["path"], e["query"].get("page") or e["query"].get("offset")) for e in api.log())
    refetched = sum(c - 1 for c in pages.values())
    assert refetched < 60, refetched
    assert set(pages) == {("/items/page", str(p)) for p in range(1, 151)} | {
        ("/items/offset", str(o)) for o in range(0, 2000, 20)
    }


# ------------------------------------------------------------------ disk trouble


def run_cli(tmp_path: Path, *args: str, file_limit: int | None = None) -> subprocess.CompletedProcess:
    def limit():
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )


@pytest.mark.parametrize("fmt", ["csv", "json", "xlsx", "zip"])  # parquet: too compact to overflow
def test_disk_full_during_export_fails_cleanly(api, tmp_path, fmt):
    # RLIMIT_FSIZE makes any write past 2 MB fail with EFBIG, like a full disk: the shards (small,
    # one per block of pages) fit, the 30,000-row export does not.
    spec = write_spec(tmp_path / "s.json", page_spec(api, name=None, n=30_000, size=500, fmt=fmt))
    out = tmp_path / "out" / f"export.{fmt}"
    out.parent.mkdir()
    run = run_cli(tmp_path, "run", str(spec), "-o", str(out), "--quiet", file_limit=2 * 1024 * 1024)
    assert run.returncode == 1, run.stderr
    summary = __import__("json").loads(run.stdout)
    assert summary["status"] == "failed"
    assert "too large" in summary["error"].lower() or "no space" in summary["error"].lower(), summary["error"]
    assert "Traceback" not in run.stderr
    assert list(out.parent.iterdir()) == []  # nothing under the final name, no temp file left


def test_unwritable_output_location_fails_before_fetching(api, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    spec = write_spec(tmp_path / "s.json", page_spec(api, name=None, n=100, size=20))
    api.reset()
    run = run_cli(tmp_path, "run", str(spec), "-o", str(blocker / "out.csv"), "--quiet")
    assert run.returncode == 2, run.stderr
    message = run.stdout + run.stderr
    assert "--output" in message and "not-a-dir" in message and "Traceback" not in run.stderr
    assert api.log() == []


# ------------------------------------------------------------------ hostile or broken sources

HOSTILE = {
    # name: (path, params, format, expected words, requests made (attempts=3))
    "body far over MAX_FILE_SIZE": ("/huge", {"mb": 50}, "json", "exceeds MAX_FILE_SIZE", 1),
    "endless redirects": ("/redirect-loop", {}, "json", "redirects", 11),
    "never answers": ("/hang", {}, "json", "timeout", 3),
    "not JSON": ("/notjson", {}, "json", "not valid JSON", 3),
    "no list at the records path": ("/notlist", {}, "json", "no list of records", 1),
    "invalid UTF-8 in CSV": ("/items/csv", {"n": 50, "bad_utf8": 1}, "csv", "not valid UTF-8", 1),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_sources_fail_clearly_retrying_only_where_it_helps(api, cli, tmp_path, case):
    path, params, fmt, words, requests = HOSTILE[case]
    spec = {
        "sources": [{"url": api.url(path), "params": params, "format": fmt}],
        "timeout": 1,
        "retry": {"attempts": 3, "backoff": 0.05},
    }
    api.reset()
    started = time.monotonic()
    run = cli("run", str(write_spec(tmp_path / "s.json", spec)), "-o", "out.csv", "--quiet", env={"MAX_FILE_SIZE": "1"})
    elapsed = time.monotonic() - started
    assert run.code == 1, run.stderr
    summary = run.summary
    assert words in summary["error"], summary["error"]
    assert summary["failed_pages"][0]["url"].startswith(api.url(path))
    assert len(api.log()) == requests
    assert not (tmp_path / "out.csv").exists()
    if case == "body far over MAX_FILE_SIZE":
        # aborted while streaming (50 MB at 64 KB per 10 ms takes ~8 s to send), not buffered
        assert elapsed < 7, elapsed


# ------------------------------------------------------------------ SSRF


def test_allowed_source_hosts_refuses_other_hosts_at_validation(api, cli, tmp_path):
    spec = {
        "sources": [{"url": api.url("/items/list", n=5)}, {"url": "http://169.254.169.254/latest/meta-data/"}],
        "export": {"format": "zip"},
    }
    path = write_spec(tmp_path / "s.json", spec)
    api.reset()
    run = cli("run", str(path), "--quiet", env={"ALLOWED_SOURCE_HOSTS": "127.0.0.1"})
    assert run.code == 2
    assert "sources.1.url" in run.stderr + run.stdout and "169.254.169.254" in run.stderr + run.stdout
    assert api.log() == []  # refused before anything was fetched


def test_allowed_source_hosts_refuses_a_redirect_to_another_host(api, cli, tmp_path):
    # An IP entry allows that address under any name (localhost included), nothing else.
    target = f"http://127.0.0.2:{api.port}/items/list?n=5"
    spec = {"sources": [{"url": api.url("/redirect", to=target)}], "retry": {"attempts": 2, "backoff": 0.01}}
    api.reset()
    run = cli("run", str(write_spec(tmp_path / "s.json", spec)), "--quiet", env={"ALLOWED_SOURCE_HOSTS": "127.0.0.1"})
    assert run.code == 1
    assert "127.0.0.2" in run.summary["error"] and "ALLOWED_SOURCE_HOSTS" in run.summary["error"]
    assert [e["path"] for e in api.log()] == ["/redirect"]  # the other host was never asked
    by_name = {"sources": [{"url": api.url("/redirect", to=f"http://localhost:{api.port}/items/list?n=5")}]}
    allowed = cli(
        "run", str(write_spec(tmp_path / "n.json", by_name)), "--quiet", env={"ALLOWED_SOURCE_HOSTS": "127.0.0.1"}
    )
    assert allowed.code == 0 and allowed.summary["rows"] == 5  # localhost is 127.0.0.1: the listed address
