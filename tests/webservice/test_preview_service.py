"""POST /api/export/preview on the real service (gunicorn): page 1 of each source as
`python -m engine preview` prints it, checked as /start checks a spec (API_TOKEN, the field
named on a bad spec, the outbound policy), no task created and nothing stored."""

from __future__ import annotations

import json

import pytest

from tests.testapi.records import owner_ids, record

TOKEN = "preview-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def service(module_service_factory):
    """API_TOKEN set; ALLOWED_SOURCE_HOSTS lists loopback (the test API) - ServiceProcess's default."""
    return module_service_factory({"API_TOKEN": TOKEN}, headers=AUTH)


def no_tasks(service) -> bool:
    response = service.call("GET", "/api/export/tasks")
    assert response.status_code == 200
    return response.json()["tasks"] == [] and not any(service.data_dir.glob("results/*"))


def test_preview_of_one_source_object(api, service):
    response = service.call("POST", "/api/export/preview", json={"url": api.url("/items/page", n=30)})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    (got,) = response.json()["sources"]
    assert got["name"] == "export" and got["status"] == "ok" and got["http_status"] == 200
    assert got["records_path"] == "data" and len(got["records"]) == 20
    first = record(1)
    assert got["records"][0]["id"] == 1 and got["records"][0]["meta.created"] == first["meta"]["created"]
    assert {"name": "meta.score", "type": "int"} in got["columns"]
    assert got["pagination_hint"]["type"] == "page"
    assert got["pagination_hint"]["suggested"]["total_pages"] == "meta.total_pages"
    assert len(api.log(path="/items/page")) == 1
    assert no_tasks(service)


def test_preview_of_a_job_spec_with_a_failing_source_is_a_200(api, service):
    spec = {
        "name": "two",
        "sources": [
            {"name": "good", "url": api.url("/items/cursor", n=15, size=5)},
            {"name": "bad", "url": api.url("/items/page", fail_all=1, fault=503)},
        ],
        "export": {"format": "zip"},
    }
    response = service.call("POST", "/api/export/preview", json=spec)
    assert response.status_code == 200, response.text
    good, bad = response.json()["sources"]
    assert good["status"] == "ok" and [r["id"] for r in good["records"]] == [1, 2, 3, 4, 5]
    assert good["pagination_hint"]["suggested"] == {"type": "cursor", "param": "cursor", "next": "next_cursor"}
    assert bad["status"] == "failed" and bad["http_status"] == 503 and "HTTP 503" in bad["error"]
    assert len(api.log(path="/items/page")) == 1  # one request, no retries
    assert no_tasks(service)


def test_multipart_ids_file_previews_its_first_id(api, service):
    spec = {"name": "owners", "sources": [{"url": api.url("/items/by-id") + "/{id}", "ids": {"file": "ids.csv"}}]}
    files = {"ids.csv": ("ids.csv", b"owner\n42\n43\n")}
    response = service.call("POST", "/api/export/preview", data={"spec": json.dumps(spec)}, files=files)
    assert response.status_code == 200, response.text
    (got,) = response.json()["sources"]
    assert got["status"] == "ok" and [r["id"] for r in got["records"]] == owner_ids(42)
    assert {r["_fanout_id"] for r in got["records"]} == {"42"}  # ids from a file are text
    assert [e["path"] for e in api.log()] == ["/items/by-id/42"]
    assert no_tasks(service) and not any(service.data_dir.glob("tmp/work/*"))  # no upload kept


def test_bad_spec_is_a_400_naming_the_field(api, service):
    source = {"url": api.url("/items/page"), "pagination": {"type": "page", "size": 0}}
    response = service.call("POST", "/api/export/preview", json=source)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "validation_error" and body["details"][0]["field"] == "pagination.size"
    assert body["message"].startswith("pagination.size: ")
    response = service.call("POST", "/api/export/preview", json={"name": "x", "sources": [source]})
    assert response.status_code == 400 and response.json()["details"][0]["field"] == "sources.0.pagination.size"
    response = service.call("POST", "/api/export/preview", json={"url": api.url("/x"), "colour": "red"})
    assert response.status_code == 400 and response.json()["details"][0]["field"] == "colour"
    response = service.call("POST", "/api/export/preview", data=b"[1", headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"] == "invalid_json"
    # a secret the service may not resolve (SECRET_NAMES) is refused, as /start refuses it
    with_secret = {"url": api.url("/items/page"), "headers": {"X-Key": "${API_TOKEN}"}}
    response = service.call("POST", "/api/export/preview", json=with_secret)
    assert response.status_code == 400 and response.json()["details"][0]["field"] == "headers.X-Key"
    assert api.log() == [] and no_tasks(service)


def test_api_token_required(api, service):
    spec = {"url": api.url("/items/page", n=3)}
    assert service.call("POST", "/api/export/preview", json=spec, headers={"Authorization": ""}).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert service.call("POST", "/api/export/preview", json=spec, headers=wrong).status_code == 401
    assert api.log() == []
    assert service.call("POST", "/api/export/preview", json=spec).status_code == 200


def test_refused_host_is_a_4xx_and_nothing_is_fetched(api, service_factory):
    public_only = service_factory({"ALLOWED_SOURCE_HOSTS": ""})  # the service's default: public addresses only
    response = public_only.call("POST", "/api/export/preview", json={"url": api.url("/items/page", n=3)})
    assert response.status_code == 400
    detail = response.json()["details"][0]
    assert detail["field"] == "url" and "loopback" in detail["message"]
    assert api.log() == []


def test_redirect_to_a_refused_address_fails_that_source(api, service):
    hop = api.url("/redirect") + "?to=http://192.0.2.1/items"  # not in ALLOWED_SOURCE_HOSTS
    response = service.call("POST", "/api/export/preview", json={"url": hop})
    assert response.status_code == 200
    (got,) = response.json()["sources"]
    assert got["status"] == "failed" and "'192.0.2.1' is not allowed" in got["error"]
    assert [e["path"] for e in api.log()] == ["/redirect"]
