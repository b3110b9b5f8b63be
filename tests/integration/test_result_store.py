"""RESULT_STORE=s3://bucket/prefix at the engine's level (moto's S3 server on 127.0.0.1): every
shard is stored in the bucket as it is written, so a job whose machine died is resumed from the
bucket in an empty work directory - fetching only the pages no stored shard holds."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from engine import parse_spec, prepare
from engine.errors import JobFailed
from engine.shards import NAME, checksum_path
from engine.storage import S3ResultStore, StoreConfig, WorkCopy, upload_shard
from tests.conftest import cli_env, write_spec
from tests.integration.test_reliability import pool_processes
from tests.support.delivery_servers import S3_KEY, S3_SECRET, S3Server
from tests.support.net import free_port, wait_for
from tests.support.readback import read_export
from tests.support.specs import page_spec

PAGES = 150  # 3,000 records of 20
BUCKET = "pageferry-work"


@pytest.fixture(scope="module")
def s3():
    with S3Server() as server:
        server.bucket(BUCKET)
        yield server


@pytest.fixture
def store(s3, tmp_path) -> StoreConfig:
    """A prefix of its own per test, in the shared bucket."""
    return StoreConfig(BUCKET, f"t/{tmp_path.name}", s3.endpoint, "us-east-1", S3_KEY, S3_SECRET)


def store_env(config: StoreConfig) -> dict:
    return {
        "RESULT_STORE": config.url,
        "RESULT_STORE_ENDPOINT_URL": config.endpoint_url or "",
        "RESULT_STORE_ACCESS_KEY": S3_KEY,
        "RESULT_STORE_SECRET_KEY": S3_SECRET,
        "RESULT_STORE_REGION": "us-east-1",
    }


def run_in(engine, spec: dict, job_id: str, workdir: Path, output: Path, config: StoreConfig | None):
    """Run `spec` as job `job_id` in `workdir` with `config` as its RESULT_STORE."""
    prepared = prepare(parse_spec(spec), os.environ, engine.options(job_id, workdir, output).outbound)
    options = engine.options(job_id, workdir, output)
    options.result_store = config
    return engine.runner(prepared, options).run()


def stored_shards(s3, config: StoreConfig, job_id: str) -> dict[str, str]:
    """The job's shards in the bucket: name -> the SHA-256 stored with it (its object's
    metadata), which matches the bytes."""
    prefix = config.key(f"work/{job_id}/shards/")
    listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    shards = {}
    for item in listing:
        name = item["Key"][len(prefix) :]
        assert NAME.match(name), name  # shards only: the checksum is no object of its own
        found = s3.client().get_object(Bucket=BUCKET, Key=item["Key"])
        shards[name] = found["Metadata"]["sha256"]
        assert hashlib.sha256(found["Body"].read()).hexdigest() == shards[name], name
    return shards


def pages_held(names) -> list[int]:
    """Every page the shards hold (one unit: page numbers), with repeats."""
    pages = []
    for name in names:
        _, _, first, _, last = (int(g) for g in NAME.match(name).groups())
        pages.extend(range(first, last + 1))
    return sorted(pages)


def test_a_job_killed_mid_run_resumes_from_the_bucket_in_an_empty_work_directory(api, engine, s3, store, tmp_path):
    spec = page_spec(api, n=PAGES * 20, size=20, delay_ms=60, concurrency=2)
    first = tmp_path / "first-machine"
    first.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "run", str(write_spec(first / "s.json", spec)), "-o", str(first / "o.csv")],
        cwd=first,
        env=cli_env(store_env(store)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: len(api.log()) >= 40 or proc.poll() is not None, 30, message="the run to get going")
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()  # the machine dies: nothing of the coordinator runs after this
    proc.wait(timeout=10)
    wait_for(
        lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children),
        10,
        message="the engine processes to exit after the killed run",
    )
    (workdir,) = (first / ".pageferry" / "work").iterdir()
    job_id = workdir.name
    before = stored_shards(s3, store, job_id)
    assert before, "the killed run stored no shard in the bucket"
    requests_before = len(api.log())
    assert requests_before < PAGES

    # another machine: nothing of the first one's disk, only the bucket
    second = tmp_path / "second-machine"
    result = run_in(engine, spec, job_id, second / "work" / job_id, second / "o.csv", store)

    assert [int(r["id"]) for r in read_export(second / "o.csv", "csv")] == list(range(1, PAGES * 20 + 1))
    assert result.rows == PAGES * 20 and result.pages == PAGES
    assert len(api.log()) < 1.4 * PAGES, (requests_before, len(api.log()))
    # only what no stored shard held was fetched again
    assert result.requests <= PAGES - len(pages_held(before)), (result.requests, len(pages_held(before)))
    after = stored_shards(s3, store, job_id)
    assert set(before) <= set(after)
    assert pages_held(after) == list(range(1, PAGES + 1))  # every page in exactly one stored shard


def test_a_killed_pool_process_loses_nothing_and_the_bucket_alone_rebuilds_the_job(api, engine, s3, store, tmp_path):
    import threading

    spec = page_spec(api, n=PAGES * 20, size=20, delay_ms=40, concurrency=4)
    job_id = "test_s3_pool_kill"
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = run_in(engine, spec, job_id, tmp_path / "a" / job_id, tmp_path / "a.csv", store)
        except Exception as exc:  # reported below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: len(api.log()) >= 30, 30, message="the job to get going")
    victims = pool_processes(engine)
    assert victims
    victims[0].kill()
    thread.join(120)
    assert "error" not in outcome, outcome
    assert [int(r["id"]) for r in read_export(tmp_path / "a.csv", "csv")] == list(range(1, PAGES * 20 + 1))
    assert pages_held(stored_shards(s3, store, job_id)) == list(range(1, PAGES + 1))

    # the same job in an empty work directory: every page comes from the bucket, none from the API
    api.reset()
    result = run_in(engine, spec, job_id, tmp_path / "b" / job_id, tmp_path / "b.csv", store)
    assert api.log() == [] and result.requests == 0
    assert (tmp_path / "b.csv").read_bytes() == (tmp_path / "a.csv").read_bytes()


def test_a_damaged_shard_in_the_bucket_is_fetched_again(api, engine, s3, store, tmp_path):
    spec = page_spec(api, n=400, size=20, concurrency=2)
    job_id = "test_s3_damaged"
    run_in(engine, spec, job_id, tmp_path / "a" / job_id, tmp_path / "a.csv", store)
    shards = stored_shards(s3, store, job_id)
    damaged = sorted(shards)[len(shards) // 2]
    key = store.key(f"work/{job_id}/shards/{damaged}")
    body = bytearray(s3.read(BUCKET, key))
    body[len(body) // 2] ^= 0xFF  # one byte changed, the checksum it was stored with kept
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=bytes(body), Metadata={"sha256": shards[damaged]})

    api.reset()
    result = run_in(engine, spec, job_id, tmp_path / "b" / job_id, tmp_path / "b.csv", store)
    assert [int(r["id"]) for r in read_export(tmp_path / "b.csv", "csv")] == list(range(1, 401))
    assert result.requests == len(pages_held([damaged]))  # that shard's pages, nothing else


def test_a_missing_bucket_or_wrong_keys_fail_the_job_naming_result_store(api, engine, s3, tmp_path):
    missing = StoreConfig("no-such-bucket", "", s3.endpoint, "us-east-1", S3_KEY, S3_SECRET)
    with pytest.raises(JobFailed) as failed:
        run_in(engine, page_spec(api, n=40, size=20), "test_s3_missing", tmp_path / "w", tmp_path / "o.csv", missing)
    assert "RESULT_STORE s3://no-such-bucket" in str(failed.value) and "NoSuchBucket" in str(failed.value)
    assert api.log() == []  # refused before the first request

    # moto does not check keys: what a refused or absent service looks like is checked as
    # the service's start-up ping sees it - the message names RESULT_STORE, never a key
    nowhere = StoreConfig(BUCKET, "x", f"http://127.0.0.1:{free_port()}", "us-east-1", S3_KEY, "secret-Zq81wQ-x")
    with pytest.raises(JobFailed) as unreachable:
        S3ResultStore(nowhere).check()
    message = str(unreachable.value)
    assert message.startswith(f"RESULT_STORE s3://{BUCKET}/x: cannot list the bucket: S3: cannot connect"), message
    assert "secret-Zq81wQ-x" not in message + repr(nowhere) and S3_KEY not in repr(nowhere)
    keyless = StoreConfig(BUCKET, "x", s3.endpoint, "us-east-1")
    with pytest.raises(JobFailed, match="^RESULT_STORE s3://.*: set RESULT_STORE_ACCESS_KEY and RESULT_STORE_SEC"):
        S3ResultStore(keyless).check()


def test_a_start_trades_shards_with_the_bucket_and_the_buckets_win_an_overlap(s3, store, tmp_path):
    """Local disk of an instance that died, restarted after another instance went on with the
    job: its shard the bucket never got is dropped where the bucket holds those pages in a
    shard of its own (one page in two shards would break the ledger), kept and stored where not."""

    def shard(folder: Path, first: int, last: int) -> Path:
        path = folder / f"s000_u0000000_p{first:07d}_u0000000_p{last:07d}.arrow"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"pages {first}-{last}".encode())
        checksum_path(path).write_text(hashlib.sha256(path.read_bytes()).hexdigest())
        return path

    elsewhere = WorkCopy(store, "test_trade", tmp_path / "other")
    upload_shard(elsewhere.work, shard(tmp_path / "other" / "shards", 21, 28))  # another instance's
    mine = tmp_path / "mine"
    superseded, only_mine = shard(mine / "shards", 21, 24), shard(mine / "shards", 41, 44)

    copy = WorkCopy(store, "test_trade", mine)
    assert copy.pull() == 1
    copy.push_missing()
    assert sorted(p.name for p in (mine / "shards").glob("*.arrow")) == [
        "s000_u0000000_p0000021_u0000000_p0000028.arrow",
        only_mine.name,
    ]
    assert not superseded.exists() and not checksum_path(superseded).exists()
    assert sorted(stored_shards(s3, store, "test_trade")) == sorted(p.name for p in (mine / "shards").glob("*.arrow"))


def test_a_dependent_source_job_comes_back_whole_from_the_bucket(api, engine, s3, store, tmp_path):
    """A parent's ids feed a child source: the child's shards and the digest of the ids they
    were fetched for (fanout/) travel through the bucket like the rest."""
    parents = {
        "name": "parents",
        "url": api.url("/parents"),
        "params": {"n": 60},
        "pagination": {"type": "page", "size": 20, "total_pages": "meta.total_pages"},
        "export": False,
    }
    children = {"name": "children", "url": api.url("/children") + "?ids={id}", "ids": {"from": "parents"}}
    spec = {"name": "family", "sources": [parents, children], "export": {"format": "ndjson"}}
    job_id = "test_s3_family"
    first = run_in(engine, spec, job_id, tmp_path / "a" / job_id, tmp_path / "a.ndjson", store)
    assert first.rows == 120 and first.requests == 3 + 60
    listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=store.key(f"work/{job_id}/fanout/"))
    assert [o["Key"].rsplit("/", 1)[1] for o in listing.get("Contents", [])] == ["s001.sha256"]

    api.reset()
    again = run_in(engine, spec, job_id, tmp_path / "b" / job_id, tmp_path / "b.ndjson", store)
    assert api.log() == [] and again.requests == 0
    assert (tmp_path / "b.ndjson").read_bytes() == (tmp_path / "a.ndjson").read_bytes()
