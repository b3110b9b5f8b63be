"""Throughput of the local test API: ``python -m tests.testapi.bench [--seconds 5]``.

Starts the server (separate process), then runs an aiohttp client in another process
with ``--connections`` keep-alive connections, each issuing GETs back to back
(``{i}`` in a URL becomes a running request number), and prints requests/s for a few scenarios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time

from .client import TestAPI


async def _client(urls: list[str], connections: int, seconds: float) -> dict:
    import aiohttp

    conn = aiohttp.TCPConnector(limit=connections, force_close=False)
    done = 0
    nbytes = 0
    errors = 0
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=conn, trust_env=False) as session:

        async def worker(w: int) -> None:
            nonlocal done, nbytes, errors
            i = w
            while time.perf_counter() < deadline:
                url = urls[i % len(urls)].replace("{i}", str(i + 1))
                async with session.get(url) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        errors += 1
                done += 1
                nbytes += len(body)
                i += connections

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(connections)))
        elapsed = time.perf_counter() - t0
    return {
        "requests": done,
        "seconds": elapsed,
        "rps": done / elapsed,
        "mb_per_s": nbytes / elapsed / 1e6,
        "errors": errors,
    }


def run_client(urls: list[str], connections: int, seconds: float) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.testapi.bench",
            "--client",
            "--connections",
            str(connections),
            "--seconds",
            str(seconds),
            *urls,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("urls", nargs="*")
    args = ap.parse_args()
    if args.client:
        print(json.dumps(asyncio.run(_client(args.urls, args.connections, args.seconds))))
        return
    with TestAPI() as api:
        scenarios = {
            "100-record page, cached": [api.url("/items/page", page=1, per_page=100, n=1000)],
            "100-record pages, cold (all distinct)": [api.url("/items/page", per_page=100, n=10_000_000) + "&page={i}"],
            "1000-record page (240 KB), cached": [api.url("/items/page", page=1, per_page=1000, n=1000)],
            "small page (10 records), cached": [api.url("/items/page", page=1, per_page=10, n=1000)],
        }
        for name, urls in scenarios.items():
            api.reset()
            r = run_client(urls, args.connections, args.seconds)
            print(
                f"{name:40s} {r['rps']:8.0f} req/s  {r['mb_per_s']:6.1f} MB/s  "
                f"({r['requests']} in {r['seconds']:.1f}s, {r['errors']} errors)"
            )


if __name__ == "__main__":
    main()
