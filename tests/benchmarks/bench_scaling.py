"""What the beyond-one-machine parts cost, side by side in one run, on one local test API:

    python tests/benchmarks/bench_scaling.py                  # both cases, 5 runs each
    python tests/benchmarks/bench_scaling.py --cases dask --repeat 3

- dask   200,000 rows in 2,000 pages -> Parquet: the local pool (--workers 2) vs EXECUTOR=dask://
         on a local scheduler with 2 single-threaded workers (started here, on 127.0.0.1).
- redis  the same job under a rate limit high enough never to wait (so the limiter's own cost
         shows), shared-memory limiter vs REDIS_URL; and 500 requests under 50/s with each
         (the busiest 1-second window of the server's arrival log, the rate achieved).

Contenders are whole CLI processes, once untimed, then interleaved (bench_engine.py's harness);
medians and ratios of medians are printed and written to tests/benchmarks/results-scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.bench_engine import (  # noqa: E402
    ENV,
    HERE,
    PYTHON,
    Contender,
    _arrivals,
    check_ids,
    contender_rows,
    engine_cmd,
    engine_spec,
    max_in_window,
    page_paths,
    run_interleaved,
    spec_file,
)
from tests.support.net import free_port  # noqa: E402
from tests.testapi.client import TestAPI  # noqa: E402


@contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() != b"PONG":
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def dask_cluster(folder: Path, workers: int = 2) -> Iterator[str]:
    port = free_port()
    env = {**ENV, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    dask = shutil.which("dask") or "dask"
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            cwd=folder,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    address = f"tcp://127.0.0.1:{port}"
    try:
        for _ in range(workers):
            procs.append(
                subprocess.Popen(
                    [
                        dask,
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--nworkers",
                        "1",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                    ],
                    cwd=folder,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(workers, timeout=60)
        yield f"dask://127.0.0.1:{port}"
    finally:
        for proc in reversed(procs):
            proc.kill()
            proc.wait()


def case_dask(api: TestAPI, work: Path, repeat: int) -> dict:
    n, per_page = 200_000, 100
    pages = n // per_page
    spec = spec_file(work / "spec-dask.json", engine_spec(api, n, per_page, 4))
    api.warm(page_paths(pages, per_page, n))
    with dask_cluster(work) as executor:
        contenders = [
            Contender(
                "pageferry, local pool (--workers 2)", engine_cmd(spec, "pf.parquet", 2), check_ids("pf.parquet", n)
            ),
            Contender(
                "pageferry, EXECUTOR=dask:// (2 workers)",
                engine_cmd(spec, "pf.parquet", 2),
                check_ids("pf.parquet", n),
                env={**ENV, "EXECUTOR": executor},
            ),
        ]
        run_interleaved(contenders, work, repeat, lambda: None, memory=False)
    return {"title": f"{n:,} rows in {pages:,} pages -> Parquet", "contenders": contender_rows(contenders, pages)}


def case_redis(api: TestAPI, work: Path, repeat: int) -> dict:
    n, per_page = 200_000, 100
    pages = n // per_page
    fast = spec_file(
        work / "spec-redis-fast.json", engine_spec(api, n, per_page, 4, rate_limit={"requests": 100_000, "per": 1.0})
    )
    requests, limit = 500, 50
    slow = spec_file(
        work / "spec-redis-slow.json",
        engine_spec(api, requests * 10, 10, 4, rate_limit={"requests": limit, "per": 1.0}),
    )
    api.warm(page_paths(pages, per_page, n))
    api.warm(page_paths(requests, 10, requests * 10))

    def arrivals() -> dict:
        times = sorted(e["t"] for e in _arrivals(api))
        assert len(times) == requests, f"{len(times)} requests for {requests} pages"
        return {"max_in_1s": max_in_window(times, 1.0), "achieved_per_s": (len(times) - limit) / (times[-1] - times[0])}

    with redis_server(work) as url:
        on_redis = {**ENV, "REDIS_URL": url}
        unlimited = [
            Contender("shared memory limiter", engine_cmd(fast, "pf.parquet", 2), check_ids("pf.parquet", n)),
            Contender("Redis limiter", engine_cmd(fast, "pf.parquet", 2), check_ids("pf.parquet", n), env=on_redis),
        ]
        run_interleaved(unlimited, work, repeat, lambda: None, memory=False)
        limited = [
            Contender(
                "shared memory, 50/s",
                engine_cmd(slow, "pf.parquet", 2),
                check_ids("pf.parquet", requests * 10),
                after=arrivals,
            ),
            Contender(
                "Redis, 50/s",
                engine_cmd(slow, "pf.parquet", 2),
                check_ids("pf.parquet", requests * 10),
                after=arrivals,
                env=on_redis,
            ),
        ]
        run_interleaved(limited, work, repeat, api.reset, memory=False)
    return {
        "title": f"{n:,} rows in {pages:,} pages under a limit never reached; {requests} requests at {limit}/s",
        "contenders": contender_rows(unlimited, pages) + contender_rows(limited, requests),
    }


CASES = {"dask": case_dask, "redis": case_redis}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--results", default=str(HERE / "results-scaling.json"))
    args = parser.parse_args(argv)
    names = [n for n in args.cases.split(",") if n]
    results: dict = {
        "command": "python tests/benchmarks/bench_scaling.py " + " ".join(argv or sys.argv[1:]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "cases": {},
    }
    with TestAPI() as api, tempfile.TemporaryDirectory(prefix="pageferry-bench-") as tmp:
        for name in names:
            print(f"\n== {name} ...", flush=True)
            result = CASES[name](api, Path(tmp), args.repeat)
            results["cases"][name] = result
            print(result["title"])
            for row in result["contenders"]:
                print(
                    f"  {row['name']:<45} median {row['median_s']:7.3f} s  ×{row['vs_pageferry']:.2f}  "
                    f"runs {row['runs_s']}  {row.get('figures', '')}"
                )
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {args.results}  (python: {PYTHON})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
