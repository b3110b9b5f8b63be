"""Security review findings F1, F3, F4, F5 and F16 (outbound connections), each attack
reproduced on loopback: 127.0.0.2 stands for a host inside the network, the test API on
127.0.0.1 (reached as `localhost`) for the allowed one. Nothing is ever sent to an address
outside 127/8: the other refused ranges are checked at validation and by the resolver hook."""

from __future__ import annotations

import asyncio
import json

import pytest

from config import load_settings
from engine.deliver.targets import deliver_all
from engine.deliver.webhook import send_once
from engine.errors import JobFailed, SpecError
from engine.fetch.client import HttpClient
from engine.fetch.outbound import OutboundPolicy, OutboundRefused, outbound_policy
from engine.fetch.retry import FetchError
from engine.spec.models import parse_spec
from engine.spec.prepare import prepare
from engine.spec.redact import Redactor
from tests.support.delivery_servers import Receiver
from tests.support.internal_host import INTERNAL, ConnectionCounter, run_with_policy
from tests.support.scripted_server import Reply, ScriptedServer

LOCALHOST_ONLY = OutboundPolicy(("localhost",))  # the review's service A: ALLOWED_SOURCE_HOSTS=localhost
SERVICE_DEFAULT = outbound_policy(load_settings({}), service=True)  # nothing set: public addresses only


@pytest.fixture
def allowed():
    srv = ScriptedServer()  # 127.0.0.1, reached as `localhost`
    yield srv
    srv.close()


@pytest.fixture
def internal():
    srv = ScriptedServer(host=INTERNAL)
    srv.add("GET", "/ok", Reply.json([{"internal": True}]))
    srv.add("POST", "/token", Reply.json({"access_token": "issued-by-internal", "expires_in": 60}))
    yield srv
    srv.close()


def fields(exc: SpecError) -> list[str]:
    return [d.field for d in exc.details]


def refused_at_validation(spec: dict, policy: OutboundPolicy) -> list[str]:
    with pytest.raises(SpecError) as info:
        prepare(parse_spec(spec), {}, policy)
    return fields(info.value)


# ------------------------------------------------------------------ F1


def test_f1_parser_differentials_never_reach_the_internal_host(engine, tmp_path, allowed, internal):
    """`http://127.0.0.2:P\\@localhost:Q/…` was checked as `localhost` and sent to 127.0.0.2;
    so were user-info forms. Refused at validation (source URL, whole-URL ids, token URL) and
    at run time (a redirect, a next URL, a Link header); the allowed host keeps working."""
    good = allowed.url("/ok", host="localhost")
    bypass = f"http://{INTERNAL}:{internal.port}\\@localhost:{allowed.port}"
    allowed.add("GET", "/ok", Reply.json([{"id": 1}, {"id": 2}]))
    allowed.add("GET", "/redirect", Reply.redirect(bypass + "/ok", status=307))
    allowed.add("GET", "/next", Reply.json({"items": [{"id": 1}], "next": bypass + "/ok"}))
    allowed.add("GET", "/link", Reply(200, {"Link": f'<{bypass}/ok>; rel="next"'}, b'[{"id": 1}]'))

    # validation: every URL the spec names
    assert refused_at_validation({"sources": [{"url": bypass + "/ok"}]}, LOCALHOST_ONLY) == ["sources.0.url"]
    userinfo = f"http://localhost:{allowed.port}@{INTERNAL}:{internal.port}/ok"
    assert refused_at_validation({"sources": [{"url": userinfo}]}, LOCALHOST_ONLY) == ["sources.0.url"]
    ids = {"sources": [{"url": "{id}", "ids": {"values": [good, bypass + "/ok"]}}]}
    assert all(f.startswith("sources.0.") for f in refused_at_validation(ids, LOCALHOST_ONLY))
    oauth = {"type": "oauth2", "token_url": bypass + "/token", "client_id": "cid", "client_secret": "oauth-secret-1"}
    assert refused_at_validation({"sources": [{"url": good, "auth": oauth}]}, LOCALHOST_ONLY) == [
        "sources.0.auth.token_url"
    ]
    # the same parser refuses them whatever the policy (the CLI without ALLOWED_SOURCE_HOSTS too)
    assert refused_at_validation({"sources": [{"url": bypass + "/ok"}]}, OutboundPolicy()) == ["sources.0.url"]

    # run time: what the allowed host answers
    for source in (
        {"url": allowed.url("/redirect", host="localhost")},
        {"url": allowed.url("/next", host="localhost"), "records": "items", "pagination": {"type": "next_url"}},
        {"url": allowed.url("/link", host="localhost"), "pagination": {"type": "link"}},
    ):
        with pytest.raises(JobFailed):
            run_with_policy(engine, tmp_path, {"sources": [source]}, LOCALHOST_ONLY)
    assert internal.requests() == []

    # the control: the allowed host works under the same policy
    result = run_with_policy(engine, tmp_path, {"sources": [{"url": good}]}, LOCALHOST_ONLY)
    assert result.rows == 2


# ------------------------------------------------------------------ F3


def test_f3_token_request_does_not_follow_a_redirect_to_another_host(engine, tmp_path, allowed, internal):
    """An allowed token endpoint answering 307 to 127.0.0.2 made the client re-post the
    client secret there. Now the redirect is not followed: 127.0.0.2 gets nothing."""
    allowed.add("POST", "/token", Reply.redirect(internal.url("/token"), status=307))
    allowed.add("GET", "/data", Reply.json([{"id": 1}]))
    oauth = {
        "type": "oauth2",
        "token_url": allowed.url("/token", host="localhost"),
        "client_id": "cid",
        "client_secret": "oauth-secret-9932",
    }
    spec = {"sources": [{"url": allowed.url("/data", host="localhost"), "auth": oauth}]}
    with pytest.raises(JobFailed) as info:
        run_with_policy(engine, tmp_path, spec, LOCALHOST_ONLY)
    assert "redirect" in str(info.value.as_dict())
    assert internal.requests() == []
    assert {r.path for r in allowed.requests()} == {"/token"}  # the data was never asked for without a token


# ------------------------------------------------------------------ F4


def test_f4_webhook_s3_and_ftp_targets_are_checked_at_validation_and_at_connect(tmp_path):
    """Webhook URLs, S3 endpoints and FTP hosts were never checked: a blind POST, uploads
    signed with the service's AWS identity, a port scanner with banner grabbing."""
    with ConnectionCounter() as counter, ConnectionCounter("127.0.0.1") as local:
        spec = {
            "sources": [{"url": "http://localhost:9/x"}],
            "webhook": {"url": counter.url("/hook")},
            "deliver": [
                {"type": "s3", "url": "s3://b/", "endpoint_url": counter.url(), "access_key": "AK", "secret_key": "SK"},
                {"type": "ftp", "host": INTERNAL, "port": counter.port},
            ],
        }
        service_loopback = OutboundPolicy(("127.0.0.1", "localhost"))  # the tests' service settings
        assert sorted(refused_at_validation(spec, service_loopback)) == [
            "deliver.0.endpoint_url",
            "deliver.1.host",
            "webhook.url",
        ]
        # A name that resolves to a refused address is refused when it connects (the service's
        # default policy; `localhost` is loopback): nothing reaches the listener.
        path = tmp_path / "r.csv"
        path.write_text("a\n1\n")
        s3, ftp = parse_spec(
            {
                "sources": [{"url": "http://x.invalid/"}],
                "deliver": [
                    {
                        "type": "s3",
                        "url": "s3://b/",
                        "endpoint_url": f"http://localhost:{local.port}",
                        "access_key": "AK",
                        "secret_key": "SK",
                    },
                    {"type": "ftp", "host": "localhost", "port": local.port},
                ],
            }
        ).deliver
        outcomes = deliver_all([s3, ftp], path, Redactor(), policy=SERVICE_DEFAULT)
        assert [o["ok"] for o in outcomes] == [False, False] and [o["attempts"] for o in outcomes] == [1, 1]
        assert all("loopback" in o["error"] for o in outcomes), outcomes
        hook = parse_spec({"sources": [{"url": "http://x.invalid/"}], "webhook": {"url": local.url("/hook")}}).webhook
        hook = hook.model_copy(update={"url": f"http://localhost:{local.port}/hook"})
        attempt = send_once(hook, b"{}", policy=SERVICE_DEFAULT)
        assert attempt.ok is False and attempt.retryable is False and "loopback" in (attempt.error or "")
        assert counter.connections == 0 and local.connections == 0


def test_f4_service_without_ambient_credentials_sends_nothing(tmp_path):
    """An S3 target without keys used the service's own AWS identity. Without
    ALLOW_AMBIENT_CREDENTIALS the service refuses it before connecting."""
    with ConnectionCounter("127.0.0.1") as local:
        [s3] = parse_spec(
            {
                "sources": [{"url": "http://x.invalid/"}],
                "deliver": [{"type": "s3", "url": "s3://b/", "endpoint_url": local.url()}],
            }
        ).deliver
        path = tmp_path / "r.csv"
        path.write_text("a\n1\n")
        [outcome] = deliver_all([s3], path, Redactor(), policy=OutboundPolicy(), ambient_credentials=False)
        assert outcome["ok"] is False and "ALLOW_AMBIENT_CREDENTIALS" in outcome["error"]
        assert local.connections == 0


# ------------------------------------------------------------------ F5

INTERNAL_URLS = [
    "http://127.0.0.2/x",
    "http://10.1.2.3/x",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/x",
    "http://[::1]/x",
    "http://[::ffff:127.0.0.2]/x",
    "http://[::ffff:a9fe:a9fe]/x",  # 169.254.169.254, IPv4-mapped
    "http://0.0.0.0/x",
    "http://224.0.0.1/x",
    "http://240.0.0.1/x",
    "http://[fe80::1]/x",
    "http://[fc00::1]/x",
]


def test_f5_service_defaults_refuse_internal_addresses(allowed):
    """With nothing set the service was an SSRF proxy into the network (metadata included)
    and checked names only, never the address connected to."""
    for url in INTERNAL_URLS:
        assert refused_at_validation({"sources": [{"url": url}]}, SERVICE_DEFAULT) == ["sources.0.url"], url
        assert refused_at_validation(
            {"sources": [{"url": "https://api.example.com/"}], "webhook": {"url": url}}, SERVICE_DEFAULT
        ) == ["webhook.url"], url
    for address in ("127.0.0.2", "10.0.0.1", "169.254.169.254", "100.64.0.1", "::1", "::ffff:127.0.0.2", "0.0.0.0"):
        with pytest.raises(OutboundRefused):
            SERVICE_DEFAULT.check_address("rebound.example.com", address)
    SERVICE_DEFAULT.check_address("api.example.com", "93.184.216.34")  # a public address passes (no traffic)
    SERVICE_DEFAULT.check_address("api.example.com", "2606:4700:4700::1111")
    # A name passes validation, but what it resolves to is checked when it connects (DNS
    # rebinding): `localhost` is loopback, and nothing reaches the server behind it.
    allowed.add("GET", "/x", Reply.json([{"id": 1}]))
    prepare(parse_spec({"sources": [{"url": allowed.url("/x", host="localhost")}]}), {}, SERVICE_DEFAULT)

    async def fetch() -> None:
        client = HttpClient(1 << 20, SERVICE_DEFAULT)
        try:
            await client.send("GET", allowed.url("/x", host="localhost"), {}, {}, None, 5, _ticket, _answered)
        finally:
            await client.close()

    with pytest.raises(FetchError) as info:
        asyncio.run(fetch())
    assert "loopback" in info.value.message and info.value.retryable is False
    assert allowed.requests() == []
    # the CLI applies nothing unless ALLOWED_SOURCE_HOSTS is set
    assert not outbound_policy(load_settings({}), service=False).restricted


async def _ticket() -> None:
    return None


def _answered(ticket) -> None:
    pass


# ------------------------------------------------------------------ F16


def test_f16_framing_headers_ca_file_and_the_webhooks_environment(tmp_path, monkeypatch):
    """Spec headers could override Host/Content-Length; FTPS `ca_file` read any server path;
    the webhook went through `requests` (environment proxies, ~/.netrc). Now: those headers
    and ca_file are validation errors; the webhook is sent by the fetch client - never with
    ~/.netrc credentials, through the environment's proxy like every source (the operator's),
    and its target is still checked with the proxy set."""
    for name in ("Host", "Content-Length", "Transfer-Encoding", "Connection"):
        with pytest.raises(SpecError) as info:
            parse_spec({"sources": [{"url": "http://localhost/x", "headers": {name: "admin.internal.corp"}}]})
        assert fields(info.value) == [f"sources.0.headers.{name}"]
    with pytest.raises(SpecError) as info:
        parse_spec(
            {
                "sources": [{"url": "http://localhost/x"}],
                "deliver": [{"type": "ftp", "host": "h", "tls": True, "ca_file": "/etc/shadow"}],
            }
        )
    assert fields(info.value) == ["deliver.0.ca_file"] and "FTPS_CA_FILE" in info.value.details[0].message

    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login netrc-user password netrc-PASSWORD-77\n")
    (tmp_path / ".netrc").chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with Receiver() as receiver:
        hook = parse_spec({"sources": [{"url": "http://x.invalid/"}], "webhook": {"url": receiver.url}}).webhook
        assert send_once(hook, b'{"a":1}', policy=OutboundPolicy(("127.0.0.1",))).ok
        [entry] = receiver.requests
        assert not any(k.lower() == "authorization" for k in entry["headers"]) and entry["body"] == b'{"a":1}'

    proxy = ScriptedServer()
    try:
        proxy.add("POST", "/hook", Reply(204))
        monkeypatch.setenv("http_proxy", proxy.url("/"))
        with ConnectionCounter() as counter:
            hook = parse_spec(
                {"sources": [{"url": "http://x.invalid/"}], "webhook": {"url": counter.url("/hook")}}
            ).webhook
            refused = send_once(hook, b"{}", policy=OutboundPolicy(("127.0.0.1",)))
            assert refused.ok is False and "not allowed" in (refused.error or "")
            assert proxy.requests() == [] and counter.connections == 0
        hook = parse_spec(
            {"sources": [{"url": "http://x.invalid/"}], "webhook": {"url": "http://hooks.example.com/hook"}}
        ).webhook
        assert send_once(hook, b"{}", policy=OutboundPolicy(("hooks.example.com",))).ok  # via the proxy
        [via] = proxy.requests()
        assert via.target == "http://hooks.example.com/hook" and via.headers.get("Authorization") is None
    finally:
        proxy.close()
    assert json.dumps(receiver.requests, default=str).count("netrc-PASSWORD-77") == 0


# ------------------------------------------------------------------ database hosts and files


def test_database_hosts_are_checked_at_validation_and_duckdb_files_stay_in_the_services_folder(tmp_path):
    """A postgres `dsn` is an outbound connection like any other; a `duckdb` path would let a
    client write any file the service can: in the service it is a file name in DATA_DIR."""
    from engine.spec.prepare import dsn_hosts

    assert dsn_hosts("postgresql://u:p@db.example.com:5432/x") == ["db.example.com"]
    assert dsn_hosts("host=127.0.0.2 port=5432 dbname=x") == ["127.0.0.2"]
    assert dsn_hosts("host='a,b' dbname=x") == ["a", "b"]
    source = {"url": "https://api.example.com/items"}
    for dsn in ("postgresql://u:p@127.0.0.2:5432/db", "host=169.254.169.254 dbname=x", "postgresql://[::1]/db"):
        spec = {"sources": [source], "deliver": [{"type": "postgres", "dsn": dsn, "table": "t"}]}
        assert refused_at_validation(spec, SERVICE_DEFAULT) == ["deliver.0.dsn"], dsn
    escape = {"sources": [source], "deliver": [{"type": "duckdb", "path": "../../etc/x.duckdb", "table": "t"}]}
    with pytest.raises(SpecError) as info:
        prepare(parse_spec(escape), {}, SERVICE_DEFAULT, duckdb_dir=tmp_path / "duckdb")
    assert fields(info.value) == ["deliver.0.path"]
    kept = {"sources": [source], "deliver": [{"type": "duckdb", "path": "warehouse.duckdb", "table": "t"}]}
    prepared = prepare(parse_spec(kept), {}, SERVICE_DEFAULT, duckdb_dir=tmp_path / "duckdb")
    assert prepared.resolved.deliver[0].path == str(tmp_path / "duckdb" / "warehouse.duckdb")
    assert prepared.spec.deliver[0].path == "warehouse.duckdb"  # what is stored and shown
