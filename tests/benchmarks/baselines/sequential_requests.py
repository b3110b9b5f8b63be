"""Baseline (a): the plain loop a user would write - one requests.Session, one page after
another, records collected, a Polars frame at the end.

    python -m tests.benchmarks.baselines.sequential_requests URL PAGES PER_PAGE N OUT.parquet
"""

import sys

import polars as pl
import requests


def main(url: str, pages: int, per_page: int, n: int, out: str) -> None:
    session = requests.Session()
    rows: list[dict] = []
    for page in range(1, pages + 1):
        response = session.get(url, params={"page": page, "per_page": per_page, "n": n}, timeout=30)
        response.raise_for_status()
        rows.extend(response.json()["data"])
    pl.DataFrame(rows, infer_schema_length=None).write_parquet(out, compression="zstd")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
