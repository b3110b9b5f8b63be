"""Rate limit and faults, end to end: the test API's arrival log is the judge."""

from __future__ import annotations

import bisect

import pytest

from engine.errors import JobFailed
from tests.support.readback import read_export
from tests.testapi.faults import fault_key, is_failing


def arrivals(api) -> list[float]:
    return sorted(entry["t"] for entry in api.log())


def max_in_window(times: list[float], per: float) -> int:
    return max(bisect.bisect_left(times, t + per) - i for i, t in enumerate(times))


def paged(api, n: int, size: int, **params) -> dict:
    return {
        "url": api.url("/items/page"),
        "params": {"n": n, **params},
        "pagination": {"type": "page", "size": size, "total_pages": "meta.total_pages"},
    }


def max_in_flight(log: list[dict]) -> int:
    """Most requests the server was working on at once (an answer sent at the very moment the
    next request arrives counts as over first)."""
    events = sorted([(e["t"], 1) for e in log] + [(e["t_done"], -1) for e in log])
    most = current = 0
    for _, change in events:
        current += change
        most = max(most, current)
    return most


@pytest.mark.parametrize("workers,concurrency", [(1, 8), (2, 7)])
def test_concurrency_is_the_number_of_requests_in_flight(api, run_job, workers, concurrency):
    """Each process's event loop keeps its share of `concurrency` in flight (7 over 2 processes:
    4 lanes each); the job-wide semaphore caps the sum - the server sees exactly `concurrency`
    requests at once, never more."""
    result = run_job({"sources": [paged(api, 800, 10, delay_ms=100)], "concurrency": concurrency}, workers=workers)
    assert result.rows == 800 and result.pages == 80
    assert max_in_flight(api.log(path="/items/page")) == concurrency


def test_rate_limit_holds_in_every_window_and_is_nearly_reached(api, run_job):
    limit = 100
    result = run_job({"sources": [paged(api, 3200, 10)], "rate_limit": limit, "concurrency": 8})
    assert result.rows == 3200
    times = arrivals(api)
    assert len(times) == 320
    assert max_in_window(times, 1.0) <= limit
    # At full speed `limit` requests leave per window, in bursts: 320 requests take 3 windows
    # from the first to the last burst. Achieved = that ideal span / the real one.
    ideal_span = (-(-len(times) // limit) - 1) * 1.0
    assert ideal_span / (times[-1] - times[0]) >= 0.95


def test_burst_one_spaces_requests_evenly(api, run_job):
    run_job({"sources": [paged(api, 600, 10)], "rate_limit": {"requests": 20, "per": 1, "burst": 1}, "concurrency": 4})
    times = arrivals(api)
    assert max_in_window(times, 1.0) <= 20
    assert max_in_window(times, 0.25) <= 6  # evenly spread: ~5 per quarter second, never a burst
    assert (len(times) - 1) / (times[-1] - times[0]) >= 0.85 * 20


def test_retries_take_rate_limit_slots_too(api, run_job):
    limit = 30
    run_job(
        {
            "sources": [paged(api, 1500, 10, fail_rate=0.4, fault=500)],
            "rate_limit": limit,
            "concurrency": 8,
            "retry": {"attempts": 5, "backoff": 0.01},
        }
    )
    times = arrivals(api)
    assert len(times) > 150  # the failed tries were sent again...
    assert max_in_window(times, 1.0) <= limit  # ...inside the same limit


def test_429_retry_after_pauses_every_process(api, run_job):
    # one page (not the first) answers 429 with Retry-After: 1 once; everyone must hold back
    spec = {"sources": [paged(api, 2000, 10, delay_ms=50)], "concurrency": 8, "retry": {"backoff": 0.01}}
    source = spec["sources"][0]  # 200 pages of 50 ms at 8 in flight: the job outlasts the pause

    def failing_pages(seed):
        return [
            p
            for p in range(1, 201)
            if is_failing(fault_key("/items/page", {"n": "2000", "page": str(p), "per_page": "10"}), 0.005, seed)
        ]

    seed = next(s for s in range(1000) if len(failing_pages(s)) == 1 and 20 < failing_pages(s)[0] < 100)
    source["params"].update({"fail_rate": 0.005, "seed": seed, "fault": "429", "retry_after": 1})
    result = run_job(spec)
    assert result.rows == 2000 and result.retries == 1
    log = api.log()
    hit = next(e for e in log if e["fault"] == "429")
    after = [e["t"] for e in log if hit["t"] + 0.1 < e["t"] < hit["t"] + 0.9]
    assert after == []  # nothing but what was already in flight in the paused second


@pytest.mark.parametrize("fault", ["mixed", "drop", "truncate", "badjson", "503"])
def test_injected_faults_leave_the_output_exact(api, run_job, fault):
    n, size = 3000, 20
    params = {"fail_rate": 0.15, "fault": fault, "seed": 7}
    result = run_job(
        {
            "sources": [paged(api, n, size, **params)],
            "concurrency": 6,
            "retry": {"attempts": 4, "backoff": 0.01},
            "export": {"format": "parquet"},
        }
    )
    failing = sum(
        is_failing(fault_key("/items/page", {"n": str(n), "page": str(p), "per_page": str(size)}), 0.15, 7)
        for p in range(1, n // size + 1)
    )
    assert failing >= 10
    assert [r["id"] for r in read_export(result.output, "parquet")] == list(range(1, n + 1))
    assert result.retries == failing and result.pages == n // size


def test_on_error_skip_completes_partially_and_lists_the_skipped_pages(api, run_job):
    n, size = 1000, 20
    params = {"fail_rate": 0.1, "fault": "500", "fail_times": 99, "seed": 3}
    failing = [
        p
        for p in range(1, n // size + 1)
        if is_failing(fault_key("/items/page", {"n": str(n), "page": str(p), "per_page": str(size)}), 0.1, 3)
    ]
    assert 1 not in failing and failing
    result = run_job(
        {
            "name": "partial",
            "sources": [paged(api, n, size, **params)],
            "on_error": "skip",
            "retry": {"attempts": 2, "backoff": 0.01},
            "export": {"format": "zip"},
        }
    )
    assert result.partial is True
    files = read_export(result.output, "zip")
    ids = [int(r["id"]) for r in files["partial.csv"]]
    expected = [i for i in range(1, n + 1) if (i - 1) // size + 1 not in failing]
    assert ids == expected
    manifest = files["manifest.json"]
    assert manifest["partial"] is True
    assert sorted(s["page"] for s in manifest["skipped_pages"]) == failing
    assert all(s["status"] == 500 and "page=" in s["url"] for s in manifest["skipped_pages"])


def test_failing_pages_fail_the_job_naming_each_page(api, run_job):
    n, size = 400, 20
    params = {"fail_rate": 0.2, "fault": "503", "fail_times": 99, "seed": 5}
    with pytest.raises(JobFailed) as failure:
        run_job(
            {"sources": [paged(api, n, size, **params)], "retry": {"attempts": 2, "backoff": 0.01}, "concurrency": 2}
        )
    pages = failure.value.pages
    assert pages and all(p.status == 503 and "after 2 attempts" in p.error for p in pages)
    assert "page=" in pages[0].url and failure.value.message.startswith("page ")


def test_not_retried_statuses_fail_at_once(api, run_job):
    with pytest.raises(JobFailed, match="HTTP 404"):
        run_job({"sources": [{"url": api.url("/no/such/endpoint")}], "retry": {"attempts": 5, "backoff": 0.01}})
    assert len(api.log()) == 1


def test_timeouts_are_retried(api, run_job):
    source = paged(api, 100, 50, fail_rate=1.0, fault="slow", slow_ms=3000)
    result = run_job({"sources": [source], "timeout": 0.5, "retry": {"attempts": 3, "backoff": 0.01}})
    assert result.rows == 100 and result.retries == 2
