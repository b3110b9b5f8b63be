"""The `gcs` delivery target (issue 19): the real CLI and `deliver_all` against
gcp-storage-emulator on 127.0.0.1 (in this process, every request recorded), the object read
back and compared byte for byte with the result the CLI wrote."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.deliver.gcs import RESUMABLE_CHUNK, RESUMABLE_THRESHOLD
from engine.deliver.targets import deliver_all
from engine.errors import SpecError
from engine.fetch.outbound import OutboundPolicy
from engine.spec.models import parse_spec, spec_to_json
from engine.spec.redact import MASK, Redactor
from tests.conftest import REPO, write_spec
from tests.support.net import free_port

BUCKET = "pageferry-out"


class Emulator:
    """gcp-storage-emulator in a thread, with a log of (method, path) of every request."""

    def __init__(self):
        from gcp_storage_emulator.server import RequestHandler, create_server

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.requests: list[tuple[str, str]] = []
        self._handler = RequestHandler
        self._saved = {m: getattr(RequestHandler, m) for m in ("do_GET", "do_POST", "do_PUT")}
        log = self.requests

        def recording(method, original):
            def handle(handler):
                log.append((method, handler.path))
                return original(handler)

            return handle

        for name, original in self._saved.items():
            setattr(RequestHandler, name, recording(name[3:], original))
        self.server = create_server("127.0.0.1", self.port, in_memory=True, default_bucket=BUCKET)

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        self.server.stop()
        for name, original in self._saved.items():
            setattr(self._handler, name, original)

    def blob(self, name: str, bucket: str = BUCKET):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        client = storage.Client(
            project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": self.endpoint}
        )
        return client.bucket(bucket).get_blob(name)

    def uploads(self, since: int) -> list[tuple[str, str]]:
        """The upload requests (method, path) recorded after the first `since`."""
        return [(m, p) for m, p in self.requests[since:] if p.startswith("/upload/")]


@pytest.fixture(scope="module")
def gcs():
    with Emulator() as emulator:
        yield emulator


def gcs_target(gcs, prefix: str = "exports/", **extra) -> dict:
    return {"type": "gcs", "url": f"gs://{BUCKET}/{prefix}", "endpoint_url": gcs.endpoint, **extra}


def targets(*items):
    return parse_spec({"sources": [{"url": "http://x.invalid/"}], "deliver": list(items)}).deliver


def items_spec(api, n: int = 120, **extra) -> dict:
    return {
        "name": "items",
        "sources": [{"url": api.url("/items/page"), "params": {"n": n}, "pagination": {"type": "page", "size": 50}}],
        **extra,
    }


def service_account(token_uri: str) -> tuple[str, str]:
    """(service-account JSON text, its private key PEM) - a real RSA key, made here."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "pageferry-test",
        "private_key_id": "c0ffee1234567890abcdef",
        "private_key": pem,
        "client_email": "ferry@pageferry-test.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": token_uri,
    }
    return json.dumps(info), pem


class TokenServer:
    """An OAuth2 token endpoint that grants every assertion (what Google's does for a valid
    service-account JWT)."""

    def __init__(self):
        self.grants = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.grants += 1
                body = json.dumps({"access_token": "ya29.test-token", "expires_in": 3600, "token_type": "Bearer"})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


# ------------------------------------------------------------------ the spec


def test_gcs_spec_errors_name_the_field_and_credentials_are_redacted():
    cases = [
        ({"type": "gcs", "url": "s3://bucket/x/"}, "deliver.0.url"),
        ({"type": "gcs", "url": "gs://Bad_Bucket/"}, "deliver.0.url"),
        ({"type": "gcs", "url": "gs://bucket/a/../b/"}, "deliver.0.url"),
        ({"type": "gcs", "url": "gs://bucket/", "endpoint_url": "ftp://127.0.0.1"}, "deliver.0.endpoint_url"),
        (
            {"type": "gcs", "url": "gs://bucket/", "credentials": "${A}", "credentials_file": "sa.json"},
            "deliver.0.credentials",
        ),
        ({"type": "gcs", "url": "gs://bucket/", "credentials_file": ""}, "deliver.0.credentials_file"),
        ({"type": "gcs", "url": "gs://bucket/", "key_file": "x"}, "deliver.0.key_file"),
    ]
    for target, field in cases:
        with pytest.raises(SpecError) as info:
            parse_spec({"sources": [{"url": "http://x.invalid/"}], "deliver": [target]})
        assert [d.field for d in info.value.details] == [field], (target, info.value.details)
    spec = parse_spec(
        {
            "sources": [{"url": "http://x.invalid/"}],
            "deliver": [{"type": "gcs", "url": "gs://b-1/x/", "credentials": "${SA}"}],
        }
    )
    shown = Redactor().spec(spec_to_json(spec))
    assert shown["deliver"][0]["credentials"] == MASK and shown["deliver"][0]["url"] == "gs://b-1/x/"


def test_importing_the_gcs_target_does_not_import_google():
    """The coordinator imports engine.deliver.gcs; google-cloud-storage only when a copy runs."""
    code = "import sys, engine.deliver.gcs; print(sorted(m for m in sys.modules if m.startswith('google')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ the CLI


def test_cli_delivers_a_csv_to_gcs_byte_for_byte(api, cli, gcs, tmp_path):
    spec = items_spec(api, deliver=[gcs_target(gcs, "cli/")])
    before = len(gcs.requests)
    run = cli("run", str(write_spec(tmp_path / "spec.json", spec)), "-o", str(tmp_path))
    assert run.code == 0, run.stderr
    summary = run.summary
    assert summary["status"] == "completed" and summary["rows"] == 120
    assert summary["deliveries"] == [
        {"target": f"gs://{BUCKET}/cli/items.csv", "ok": True, "error": None, "attempts": 1}
    ]
    local = (tmp_path / "items.csv").read_bytes()
    blob = gcs.blob("cli/items.csv")
    assert blob.download_as_bytes() == local
    assert blob.size == len(local) and blob.metadata == {"sha256": hashlib.sha256(local).hexdigest()}
    [(method, path)] = gcs.uploads(before)
    assert method == "POST" and "uploadType=multipart" in path  # small: one request


def test_cli_delivers_a_zip_to_gcs_byte_for_byte(api, cli, gcs, tmp_path):
    spec = items_spec(api, n=75, export={"format": "zip", "inner": "csv"}, deliver=[gcs_target(gcs, "zips/daily/")])
    run = cli("run", str(write_spec(tmp_path / "spec.json", spec)), "-o", str(tmp_path))
    assert run.code == 0, run.stderr
    [delivery] = run.summary["deliveries"]
    assert delivery == {"target": f"gs://{BUCKET}/zips/daily/items.zip", "ok": True, "error": None, "attempts": 1}
    stored = gcs.blob("zips/daily/items.zip").download_as_bytes()
    assert stored == (tmp_path / "items.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "items.zip") as archive:
        assert "items.csv" in archive.namelist()


def test_cli_exits_3_when_the_bucket_is_missing(api, cli, gcs, tmp_path):
    target = {"type": "gcs", "url": "gs://no-such-bucket/x/", "endpoint_url": gcs.endpoint}
    run = cli(
        "run", str(write_spec(tmp_path / "spec.json", items_spec(api, n=60, deliver=[target]))), "-o", str(tmp_path)
    )
    assert run.code == 3, run.stderr
    summary = run.summary
    assert summary["status"] == "completed" and summary["rows"] == 60
    assert (tmp_path / "items.csv").exists()  # a failed copy leaves the result alone
    assert summary["deliveries"] == [
        {
            "target": "gs://no-such-bucket/x/items.csv",
            "ok": False,
            "error": "GCS: bucket 'no-such-bucket' not found (HTTP 404)",
            "attempts": 1,  # permanent: not retried
        }
    ]
    assert "delivery to" in run.stderr


def test_cli_exits_3_when_the_endpoint_does_not_answer(api, cli, tmp_path):
    target = {"type": "gcs", "url": f"gs://{BUCKET}/x/", "endpoint_url": f"http://127.0.0.1:{free_port()}"}
    run = cli(
        "run", str(write_spec(tmp_path / "spec.json", items_spec(api, n=10, deliver=[target]))), "-o", str(tmp_path)
    )
    assert run.code == 3, run.stderr
    [delivery] = run.summary["deliveries"]
    assert delivery["ok"] is False and delivery["attempts"] == 3  # transient: retried with backoff
    assert delivery["error"] == "GCS: cannot connect to the endpoint (connection failed)"


def test_cli_uses_service_account_credentials_and_never_shows_them(api, cli, gcs, tmp_path):
    with TokenServer() as tokens:
        sa_json, pem = service_account(tokens.url)
        spec = items_spec(api, n=30, deliver=[gcs_target(gcs, "sa/", credentials="${GCS_SA_JSON}")])
        run = cli(
            "run",
            str(write_spec(tmp_path / "spec.json", spec)),
            "-o",
            str(tmp_path),
            env={"GCS_SA_JSON": sa_json, "LOG_LEVEL": "DEBUG"},
        )
        assert run.code == 0, run.stderr
        assert tokens.grants >= 1  # the key signed a JWT that was exchanged for a token
    assert run.summary["deliveries"][0]["ok"] is True
    assert gcs.blob("sa/items.csv").download_as_bytes() == (tmp_path / "items.csv").read_bytes()
    body = "".join(pem.splitlines()[1:-1])
    for leak in (sa_json, pem, body[:40], body[-40:], "c0ffee1234567890abcdef"):
        assert leak not in run.stdout + run.stderr


def test_cli_credentials_failure_is_worded_without_the_key(api, cli, gcs, tmp_path):
    sa_json, pem = service_account(f"http://127.0.0.1:{free_port()}/token")  # nobody answers
    spec = items_spec(api, n=10, deliver=[gcs_target(gcs, "sa/", credentials="${GCS_SA_JSON}")])
    run = cli("run", str(write_spec(tmp_path / "spec.json", spec)), "-o", str(tmp_path), env={"GCS_SA_JSON": sa_json})
    assert run.code == 3, run.stderr
    [delivery] = run.summary["deliveries"]
    assert delivery["ok"] is False and delivery["error"] == "GCS: cannot reach the token endpoint"
    body = "".join(pem.splitlines()[1:-1])
    for leak in (sa_json, pem, body[:40], body[-40:]):
        assert leak not in run.stdout + run.stderr
    bad = items_spec(api, n=10, deliver=[gcs_target(gcs, "sa/", credentials="${GCS_SA_JSON}")])
    run = cli(
        "run",
        str(write_spec(tmp_path / "bad.json", bad)),
        "-o",
        str(tmp_path / "bad"),
        env={"GCS_SA_JSON": '{"type": "service_account", "private_key": "not-a-key-Q7v"}'},
    )
    assert run.code == 3
    assert run.summary["deliveries"][0]["error"].startswith("GCS: credentials is not a service-account JSON")
    assert "not-a-key-Q7v" not in run.stdout + run.stderr


# ------------------------------------------------------------------ deliver_all


def test_a_large_file_goes_as_a_resumable_upload(gcs, tmp_path):
    path = tmp_path / "big.parquet"
    data = os.urandom(RESUMABLE_THRESHOLD + RESUMABLE_CHUNK // 2 + 12345)
    path.write_bytes(data)
    before = len(gcs.requests)
    [outcome] = deliver_all(targets(gcs_target(gcs, "large/")), path, Redactor())
    assert outcome == {"target": f"gs://{BUCKET}/large/big.parquet", "ok": True, "error": None, "attempts": 1}
    blob = gcs.blob("large/big.parquet")
    assert blob.download_as_bytes() == data
    assert blob.metadata["sha256"] == hashlib.sha256(data).hexdigest()
    import google_crc32c

    assert blob.crc32c == base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
    uploads = gcs.uploads(before)
    assert uploads[0][0] == "POST" and "uploadType=resumable" in uploads[0][1]
    assert [m for m, _ in uploads[1:]] == ["PUT", "PUT"]  # two chunks: 8 MiB, then the rest


def test_the_url_may_name_the_object_itself(gcs, tmp_path):
    path = tmp_path / "orders.csv"
    path.write_bytes(b"id\n1\n")
    [outcome] = deliver_all(targets(gcs_target(gcs, "fixed/latest.csv")), path, Redactor())
    assert outcome["ok"] and outcome["target"] == f"gs://{BUCKET}/fixed/latest.csv"
    assert gcs.blob("fixed/latest.csv").download_as_bytes() == b"id\n1\n"


def test_service_rules_ambient_credentials_and_the_outbound_policy(gcs, tmp_path):
    path = tmp_path / "orders.csv"
    path.write_bytes(b"id\n1\n")
    sa_file = tmp_path / "sa.json"
    sa_file.write_text(service_account("http://127.0.0.1:9/token")[0])
    ambient, from_file = deliver_all(
        targets(
            {"type": "gcs", "url": "gs://bucket-a/x/"},
            {"type": "gcs", "url": "gs://bucket-a/x/", "credentials_file": str(sa_file)},
        ),
        path,
        Redactor(),
        ambient_credentials=False,
    )
    assert ambient["ok"] is False and ambient["attempts"] == 1
    assert "ALLOW_AMBIENT_CREDENTIALS=1" in ambient["error"] and ambient["error"].startswith("GCS: no GCS credentials")
    assert from_file["ok"] is False and from_file["attempts"] == 1
    assert "credentials_file" in from_file["error"] and "ALLOW_AMBIENT_CREDENTIALS=1" in from_file["error"]
    # The service's policy (public addresses only) refuses an emulator on loopback before connecting.
    before = len(gcs.requests)
    [refused] = deliver_all(targets(gcs_target(gcs)), path, Redactor(), policy=OutboundPolicy(public_only=True))
    assert refused["ok"] is False and refused["attempts"] == 1 and "loopback" in refused["error"]
    assert len(gcs.requests) == before
    # ALLOWED_SOURCE_HOSTS listing it lets it through.
    [allowed] = deliver_all(targets(gcs_target(gcs, "ok/")), path, Redactor(), policy=OutboundPolicy(("127.0.0.1",)))
    assert allowed["ok"] is True, allowed
