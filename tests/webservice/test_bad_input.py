"""Contract §3: never a 500 for anything a client sent. Pathological JSON (nested 5,000 /
100,000 deep, a `body` nested 800 deep, 1e999, 10^400, NaN/Infinity, invalid UTF-8, duplicate
keys, a non-object top level) to every JSON route of the real gunicorn answers 400 JSON
{"error", "message", "details": [{"field", "message"}]}; odd names (a trailing newline) are
404/400."""

from __future__ import annotations

import json
import re

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config import load_settings
from service import create_app

SPEC = {"name": "bad-input", "sources": [{"url": "http://127.0.0.1:9/items"}]}
SOME_TASK = "task_0123456789ab"
ENV = {"ALLOWED_SOURCE_HOSTS": "127.0.0.1"}  # the specs' loopback sources


def nested_objects(depth: int, leaf: str = "1") -> str:
    return '{"a":' * depth + leaf + "}" * depth


def with_body(raw_body: str) -> str:
    """SPEC with sources[0].body = raw_body (raw JSON text)."""
    source = '{"url": "http://127.0.0.1:9/items", "method": "POST", "body": ' + raw_body + "}"
    return '{"name": "bad-input", "sources": [' + source + "]}"


# name -> raw request body (bytes)
CASES: dict[str, bytes] = {
    "arrays-5000-deep": ("[" * 5000 + "]" * 5000).encode(),
    "arrays-100000-deep": ("[" * 100_000 + "]" * 100_000).encode(),
    "objects-5000-deep": nested_objects(5000).encode(),
    "unclosed-100000-deep": ("[" * 100_000).encode(),
    "body-800-deep": with_body(nested_objects(800)).encode(),
    "body-200-deep": with_body(nested_objects(200)).encode(),
    "float-1e999": with_body("1e999").encode(),
    "rate-limit-1e999": json.dumps(SPEC)[:-1].encode() + b', "rate_limit": 1e999}',
    "int-10^400": with_body("1" + "0" * 400).encode(),
    "int-10^5000": with_body("1" + "0" * 5000).encode(),
    "max-pages-10^400": json.dumps(SPEC).replace('"}]', '", "max_pages": 1' + "0" * 400 + "}]").encode(),
    "nan": with_body("NaN").encode(),
    "infinity": with_body("[-Infinity]").encode(),
    "invalid-utf8": b'{"name": "\xff\xfe", "sources": []}',
    "lone-surrogate": b'{"name": "\\ud800", "sources": [{"url": "http://127.0.0.1:9/\\udfff"}]}',
    "duplicate-keys": b'{"name": "a", "name": "b", "sources": []}',
    "duplicate-keys-deep": with_body('{"x": 1, "x": 2}').encode(),
    "top-level-list": json.dumps([SPEC]).encode(),
    "top-level-string": b'"x"',
    "top-level-number": b"1e999",
    "top-level-null": b"null",
    "truncated": json.dumps(SPEC)[:-3].encode(),
    "bom": b"\xef\xbb\xbf" + json.dumps(SPEC).encode(),
    "name-trailing-newline": json.dumps({**SPEC, "name": "rep\n"}).encode(),
    "filename-trailing-newline": json.dumps({**SPEC, "export": {"filename": "rep\n"}}).encode(),
}


@pytest.fixture(scope="module")
def service(module_service_factory):
    return module_service_factory(ENV)


def json_routes() -> list[str]:
    """Every route taking a request body (POST/PUT/PATCH), from the app's URL map - a new one
    is covered without editing this test; path arguments get a well-formed id."""
    app = create_app(load_settings({"DATA_DIR": "/tmp/pageferry-url-map"}), run_tasks=False)
    paths = set()
    for rule in app.url_map.iter_rules():
        if rule.methods and rule.methods & {"POST", "PUT", "PATCH"}:
            paths.add(re.sub(r"<[^>]+>", SOME_TASK, rule.rule))
    return sorted(paths)


ROUTES = json_routes()


def test_every_known_json_route_is_enumerated():
    for path in ("validate", "start", "inputs", "bulk-inputs", "configure", "schedules"):
        assert f"/api/export/{path}" in ROUTES, ROUTES


def assert_client_error(response, what: str) -> dict:
    assert 400 <= response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    body = response.json()
    assert set(body) >= {"error", "message", "details"}, body
    assert isinstance(body["details"], list)
    for detail in body["details"]:
        assert set(detail) >= {"field", "message"}, detail
    return body


@pytest.mark.parametrize("case", sorted(CASES))
def test_pathological_json_is_a_4xx_on_every_json_route(service, case):
    for path in ROUTES:
        # a connection each (test_keepalive.py is about reusing one after an unread body)
        response = requests.post(
            service.url(path), data=CASES[case], headers={"Content-Type": "application/json"}, timeout=30
        )
        body = assert_client_error(response, f"{case} -> {path}")
        if path in ("/api/export/validate", "/api/export/start", "/api/export/configure", "/api/export/inputs"):
            assert response.status_code == 400, (case, path, body)
    assert service.call("GET", "/healthz").status_code == 200


def test_deep_json_names_the_field_and_the_limit(service):
    response = service.call(
        "POST",
        "/api/export/validate",
        data=with_body(nested_objects(800)),
        headers={"Content-Type": "application/json"},
    )
    body = assert_client_error(response, "body 800 deep")
    assert body["error"] == "too_deep"
    assert body["details"][0]["field"].startswith("sources.0.body.a.a"), body
    assert "64" in body["details"][0]["message"]
    response = service.call(
        "POST", "/api/export/schedules", json={"cron": "0 1 * * *", "spec": json.loads(with_body('{"a": 1}'))}
    )
    assert response.status_code == 201, response.text  # a normal spec still passes
    assert service.call("DELETE", f"/api/export/schedules/{response.json()['schedule_id']}").status_code == 200


def test_numbers_out_of_range_name_their_field(service):
    response = service.call(
        "POST", "/api/export/configure", data=b'{"rate_limit": 1e999}', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["details"][0]["field"] == "rate_limit"
    response = service.call(
        "POST",
        "/api/export/inputs",
        data=b'{"name": "a", "column": 1' + b"0" * 400 + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["details"][0]["field"] == "column"
    assert service.call("GET", "/api/export/inputs-list").json()["inputs"] == []  # nothing stored


def test_multipart_spec_field_is_read_the_same_way(service):
    for raw in (("[" * 5000).encode(), with_body("NaN").encode(), b'{"name": "\xff"}'):
        response = service.call("POST", "/api/export/start", files={"spec": (None, raw)})
        assert_client_error(response, "multipart spec")


@pytest.mark.parametrize(
    "method, path, headers",
    [
        ("GET", f"/api/export/status/{SOME_TASK}%0A", {}),
        ("GET", f"/api/export/detail/{SOME_TASK}%0A", {}),
        ("GET", f"/api/export/download/{SOME_TASK}%0A", {}),
        ("DELETE", f"/api/export/cancel/{SOME_TASK}%0A", {}),
        ("GET", "/api/export/schedules/sch_0123456789ab%0A", {}),
        ("DELETE", "/api/export/schedules/sch_0123456789ab%0A", {}),
        ("GET", "/api/export/inputs-list", {"X-Profile": "default%0A"}),
        ("GET", f"/api/export/status/{'x' * 2000}", {}),
        ("GET", "/api/export/tasks?limit=1%0A", {}),
        ("GET", "/api/export/tasks?limit=" + "9" * 2000, {}),
        ("GET", "/api/export/tasks?status=queued%0A", {}),
    ],
)
def test_odd_names_are_404_or_400(service, method, path, headers):
    response = service.call(method, path, headers=headers)
    assert_client_error(response, path)


def test_trailing_newline_in_names_is_refused_and_nothing_is_created(service):
    before = service.call("GET", "/api/export/tasks").json()["tasks"]
    for spec in ({**SPEC, "name": "rep\n"}, {**SPEC, "export": {"filename": "rep\n"}}):
        response = service.call("POST", "/api/export/start", json=spec)
        assert response.status_code == 400, response.text
    assert service.call("GET", "/api/export/tasks").json()["tasks"] == before
    response = service.call("POST", "/api/export/configure", json={"name": "rep\n"})
    assert response.status_code == 400, response.text


# ------------------------------------------------------------------ property: in process, fast

json_leaf = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
)
documents = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
raw_bodies = (
    documents.map(lambda d: json.dumps(d).encode())
    | st.binary(max_size=64)
    | st.integers(1, 3000).map(lambda n: ("[" * n + "]" * n).encode())
    | st.integers(1, 3000).map(lambda n: nested_objects(n).encode())
    | st.integers(1, 3000).map(lambda n: with_body(nested_objects(n)).encode())
)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = create_app(load_settings({"DATA_DIR": str(tmp_path_factory.mktemp("inproc")), **ENV}), run_tasks=False)
    return app.test_client()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=raw_bodies, route=st.sampled_from(["validate", "inputs", "bulk-inputs", "configure", "schedules"]))
def test_any_body_to_a_json_route_is_never_a_5xx(client, body, route):
    response = client.post(f"/api/export/{route}", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code < 500, (body[:200], response.get_data(as_text=True)[:300])
    assert response.is_json
