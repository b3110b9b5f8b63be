"""Dependent sources (docs/dependent-sources.md): a child source fans out over the values of
its parent's records (`ids.from`), one request per value or per batch, rows in the parent's
record order, `_fanout_id` carrying the value; `"export": false` parents; --resume and a
service restart fetch only what is missing."""

from __future__ import annotations

import collections
import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from engine.errors import JobFailed
from engine.shards import list_shards
from tests.conftest import cli_env, write_spec
from tests.support.net import wait_for
from tests.support.readback import read_export, rows_of
from tests.testapi.parents_api import ACCOUNT_BASE, children_of, parent_order
from tests.testapi.records import owner_records

PER_PAGE = 20


def family(
    api,
    n: int = 250,
    child: dict | None = None,
    parent_params: dict | None = None,
    child_params: dict | None = None,
    parent_export: bool = False,
    fmt: str = "ndjson",
    concurrency: int = 4,
) -> dict:
    """`parents` (n parents, descending ids, pages of 20) and `children` (one request per id)."""
    parent = {
        "name": "parents",
        "url": api.url("/parents"),
        "params": {"n": n, "order": "desc", **(parent_params or {})},
        "pagination": {"type": "page", "size": PER_PAGE, "total_pages": "meta.total_pages"},
        "export": parent_export,
    }
    kid = {
        "name": "children",
        "url": api.url("/children") + "?ids={id}",
        "params": child_params or {},
        "ids": {"from": "parents"},
        **(child or {}),
    }
    return {"name": "family", "sources": [parent, kid], "concurrency": concurrency, "export": {"format": fmt}}


def expected_children(order: list[int], **kwargs) -> list[dict]:
    return [{"_fanout_id": p, **child} for p in order for child in children_of(p, **kwargs)]


def requested_ids(api) -> collections.Counter:
    return collections.Counter(entry["query"]["ids"] for entry in api.log(path="/children"))


# ------------------------------------------------------------------ fan-out over a parent


def test_each_parent_makes_one_child_request_and_rows_follow_the_parents(api, run_job):
    result = run_job(family(api))
    order = parent_order(250, "desc")
    assert requested_ids(api) == collections.Counter(str(p) for p in range(1, 251))  # 250 requests, once each
    assert len(api.log(path="/parents")) == math.ceil(250 / PER_PAGE)
    rows = read_export(result.output, "ndjson")
    assert rows == expected_children(order)  # parent order (descending ids), children in page order
    assert all(isinstance(row["_fanout_id"], int) for row in rows)  # ids stay ints
    assert result.rows_by_source == {"children": 500}  # "export": false: the parents are written nowhere


def test_batches_of_50_make_5_requests_in_the_parents_order(api, run_job):
    spec = family(api, child={"url": api.url("/children"), "ids": {"from": "parents", "batch": 50, "param": "ids"}})
    result = run_job(spec)
    order = parent_order(250, "desc")
    batches = [",".join(str(p) for p in order[k : k + 50]) for k in range(0, 250, 50)]
    assert requested_ids(api) == collections.Counter(batches)  # 5 requests, each once
    rows = read_export(result.output, "ndjson")
    assert rows == [
        {"_fanout_id": batches[k], **child}
        for k in range(5)
        for p in order[k * 50 : (k + 1) * 50]
        for child in children_of(p)
    ]


def test_a_dotted_field_with_nulls_and_both_sources_exported(api, run_job):
    spec = family(
        api,
        n=60,
        child={"ids": {"from": "parents", "field": "account.id"}},
        parent_params={"null_every": 10},
        child_params={"vary": 1},  # p % 4 children: none for some parents
        parent_export=True,
        fmt="zip",
    )
    spec["export"] = {"format": "zip", "inner": "ndjson"}
    result = run_job(spec)
    order = parent_order(60, "desc")
    kept = [p for p in order if p % 10]  # a null account.id makes no request
    assert requested_ids(api) == collections.Counter(str(ACCOUNT_BASE + p) for p in kept)
    files = read_export(result.output, "zip", "ndjson")
    assert [row["id"] for row in files["parents.ndjson"]] == order
    assert files["children.ndjson"] == [
        {"_fanout_id": ACCOUNT_BASE + p, **child} for p in kept for child in children_of(p, vary=True)
    ]
    assert [s["name"] for s in files["manifest.json"]["sources"]] == ["parents", "children"]


def test_paginated_children_listed_before_their_parent(api, run_job):
    spec = family(
        api,
        n=30,
        child={"pagination": {"type": "page", "size": 2, "total_pages": "meta.total_pages"}},
        child_params={"k": 5},  # 3 pages per parent: 2 + 2 + 1 children
        parent_export=True,
    )
    spec["sources"].reverse()  # the child comes first in the spec: it still waits for its parent
    spec["export"] = {"format": "zip", "inner": "ndjson"}
    result = run_job(spec)
    order = parent_order(30, "desc")
    pages = collections.Counter((e["query"]["ids"], e["query"]["page"]) for e in api.log(path="/children"))
    assert pages == collections.Counter((str(p), str(k)) for p in order for k in (1, 2, 3))  # 90 requests
    files = read_export(result.output, "zip", "ndjson")
    assert list(files) == ["children.ndjson", "parents.ndjson", "manifest.json"]  # the spec's order
    assert files["children.ndjson"] == expected_children(order, k=5)


def test_three_generations_with_whole_urls_and_path_ids(api, run_job):
    spec = family(api, n=30, child={"url": "{id}", "ids": {"from": "parents", "field": "href"}})
    spec["sources"][0]["params"]["links"] = 1
    spec["sources"][1]["export"] = False
    spec["sources"].append(
        {"name": "grandchildren", "url": api.url("/items/by-id/{id}"), "ids": {"from": "children"}, "records": "data"}
    )
    result = run_job(spec)
    order = parent_order(30, "desc")
    children = [child for p in order for child in children_of(p)]
    assert requested_ids(api) == collections.Counter(str(p) for p in order)
    by_id = api.log()
    assert sorted(e["path"] for e in by_id if e["path"].startswith("/items/by-id/")) == sorted(
        f"/items/by-id/{c['id']}" for c in children
    )
    rows = read_export(result.output, "ndjson")
    assert [(r["_fanout_id"], r["owner"], r["id"]) for r in rows] == [
        (c["id"], c["id"], r["id"]) for c in children for r in owner_records(c["id"])
    ]
    assert result.rows_by_source == {"grandchildren": 180}


def test_a_field_the_parents_records_lack_fails_naming_it(api, run_job):
    with pytest.raises(JobFailed) as info:
        run_job(family(api, n=40, child={"ids": {"from": "parents", "field": "acount.id"}}))
    message = str(info.value)
    assert message.startswith("sources.1.ids.field:") and "'acount.id'" in message and "account.id" in message
    assert api.log(path="/children") == []


@pytest.mark.parametrize(
    "sources, field",
    [
        ([{"name": "a", "url": "http://127.0.0.1/x/{id}", "ids": {"from": "nobody"}}], "sources.0.ids.from"),
        (
            [
                {"name": "a", "url": "http://127.0.0.1/x/{id}", "ids": {"from": "b"}},
                {"name": "b", "url": "http://127.0.0.1/y/{id}", "ids": {"from": "a"}},
            ],
            "sources.0.ids.from",
        ),
    ],
    ids=["unknown parent", "cycle"],
)
def test_an_unknown_parent_or_a_cycle_is_a_validation_error(cli, tmp_path, sources, field):
    spec = write_spec(tmp_path / "s.json", {"sources": sources, "export": {"format": "zip"}})
    run = cli("validate", str(spec))
    assert run.code == 2
    assert field in [d["field"] for d in run.summary["details"]], run.summary


# ------------------------------------------------------------------ resume


def _shards(workdir: Path, source: int):
    return list_shards(workdir / "shards", source=source)


def test_resume_fetches_only_missing_parent_pages_and_child_units(api, run_job, tmp_path):
    workdir = tmp_path / "work"
    spec = family(api)
    first = run_job(spec, workdir=workdir, output=tmp_path / "first.ndjson")
    parents, kids = _shards(workdir, 0), _shards(workdir, 1)
    gone_parent, gone_kid = parents[len(parents) // 2], kids[len(kids) // 2]
    for info in (gone_parent, gone_kid):
        info.path.unlink()
    api.reset()
    again = run_job(spec, workdir=workdir, output=tmp_path / "again.ndjson")
    assert again.output.read_bytes() == first.output.read_bytes()
    pages = sorted(int(e["query"]["page"]) for e in api.log(path="/parents"))
    assert pages == list(range(gone_parent.first[1], gone_parent.last[1] + 1))  # only the missing pages
    order = parent_order(250, "desc")
    missing = order[gone_kid.first[0] : gone_kid.last[0] + 1]  # child unit k is the parent in row k
    assert requested_ids(api) == collections.Counter(str(p) for p in missing)


def test_resume_refetches_a_child_whose_parent_ids_changed(api, run_job, tmp_path):
    workdir = tmp_path / "work"
    spec = family(api, n=40)
    first = run_job(spec, workdir=workdir, output=tmp_path / "first.ndjson")
    marker = workdir / "fanout" / "s001.sha256"
    assert marker.read_text() != ""
    marker.write_text("0" * 64)  # as if the parent's pages had answered other ids
    api.reset()
    again = run_job(spec, workdir=workdir, output=tmp_path / "again.ndjson")
    assert again.output.read_bytes() == first.output.read_bytes()
    assert api.log(path="/parents") == []
    assert requested_ids(api) == collections.Counter(str(p) for p in range(1, 41))  # every unit again


def test_ctrl_c_in_the_child_phase_then_resume_is_exact(api, cli, tmp_path):
    spec = write_spec(tmp_path / "s.json", family(api, n=120, child_params={"delay_ms": 25}, fmt="csv"))
    reference = cli("run", str(spec), "-o", str(tmp_path / "reference.csv"))
    assert reference.code == 0, reference.stderr
    api.reset()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "run", str(spec), "-o", str(tmp_path / "out.csv")],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: len(api.log(path="/children")) >= 30, 30, message="the children to be under way")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    workdir = tmp_path / json.loads(out)["workdir"]
    done = {u for info in _shards(workdir, 1) for u in range(info.first[0], info.last[0] + 1)}
    assert 0 < len(done) < 120
    api.reset()
    resumed = cli("run", str(spec), "-o", str(tmp_path / "out.csv"), "--resume", str(workdir))
    assert resumed.code == 0, resumed.stderr
    assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "reference.csv").read_bytes()
    assert api.log(path="/parents") == []  # the parent was complete: not one page again
    order = parent_order(120, "desc")
    assert requested_ids(api) == collections.Counter(str(order[u]) for u in range(120) if u not in done)


def test_service_killed_mid_children_resumes_on_restart_with_exact_rows(api, service_factory, tmp_path):
    spec = family(api, n=120, child_params={"delay_ms": 30}, fmt="csv", concurrency=2)
    service = service_factory(data_dir=tmp_path / "data")
    task_id = service.start_task(spec)
    wait_for(lambda: len(api.log(path="/children")) >= 30, 30, message="the children to be under way")
    left = service.kill_hard()
    wait_for(
        lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in left),
        10,
        interval=0.2,
        message="the engine processes to exit with the service",
    )
    workdir = tmp_path / "data" / "tmp" / "work" / task_id  # DATA_DIR/tmp/work/<task>
    done = {u for info in _shards(workdir, 1) for u in range(info.first[0], info.last[0] + 1)}
    assert 0 < len(done) < 120
    api.reset()
    restarted = service_factory(data_dir=tmp_path / "data", port=service.port)
    status = restarted.wait(task_id, timeout=90)
    assert status["status"] == "completed", status
    order = parent_order(120, "desc")
    rows = rows_of(restarted.download(task_id).content, "csv")
    assert [(int(r["_fanout_id"]), int(r["id"])) for r in rows] == [
        (row["_fanout_id"], row["id"]) for row in expected_children(order)
    ]
    assert api.log(path="/parents") == []  # the parent was complete before the kill
    assert requested_ids(api) == collections.Counter(str(order[u]) for u in range(120) if u not in done)
