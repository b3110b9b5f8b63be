"""Response rules, GraphQL errors and the body quote of a failed page, end to end in real pool
processes against the local test API (tests/testapi/rules_api.py; its arrival log is the judge):

- `skip`: the page yields no records, is no failure (the job is complete, not partial) and
  ends its unit like an empty page - page/offset and cursor pagination alike; counted as
  `skipped_pages` (per source, for the job, in the CLI's summary);
- `retry`: a retryable failure under the job's retry policy (backoff, attempts), then a failed
  page as usual (`on_error` applies); `fail`: a failed page at once;
- rules are checked in order, before the default handling;
- a 200 whose GraphQL `errors` list is not empty fails the page, naming the first message;
- a failed page's error quotes the start of the body: at most 300 characters, whitespace
  collapsed, secrets masked (even one the cut would have halved).
"""

from __future__ import annotations

import re

import pytest

from engine.errors import JobFailed
from engine.plan.fanout import ID_COLUMN
from tests.conftest import write_spec
from tests.support.readback import read_export
from tests.testapi.records import owner_ids, record
from tests.testapi.rules_api import BUSY_BODY_MESSAGE, GRAPHQL_MESSAGE

OWNERS = [1, 2, 3, 4, 5, 6]
MISSING = [2, 5]
SKIP_404 = {"status": [404], "action": "skip"}
RETRY_BUSY = {"path": "error.code", "equals": "RATE_LIMITED", "action": "retry"}
TOKEN = "Zq9tokXr-5ecret-77aa"


def children_source(api, responses: list | None = None, k: int = 3, **query) -> dict:
    source = {
        "url": api.url("/rules/children", k=k, missing=",".join(map(str, MISSING)), **query),
        "ids": {"values": OWNERS, "param": "id"},
        "pagination": {"type": "page", "size": 2, "size_param": "per_page"},
    }
    if responses is not None:
        source["responses"] = responses
    return source


def job(*sources: dict, **fields) -> dict:
    return {"sources": list(sources), "export": {"format": "ndjson"}, "retry": {"backoff": 0.01}, **fields}


def owner_rows(owners, k: int) -> list[tuple]:
    return [(owner, rid) for owner in owners for rid in owner_ids(owner, k)]


def the_failure(excinfo) -> str:
    assert excinfo.value.pages, excinfo.value.message
    return excinfo.value.pages[0].error


# ---------------------------------------------------------------- skip


def test_a_skipped_404_yields_no_records_and_is_not_a_failure(api, run_job):
    result = run_job(job(children_source(api, [SKIP_404], total_pages="meta.total_pages")))
    rows = read_export(result.output, "ndjson")
    present = [o for o in OWNERS if o not in MISSING]
    assert [(r[ID_COLUMN], r["id"]) for r in rows] == owner_rows(present, 3)
    assert result.partial is False and result.skipped == []
    assert result.skipped_pages == len(MISSING) and result.sources[0]["skipped_pages"] == len(MISSING)
    assert result.pages == 2 * len(present)  # 3 records at 2 a page: two pages each
    missing = [e for e in api.log(path="/rules/children") if e["status"] == 404]
    assert sorted(int(e["query"]["id"]) for e in missing) == MISSING  # asked once each, not retried


def test_without_the_rule_a_404_fails_the_job_quoting_the_body(api, run_job):
    with pytest.raises(JobFailed) as failed:
        run_job(job(children_source(api)))
    error = the_failure(failed)
    assert re.match(r'HTTP 404: \{"error":"not_found","message":"no owner [25]"\}', error), error


def test_a_skipped_page_ends_its_unit_like_an_empty_page(api, run_job):
    """Owner pages from the second on answer 404: the first page's records, then the unit
    ends - the pages after the skipped one are not read (nor written twice)."""
    source = children_source(api, [SKIP_404], k=5, gone_page=2)
    source["ids"] = {"values": [1, 3, 4], "param": "id"}
    result = run_job(job(source))
    rows = read_export(result.output, "ndjson")
    assert [(r[ID_COLUMN], r["id"]) for r in rows] == [(o, rid) for o in (1, 3, 4) for rid in owner_ids(o, 5)[:2]]
    assert result.partial is False and result.skipped_pages == 3


def test_a_skipped_page_ends_a_cursor_sequence(api, run_job):
    source = {
        "url": api.url("/rules/feed", n=100, size=10, gone_after=2),
        "pagination": {"type": "cursor"},
        "responses": [SKIP_404],
    }
    result = run_job(job(source))
    assert [r["id"] for r in read_export(result.output, "ndjson")] == list(range(1, 21))
    assert result.skipped_pages == 1 and result.partial is False
    assert len(api.log(path="/rules/feed")) == 3  # no next cursor after the skipped page


def test_the_cli_summary_counts_skipped_pages(api, cli, tmp_path):
    spec = job(children_source(api, [SKIP_404], total_pages="meta.total_pages"))
    run = cli("run", str(write_spec(tmp_path / "spec.json", spec)), "-o", str(tmp_path / "out.ndjson"), "--quiet")
    assert run.code == 0, run.stderr
    summary = run.summary
    assert summary["status"] == "completed" and summary["partial"] is False
    assert summary["skipped_pages"] == len(MISSING) and summary["rows"] == 3 * (len(OWNERS) - len(MISSING))


# ---------------------------------------------------------------- retry and fail


def busy_source(api, responses: list | None, busy: int, pages: int = 4, **query) -> dict:
    source = {
        "url": api.url("/rules/busy", n=pages * 10, busy=busy, **query),
        "pagination": {"type": "page", "size": 10, "total_pages": "meta.total_pages"},
    }
    if responses is not None:
        source["responses"] = responses
    return source


def test_a_retry_rule_retries_a_200_under_the_retry_policy(api, run_job):
    result = run_job(job(busy_source(api, [RETRY_BUSY], busy=2)))
    assert [r["id"] for r in read_export(result.output, "ndjson")] == [record(i)["id"] for i in range(1, 41)]
    log = api.log(path="/rules/busy")
    assert len(log) == 4 * 3  # each page: two busy answers, then its records
    assert result.retries == 4 * 2 and result.requests == 12


def test_without_the_rule_the_busy_body_fails_the_page(api, run_job):
    with pytest.raises(JobFailed) as failed:
        run_job(job(busy_source(api, None, busy=1)))
    assert "holds no list of records" in the_failure(failed)


def test_exhausted_retries_fail_the_page_naming_the_rule_and_the_body(api, run_job):
    with pytest.raises(JobFailed) as failed:
        run_job(job(busy_source(api, [RETRY_BUSY], busy=99, pages=1), retry={"attempts": 3, "backoff": 0.01}))
    error = the_failure(failed)
    assert error == (
        f'HTTP 200: {{"error":{{"code":"RATE_LIMITED","message":"{BUSY_BODY_MESSAGE}"}}}} '
        "(responses.0: retry) (after 3 attempts)"
    )
    assert len(api.log(path="/rules/busy")) == 3


def test_on_error_skip_applies_to_a_page_the_retry_rule_gave_up_on(api, run_job):
    source = busy_source(api, [RETRY_BUSY], busy=99, only_page=2)
    result = run_job(job(source, retry={"attempts": 2, "backoff": 0.01}, on_error="skip"))
    assert result.partial is True and result.rows == 30
    assert [(s["page"], s["status"]) for s in result.skipped] == [(2, 200)]
    assert "(responses.0: retry) (after 2 attempts)" in result.skipped[0]["error"]
    assert result.skipped_pages == 1


def test_a_fail_rule_fails_at_once_even_a_status_that_would_be_retried(api, run_job):
    source = {
        "url": api.url("/items/page", n=30, fail_all=1, fault=503),
        "pagination": {"type": "page", "size": 10},
        "responses": [{"status": [503], "action": "fail"}],
    }
    with pytest.raises(JobFailed) as failed:
        run_job(job(source, retry={"attempts": 5, "backoff": 0.01}))
    assert "(responses.0: fail) (after 1 attempt)" in the_failure(failed)
    assert len(api.log(path="/items/page")) == 1


def test_a_fail_rule_on_a_body_value_fails_a_200(api, run_job):
    rule = {"path": "error.code", "equals": "FORBIDDEN", "action": "fail"}
    with pytest.raises(JobFailed) as failed:
        run_job(job(busy_source(api, [RETRY_BUSY, rule], busy=5, code="FORBIDDEN", pages=1)))
    assert the_failure(failed).endswith("(responses.1: fail) (after 1 attempt)")
    assert len(api.log(path="/rules/busy")) == 1


# ---------------------------------------------------------------- order


@pytest.mark.parametrize(
    "responses,completes",
    [
        ([{"status": [404], "action": "fail"}, SKIP_404], False),
        ([SKIP_404, {"status": [404], "action": "fail"}], True),
        ([{"path": "error", "equals": "not_found", "action": "skip"}, {"status": [404], "action": "fail"}], True),
        ([{"path": "error", "equals": "gone", "action": "skip"}, {"status": [404], "action": "fail"}], False),
    ],
)
def test_rules_are_checked_in_order_and_the_first_match_decides(api, run_job, responses, completes):
    spec = job(children_source(api, responses, total_pages="meta.total_pages"))
    if completes:
        assert run_job(spec).skipped_pages == len(MISSING)
    else:
        with pytest.raises(JobFailed) as failed:
            run_job(spec)
        assert "(responses." in the_failure(failed) and "fail)" in the_failure(failed)


# ---------------------------------------------------------------- GraphQL


def test_graphql_errors_in_a_200_fail_the_job_naming_the_first_message(api, run_job):
    source = {"url": api.url("/rules/graphql"), "graphql": {"query": "{ nope }"}}
    with pytest.raises(JobFailed) as failed:
        run_job(job(source))
    assert the_failure(failed) == f"GraphQL error: {GRAPHQL_MESSAGE} (and 1 more) (after 1 attempt)"
    assert failed.value.pages[0].status == 200
    assert GRAPHQL_MESSAGE in failed.value.message
    assert len(api.log(path="/rules/graphql")) == 1  # not retried


# ---------------------------------------------------------------- the body quote


@pytest.mark.parametrize("lead", [0, 280])
def test_a_failed_page_quotes_at_most_300_characters_of_its_body_secrets_masked(api, run_job, lead):
    """lead=280 puts the token across the 300th character: masked before the cut, no half of
    it shows."""
    source = {
        "url": api.url("/rules/fail", status=403, lead=lead),
        "auth": {"type": "bearer", "token": "${RULES_TOKEN}"},
    }
    with pytest.raises(JobFailed) as failed:
        run_job(job(source), env={"RULES_TOKEN": TOKEN})
    error = the_failure(failed)
    assert error.startswith("HTTP 403: ") and error.endswith(" (after 1 attempt)")
    quote = error[len("HTTP 403: ") : -len(" (after 1 attempt)")]
    assert quote.startswith(("." * lead + "denied: Bearer *** may not read this lorem ipsum lorem")[:300])
    assert TOKEN[:5] not in failed.value.message and "\n" not in error and "\t" not in error
    assert 290 <= len(quote) <= 300  # the body is far longer; whitespace runs became one space
