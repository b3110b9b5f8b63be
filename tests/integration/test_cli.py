"""`python -m engine` as users run it: one JSON line on stdout, exit codes, -o, stdin, validate,
Ctrl-C and SIGKILL followed by --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.conftest import CliRun, cli_env, write_spec
from tests.support.net import wait_for
from tests.support.readback import read_export
from tests.support.specs import page_spec

SUMMARY_KEYS = {"status", "rows", "pages", "requests", "retries", "seconds", "output", "bytes", "sha256", "partial"}


def test_run_prints_one_summary_line_and_writes_the_file(api, cli, tmp_path):
    spec = write_spec(tmp_path / "spec.json", page_spec(api))
    run = cli("run", str(spec), "-o", str(tmp_path / "items.csv"))
    assert run.code == 0, run.stderr
    summary = run.summary
    assert SUMMARY_KEYS <= set(summary)
    assert summary["status"] == "completed" and summary["rows"] == 500 and summary["pages"] == 10
    assert summary["requests"] == 10 and summary["retries"] == 0 and summary["partial"] is False
    out = Path(summary["output"])
    assert out == tmp_path / "items.csv" and summary["bytes"] == out.stat().st_size
    import hashlib

    assert summary["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert [int(r["id"]) for r in read_export(out, "csv")] == list(range(1, 501))
    assert not (tmp_path / ".pageferry" / "work").exists() or not any((tmp_path / ".pageferry" / "work").iterdir())


def test_output_defaults_and_directories(api, cli, tmp_path):
    spec = write_spec(
        tmp_path / "spec.json",
        {**page_spec(api, n=60, fmt="parquet"), "export": {"format": "parquet", "filename": "orders"}},
    )
    assert cli("run", str(spec)).summary["output"] == str(tmp_path / "orders.parquet")
    (tmp_path / "outdir").mkdir()
    assert cli("run", str(spec), "-o", "outdir").summary["output"] == str(tmp_path / "outdir" / "orders.parquet")


def test_spec_from_stdin(api, cli, tmp_path):
    run = cli("run", "-", "-o", str(tmp_path / "x.ndjson"), stdin=json.dumps(page_spec(api, n=30, fmt="ndjson")))
    assert run.code == 0 and run.summary["rows"] == 30


def test_no_progress_bar_when_stderr_is_not_a_terminal(api, cli, tmp_path):
    run = cli("run", str(write_spec(tmp_path / "s.json", page_spec(api, n=30))))
    assert run.code == 0 and "page/s" not in run.stderr and "\r" not in run.stderr


@pytest.mark.parametrize(
    "spec,field",
    [
        ({"sources": [{"url": "ftp://x"}]}, "sources.0.url"),
        ({"sources": [{"url": "http://x", "pagination": {"type": "page", "size": 0}}]}, "sources.0.pagination.size"),
        ({"sources": [{"url": "http://x"}], "concurrency": "many"}, "concurrency"),
        (
            {"sources": [{"url": "http://x", "auth": {"type": "bearer", "token": "${PF_UNSET_TOKEN}"}}]},
            "sources.0.auth.token",
        ),
        ({"sources": []}, "sources"),
    ],
)
def test_invalid_specs_exit_2_naming_the_field(cli, tmp_path, spec, field):
    path = write_spec(tmp_path / "bad.json", spec)
    for command in ("validate", "run"):
        run = cli(command, str(path))
        assert run.code == 2, run.stderr
        assert field in run.stderr
        assert run.summary["status"] == "invalid"
        assert any(d["field"] == field for d in run.summary["details"])


def test_invalid_json_and_missing_file_exit_2(cli, tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    assert cli("validate", "broken.json").code == 2
    assert cli("run", "missing.json").code == 2
    assert cli("frobnicate").code == 2


def test_validate_accepts_a_good_spec(api, cli, tmp_path):
    run = cli("validate", str(write_spec(tmp_path / "s.json", page_spec(api))))
    assert run.code == 0 and run.summary == {
        "status": "valid",
        "name": "items",
        "sources": 1,
        "units": 1,
        "output": "items.csv",
    }
    assert api.log() == []  # validating fetches nothing


def test_failed_job_exits_1_with_the_pages_and_no_output(api, cli, tmp_path):
    spec = page_spec(api, n=100, fail_all=1, fault=500)
    spec["retry"] = {"attempts": 2, "backoff": 0.01}
    run = cli("run", str(write_spec(tmp_path / "s.json", spec)), "-o", str(tmp_path / "out.csv"))
    assert run.code == 1
    summary = run.summary
    assert summary["status"] == "failed" and "HTTP 500" in summary["error"]
    assert summary["failed_pages"][0]["status"] == 500 and "page=1" in summary["failed_pages"][0]["url"]
    assert not (tmp_path / "out.csv").exists()
    assert len(api.log()) == 2  # page 1 tried twice (attempts counts the first try), nothing after
    assert "leaked" not in run.stderr  # no semaphore left for the resource tracker to report


def slow_spec(api, pages=60):
    return page_spec(api, n=pages * 20, size=20, delay_ms=150)


def start_cli(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "engine", *args],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_requests(api, count: int, timeout: float = 30) -> None:
    wait_for(lambda: len(api.log()) >= count, timeout, message=f"the run to get going ({count} requests)")


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@dataclass
class InterruptedRun:
    spec: Path
    reference: dict  # the summary of an uninterrupted run to reference.csv
    proc: subprocess.Popen  # the same run to out.csv, under way
    children: list[psutil.Process]


def start_run_to_interrupt(api, cli, tmp_path: Path, after_requests: int, *options: str) -> InterruptedRun:
    """The slow spec run once to the end (reference.csv), then again to out.csv in the
    background: returned once the API has seen `after_requests` requests, to be interrupted."""
    spec = write_spec(tmp_path / "s.json", slow_spec(api))
    reference = cli("run", str(spec), "-o", str(tmp_path / "reference.csv"), *options).summary
    api.reset()
    proc = start_cli(tmp_path, "run", str(spec), "-o", str(tmp_path / "out.csv"), *options)
    wait_for_requests(api, after_requests)
    return InterruptedRun(spec, reference, proc, descendants(proc.pid))


def interrupt(proc: subprocess.Popen) -> dict:
    """Ctrl-C to a running CLI: it stops within 2 s, exit code 130, an `interrupted` summary."""
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert time.monotonic() - started < 2.0
    assert proc.returncode == 130, err
    summary = json.loads(out.strip())
    assert summary["status"] == "interrupted"
    return summary


def resume_exactly(cli, tmp_path: Path, run: InterruptedRun, workdir: Path, *options: str) -> CliRun:
    """--resume the interrupted run: out.csv must come out the same as reference.csv, with fewer
    requests than the whole run."""
    resumed = cli("run", str(run.spec), "-o", str(tmp_path / "out.csv"), "--resume", str(workdir), *options)
    assert resumed.code == 0, resumed.stderr
    assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "reference.csv").read_bytes()
    assert resumed.summary["requests"] < run.reference["requests"]
    return resumed


def test_ctrl_c_stops_within_2_seconds_and_resume_completes_exactly(api, cli, tmp_path):
    run = start_run_to_interrupt(api, cli, tmp_path, 15)
    children, reference = run.children, run.reference
    summary = interrupt(run.proc)
    workdir = tmp_path / summary["workdir"]
    assert (workdir / "job.json").exists()
    time.sleep(1.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    first_requests = len(api.log())
    api.reset()
    resumed = resume_exactly(cli, tmp_path, run, workdir)
    assert resumed.summary["sha256"] == reference["sha256"]
    assert len(api.log()) + first_requests >= reference["requests"]


def test_ctrl_c_of_a_one_process_run_stops_it_and_resume_completes_exactly(api, cli, tmp_path):
    # --workers 1: the whole run is on the CLI's own loop (no pool process to stop)
    run = start_run_to_interrupt(api, cli, tmp_path, 15, "--workers", "1")
    children = [" ".join(c.cmdline()) for c in run.children]
    assert not [c for c in children if "resource_tracker" not in c], children  # no forkserver, no pool
    summary = interrupt(run.proc)
    api.reset()
    resume_exactly(cli, tmp_path, run, tmp_path / summary["workdir"], "--workers", "1")


def test_sigkill_then_resume_completes_exactly_and_leaves_no_orphans(api, cli, tmp_path):
    run = start_run_to_interrupt(api, cli, tmp_path, 25)
    proc, children = run.proc, run.children
    assert children, "the engine runs its pool in child processes"
    proc.kill()
    proc.wait(timeout=10)
    wait_for(
        lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children),
        10,
        interval=0.2,
        message="the engine processes to exit after the killed CLI",
    )
    workdirs = list((tmp_path / ".pageferry" / "work").iterdir())
    assert len(workdirs) == 1
    api.reset()
    resume_exactly(cli, tmp_path, run, workdirs[0])


def _change_first_id(shard: Path) -> None:
    """One int64 value of the shard's `id` column rewritten in place (footer intact)."""
    import pyarrow as pa

    whole = pa.py_buffer(shard.read_bytes())
    before = pa.ipc.open_file(whole).read_all()  # zero-copy: its buffers point into `whole`
    at = before.column("id").chunk(0).buffers()[1].address - whole.address
    data = bytearray(whole.to_pybytes())
    data[at : at + 8] = (999999).to_bytes(8, "little", signed=True)
    shard.write_bytes(bytes(data))
    after = pa.ipc.open_file(pa.py_buffer(shard.read_bytes())).read_all().column("id").to_pylist()
    assert after == [999999] + before.column("id").to_pylist()[1:]


def test_resume_drops_changed_garbled_and_truncated_shards_and_fetches_them_again(api, cli, tmp_path):
    run = start_run_to_interrupt(api, cli, tmp_path, 30)
    run.proc.send_signal(signal.SIGINT)
    out, err = run.proc.communicate(timeout=20)
    assert run.proc.returncode == 130, err
    workdir = tmp_path / json.loads(out)["workdir"]
    shards = sorted((workdir / "shards").glob("*.arrow"))
    assert len(shards) >= 3, [p.name for p in shards]
    changed, garbled, truncated = shards[0], shards[1], shards[-1]
    _change_first_id(changed)
    data = bytearray(garbled.read_bytes())  # a damaged body behind an intact footer
    for at in range(16, len(data) // 2):
        data[at] ^= 0x5A
    garbled.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    api.reset()
    resumed = resume_exactly(cli, tmp_path, run, workdir)
    assert resumed.summary["sha256"] == run.reference["sha256"]
    for shard in (changed, garbled, truncated):
        assert f"dropping shard {shard.name}" in resumed.stderr, resumed.stderr


def test_resume_with_a_different_spec_is_refused(api, cli, tmp_path):
    spec = write_spec(tmp_path / "s.json", slow_spec(api))
    proc = start_cli(tmp_path, "run", str(spec))
    wait_for_requests(api, 5)
    proc.send_signal(signal.SIGINT)
    summary = json.loads(proc.communicate(timeout=20)[0])
    other = write_spec(tmp_path / "other.json", page_spec(api, n=77))
    run = cli("run", str(other), "--resume", str(tmp_path / summary["workdir"]))
    assert run.code == 2 and "--resume" in run.stderr
    assert cli("run", str(other), "--resume", "nowhere").code == 2


def test_progress_bar_on_a_terminal(api, tmp_path):
    import pty

    spec = write_spec(tmp_path / "s.json", page_spec(api, n=400, size=20, delay_ms=60))
    master, slave = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "run", str(spec), "-o", str(tmp_path / "o.csv")],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
    )
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    out, _ = proc.communicate(timeout=60)
    os.close(master)
    text = seen.decode(errors="replace")
    assert proc.returncode == 0 and json.loads(out)["rows"] == 400
    assert "20/20" in text and "rows=" in text and "page" in text  # pages done/total, rows, rate
    assert "\r" in text  # redrawn in place
