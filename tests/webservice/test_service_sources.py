"""Issue 4, service side: an `ids.file` CSV uploaded beside the spec (multipart), and secrets
that never leak through anything the service shows or stores."""

from __future__ import annotations

import csv
import io
import json

import pytest

from engine.plan.fanout import ID_COLUMN
from tests.integration.test_sources import CANARY, all_bytes_under, leak_spec, secret_forms
from tests.support.readback import rows_of


def url_list(urls: list[str], column: str = "url") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["n", column])
    writer.writerows([i, u] for i, u in enumerate(urls))
    return out.getvalue().encode()


def url_spec(column: str = "url") -> dict:
    return {
        "name": "urls",
        "sources": [{"url": "{id}", "ids": {"file": "urls.csv", "column": column}}],
        "concurrency": 8,
        "export": {"format": "csv"},
    }


def start_multipart(service, spec: dict, files: dict):
    return service.call("POST", "/api/export/start", data={"spec": json.dumps(spec)}, files=files)


def test_multipart_upload_of_500_urls_fetches_each_once(api, service_factory):
    service = service_factory()
    urls = [api.url(f"/items/by-id/{owner}") for owner in range(1, 501)]
    api.reset()
    response = start_multipart(service, url_spec(), {"urls.csv": ("urls.csv", url_list(urls), "text/csv")})
    assert response.status_code == 202, response.text
    status = service.wait(response.json()["task_id"], timeout=120)
    assert status["status"] == "completed", status
    fetched = [e["path"] for e in api.log() if e["path"].startswith("/items/by-id/")]
    assert sorted(fetched) == sorted(f"/items/by-id/{owner}" for owner in range(1, 501))  # each once
    rows = rows_of(service.download(status["task_id"]).content, "csv")
    assert len(rows) == status["result"]["rows"] == 1500
    # rows keep the file's order, each tagged with the URL it came from
    assert [r[ID_COLUMN] for r in rows[::3]] == urls
    assert [int(r["owner"]) for r in rows] == [owner for owner in range(1, 501) for _ in range(3)]


@pytest.mark.parametrize(
    "content, field, field_message",
    [
        (b"", "sources.0.ids.file", "empty"),
        (b"n,link\n1,http://x/\n", "sources.0.ids.column", "column"),  # the column to change, not the file
        ("url\nhttp://127.0.0.1/caf\u00e9\n".encode("latin-1"), "sources.0.ids.file", "UTF-8"),
    ],
)
def test_bad_uploads_are_4xx_naming_the_problem(api, service_factory, content, field, field_message):
    service = service_factory()
    response = start_multipart(service, url_spec(), {"urls.csv": ("urls.csv", content, "text/csv")})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["details"][0]["field"] == field
    assert (
        field_message.lower() in body["details"][0]["message"].lower()
        or field_message.lower() in body["message"].lower()
    ), body


def test_missing_upload_and_missing_spec_field(api, service_factory):
    service = service_factory()
    # a multipart body with the spec as its only part
    missing = service.call("POST", "/api/export/start", files={"spec": (None, json.dumps(url_spec()))})
    assert missing.status_code == 400
    assert missing.json()["details"][0]["field"] == "sources.0.ids.file"
    no_spec = service.call("POST", "/api/export/start", files={"urls.csv": ("urls.csv", b"url\nx\n")})
    assert no_spec.status_code == 400 and no_spec.json()["details"][0]["field"] == "spec"


def test_upload_over_max_file_size_is_413(api, service_factory):
    service = service_factory({"MAX_FILE_SIZE": "1"})
    big = url_list([api.url("/items/by-id/1")] * 40_000)  # ~1.4 MiB
    assert len(big) > 1024 * 1024
    response = start_multipart(service, url_spec(), {"urls.csv": ("urls.csv", big, "text/csv")})
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "payload_too_large"


def test_secrets_never_leak_through_the_service(api, service_factory, tmp_path):
    service = service_factory(
        {"PF_CANARY": CANARY, "SECRET_NAMES": "PF_CANARY", "LOG_LEVEL": "DEBUG"}, data_dir=tmp_path / "data"
    )
    forms = secret_forms(CANARY, "someone")

    ok = service.start_task(leak_spec(api, False))
    bad = service.start_task(leak_spec(api, True))
    skip = service.start_task({**leak_spec(api, True), "on_error": "skip"})
    finals = {t: service.wait(t, timeout=90) for t in (ok, bad, skip)}
    assert finals[ok]["status"] == "completed" and finals[ok]["result"]["rows"] == 120, finals[ok]
    assert finals[bad]["status"] == "failed" and finals[bad]["error"]["pages"], finals[bad]
    assert "HTTP 401" in finals[bad]["error"]["message"]
    assert finals[skip]["status"] == "completed" and finals[skip]["partial"] is True

    shown = {
        "statuses": json.dumps(finals),
        "listing": service.call("GET", "/api/export/tasks").text,
        "metrics": service.call("GET", "/metrics").text,
        "log": service.log_path.read_text(errors="replace"),
        "ok download": service.download(ok).content,
        "skip download": service.download(skip).content,
    }
    # the checks mean something: the manifest and the errors are there, with masks in place
    manifest = json.loads(_zip_member(shown["skip download"], "manifest.json"))
    assert manifest["spec"]["sources"][0]["auth"] == {"type": "bearer", "token": "***"}
    assert len(manifest["skipped_pages"]) == 4
    assert any("key=***" in p["url"] for p in manifest["skipped_pages"])
    assert "DEBUG" in shown["log"] or '"debug"' in shown["log"].lower()

    texts = {name: (v if isinstance(v, bytes) else v.encode()) for name, v in shown.items()}
    texts.update(all_bytes_under(tmp_path))  # the task store, results, work files, uploads
    assert any(name.endswith("pageferry.db") for name in texts)
    leaks = [(name, form) for name, data in texts.items() for form in forms if form.encode() in data]
    assert not leaks
    # stored specs keep the reference, not the value
    store = next(data for name, data in texts.items() if name.endswith("pageferry.db"))
    assert b"${PF_CANARY}" in store or b"${PF_CANARY}" in texts.get(str(tmp_path / "data" / "pageferry.db-wal"), b"")


def _zip_member(content: bytes, name: str) -> bytes:
    import zipfile

    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return archive.read(name)
