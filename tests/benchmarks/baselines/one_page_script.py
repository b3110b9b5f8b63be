"""Baseline for the one-page case: the plain script a user would write for a single page -
requests.get, a Polars frame from the records, zstd Parquet (like pageferry's output).

    python -m tests.benchmarks.baselines.one_page_script URL PER_PAGE N OUT.parquet
"""

import sys

import polars as pl
import requests


def main(url: str, per_page: int, n: int, out: str) -> None:
    response = requests.get(url, params={"page": 1, "per_page": per_page, "n": n}, timeout=30)
    response.raise_for_status()
    pl.DataFrame(response.json()["data"], infer_schema_length=None).write_parquet(out, compression="zstd")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
