"""Delivery (issue 9): the signed webhook, S3 and FTP/FTPS copies - in the engine, the CLI and
the service (real gunicorn, 2 workers), against real peers on 127.0.0.1: an http.server
receiver, moto's S3 server and pyftpdlib with TLS (a self-signed certificate made here)."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import threading
import time
import zipfile

import pytest

from engine.deliver import targets as deliver_module
from engine.deliver.targets import deliver_all
from engine.deliver.webhook import post_webhook, signature
from engine.errors import SpecError
from engine.spec.models import parse_spec
from engine.spec.redact import Redactor
from tests.conftest import write_spec
from tests.support.delivery_servers import S3_KEY, S3_SECRET, FtpServer, Receiver, S3Server
from tests.support.net import free_port

HOOK_SECRET = "hook-secret-7Hq2Lp"
FTP_PASSWORD = "ftp-pw-K2m9x"
SECRETS = (HOOK_SECRET, FTP_PASSWORD, S3_SECRET)


@pytest.fixture(scope="module")
def s3():
    with S3Server() as server:
        yield server


@pytest.fixture(scope="module")
def ftps_certs(tmp_path_factory):
    """One folder for the FTPS servers' certificates: FTPS_CA_FILE (a setting) names its cert.pem."""
    return tmp_path_factory.mktemp("ftps-certs")


@pytest.fixture
def ftps(tmp_path, ftps_certs):
    with FtpServer(tmp_path / "ftp-root", password=FTP_PASSWORD, certs=ftps_certs) as server:
        yield server


def webhook_model(url: str, **fields):
    return parse_spec({"sources": [{"url": "http://x.invalid/"}], "webhook": {"url": url, **fields}}).webhook


def targets(*items):
    return parse_spec({"sources": [{"url": "http://x.invalid/"}], "deliver": list(items)}).deliver


def s3_target(s3, bucket: str, prefix: str = "exports/", **extra) -> dict:
    return {
        "type": "s3",
        "url": f"s3://{bucket}/{prefix}",
        "endpoint_url": s3.endpoint,
        "access_key": S3_KEY,
        "secret_key": S3_SECRET,
        **extra,
    }


def result_file(tmp_path, size: int = 200_000, name: str = "orders.csv"):
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


# ------------------------------------------------------------------ the webhook (engine)


def test_webhook_signs_the_exact_body_bytes():
    payload = {"status": "completed", "rows": 3, "name": "ümlaut"}
    with Receiver(secret=HOOK_SECRET) as receiver:
        outcome = post_webhook(webhook_model(receiver.url, secret=HOOK_SECRET), payload, Redactor({HOOK_SECRET}))
    assert outcome == {"delivered": True, "attempts": 1, "error": None}
    [request] = receiver.requests
    expected = "sha256=" + hmac.new(HOOK_SECRET.encode(), request["body"], hashlib.sha256).hexdigest()
    assert request["headers"]["X-Pageferry-Signature"] == expected == signature(HOOK_SECRET, request["body"])
    assert request["headers"]["Content-Type"] == "application/json"
    assert json.loads(request["body"]) == payload and request["status"] == 200


def test_webhook_without_a_secret_is_unsigned():
    with Receiver() as receiver:
        assert post_webhook(webhook_model(receiver.url), {"status": "failed"}, Redactor())["delivered"]
    assert "X-Pageferry-Signature" not in receiver.requests[0]["headers"]


def test_webhook_failing_twice_then_accepted_exactly_once():
    with Receiver(secret=HOOK_SECRET, fail_first=2, fail_status=503) as receiver:
        outcome = post_webhook(
            webhook_model(receiver.url, secret=HOOK_SECRET, backoff=0.05),
            {"status": "completed"},
            Redactor({HOOK_SECRET}),
        )
    assert outcome == {"delivered": True, "attempts": 3, "error": None}
    assert [r["status"] for r in receiver.requests] == [503, 503, 200]
    assert len({r["body"] for r in receiver.requests}) == 1  # the same bytes every time
    assert len(receiver.accepted()) == 1


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_webhook_waits_as_long_as_its_retry_after_says_in_either_form(form):
    """One Retry-After parser for pages and webhooks: delta-seconds and HTTP-dates."""
    import email.utils

    value = "2" if form == "seconds" else email.utils.formatdate(time.time() + 3, usegmt=True)
    waits: list[float] = []
    with Receiver(fail_first=1, fail_status=503, retry_after=value) as receiver:
        outcome = post_webhook(webhook_model(receiver.url, backoff=0.01), {"s": 1}, Redactor(set()), sleep=waits.append)
    assert outcome["delivered"] is True and outcome["attempts"] == 2
    assert len(waits) == 1 and waits[0] >= 1.0, waits  # the backoff alone would be ~0.01 s


def test_webhook_gives_up_after_its_attempts_and_on_a_refusal():
    dead = f"http://127.0.0.1:{free_port()}/hook?token={HOOK_SECRET}"
    started = time.monotonic()
    outcome = post_webhook(webhook_model(dead, attempts=3, backoff=0.05, timeout=1), {"s": 1}, Redactor({HOOK_SECRET}))
    assert outcome["delivered"] is False and outcome["attempts"] == 3
    assert outcome["error"].startswith("connection failed") and HOOK_SECRET not in outcome["error"]
    assert time.monotonic() - started < 6
    with Receiver(fail_first=5, fail_status=400) as receiver:  # a 4xx refusal is not retried
        outcome = post_webhook(webhook_model(receiver.url, backoff=0.05), {"s": 1}, Redactor())
    assert outcome == {"delivered": False, "attempts": 1, "error": "HTTP 400"}
    with Receiver(delay=1.5) as receiver:  # a slow receiver: bounded by the timeout
        started = time.monotonic()
        outcome = post_webhook(webhook_model(receiver.url, attempts=2, timeout=0.3, backoff=0.05), {"s": 1}, Redactor())
    assert outcome["delivered"] is False and outcome["attempts"] == 2 and "timed out" in outcome["error"]
    assert time.monotonic() - started < 4


# ------------------------------------------------------------------ S3 (engine)


def test_s3_multipart_upload_keeps_bytes_and_sha256(s3, tmp_path):
    bucket = s3.bucket("multipart")
    path = result_file(tmp_path, size=12 * 1024 * 1024 + 123, name="big.parquet")
    [outcome] = deliver_all(targets(s3_target(s3, bucket, "daily/")), path, Redactor({S3_SECRET}))
    assert outcome == {"target": "s3://multipart/daily/big.parquet", "ok": True, "error": None, "attempts": 1}
    stored = s3.read(bucket, "daily/big.parquet")
    assert stored == path.read_bytes()
    head = s3.client().head_object(Bucket=bucket, Key="daily/big.parquet")
    assert head["Metadata"]["sha256"] == hashlib.sha256(stored).hexdigest()
    assert head["ETag"].strip('"').endswith("-2")  # two 8 MiB parts: a multipart upload


def test_s3_credentials_from_the_environment_and_inner_files(s3, tmp_path, monkeypatch):
    bucket = s3.bucket("envcreds")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    path = tmp_path / "orders.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("orders.csv", "id\n1\n")
        archive.writestr("manifest.json", "{}")
    outcomes = deliver_all(
        targets(
            {"type": "s3", "url": f"s3://{bucket}/a/b/latest.zip", "endpoint_url": s3.endpoint},
            {"type": "s3", "url": f"s3://{bucket}/unzipped", "endpoint_url": s3.endpoint, "inner_files": True},
        ),
        path,
        Redactor(),
    )
    assert [o["ok"] for o in outcomes] == [True, True], outcomes
    assert outcomes[0]["target"] == f"s3://{bucket}/a/b/latest.zip"  # a url without '/' names the object
    assert s3.read(bucket, "a/b/latest.zip") == path.read_bytes()
    assert s3.read(bucket, "unzipped/orders.csv") == b"id\n1\n" and s3.read(bucket, "unzipped/manifest.json") == b"{}"


def test_s3_failures_are_outcomes_retried_only_when_transient(s3, tmp_path, monkeypatch):
    monkeypatch.setattr(deliver_module, "BACKOFF", 0.01)
    monkeypatch.setattr(deliver_module, "S3_REQUEST_ATTEMPTS", 1)
    path = result_file(tmp_path)
    missing, unreachable = deliver_all(
        targets(
            s3_target(s3, "no-such-bucket"),
            {
                "type": "s3",
                "url": "s3://b/",
                "endpoint_url": f"http://127.0.0.1:{free_port()}",
                "access_key": S3_KEY,
                "secret_key": S3_SECRET,
            },
        ),
        path,
        Redactor({S3_SECRET}),
    )
    assert missing["ok"] is False and missing["attempts"] == 1 and "NoSuchBucket" in missing["error"]
    assert unreachable["ok"] is False and unreachable["attempts"] == deliver_module.ATTEMPTS
    assert "cannot connect" in unreachable["error"]
    assert S3_SECRET not in json.dumps([missing, unreachable])


# ------------------------------------------------------------------ FTP / FTPS (engine)


def test_ftps_creates_the_directory_and_renames_a_temp_file_into_place(ftps, tmp_path):
    path = result_file(tmp_path, size=300_000)
    [outcome] = deliver_all(
        targets(ftps.target(directory="/exports/daily/eu")), path, Redactor({FTP_PASSWORD}), ca_file=str(ftps.cert)
    )
    assert outcome["ok"] is True, outcome
    assert outcome["target"] == f"ftps://ferry@127.0.0.1:{ftps.port}/exports/daily/eu/orders.csv"
    final = ftps.root / "exports" / "daily" / "eu" / "orders.csv"
    assert final.read_bytes() == path.read_bytes()
    [stored] = ftps.received
    assert os.path.basename(stored).startswith(".orders.csv.part-")  # written under a temp name ...
    assert ftps.commands.index("RNFR") < ftps.commands.index("RNTO")  # ... then renamed
    assert {"AUTH", "PBSZ", "PROT", "PASV"} <= set(ftps.commands) and "PORT" not in ftps.commands
    assert sorted(p.name for p in final.parent.iterdir()) == ["orders.csv"]
    # a second delivery replaces the file (and again leaves no temp file behind)
    path.write_bytes(b"second version")
    assert deliver_all(targets(ftps.target(directory="/exports/daily/eu")), path, Redactor(), ca_file=str(ftps.cert))[
        0
    ]["ok"]
    assert final.read_bytes() == b"second version" and len(list(final.parent.iterdir())) == 1


def test_ftp_transient_errors_are_retried(tmp_path, monkeypatch):
    monkeypatch.setattr(deliver_module, "BACKOFF", 0.01)
    path = result_file(tmp_path)
    with FtpServer(tmp_path / "plain-root", tls=False, fail_stores=1) as ftp:
        [outcome] = deliver_all(targets(ftp.target(directory="in")), path, Redactor())
    assert outcome["ok"] is True and outcome["attempts"] == 2, outcome
    assert outcome["target"].startswith("ftp://ferry@127.0.0.1:")
    assert (ftp.root / "in" / "orders.csv").read_bytes() == path.read_bytes()
    assert ftp.commands.count("STOR") == 2


def test_ftps_certificate_is_checked_unless_told_otherwise(ftps, tmp_path):
    path = result_file(tmp_path)
    untrusted, lenient = deliver_all(
        targets(ftps.target(), ftps.target(verify=False, directory="lenient")),
        path,
        Redactor(),
    )
    assert untrusted["ok"] is False and untrusted["attempts"] == 1
    assert "certificate is not trusted" in untrusted["error"] and "ca_file" in untrusted["error"]
    assert lenient["ok"] is True and (ftps.root / "lenient" / "orders.csv").exists()


def test_ftp_wrong_password_fails_that_target_without_retries(ftps, tmp_path):
    path = result_file(tmp_path)
    [outcome] = deliver_all(
        targets(ftps.target(password="wrong-pw-Xy4")), path, Redactor({"wrong-pw-Xy4"}), ca_file=str(ftps.cert)
    )
    assert outcome["ok"] is False and outcome["attempts"] == 1 and "530" in outcome["error"]
    assert "wrong-pw-Xy4" not in json.dumps(outcome)


@pytest.mark.parametrize(
    "target, field",
    [
        ({"type": "ftp", "host": "h", "directory": "a/../../etc"}, "deliver.0.directory"),
        ({"type": "ftp", "host": "h", "verify": False}, "deliver.0.verify"),
        ({"type": "ftp", "host": "h", "ca_file": "/ca.pem"}, "deliver.0.ca_file"),
        ({"type": "s3", "url": "s3://b/", "access_key": "AK"}, "deliver.0.secret_key"),
        ({"type": "s3", "url": "s3://b/", "secret_key": "SK"}, "deliver.0.access_key"),
        ({"type": "s3", "url": "s3://b\n"}, "deliver.0.url"),
        ({"type": "s3", "url": "s3://b/", "endpoint_url": "ftp://x"}, "deliver.0.endpoint_url"),
    ],
)
def test_delivery_targets_are_validated(target, field):
    with pytest.raises(SpecError) as info:
        parse_spec({"sources": [{"url": "http://x.invalid/"}], "deliver": [target]})
    assert info.value.details[0].field == field


# ------------------------------------------------------------------ the CLI


def test_cli_delivers_and_posts_its_summary(api, cli, s3, tmp_path):
    bucket = s3.bucket("from-cli")
    spec = {
        "name": "items",
        "sources": [{"url": api.url("/items/page"), "params": {"n": 120}, "pagination": {"type": "page", "size": 50}}],
        "webhook": {"url": "", "secret": "${HOOK_SECRET}"},
        "deliver": [s3_target(s3, bucket, "cli/", secret_key="${S3_SECRET_KEY}")],
    }
    with Receiver(secret=HOOK_SECRET) as receiver:
        spec["webhook"]["url"] = receiver.url
        run = cli(
            "run",
            str(write_spec(tmp_path / "spec.json", spec)),
            "-o",
            str(tmp_path),
            env={"HOOK_SECRET": HOOK_SECRET, "S3_SECRET_KEY": S3_SECRET},
        )
        assert run.code == 0, run.stderr
    summary = run.summary
    assert summary["status"] == "completed" and summary["rows"] == 120
    assert summary["deliveries"] == [
        {"target": f"s3://{bucket}/cli/items.csv", "ok": True, "error": None, "attempts": 1}
    ]
    assert summary["webhook"] == {"delivered": True, "attempts": 1, "error": None}
    [posted] = receiver.accepted()
    assert posted == {k: v for k, v in summary.items() if k != "webhook"}  # the summary itself, signed
    assert receiver.signed(receiver.requests[0])
    assert s3.read(bucket, "cli/items.csv") == (tmp_path / "items.csv").read_bytes()
    assert not any(s in run.stdout + run.stderr for s in SECRETS)


def test_cli_exits_3_when_an_ftp_target_rejects_the_login(api, cli, tmp_path):
    spec = {
        "name": "items",
        "sources": [{"url": api.url("/items/page"), "params": {"n": 60}, "pagination": {"type": "page", "size": 50}}],
    }
    with FtpServer(tmp_path / "ftp-root", password=FTP_PASSWORD, tls=False) as ftp:
        spec["deliver"] = [ftp.target(password="${FTP_WRONG}")]
        run = cli(
            "run", str(write_spec(tmp_path / "spec.json", spec)), "-o", str(tmp_path), env={"FTP_WRONG": "wrong-pw-Xy4"}
        )
    assert run.code == 3, run.stderr
    summary = run.summary
    assert summary["status"] == "completed" and summary["rows"] == 60
    assert (tmp_path / "items.csv").exists()  # the result was written
    [delivery] = summary["deliveries"]
    assert delivery["target"] == f"ftp://ferry@127.0.0.1:{ftp.port}/exports/daily/items.csv"
    assert delivery["ok"] is False and "530" in delivery["error"]
    assert "wrong-pw-Xy4" not in run.stdout + run.stderr
    assert "delivery to" in run.stderr


def test_cli_exits_3_when_the_webhook_finally_fails(api, cli, tmp_path):
    spec = {
        "name": "items",
        "sources": [{"url": api.url("/items/page"), "params": {"n": 60}, "pagination": {"type": "page", "size": 50}}],
    }
    with Receiver(fail_first=100, fail_status=500) as receiver:
        spec["webhook"] = {"url": receiver.url, "attempts": 2, "backoff": 0.05}
        run = cli("run", str(write_spec(tmp_path / "spec.json", spec)), "-o", str(tmp_path))
    assert run.code == 3, run.stderr
    summary = run.summary
    assert summary["status"] == "completed" and summary["rows"] == 60
    assert summary["webhook"] == {"delivered": False, "attempts": 2, "error": "HTTP 500"}
    assert len(receiver.requests) == 2


# ------------------------------------------------------------------ the service (real gunicorn)


@pytest.fixture(scope="module")
def service(module_service_factory, ftps_certs):
    """One service for the module's tests (overrides conftest's per-test one), with the secrets
    (SECRET_NAMES lists them) and the FTPS servers' certificate (FTPS_CA_FILE)."""
    return module_service_factory(
        {
            "HOOK_SECRET": HOOK_SECRET,
            "FTP_PASSWORD": FTP_PASSWORD,
            "SECRET_NAMES": "HOOK_SECRET,FTP_PASSWORD",
            "FTPS_CA_FILE": str(ftps_certs / "cert.pem"),
            "MAX_CONCURRENT_TASKS": "1",
        }
    )


def items_spec(api, n: int = 150, **extra) -> dict:
    return {
        "name": "items",
        "sources": [{"url": api.url("/items/page"), "params": {"n": n}, "pagination": {"type": "page", "size": 50}}],
        **extra,
    }


def wait_webhook(service, task_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = service.status(task_id)
        hook = status.get("webhook")
        if hook is not None and not hook.get("pending"):
            return status
        assert time.monotonic() < deadline, f"webhook still pending: {status}"
        time.sleep(0.1)


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def test_service_copies_to_s3_and_ftps_and_posts_a_signed_webhook(api, service, s3, ftps):
    bucket = s3.bucket("service")
    spec = items_spec(
        api,
        n=230,
        export={"format": "zip"},
        webhook={"url": "", "secret": "${HOOK_SECRET}", "backoff": 0.2},
        deliver=[s3_target(s3, bucket, "exports/"), ftps.target(password="${FTP_PASSWORD}", directory="/drop/items")],
    )
    with Receiver(secret=HOOK_SECRET, fail_first=2) as receiver:
        spec["webhook"]["url"] = receiver.url
        task_id = service.start_task(spec)
        status = service.wait(task_id)
        assert status["status"] == "completed", status
        status = wait_webhook(service, task_id)
        time.sleep(0.5)  # nothing more arrives after the accepted attempt
    assert status["webhook"] == {"delivered": True, "attempts": 3, "error": None, "pending": False}
    assert status["deliveries"] == [
        {"target": f"s3://{bucket}/exports/items.zip", "ok": True, "error": None, "attempts": 1},
        {
            "target": f"ftps://ferry@127.0.0.1:{ftps.port}/drop/items/items.zip",
            "ok": True,
            "error": None,
            "attempts": 1,
        },
    ]
    download = service.download(task_id).content
    assert hashlib.sha256(download).hexdigest() == status["result"]["sha256"]
    assert s3.read(bucket, "exports/items.zip") == download
    assert (ftps.root / "drop" / "items" / "items.zip").read_bytes() == download
    with zipfile.ZipFile(io.BytesIO(download)) as archive:
        assert "manifest.json" in archive.namelist()
    # the receiver: three tries of the same signed body, one accepted; the body is the final status
    assert [r["status"] for r in receiver.requests] == [500, 500, 200]
    assert len({r["body"] for r in receiver.requests}) == 1 and receiver.signed(receiver.requests[-1])
    [posted] = receiver.accepted()
    assert posted["task_id"] == task_id and posted["status"] == "completed" and "webhook" not in posted
    assert posted["deliveries"] == status["deliveries"] and posted["result"] == status["result"]
    assert posted["result"]["download_url"] == service.url(f"/api/export/download/{task_id}")
    assert posted["summary"]["sources"][0]["rows"] == 230
    assert "events" not in posted  # the attempts add to the log: the payload stays the same bytes
    # each attempt is in the task's event log, as the page shows it
    webhook_events = [e["message"] for e in status["events"] if e["kind"] == "webhook"]
    assert [m.split(":")[0].split(";")[0] for m in webhook_events] == [
        "webhook attempt 1 failed",
        "webhook attempt 2 failed",
        "webhook delivered (attempt 3)",
    ], webhook_events
    assert "HTTP 500" in webhook_events[0] and "next in" in webhook_events[0]
    listing = service.call("GET", "/api/export/tasks").text
    assert_no_secrets(json.dumps(status), listing, receiver.requests[-1]["body"].decode(), service.log())


def test_a_failed_delivery_keeps_the_task_completed_and_the_webhook_names_it(api, service, s3, ftps, tmp_path):
    bucket = s3.bucket("partly")
    with Receiver() as receiver, FtpServer(tmp_path / "flaky", tls=False, fail_stores=1) as flaky:
        spec = items_spec(
            api,
            n=60,
            webhook={"url": receiver.url},
            deliver=[
                ftps.target(password="wrong-password-9"),
                s3_target(s3, "missing-bucket"),
                s3_target(s3, bucket),
                flaky.target(),
            ],
        )
        task_id = service.start_task(spec)
        phases = set()
        while (status := service.status(task_id))["status"] in ("queued", "running"):
            phases.add(status["phase"])
            time.sleep(0.05)
        status = wait_webhook(service, task_id)
    assert "delivering" in phases  # the flaky server's retry keeps the task there for a second
    assert status["status"] == "completed" and status["error"] is None
    assert [d["ok"] for d in status["deliveries"]] == [False, False, True, True]
    assert "530" in status["deliveries"][0]["error"] and "NoSuchBucket" in status["deliveries"][1]["error"]
    assert status["deliveries"][3]["attempts"] == 2  # a transient 450, retried
    download = service.download(task_id)
    assert download.status_code == 200 and s3.read(bucket, "exports/items.csv") == download.content
    [posted] = receiver.accepted()
    failed = [d["target"] for d in posted["deliveries"] if not d["ok"]]
    assert failed == [
        f"ftps://ferry@127.0.0.1:{ftps.port}/exports/daily/items.csv",
        "s3://missing-bucket/exports/items.csv",
    ]
    text = json.dumps(status) + service.call("GET", "/api/export/tasks").text
    assert "wrong-password-9" not in text and S3_SECRET not in text


def test_a_slow_webhook_does_not_hold_up_other_tasks(api, service):
    # MAX_CONCURRENT_TASKS=1: were the webhook sent in the task's slot, the second task would wait.
    release = threading.Event()
    with Receiver(hold=release) as slow:
        first = service.start_task(items_spec(api, n=50, webhook={"url": slow.url, "timeout": 60, "attempts": 1}))
        second = service.start_task(items_spec(api, n=50))
        done = service.wait(second, timeout=30)
        assert done["status"] == "completed"
        assert service.status(first)["webhook"]["pending"] is True  # still being sent
        assert all(r["status"] is None for r in slow.requests)  # the receiver has not answered yet
        release.set()
        status = wait_webhook(service, first)
    assert status["webhook"] == {"delivered": True, "attempts": 1, "error": None, "pending": False}


def test_webhooks_for_failed_and_cancelled_tasks_and_a_dead_receiver(api, service):
    dead = f"http://127.0.0.1:{free_port()}/hook"
    with Receiver() as receiver:
        failing = service.start_task(
            {"name": "broken", "sources": [{"url": api.url("/no/such/path")}], "webhook": {"url": receiver.url}}
        )
        long = service.start_task(
            items_spec(api, n=4000, webhook={"url": receiver.url})
            | {
                "sources": [
                    {
                        "url": api.url("/items/page"),
                        "params": {"n": 4000, "delay_ms": 100},
                        "pagination": {"type": "page", "size": 20},
                    }
                ]
            }
        )
        unheard = service.start_task(
            items_spec(api, n=20, webhook={"url": dead, "attempts": 2, "backoff": 0.1, "timeout": 1})
        )
        assert service.wait(failing)["status"] == "failed"
        service.wait(long, until=("running",))
        assert service.call("DELETE", f"/api/export/cancel/{long}").json()["status"] == "cancelled"
        wait_webhook(service, failing)
        wait_webhook(service, long)
        bodies = {b["task_id"]: b for b in receiver.accepted()}
    assert bodies[failing]["status"] == "failed" and "/no/such/path" in bodies[failing]["error"]["pages"][0]["url"]
    assert bodies[long]["status"] == "cancelled"
    assert service.wait(unheard)["status"] == "completed"
    status = wait_webhook(service, unheard)
    assert status["webhook"]["delivered"] is False and status["webhook"]["attempts"] == 2
    assert status["webhook"]["error"].startswith("connection failed")
    gave_up = [e["message"] for e in status["events"] if e["kind"] == "webhook"][-1]
    assert gave_up.startswith("webhook failed after 2 attempts: connection failed"), gave_up
