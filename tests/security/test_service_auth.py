"""Security review findings F5, F12, F14 and F15 (docs/security.md), each attack reproduced
against the real service (gunicorn, tests/support/service_process.py) on loopback, and its
refusal asserted: fail-closed start-up and the default bind, `GET /configure` masking literal
secrets, the API token only as `Authorization: Bearer` (never `?token=`), `/metrics` behind it,
signed links for browsers, and DEBUG logs without S3 credentials."""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import stat
import subprocess
import sys
import time
from urllib.parse import parse_qs, urlsplit

import psutil
import pytest
import requests
import websocket

from tests.support.delivery_servers import S3_KEY, S3_SECRET, S3Server
from tests.support.net import free_port
from tests.support.service_process import REPO, ServiceProcess
from tests.support.specs import page_spec

TOKEN = "tok-security-5f0c2e9a71"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
LOOPBACK_SOURCES = {"ALLOWED_SOURCE_HOSTS": "127.0.0.1"}  # the test API is on loopback
SAFETY_SETTINGS = ("API_TOKEN", "ALLOW_NO_TOKEN", "BIND", "LOG_LEVEL")


def _service(tmp_path, env: dict | None = None, **kwargs) -> ServiceProcess:
    service = ServiceProcess(tmp_path / f"data-{free_port()}", {**LOOPBACK_SOURCES, **(env or {})}, **kwargs)
    for name in SAFETY_SETTINGS:  # never inherited from the shell running the tests
        if name not in (env or {}) and name != "BIND":
            service.env.pop(name, None)
    return service


@pytest.fixture
def services_started():
    started: list[ServiceProcess] = []
    yield started
    for service in started:
        service.stop()
        service.kill_group()


def _run_until_exit(env: dict, timeout: float = 30) -> subprocess.CompletedProcess:
    """gunicorn with gunicorn.conf.py; an AssertionError when it is still running at `timeout`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"gunicorn started (did not refuse) and was killed after {timeout} s:\n{err[-2000:]}"
        ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _listening(pid: int) -> set[str]:
    found: set[str] = set()
    for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            connections = process.net_connections(kind="inet")
        except psutil.Error:
            continue
        found.update(c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN)
    return found


def _completed_task(service: ServiceProcess, api, **kwargs) -> str:
    task_id = service.start_task(page_spec(api, n=60, size=20, **kwargs))
    final = service.wait(task_id)
    assert final["status"] == "completed", final
    return task_id


# ------------------------------------------------------------------ F5: fail-closed start-up


@pytest.mark.parametrize("bind", ["0.0.0.0", "[::]"])
def test_f5_a_public_bind_without_a_token_refuses_to_start_and_says_why(tmp_path, bind):
    port = free_port()
    service = _service(tmp_path, {"BIND": f"{bind}:{port}"})
    result = _run_until_exit(service.env)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "API_TOKEN" in line]
    assert lines, result.stderr
    assert "ALLOW_NO_TOKEN=1" in lines[0] and f"{bind}:{port}" in lines[0], lines
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_f5_a_public_bind_starts_with_a_token_or_with_allow_no_token(tmp_path, services_started):
    with_token = _service(tmp_path, {"API_TOKEN": TOKEN})
    with_token.env["BIND"] = f"0.0.0.0:{with_token.port}"
    services_started.append(with_token.start())
    assert "0.0.0.0" in _listening(with_token.proc.pid)
    assert requests.get(with_token.url("/api/export/tasks"), timeout=10).status_code == 401
    assert requests.get(with_token.url("/api/export/tasks"), headers=BEARER, timeout=10).status_code == 200

    open_on_purpose = _service(tmp_path, {"ALLOW_NO_TOKEN": "1"})
    open_on_purpose.env["BIND"] = f"0.0.0.0:{open_on_purpose.port}"
    services_started.append(open_on_purpose.start())
    assert requests.get(open_on_purpose.url("/api/export/tasks"), timeout=10).status_code == 200
    assert "without an API token" in open_on_purpose.log()


def test_f5_the_default_bind_is_loopback_only(tmp_path, services_started):
    service = _service(tmp_path)
    service.env.pop("BIND")  # the default: 127.0.0.1:$PORT
    services_started.append(service.start())
    assert _listening(service.proc.pid) == {"127.0.0.1"}


# ------------------------------------------------------------------ F12: /configure shows secrets


def test_f12_get_configure_masks_literal_secrets_and_keeps_the_shape(tmp_path, services_started):
    service = _service(tmp_path, {"API_TOKEN": TOKEN})
    service.headers = dict(BEARER)
    services_started.append(service.start())
    change = {
        "source_url": "https://api.example.com/v1/orders",
        "auth": {"type": "bearer", "token": "literal-Secret-4711"},
        "headers": {"X-Api-Key": "header-Secret-0815", "Accept": "application/json"},
    }
    posted = service.call("POST", "/api/export/configure", json=change, headers={"X-Profile": "alice"})
    assert posted.status_code == 200, posted.text
    shown = service.call("GET", "/api/export/configure", headers={"X-Profile": "alice"})
    assert shown.status_code == 200
    for response in (posted, shown):
        assert "literal-Secret-4711" not in response.text and "header-Secret-0815" not in response.text
        configuration = response.json()["configuration"]
        assert configuration["auth"] == {"type": "bearer", "token": "***"}
        assert configuration["headers"] == {"X-Api-Key": "***", "Accept": "application/json"}
        assert configuration["source_url"] == "https://api.example.com/v1/orders"


# ------------------------------------------------------------------ F14: token and metrics exposed


def test_f14_a_token_in_the_query_string_is_refused_on_every_route(api, tmp_path, services_started):
    service = _service(tmp_path, {"API_TOKEN": TOKEN, "LOG_LEVEL": "DEBUG"})
    service.headers = dict(BEARER)
    services_started.append(service.start())
    task_id = _completed_task(service, api)
    query = f"token={TOKEN}"
    routes = [
        ("GET", "/api/export/tasks"),
        ("GET", f"/api/export/status/{task_id}"),
        ("GET", f"/api/export/detail/{task_id}"),
        ("GET", f"/api/export/download/{task_id}"),
        ("POST", f"/api/export/download-link/{task_id}"),
        ("POST", f"/api/export/ws-link/{task_id}"),
        ("GET", "/api/export/inputs-list"),
        ("GET", "/api/export/configure"),
        ("GET", "/api/export/schedules"),
        ("GET", "/metrics"),
    ]
    for method, path in routes:
        alone = requests.request(method, service.url(f"{path}?{query}"), timeout=10)
        assert alone.status_code == 401, (method, path, alone.status_code)
        with_header = requests.request(method, service.url(f"{path}?{query}"), headers=BEARER, timeout=10)
        assert with_header.status_code == 401, (method, path, with_header.status_code)
        assert with_header.json()["error"] == "token_in_url"
        assert TOKEN not in alone.text
    ws_url = service.url(f"/api/export/ws/{task_id}?{query}").replace("http", "ws", 1)
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(ws_url, timeout=10)
    assert refused.value.status_code == 401
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(ws_url, header=[f"Authorization: Bearer {TOKEN}"], timeout=10)
    time.sleep(0.5)
    log = service.log_path.read_text(errors="replace")
    assert '"level":"debug"' in log or "[DEBUG]" in log, "the service logged at DEBUG"
    assert TOKEN not in log


def test_f14_a_token_in_the_query_string_is_refused_without_a_configured_token(tmp_path, services_started):
    service = _service(tmp_path)
    services_started.append(service.start())
    assert requests.get(service.url("/api/export/tasks"), timeout=10).status_code == 200
    assert requests.get(service.url("/api/export/tasks?token=anything"), timeout=10).status_code == 401
    assert requests.get(service.url("/metrics?token=anything"), timeout=10).status_code == 401


def test_f14_metrics_need_the_token(api, tmp_path, services_started):
    service = _service(tmp_path, {"API_TOKEN": TOKEN})
    service.headers = dict(BEARER)
    services_started.append(service.start())
    _completed_task(service, api)
    assert requests.get(service.url("/metrics"), timeout=10).status_code == 401
    wrong = requests.get(service.url("/metrics"), headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401 and "pageferry_tasks" not in wrong.text
    shown = requests.get(service.url("/metrics"), headers=BEARER, timeout=10)
    assert shown.status_code == 200 and 'pageferry_tasks{status="completed"} 1.0' in shown.text
    assert requests.get(service.url("/healthz"), timeout=10).status_code == 200  # health stays open


def _resign(url: str, key: bytes, route: str, task_id: str, expires: int) -> str:
    sig = hmac.new(key, f"{route}\n{task_id}\n{expires}".encode(), hashlib.sha256).hexdigest()
    return url.split("?", 1)[0] + f"?expires={expires}&sig={sig}"


def test_f14_signed_links_work_without_a_header_and_only_for_their_task_and_route(api, tmp_path, services_started):
    service = _service(tmp_path, {"API_TOKEN": TOKEN})
    service.headers = dict(BEARER)
    services_started.append(service.start())
    task_a, task_b = _completed_task(service, api), _completed_task(service, api)

    # asking for a link needs the token, like every /api route; unknown task 404; not completed 409
    assert requests.post(service.url(f"/api/export/download-link/{task_a}"), timeout=10).status_code == 401
    assert requests.post(service.url(f"/api/export/ws-link/{task_a}"), timeout=10).status_code == 401
    assert service.call("POST", "/api/export/download-link/task_0123456789ab").status_code == 404
    assert service.call("POST", "/api/export/ws-link/task_0123456789ab").status_code == 404
    slow = service.start_task(page_spec(api, n=4000, size=20, delay_ms=200))
    assert service.call("POST", f"/api/export/download-link/{slow}").status_code == 409
    service.call("DELETE", f"/api/export/cancel/{slow}")

    link = service.call("POST", f"/api/export/download-link/{task_a}")
    assert link.status_code == 200
    body = link.json()
    assert set(body) == {"url", "expires_at"} and TOKEN not in body["url"]
    assert body["url"].startswith(service.url(f"/api/export/download/{task_a}?"))
    assert body["expires_at"].endswith("Z")
    expires = int(parse_qs(urlsplit(body["url"]).query)["expires"][0])
    assert 50 <= expires - time.time() <= 65

    # the valid link works with no header at all, more than once, in either worker
    for _ in range(4):
        download = requests.get(body["url"], timeout=10)
        assert download.status_code == 200 and download.content == service.download(task_a).content

    # another task, another route, tampered, expired: refused
    other_task = body["url"].replace(task_a, task_b)
    assert requests.get(other_task, timeout=10).status_code in (401, 403)
    sig = parse_qs(urlsplit(body["url"]).query)["sig"][0]
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    assert requests.get(body["url"].replace(sig, flipped), timeout=10).status_code in (401, 403)
    assert requests.get(
        body["url"].replace(f"expires={expires}", f"expires={expires + 1}"), timeout=10
    ).status_code in (
        401,
        403,
    )
    assert requests.get(body["url"].split("?")[0], timeout=10).status_code == 401  # no signature, no header
    key = hmac.new(TOKEN.encode(), b"pageferry signed links v1", hashlib.sha256).digest()
    assert requests.get(_resign(body["url"], key, "download", task_a, expires), timeout=10).status_code == 200
    expired = _resign(body["url"], key, "download", task_a, int(time.time()) - 5)
    assert requests.get(expired, timeout=10).status_code == 401
    ws_query = urlsplit(service.call("POST", f"/api/export/ws-link/{task_a}").json()["url"]).query
    assert requests.get(service.url(f"/api/export/download/{task_a}?{ws_query}"), timeout=10).status_code == 403
    assert requests.get(service.url(f"/api/export/status/{task_a}?{ws_query}"), timeout=10).status_code == 403

    # the websocket link: no header needed; the download link's signature does not open it
    ws_link = service.call("POST", f"/api/export/ws-link/{task_a}").json()
    assert TOKEN not in ws_link["url"] and ws_link["url"].startswith("ws://127.0.0.1:")
    ws = websocket.create_connection(ws_link["url"], timeout=10)
    try:
        assert '"completed"' in ws.recv()
    finally:
        ws.close()
    ws_with_download_sig = service.url(f"/api/export/ws/{task_a}?{urlsplit(body['url']).query}").replace(
        "http", "ws", 1
    )
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(ws_with_download_sig, timeout=10)
    assert refused.value.status_code == 403
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(ws_link["url"].replace(task_a, task_b), timeout=10)


def test_f14_without_a_token_links_are_signed_with_one_key_kept_in_data_dir(api, tmp_path, services_started):
    service = _service(tmp_path, workers=2)
    services_started.append(service.start())
    task_id = _completed_task(service, api)
    workers = set()
    for _ in range(12):
        url = service.call("POST", f"/api/export/download-link/{task_id}").json()["url"]
        download = requests.get(url, timeout=10)
        assert download.status_code == 200
        workers.add(download.headers["X-Pageferry-Worker"])
    key = service.data_dir / "link-signing.key"
    assert key.stat().st_size == 32 and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert requests.get(url.replace("sig=", "sig=0"), timeout=10).status_code == 403


# ------------------------------------------------------------------ F15: DEBUG logs leak S3 keys


def test_f15_debug_logs_of_an_s3_delivery_carry_no_aws_credentials(api, tmp_path, services_started):
    ambient = {
        "AWS_ACCESS_KEY_ID": "AKIAAMBIENTPAGEFERRY",
        "AWS_SECRET_ACCESS_KEY": "ambient-Secret-Key-9x7",
        "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEPageferrySessionTokenXyz",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    env = {
        "LOG_LEVEL": "DEBUG",
        "PAGEFERRY_SECRET_S3_KEY": S3_KEY,
        "PAGEFERRY_SECRET_S3_SECRET": S3_SECRET,
        "ALLOW_AMBIENT_CREDENTIALS": "1",
        **ambient,
    }
    with S3Server() as s3:
        bucket = s3.bucket("security-debug")
        service = _service(tmp_path, env)
        services_started.append(service.start())
        spec = page_spec(api, n=40, size=20)
        spec["deliver"] = [
            {
                "type": "s3",
                "url": f"s3://{bucket}/with-keys/",
                "endpoint_url": s3.endpoint,
                "access_key": "${PAGEFERRY_SECRET_S3_KEY}",
                "secret_key": "${PAGEFERRY_SECRET_S3_SECRET}",
            },
            {"type": "s3", "url": f"s3://{bucket}/ambient/", "endpoint_url": s3.endpoint},
        ]
        final = service.wait(service.start_task(spec))
        assert final["status"] == "completed", final
        assert [d["ok"] for d in final["deliveries"]] == [True, True], final["deliveries"]
        assert s3.read(bucket, "with-keys/items.csv") and s3.read(bucket, "ambient/items.csv")
    time.sleep(0.5)
    log = service.log_path.read_text(errors="replace")
    assert "[DEBUG]" in log, "the service logged at DEBUG"
    for secret in (
        S3_KEY,
        S3_SECRET,
        *(ambient[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")),
    ):
        assert secret not in log, f"{secret[:6]}… is in the DEBUG log"
