"""Security review findings F2 (the service's environment readable through `${NAME}`), F8 (a
run-time OAuth2 access token shown in errors) and F9 (CSV formula escaping missed header
cells, TAB and CR), each reproduced on loopback and its refusal asserted."""

from __future__ import annotations

import csv
import io

import pytest

from config import load_settings
from engine.errors import JobFailed, SpecError
from engine.fetch.outbound import OutboundPolicy
from engine.spec.models import parse_spec
from engine.spec.prepare import prepare
from engine.spec.redact import SecretNames, service_secret_names
from tests.support.internal_host import run_with_policy
from tests.support.scripted_server import Reply, ScriptedServer

SERVICE_SECRET = "dummyServiceSecretKeyABC"
LISTED_SECRET = "listed-secret-value-4711"


@pytest.fixture
def api():
    srv = ScriptedServer()
    yield srv
    srv.close()


# ------------------------------------------------------------------ F2


def test_f2_service_resolves_only_listed_secret_names(service_factory, engine, tmp_path, api):
    """`${AWS_SECRET_ACCESS_KEY}` in a header to an echoing source, or in a webhook URL, handed
    the service's own secret to any client. Now only SECRET_NAMES resolve (default
    PAGEFERRY_SECRET_*), the service's own settings never; the error names the field."""
    service = service_factory(
        {"AWS_SECRET_ACCESS_KEY": SERVICE_SECRET, "PAGEFERRY_SECRET_X": LISTED_SECRET, "API_TOKEN": ""}
    )
    source = {"url": "http://127.0.0.1:9/echo"}
    attacks = [
        ({"sources": [{**source, "headers": {"X": "${AWS_SECRET_ACCESS_KEY}"}}]}, "sources.0.headers.X"),
        (
            {"sources": [source], "webhook": {"url": "http://127.0.0.1:9/hook?k=${AWS_SECRET_ACCESS_KEY}"}},
            "webhook.url",
        ),
        ({"sources": [{**source, "params": {"k": "${DATA_DIR}"}}]}, "sources.0.params.k"),
    ]
    for spec, field in attacks:
        response = service.call("POST", "/api/export/validate", json=spec)
        assert response.status_code == 400, response.text
        details = response.json()["details"]
        assert [d["field"] for d in details] == [field]
        assert "is not an allowed secret name (SECRET_NAMES)" in details[0]["message"]
        assert SERVICE_SECRET not in response.text
    ok = service.call(
        "POST", "/api/export/validate", json={"sources": [{**source, "headers": {"X": "${PAGEFERRY_SECRET_X}"}}]}
    )
    assert ok.status_code == 200, ok.text

    # The service's own settings stay refused even when SECRET_NAMES would match them.
    everything = service_secret_names(load_settings({"SECRET_NAMES": "*"}))
    assert not any(everything.permits(n) for n in ("API_TOKEN", "DATABASE_URL", "AWS_ACCESS_KEY_ID", "DATA_DIR"))
    assert everything.permits("VENDOR_TOKEN")
    # ... and a listed name is sent where the spec says (the engine, in pool processes).
    api.add("GET", "/echo", Reply.json([{"ok": 1}]))
    rules = service_secret_names(load_settings({}))
    spec = {"sources": [{"url": api.url("/echo"), "headers": {"X": "${PAGEFERRY_SECRET_X}"}}]}
    env = {"PAGEFERRY_SECRET_X": LISTED_SECRET, "AWS_SECRET_ACCESS_KEY": SERVICE_SECRET}
    assert run_with_policy(engine, tmp_path, spec, OutboundPolicy(("127.0.0.1",)), env, rules).rows == 1
    assert [r.headers.get("X") for r in api.requests()] == [LISTED_SECRET]
    # the CLI (no rule) resolves any name of its own environment
    prepare(parse_spec({"sources": [{"url": "http://h.example/${AWS_SECRET_ACCESS_KEY}"}]}), env)
    with pytest.raises(SpecError):
        prepare(parse_spec({"sources": [{"url": "http://h.example/${HOME}"}]}), env, secret_names=SecretNames())


# ------------------------------------------------------------------ F8

ACCESS_TOKEN = "ACCESS-TOKEN-FROM-OAUTH-xyz987"


def test_f8_an_echoed_oauth2_access_token_is_masked(run_job, api):
    """The token obtained at run time was not in the job's redactor: an API echoing it put
    `auth=Bearer ACCESS-TOKEN-…` into the status error, /tasks, the store and the webhook."""
    api.add("POST", "/token", Reply.json({"access_token": ACCESS_TOKEN, "expires_in": 3600}))
    api.add("GET", "/data", Reply.json({"error": f"denied: auth=Bearer {ACCESS_TOKEN}"}, status=400))
    auth = {"type": "oauth2", "token_url": api.url("/token"), "client_id": "cid", "client_secret": "client-secret-1"}
    with pytest.raises(JobFailed) as info:
        run_job({"sources": [{"url": api.url("/data"), "auth": auth}]})
    shown = str(info.value.as_dict())
    assert ACCESS_TOKEN not in shown and "auth=Bearer ***" in shown
    assert [r.headers.get("Authorization") for r in api.requests("/data")][0] == f"Bearer {ACCESS_TOKEN}"


# ------------------------------------------------------------------ F9


def test_f9_escape_formulas_covers_header_cells_tab_and_cr(run_job, api):
    """`escape_formulas: true` escaped `= + - @` values only: header cells (API keys such as
    `=1+2`) and values starting with TAB or CR went out raw."""
    api.add(
        "GET",
        "/evil",
        Reply.json([{"=1+2": "\tTAB", "plain": "\rCR", "@h": "=SUM(A1)", "+k": "-1", "ok": "fine"}]),
    )
    spec = {
        "sources": [{"url": api.url("/evil")}],
        "export": {"format": "csv", "csv": {"escape_formulas": True}},
    }
    result = run_job(spec)
    rows = list(csv.reader(io.StringIO(result.output.read_bytes().decode(), newline="")))
    assert rows[0] == ["'=1+2", "plain", "'@h", "'+k", "ok"]
    assert rows[1] == ["'\tTAB", "'\rCR", "'=SUM(A1)", "'-1", "fine"]
