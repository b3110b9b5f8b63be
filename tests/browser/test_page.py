"""The progress page (GET /) in a real browser: headless Chromium driven by selenium, against
real gunicorn (2 workers) and the local test API (fixtures: tests/browser/conftest.py). The
running-task view, the JSON editor, cancel, failures, colours, the polling fallback, the API
token and narrow screens. Screenshots go to tests/artifacts/page/ (git-ignored) for a person
to look at."""

from __future__ import annotations

import json
import re
import time

import requests

from tests.browser.pagekit import (
    TOKEN,
    contrast,
    css,
    css_all,
    detail_state,
    downloaded,
    focus_ring,
    hash_task_id,
    page_spec,
    press,
    requested_urls,
    rgb,
    set_spec_text,
    shot,
    tab_to,
    task_row,
    wait_for,
    watch_detail_until_final,
)
from tests.support.readback import rows_of

STATIC = (
    "/static/app.js",
    "/static/core.js",
    "/static/live.js",
    "/static/actions.js",
    "/static/tasks.js",
    "/static/detail.js",
    "/static/form.js",
    "/static/schedules.js",
    "/static/app.css",
)
# addresses that appear in the page's code without being loaded: placeholders, the local
# example API, the SVG namespace
NOT_LOADED = r"https?://(?!api\.example\.com|hooks\.example\.com|127\.0\.0\.1[:/]|www\.w3\.org/2000/svg)"


# ------------------------------------------------------------------ the API the page relies on


def test_the_page_is_served_offline_ready_and_locked_down(service):
    r = requests.get(service.url("/"), timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    html = r.text
    assert "/static/app.js" in html and "/static/app.css" in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "the page must not load anything from elsewhere"
    for asset in STATIC:
        a = requests.get(service.url(asset), timeout=10)
        assert a.status_code == 200 and len(a.content) > 1000, asset
        assert not re.search(NOT_LOADED, a.text), f"{asset} reaches outside"
        if asset.endswith(".js"):
            assert "javascript" in a.headers["Content-Type"], asset  # modules need a script type
            assert not re.search(r"\.(innerHTML|outerHTML)\b|insertAdjacentHTML|document\.write|\beval\(", a.text)
    imported = set(
        re.findall(r"from '\./([a-z]+\.js)'", "".join(requests.get(service.url(a), timeout=10).text for a in STATIC))
    )
    assert {f"/static/{name}" for name in imported} <= set(STATIC), "every module is checked above"


def test_validate_endpoint_answers_like_start_without_starting(api, service):
    before = len(service.call("GET", "/api/export/tasks").json()["tasks"])
    ok = service.call("POST", "/api/export/validate", json=page_spec(api, n=10))
    assert ok.status_code == 200 and ok.json() == {"valid": True}
    bad = {"sources": [{"url": "http://x", "pagination": {"type": "page", "size": 0}}]}
    r = service.call("POST", "/api/export/validate", json=bad)
    s = service.call("POST", "/api/export/start", json=bad)
    assert r.status_code == s.status_code == 400 and r.json() == s.json()
    assert r.json()["details"][0]["field"] == "sources.0.pagination.size"
    r = service.call("POST", "/api/export/validate", data="{}", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = service.call(
        "POST",
        "/api/export/validate",
        json={"sources": [{"url": "http://x", "auth": {"type": "bearer", "token": "${API_TOKEN}"}}]},
    )
    # the service's own secret is refused, naming the field that references it (SECRET_NAMES)
    assert r.status_code == 400 and r.json()["details"][0]["field"] == "sources.0.auth.token"
    r = service.call("POST", "/api/export/validate", files={"spec": (None, json.dumps(page_spec(api, n=10)))})
    assert r.status_code == 200, r.text
    assert len(service.call("GET", "/api/export/tasks").json()["tasks"]) == before


def test_detail_endpoint_gives_the_redacted_spec_and_the_manifest_summary(api, service):
    spec = page_spec(api, name="detail", n=120, size=40, fmt="zip")
    spec["sources"][0]["url"] = api.url("/auth/bearer")
    spec["sources"][0]["auth"] = {"type": "bearer", "token": "t0k3n-secret-XYZ"}  # written into the spec
    spec["sources"][0]["params"]["echo"] = "t0k3n-secret-XYZ"  # and repeated elsewhere
    task_id = service.start_task(spec)
    final = service.wait(task_id)
    assert final["status"] == "completed", final
    r = service.call("GET", f"/api/export/detail/{task_id}")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"task_id", "spec", "effective_spec", "manifest"} and body["task_id"] == task_id
    for key in ("spec", "effective_spec"):
        assert body[key]["sources"][0]["auth"] == {"type": "bearer", "token": "***"}
        assert body[key]["sources"][0]["params"]["echo"] == "***"
    # as submitted: only what the client wrote; effective: every default filled in
    assert "retry" not in body["spec"] and "method" not in body["spec"]["sources"][0]
    assert body["effective_spec"]["retry"]["attempts"] == 5 and body["effective_spec"]["sources"][0]["method"] == "GET"
    assert "t0k3n-secret-XYZ" not in r.text
    manifest = body["manifest"]
    assert manifest["job_id"] == task_id and manifest["partial"] is False
    assert manifest["sources"][0]["pages"] == 3 and manifest["sources"][0]["records"] == 120
    assert [f["name"] for f in manifest["files"]] == ["detail.csv"] and manifest["files"][0]["rows"] == 120
    assert service.call("GET", "/api/export/detail/task_0123456789ab").status_code == 404
    assert service.call("GET", "/api/export/detail/nope").status_code == 404


# ------------------------------------------------------------------ the page in a browser


def test_start_a_task_from_the_form_by_keyboard_watch_it_complete_and_download(api, service, page):
    from selenium.webdriver.common.keys import Keys

    page.get(service.url("/"))
    wait_for(lambda: css(page, "#view-tasks").is_displayed(), message="the task list")
    shot(page, "01-list-initial")

    # keyboard only: Tab to "New task" in the main navigation, Enter
    link = tab_to(page, lambda el: el.get_attribute("id") == "nav-new", what="the New task link")
    assert focus_ring(page, link) >= 2, "keyboard focus must be visible"
    press(page, Keys.ENTER)
    wait_for(lambda: css(page, "#view-new").is_displayed(), message="the form")
    assert page.switch_to.active_element.get_attribute("id") == "new-heading"

    spec = page_spec(api, name="keyboard-run", n=600, size=20, delay_ms=150)
    advanced = tab_to(page, lambda el: el.get_attribute("id") == "mode-json", what="the JSON (advanced) switch")
    assert focus_ring(page, advanced) >= 2
    press(page, Keys.ENTER)
    assert advanced.get_attribute("aria-pressed") == "true"
    field = tab_to(page, lambda el: el.get_attribute("id") == "spec-input", what="the spec field")
    assert focus_ring(page, field) >= 2
    set_spec_text(page, json.dumps(spec, indent=2)[:-1])  # pasted; the user types the last character
    press(page, "}")
    assert json.loads(css(page, "#spec-input").get_attribute("value")) == spec
    start = tab_to(page, lambda el: el.get_attribute("id") == "start-button", what="the Start button")
    assert focus_ring(page, start) >= 2
    press(page, Keys.ENTER)

    task_id = hash_task_id(page)
    samples = watch_detail_until_final(page, shot_name="02-detail-running")
    final = samples[-1]
    assert final["status"] == "completed" and final["now"] == "100" and final["badge"] == "Completed", final
    seen = [float(s["now"]) for s in samples if s["now"] not in (None, "")]
    assert any(0 < v < 100 for v in seen), f"no progress in between: {seen}"
    assert seen == sorted(seen), "the bar never goes backwards"
    assert "socket" in {s["live"] for s in samples}, "live updates come over the websocket"
    assert "poll" not in {s["live"] for s in samples}, "no polling while the websocket works"
    wait_for(lambda: "keyboard-run" in css(page, ".detail-spec").text, message="the spec")
    wait_for(lambda: css_all(page, ".detail-manifest table"), message="the manifest")
    assert css(page, "#announcer").text.startswith("keyboard-run: completed")
    shot(page, "02b-detail-completed")

    # the download link: file name and size, reached and followed by keyboard
    status = service.status(task_id)
    link = css(page, ".detail-actions a.download")
    assert "keyboard-run.csv" in link.text and "KiB" in link.text
    tab_to(
        page, lambda el: el.get_attribute("href") and "/download/" in el.get_attribute("href"), what="the download link"
    )
    press(page, Keys.ENTER)
    path = downloaded(page.downloads, "keyboard-run.csv")
    assert [int(r["id"]) for r in rows_of(path.read_bytes(), "csv")] == list(range(1, 601))
    assert path.stat().st_size == status["result"]["bytes"]

    # the list shows it too, newest first, with its link and figures
    page.get(service.url("/"))
    row = wait_for(lambda: task_row(page, task_id), message="the task in the list")
    assert row.get_attribute("data-status") == "completed"
    assert "600" in row.find_element("css selector", ".facts").text
    assert "keyboard-run.csv" in row.find_element("css selector", "a.download").text


def test_cancel_a_slow_task_from_the_list(api, service, page):
    task_id = service.start_task(page_spec(api, name="slow-one", n=4000, size=20, delay_ms=100))
    page.get(service.url("/"))
    row = wait_for(lambda: task_row(page, task_id), message="the new task in the list")
    assert css_all(page, "li.task")[0].get_attribute("data-task-id") == task_id  # newest first
    wait_for(
        lambda: (
            row.get_attribute("data-status") == "running"
            and float(row.find_element("css selector", "[role=progressbar]").get_attribute("aria-valuenow") or 0) > 0
        ),
        message="the row running with progress",
    )
    shot(page, "03-list-running")
    button = row.find_element("css selector", "button.cancel")
    assert "Cancel" in button.text and button.get_attribute("type") == "button"
    button.click()  # asks first: nothing is cancelled yet
    confirm = wait_for(lambda: row.find_elements("css selector", ".confirm"), message="the question")[0]
    assert "Cancel slow-one?" in confirm.text
    confirm.find_element("css selector", "button.confirm-no").click()
    assert not row.find_elements("css selector", ".confirm") and row.find_element("css selector", "button.cancel")
    time.sleep(0.5)
    assert service.status(task_id)["status"] == "running"
    row.find_element("css selector", "button.cancel").click()
    yes = wait_for(lambda: row.find_elements("css selector", "button.confirm-yes"), message="the question again")[0]
    assert page.switch_to.active_element == yes  # the keyboard lands on the answer
    started = time.monotonic()
    yes.click()
    wait_for(lambda: row.get_attribute("data-status") == "cancelled", timeout=10, message="the cancelled row")
    assert time.monotonic() - started < 5
    assert service.status(task_id)["status"] == "cancelled"
    assert not row.find_elements("css selector", "button.cancel")
    assert "Cancelled" in row.find_element("css selector", ".badge").text
    sent = len(api.log())
    time.sleep(1.0)
    assert len(api.log()) <= sent + 1  # nothing more is fetched
    shot(page, "04-list-cancelled")


def test_a_bad_spec_shows_the_error_next_to_its_field_path(api, service, page):
    before = len(service.call("GET", "/api/export/tasks").json()["tasks"])
    page.get(service.url("/#/new"))
    wait_for(lambda: css(page, "#view-new").is_displayed(), message="the form")

    bad = page_spec(api, name="bad-one")
    bad["sources"][0]["pagination"]["size"] = 0
    set_spec_text(page, json.dumps(bad, indent=2))
    css(page, "#validate-button").click()
    item = wait_for(
        lambda: css_all(page, '#spec-errors li[data-field="sources.0.pagination.size"]'), message="the field error"
    )[0]
    assert item.find_element("css selector", ".field-path").text == "sources.0.pagination.size"
    assert "greater than or equal to 1" in item.find_element("css selector", ".field-message").text
    assert css(page, "#spec-input").get_attribute("aria-invalid") == "true"
    assert "spec-errors" in css(page, "#spec-input").get_attribute("aria-describedby")
    item.find_element("css selector", "button.show-field").click()
    selected = page.execute_script(
        "const t = document.getElementById('spec-input');return t.value.slice(t.selectionStart, t.selectionEnd);"
    )
    assert selected == '"size"' and page.switch_to.active_element.get_attribute("id") == "spec-input"
    shot(page, "05-form-field-error")

    css(page, "#start-button").click()  # start refuses it the same way, nothing is started
    wait_for(lambda: "Not started" in css(page, "#form-status").text, message="the refusal")
    assert css_all(page, '#spec-errors li[data-field="sources.0.pagination.size"]')

    set_spec_text(page, '{"sources": [{"url": ')
    css(page, "#validate-button").click()
    item = wait_for(lambda: css_all(page, '#spec-errors li[data-field="spec"]'), message="the JSON error")[0]
    assert "not valid JSON" in item.text

    # user text in an error (here the field path of an unknown key) stays text: no markup is
    # ever built from API data
    hostile = page_spec(api, name="hostile")
    hostile["<img src=x onerror=window.__xss=1>"] = 1
    set_spec_text(page, json.dumps(hostile, indent=2))
    css(page, "#validate-button").click()
    item = wait_for(lambda: css_all(page, "#spec-errors li.field-error"), message="the unknown-field error")[0]
    assert item.find_element("css selector", ".field-path").text == "<img src=x onerror=window.__xss=1>"
    assert not css_all(page, "#spec-errors img") and page.execute_script("return window.__xss") is None

    set_spec_text(page, json.dumps(page_spec(api, name="good-one", n=10)))
    css(page, "#validate-button").click()
    wait_for(lambda: css(page, "#form-status").text == "The spec is valid.", message="valid")
    assert not css_all(page, "#spec-errors li")
    assert len(service.call("GET", "/api/export/tasks").json()["tasks"]) == before


def test_a_failed_task_shows_its_error_and_failed_pages(api, service, page):
    spec = page_spec(api, name="broken-source", n=100, size=20, fail_all=1, fault=503)
    spec["retry"] = {"attempts": 2, "backoff": 0.05}
    task_id = service.start_task(spec)
    assert service.wait(task_id)["status"] == "failed"
    page.get(service.url("/"))
    row = wait_for(lambda: task_row(page, task_id), message="the failed task")
    assert row.get_attribute("data-status") == "failed"
    box = row.find_element("css selector", ".error-box")
    assert "HTTP 503" in box.text and "/items/page" in box.find_element("css selector", ".failed-url").text
    assert not row.find_elements("css selector", "button.cancel, a.download")
    # the cause once, with its count, and what to do about it
    causes = [c.text for c in box.find_elements("css selector", ".cause-text")]
    assert len(causes) == 1 and causes[0].startswith("HTTP 503"), box.text
    assert box.text.count(causes[0]) == 1 and "1 page" in box.text and "Next step" in box.text
    assert {b.text for b in row.find_elements("css selector", ".task-actions button .label")} >= {
        "Re-run",
        "Edit & re-run",
        "Delete",
    }
    shot(page, "06-list-failed")
    row.find_element("css selector", ".task-name a").click()
    wait_for(lambda: detail_state(page)["status"] == "failed", message="the failed task view")
    assert "Failed page" in css(page, ".detail-errors").text
    wait_for(lambda: "broken-source" in css(page, ".detail-spec").text, message="the spec")
    shot(page, "07-detail-failed")


def test_status_colours_are_readable(service, page):
    """WCAG AA: badge text >= 4.5:1 on its background, bar fill >= 3:1 against the track."""
    page.get(service.url("/"))
    wait_for(lambda: css(page, "#view-tasks").is_displayed(), message="the page")
    measured = page.execute_script("""
        const out = {};
        for (const status of ['queued', 'running', 'completed', 'failed', 'cancelled']) {
          const row = document.createElement('li');
          row.className = 'task'; row.dataset.status = status;
          const badge = document.createElement('span'); badge.className = 'badge status-' + status;
          const bar = document.createElement('div'); bar.className = 'bar';
          const fill = document.createElement('div'); fill.className = 'bar-fill';
          bar.append(fill); row.append(badge, bar);
          document.getElementById('task-list').append(row);
          out[status] = [getComputedStyle(badge).color, getComputedStyle(badge).backgroundColor,
                         getComputedStyle(fill).backgroundColor, getComputedStyle(bar).backgroundColor];
          row.remove();
        }
        const body = getComputedStyle(document.body);
        const link = getComputedStyle(document.querySelector('.footer a'));
        out.body = [body.color, body.backgroundColor];
        out.muted = [getComputedStyle(document.querySelector('.footer')).color, body.backgroundColor];
        return out;""")
    for status in ("queued", "running", "completed", "failed", "cancelled"):
        fg, bg, fill, track = (rgb(v) for v in measured[status])
        assert contrast(fg, bg) >= 4.5, (status, measured[status])
        assert contrast(fill, track) >= 3.0 or status == "queued" and contrast(fill, track) >= 2.5, (
            status,
            measured[status],
        )
    assert contrast(*(rgb(v) for v in measured["body"])) >= 7
    assert contrast(*(rgb(v) for v in measured["muted"])) >= 4.5


def test_the_page_falls_back_to_polling_when_websockets_fail(api, service, page):
    broken = page.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {
            "source": """
        window.WebSocket = class { constructor(url) { window.__wsTried = (window.__wsTried || 0) + 1;
            setTimeout(() => this.onclose && this.onclose({code: 1006}), 20); }
          close() {} };"""
        },
    )
    try:
        task_id = service.start_task(page_spec(api, name="no-sockets", n=300, size=20, delay_ms=120))
        page.get(service.url(f"/#/task/{task_id}"))
        samples = watch_detail_until_final(page)
        assert samples[-1]["status"] == "completed" and samples[-1]["now"] == "100"
        assert "poll" in {s["live"] for s in samples}
        assert page.execute_script("return window.__wsTried") >= 1
    finally:
        page.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": broken["identifier"]})


def test_with_an_api_token_the_page_works_once_the_token_is_entered(api, token_service, page):
    from selenium.webdriver.common.action_chains import ActionChains

    svc = token_service
    requested_urls(page)  # from here on: no request URL may carry the token
    page.get(svc.url("/"))
    notice = wait_for(lambda: css(page, "#notice").is_displayed() and css(page, "#notice"), message="the token notice")
    assert "API token" in notice.text
    wait_for(lambda: "token" in css(page, "#list-state").text.lower(), message="the list waiting")
    shot(page, "08-token-needed")

    css(page, "#token-input").send_keys("wrong-token")
    css(page, "#token-save").click()
    wait_for(
        lambda: css(page, "#notice").is_displayed() and "not accepted" in css(page, "#notice").text,
        message="the refused token",
    )
    token_field = css(page, "#token-input")
    token_field.clear()
    token_field.send_keys(TOKEN)
    css(page, "#token-save").click()
    wait_for(lambda: not css(page, "#notice").is_displayed(), message="the notice gone")
    wait_for(lambda: css(page, "#tasks-empty").is_displayed(), message="the (empty) list")
    assert page.execute_script("return sessionStorage.getItem('pageferry.apiToken')") == TOKEN

    css(page, "#tasks-new").click()
    wait_for(lambda: css(page, "#view-new").is_displayed(), message="the form")
    set_spec_text(page, json.dumps(page_spec(api, name="with-token", n=400, size=20, delay_ms=80)))
    css(page, "#start-button").click()
    task_id = hash_task_id(page)
    samples = watch_detail_until_final(page)
    assert samples[-1]["status"] == "completed"
    assert "socket" in {s["live"] for s in samples}, "the websocket opens through /ws-link"
    wait_for(lambda: "with-token" in css(page, ".detail-spec").text, message="the spec (fetched with the token)")

    # the download link: hovered, its href becomes a URL signed for this task (so a Ctrl+click or
    # "open in a new tab" works), which needs no header; a click downloads through it
    link = css(page, ".detail-actions a.download")
    assert "sig=" not in link.get_attribute("href")
    ActionChains(page).move_to_element(link).perform()
    wait_for(lambda: "sig=" in link.get_attribute("href"), message="the signed download link")
    href = link.get_attribute("href")
    assert f"/api/export/download/{task_id}?" in href and TOKEN not in href
    assert requests.get(href, timeout=10).status_code == 200
    assert requests.get(href.split("?")[0], timeout=10).status_code == 401
    link.click()
    path = downloaded(page.downloads, "with-token.csv")
    assert len(rows_of(path.read_bytes(), "csv")) == 400
    shot(page, "09-token-detail")

    urls = requested_urls(page)
    # (the download itself is the browser's, not the page's: it is not in the page's network log)
    assert any(u.startswith("ws://") and "/ws/" in u and "sig=" in u for u in urls), urls
    leaked = [u for u in urls if TOKEN in u or "token=" in u]
    assert not leaked, f"the token went into a URL: {leaked}"

    page.refresh()  # sessionStorage keeps the token for the tab
    wait_for(lambda: detail_state(page)["status"] == "completed", message="the view after a reload")
    assert not css(page, "#notice").is_displayed()
    assert svc.status(task_id)["status"] == "completed"


def test_a_narrow_screen_renders_every_view_without_sideways_scrolling(api, service, page):
    unknown_total = page_spec(api, name="narrow-running", n=2000, size=20, delay_ms=150, hide_total=1)
    del unknown_total["sources"][0]["pagination"]["total_pages"]  # an indeterminate bar
    running = service.start_task(unknown_total)
    done = service.start_task(page_spec(api, name="narrow-done-with-a-rather-long-name", n=50))
    service.wait(done)
    page.set_window_size(390, 844)
    try:
        page.get(service.url("/"))
        wait_for(
            lambda: task_row(page, running) and task_row(page, running).get_attribute("data-status") == "running",
            message="the running row",
        )
        bar = task_row(page, running).find_element("css selector", "[role=progressbar]")
        wait_for(lambda: "indeterminate" in bar.get_attribute("class"), message="an indeterminate bar")
        assert bar.get_attribute("aria-valuenow") is None and "total not known" in bar.get_attribute("aria-valuetext")
        widths = page.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], f"the list scrolls sideways: {widths}"
        shot(page, "10-narrow-list")
        page.get(service.url(f"/#/task/{done}"))
        wait_for(lambda: detail_state(page)["status"] == "completed", message="the task view")
        wait_for(lambda: css_all(page, ".detail-manifest table"), message="the manifest")
        widths = page.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], f"the task view scrolls sideways: {widths}"
        shot(page, "11-narrow-detail")
        page.get(service.url("/#/new"))
        wait_for(lambda: css(page, "#view-new").is_displayed(), message="the form")
        widths = page.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], f"the form scrolls sideways: {widths}"
        shot(page, "12-narrow-form")
    finally:
        service.call("DELETE", f"/api/export/cancel/{running}")
