"""Engine benchmarks: pageferry against baselines, side by side, in one run, on one local API.

    python tests/benchmarks/bench_engine.py              # every case, 3 runs each
    python tests/benchmarks/bench_engine.py --quick      # small sizes (CI smoke run)
    python tests/benchmarks/bench_engine.py --cases fetch200k --repeat 5

Every contender runs as its own command (a fresh process tree, like a user would run it),
against the same warmed test API (tests/testapi, its own process). Reported per contender:
median wall time over the runs, and the peak memory of its whole process tree - the sum of
PSS (each process's share of its pages: forkserver children share their preloaded
libraries, which a plain RSS sum would count once per process). Ratios compare medians.
Results also go to tests/benchmarks/results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.testapi.client import TestAPI  # noqa: E402

PYTHON = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@dataclass
class Run:
    seconds: float
    peak_pss_mb: float
    peak_rss_sum_mb: float
    processes: int


def measure(cmd: list[str], cwd: Path, sample_memory: bool = False) -> Run:
    """Run `cmd` to completion; with `sample_memory`, sample its process tree's memory every
    20 ms (reading smaps costs CPU, so timed runs don't sample)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    peak = {"pss": 0.0, "rss": 0.0, "n": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            pss = rss = 0
            try:
                tree = [root] + root.children(recursive=True)
            except psutil.Error:
                tree = []
            for p in tree:
                try:
                    info = p.memory_full_info()
                    pss += info.pss
                    rss += info.rss
                except psutil.Error:
                    pass
            if pss > peak["pss"]:
                peak.update(pss=pss, n=len(tree))
            peak["rss"] = max(peak["rss"], rss)
            time.sleep(0.02)

    watcher = threading.Thread(target=sample, daemon=True)
    if sample_memory:
        watcher.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    done.set()
    if sample_memory:
        watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    return Run(seconds, peak["pss"] / 2**20, peak["rss"] / 2**20, peak["n"])


@dataclass
class Contender:
    name: str
    command: list[str]
    check: callable = None     # check(output path) raises if the output is wrong
    runs: list[Run] = field(default_factory=list)
    memory: Run | None = None

    @property
    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def peak_pss(self) -> float:
        return self.memory.peak_pss_mb if self.memory else float("nan")


def check_ids(n: int):
    def check(path: Path) -> None:
        import polars as pl
        ids = pl.read_parquet(path, columns=["id"])["id"]
        assert ids.len() == n and ids.to_list() == list(range(1, n + 1)), "wrong rows"
    return check


def engine_spec(api: TestAPI, n: int, per_page: int, concurrency: int, **extra) -> dict:
    return {"name": "bench", "sources": [{"url": api.url("/items/page"), "params": {"n": n},
                                          "pagination": {"type": "page", "size": per_page,
                                                         "total_pages": "meta.total_pages"}}],
            "concurrency": concurrency, "export": {"format": "parquet"}, **extra}


def case_fetch(api: TestAPI, work: Path, n: int, per_page: int, concurrency: int) -> list[Contender]:
    pages = n // per_page
    spec = work / f"spec-{n}.json"
    spec.write_text(json.dumps(engine_spec(api, n, per_page, concurrency)))
    url = api.url("/items/page")
    api.warm([f"/items/page?page={p}&per_page={per_page}&n={n}" for p in range(1, pages + 1)])
    out = work / "out.parquet"
    return [
        Contender("pageferry (python -m engine run)",
                  [PYTHON, "-m", "engine", "run", str(spec), "-o", str(out), "--quiet"], check_ids(n)),
        Contender("sequential requests loop",
                  [PYTHON, "-m", "tests.benchmarks.baselines.sequential_requests", url, str(pages), str(per_page),
                   str(n), str(out)], check_ids(n)),
    ]


CASES = {
    # name: (description, builder(api, work, quick) -> contenders, targets)
    "fetch200k": ("200,000 rows in 2,000 pages → Parquet",
                  lambda api, work, quick: case_fetch(api, work, 20_000 if quick else 200_000, 100, 4)),
}


def run_case(name: str, api: TestAPI, work: Path, repeat: int, quick: bool) -> dict:
    title, build = CASES[name]
    contenders = build(api, work, quick)
    out = work / "out.parquet"
    for _ in range(repeat):
        for contender in contenders:  # interleaved, so drift in machine load hits everyone alike
            out.unlink(missing_ok=True)
            contender.runs.append(measure(contender.command, work))
            if contender.check:
                contender.check(out)
    for contender in contenders:
        contender.memory = measure(contender.command, work, sample_memory=True)
    base = contenders[0]
    print(f"\n{name}: {title}  (median of {repeat})")
    print(f"  {'contender':40s} {'wall s':>8s} {'vs pageferry':>13s} {'peak PSS MB':>12s}")
    for c in contenders:
        print(f"  {c.name:40s} {c.median:8.2f} {c.median / base.median:12.2f}x {c.peak_pss:12.0f}")
    return {"case": name, "title": title, "repeat": repeat,
            "contenders": [{"name": c.name, "median_s": round(c.median, 3),
                            "runs_s": [round(r.seconds, 3) for r in c.runs],
                            "peak_pss_mb": round(c.peak_pss, 1),
                            "peak_rss_sum_mb": round(c.memory.peak_rss_sum_mb, 1),
                            "processes": c.memory.processes}
                           for c in contenders]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a CI smoke run")
    parser.add_argument("--results", default=str(Path(__file__).with_name("results.json")))
    args = parser.parse_args(argv)
    machine = {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
               "python": sys.version.split()[0]}
    print(f"machine: {machine}")
    results = []
    with TestAPI() as api, tempfile.TemporaryDirectory() as tmp:
        for name in args.cases.split(","):
            results.append(run_case(name.strip(), api, Path(tmp), args.repeat, args.quick))
    Path(args.results).write_text(json.dumps({"machine": machine, "quick": args.quick, "cases": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
