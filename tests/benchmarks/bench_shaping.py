"""Shaping benchmark: filter + sort + CSV over 1,000,000 fetched rows, through the real CLI.

    python tests/benchmarks/bench_shaping.py                 # 1,000,000 rows, 3 timed runs
    python tests/benchmarks/bench_shaping.py --rows 200000 --repeat 1

Each contender is `python -m engine run SPEC -o out.csv --quiet` as a user runs it (a fresh
process tree), against the same warmed local test API (tests/testapi). The shards are
fetched by the engine each run; the shaped export reads them back with Polars lazy scans.
Reported: median wall time of the timed runs, and the peak memory of the whole process tree
(sum of PSS, sampled every 20 ms in one extra run - see bench_engine.measure). The target is
a peak of at most 300 MB for the filter + sort contender.

Contenders:
- "no shaping":          every record to CSV (the engine's floor for this data);
- "filter + sort":       two filters (~60 % of the rows pass) and a two-key sort (text
                         ascending, number descending) - the sort holds its rows, so this is
                         shaping's memory peak;
- "filter + group_by":   the same filters, grouped by category with sums/means/counts.
Results go to tests/benchmarks/results_shaping.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.benchmarks.bench_engine import PYTHON, Run, measure  # noqa: E402
from tests.testapi.client import TestAPI  # noqa: E402
from tests.testapi.records import CATEGORIES  # noqa: E402

PER_PAGE = 1000
TARGET_MB = 300
FILTERS = [{"column": "quantity", "op": ">=", "value": 10}, {"column": "category", "op": "!=", "value": "games"}]
SORT = [{"column": "category"}, {"column": "price", "descending": True}]


def base_spec(api: TestAPI, rows: int) -> dict:
    return {
        "name": "bench",
        "sources": [
            {
                "url": api.url("/items/page"),
                "params": {"n": rows},
                "pagination": {"type": "page", "size": PER_PAGE, "total_pages": "meta.total_pages"},
            }
        ],
        "concurrency": 4,
        "export": {"format": "csv"},
    }


def kept(i: int) -> bool:
    return i % 50 >= 10 and CATEGORIES[i & 3] != "games"


def check_plain(rows: int):
    def check(path: Path) -> None:
        import polars as pl

        ids = pl.scan_csv(path).select("id").collect()["id"]
        assert ids.to_list() == list(range(1, rows + 1)), "wrong rows"

    return check


def check_sorted(rows: int):
    expected = sum(1 for i in range(1, rows + 1) if kept(i))

    def check(path: Path) -> None:
        import polars as pl

        frame = pl.scan_csv(path).select("id", "category", "price", "quantity").collect()
        assert frame.height == expected, f"{frame.height} rows, expected {expected}"
        assert frame["quantity"].min() >= 10 and "games" not in frame["category"].unique().to_list()
        # category ascending, then price descending (ids are unique, so is price = id * 1.25)
        ordered = frame.sort(["category", "price"], descending=[False, True], maintain_order=True)
        assert frame["id"].to_list() == ordered["id"].to_list(), "not sorted as asked"

    return check


def check_grouped(rows: int):
    def check(path: Path) -> None:
        import polars as pl

        frame = pl.read_csv(path)
        want = {
            c: sum(1 for i in range(1, rows + 1) if kept(i) and CATEGORIES[i & 3] == c)
            for c in CATEGORIES
            if c != "games"
        }
        assert dict(zip(frame["category"], frame["count"])) == want

    return check


def contenders(api: TestAPI, work: Path, rows: int) -> list[tuple[str, list[str], callable]]:
    out = work / "out.csv"
    specs = {
        "no shaping": (base_spec(api, rows), check_plain(rows)),
        "filter + sort": ({**base_spec(api, rows), "filters": FILTERS, "sort": SORT}, check_sorted(rows)),
        "filter + group_by": (
            {
                **base_spec(api, rows),
                "filters": FILTERS,
                "group_by": {
                    "keys": ["category"],
                    "aggregations": [
                        {"column": "price", "agg": "sum"},
                        {"column": "quantity", "agg": "mean"},
                        {"column": "note", "agg": "count"},
                        {"agg": "count"},
                    ],
                },
            },
            check_grouped(rows),
        ),
    }
    result = []
    for name, (spec, check) in specs.items():
        path = work / f"spec-{len(result)}.json"
        path.write_text(json.dumps(spec))
        result.append((name, [PYTHON, "-m", "engine", "run", str(path), "-o", str(out), "--quiet"], check))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", help="comma-separated contender names (default: all)")
    parser.add_argument("--results", default=str(Path(__file__).with_name("results_shaping.json")))
    args = parser.parse_args(argv)
    machine = {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
    }
    print(f"machine: {machine}")
    pages = -(-args.rows // PER_PAGE)
    report = []
    with TestAPI(cache_mb=1024) as api, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        api.warm([f"/items/page?page={p}&per_page={PER_PAGE}&n={args.rows}" for p in range(1, pages + 1)])
        entries = contenders(api, work, args.rows)
        if args.only:
            wanted = {name.strip() for name in args.only.split(",")}
            entries = [e for e in entries if e[0] in wanted]
        timed: dict[str, list[Run]] = {name: [] for name, _, _ in entries}
        for _ in range(args.repeat):
            for name, command, check in entries:  # interleaved: machine drift hits everyone alike
                (work / "out.csv").unlink(missing_ok=True)
                timed[name].append(measure(command, work))
                check(work / "out.csv")
        print(
            f"\n{args.rows:,} rows in {pages:,} pages → CSV through `python -m engine run` "
            f"(median of {args.repeat}; peak PSS of the process tree)"
        )
        print(f"  {'contender':22s} {'wall s':>8s} {'peak PSS MB':>12s} {'procs':>6s}")
        for name, command, check in entries:
            memory = measure(command, work, sample_memory=True)
            check(work / "out.csv")
            median = statistics.median(r.seconds for r in timed[name])
            print(f"  {name:22s} {median:8.2f} {memory.peak_pss_mb:12.0f} {memory.processes:6d}")
            report.append(
                {
                    "name": name,
                    "median_s": round(median, 3),
                    "runs_s": [round(r.seconds, 3) for r in timed[name]],
                    "peak_pss_mb": round(memory.peak_pss_mb, 1),
                    "peak_rss_sum_mb": round(memory.peak_rss_sum_mb, 1),
                    "processes": memory.processes,
                }
            )
    worst = max(r["peak_pss_mb"] for r in report if r["name"] != "no shaping")
    verdict = "within" if worst <= TARGET_MB else "OVER"
    print(f"\nshaping peak: {worst:.0f} MB - {verdict} the {TARGET_MB} MB target")
    Path(args.results).write_text(
        json.dumps(
            {"machine": machine, "rows": args.rows, "per_page": PER_PAGE, "target_mb": TARGET_MB, "contenders": report},
            indent=2,
        )
    )
    return 0 if worst <= TARGET_MB else 1


if __name__ == "__main__":
    sys.exit(main())
