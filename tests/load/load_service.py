"""A bounded load test of the service on 127.0.0.1 (not part of the pytest run).

    python tests/load/load_service.py                       # 4 tasks, 200 status req/s for 20 s, 20 viewers
    python tests/load/load_service.py --rate 50 --seconds 5 --viewers 10     # CI size

Starts the local test API and real gunicorn (2 workers), starts `--tasks` slow export tasks,
then, while they run:
1. sends `--rate` GET /status requests per second for `--seconds` (open loop: requests leave
   on schedule whether or not earlier ones have answered, so a slow server shows up as
   latency, not as a lower rate) and reports p50/p99/max latency and errors;
2. opens `--viewers` websockets on one task; every viewer must receive the task's final
   status and a normal close (keep it within MAX_WS_PER_TASK, 20 per gunicorn worker: more
   are refused with 429 by design).
Exit code 1 when p99 ≥ `--p99-ms`, any request failed, or a viewer missed the final status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.service_process import ServiceProcess  # noqa: E402
from tests.testapi.client import TestAPI  # noqa: E402


def slow_spec(api: TestAPI, name: str, pages: int) -> dict:
    return {
        "name": name,
        "sources": [
            {
                "url": api.url("/items/page"),
                "params": {"n": pages * 20, "delay_ms": 100},
                "pagination": {"type": "page", "size": 20, "total_pages": "meta.total_pages"},
            }
        ],
        "concurrency": 2,
        "export": {"format": "csv"},
    }


async def status_load(base: str, task_ids: list[str], rate: float, seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def one(i: int) -> None:
            url = f"{base}/api/export/status/{task_ids[i % len(task_ids)]}"
            started = time.perf_counter()
            try:
                async with session.get(url) as response:
                    body = await response.read()
                    if response.status != 200 or b'"task_id"' not in body:
                        errors.append(f"HTTP {response.status}")
                        return
            except Exception as exc:  # counted, reported
                errors.append(type(exc).__name__)
                return
            latencies.append(time.perf_counter() - started)

        total = int(rate * seconds)
        start = time.perf_counter()
        pending = []
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(one(i)))
        await asyncio.gather(*pending)
        elapsed = time.perf_counter() - start
    latencies.sort()
    pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")  # noqa: E731
    return {
        "requests": total,
        "ok": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "achieved_rate": round(total / elapsed, 1),
        "p50_ms": round(pct(0.50), 1),
        "p99_ms": round(pct(0.99), 1),
        "max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else None,
    }


async def viewers(base: str, task_id: str, count: int, timeout: float) -> dict:
    url = base.replace("http://", "ws://") + f"/api/export/ws/{task_id}"

    async def view(session: aiohttp.ClientSession) -> tuple[bool, int, bool]:
        messages, final, closed_normally = 0, None, False
        async with session.ws_connect(url, heartbeat=None) as ws:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    messages += 1
                    final = json.loads(message.data)
                elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    break
            closed_normally = ws.close_code == 1000
        return bool(final and final.get("status") == "completed"), messages, closed_normally

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        outcomes = await asyncio.gather(*(view(session) for _ in range(count)), return_exceptions=True)
    good = [o for o in outcomes if not isinstance(o, BaseException)]
    return {
        "viewers": count,
        "got_final": sum(1 for o in good if o[0]),
        "closed_normally": sum(1 for o in good if o[2]),
        "failed": [repr(o) for o in outcomes if isinstance(o, BaseException)][:3],
        "messages_min": min((o[1] for o in good), default=0),
        "messages_max": max((o[1] for o in good), default=0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--viewers", type=int, default=20)
    parser.add_argument("--p99-ms", type=float, default=50)
    args = parser.parse_args()

    # each task outlives the status load: 2 in flight x 100 ms = 20 pages/s at best
    pages = int(args.seconds * 20 * 2 + 100)
    with tempfile.TemporaryDirectory() as tmp, TestAPI() as api:
        service = ServiceProcess(Path(tmp) / "data", {"MAX_CONCURRENT_TASKS": str(args.tasks + 1)}).start()
        try:
            task_ids = [service.start_task(slow_spec(api, f"load{i}", pages)) for i in range(args.tasks)]
            for task_id in task_ids:
                service.wait(task_id, until=("running",), timeout=30)
            load = asyncio.run(status_load(service.base, task_ids, args.rate, args.seconds))
            still_running = sum(service.status(t)["status"] == "running" for t in task_ids)
            # viewers on a short task: they connect while it runs and must see it end
            watched = service.start_task(slow_spec(api, "watched", 30))
            service.wait(watched, until=("running",), timeout=30)
            seen = asyncio.run(viewers(service.base, watched, args.viewers, timeout=120))
            for task_id in task_ids:
                service.call("DELETE", f"/api/export/cancel/{task_id}")
        finally:
            service.stop()
    report = {"status_load": load, "tasks_running_throughout": still_running, "websockets": seen}
    print(json.dumps(report, indent=2))
    ok = (
        load["errors"] == 0
        and load["p99_ms"] < args.p99_ms
        and still_running == args.tasks
        and seen["got_final"] == args.viewers
        and seen["closed_normally"] == args.viewers
    )
    print("PASS" if ok else "FAIL", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
