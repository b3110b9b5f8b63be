"""The progress page (GET /) in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`) driven by selenium, against real gunicorn (2 workers) and the local test
API. Screenshots go to tests/artifacts/page/ (git-ignored) for a person to look at.

Without Chromium these tests fail (they never skip): install it with
`apt-get install chromium chromium-driver` (.ci/install does)."""

from __future__ import annotations

import base64
import functools
import json
import re
import shutil
import time
from pathlib import Path

import pytest
import requests

from tests.support import specs
from tests.support.net import wait_for
from tests.support.readback import rows_of

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "page"
TOKEN = "tok-page-7a1c9e"


# ------------------------------------------------------------------ browser and service


def _chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    for candidate in ("/usr/bin/chromium", "/usr/lib/chromium/chromium"):
        if browser is None and Path(candidate).exists():
            browser = candidate
    if driver is None and Path("/usr/bin/chromedriver").exists():
        driver = "/usr/bin/chromedriver"
    if not browser or not driver:
        pytest.fail(
            "the page tests need headless Chromium: apt-get install -y chromium chromium-driver "
            f"(found chromium={browser!r}, chromedriver={driver!r})",
            pytrace=False,
        )
    return browser, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:  # a failure, not a skip
        pytest.fail("the page tests need selenium (pip install -r requirements.txt)", pytrace=False)
    binary, driver_path = _chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--lang=en-GB",
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    options.add_experimental_option("perfLoggingPrefs", {"enableNetwork": True, "enablePage": False})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    downloads = tmp_path_factory.mktemp("downloads")
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser):
    """The browser at a normal desktop size, with no leftovers from the test before."""
    browser.set_window_size(1280, 900)
    browser.get("about:blank")
    yield browser
    # script errors fail the test; refused requests (4xx the test asked for) are only network noise
    errors = [
        e
        for e in browser.get_log("browser")
        if e["level"] == "SEVERE" and e.get("source") not in ("network",) and "WebSocket" not in e["message"]
    ]
    assert not errors, f"console errors: {errors}"


@pytest.fixture(scope="module")
def service(test_api, module_service_factory):
    """One service (default settings) for the module's tests (overrides conftest's per-test one)."""
    return module_service_factory()


@pytest.fixture(scope="module")
def token_service(test_api, module_service_factory):
    return module_service_factory({"API_TOKEN": TOKEN}, headers={"Authorization": f"Bearer {TOKEN}"})


# ------------------------------------------------------------------ helpers

page_spec = functools.partial(specs.page_spec, concurrency=2)  # the page's specs: two requests in flight


def shot(driver, name: str) -> Path:
    """A full-page screenshot (beyond the viewport) in tests/artifacts/page/."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    width = driver.execute_script("return window.innerWidth")
    data = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": max(size["height"], 100), "scale": 1},
        },
    )
    path = ARTIFACTS / f"{name}.png"
    path.write_bytes(base64.b64decode(data["data"]))
    return path


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def css_all(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def press(driver, *keys):
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*keys).perform()


def tab_to(driver, predicate, limit=40, what="element"):
    """Press Tab until the focused element satisfies `predicate` (keyboard-only navigation)."""
    from selenium.webdriver.common.keys import Keys

    for _ in range(limit):
        press(driver, Keys.TAB)
        element = driver.switch_to.active_element
        if predicate(element):
            return element
    raise AssertionError(f"could not reach {what} with the Tab key")


def focus_ring(driver, element) -> float:
    """The width of the focus outline drawn around `element` (0 when there is none)."""
    return driver.execute_script(
        "const s = getComputedStyle(arguments[0]);"
        "return s.outlineStyle === 'none' ? 0 : parseFloat(s.outlineWidth) || 0;",
        element,
    )


def task_row(driver, task_id):
    rows = css_all(driver, f'li.task[data-task-id="{task_id}"]')
    return rows[0] if rows else None


def detail_state(driver) -> dict:
    return driver.execute_script("""
        const v = document.getElementById('view-task');
        const bar = v.querySelector('.detail-progress [role=progressbar]');
        const badge = v.querySelector('.detail-head .badge');
        return {status: v.dataset.status || null, live: v.dataset.live || null,
                now: bar ? bar.getAttribute('aria-valuenow') : null,
                text: bar ? bar.getAttribute('aria-valuetext') : null,
                badge: badge ? badge.textContent : null, hidden: v.hidden};""")


def watch_detail_until_final(driver, timeout=60, shot_name=None) -> list[dict]:
    """Sample the task view until it shows a final status; returns every sample (and takes
    a screenshot `shot_name` once the bar is part way)."""
    samples = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = detail_state(driver)
        samples.append(state)
        if state["status"] in ("completed", "failed", "cancelled"):
            return samples
        if shot_name and state["now"] and 20 < float(state["now"]) < 90:
            shot(driver, shot_name)
            shot_name = None
        time.sleep(0.05)
    raise AssertionError(f"the task view never showed a final status: {samples[-5:]}")


def set_spec_text(driver, text: str) -> None:
    """Fill the spec field as a paste would (typing long JSON key by key is slow)."""
    field = css(driver, "#spec-input")
    driver.execute_script(
        "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'));", field, text
    )


def downloaded(folder: Path, name: str, timeout=30) -> Path:
    path = folder / name
    wait_for(lambda: path.exists() and not list(folder.glob("*.crdownload")), timeout, message=f"download {name}")
    return path


def requested_urls(driver) -> list[str]:
    """Every URL the browser requested (fetches, navigations, downloads, websockets) since the
    last call, from Chrome's performance log."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(params["request"]["url"])
        elif message.get("method") == "Network.webSocketCreated":
            urls.append(params["url"])
    return urls


def hash_task_id(driver) -> str:
    match = wait_for(
        lambda: re.fullmatch(r"#/task/(task_[0-9a-f]{12})", driver.execute_script("return location.hash")),
        15,
        message="the task's live view",
    )
    return match.group(1)


def luminance(rgb) -> float:
    def channel(c):
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a, b) -> float:
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def rgb(value: str) -> tuple[int, int, int]:
    numbers = [float(x) for x in re.findall(r"[\d.]+", value)[:3]]
    return tuple(int(round(x)) for x in numbers)


# ------------------------------------------------------------------ the API the page relies on


def test_the_page_is_served_offline_ready_and_locked_down(service):
    r = requests.get(service.url("/"), timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    html = r.text
    assert "/static/app.js" in html and "/static/app.css" in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "the page must not load anything from elsewhere"
    for asset in ("/static/app.js", "/static/app.css"):
        a = requests.get(service.url(asset), timeout=10)
        assert a.status_code == 200 and len(a.content) > 1000
        assert not re.search(r"https?://(?!api\.example\.com)", a.text), f"{asset} reaches outside"
    script = requests.get(service.url("/static/app.js"), timeout=10).text
    assert not re.search(r"\.(innerHTML|outerHTML)\b|insertAdjacentHTML|document\.write|\beval\(", script)


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
    assert set(body) == {"task_id", "spec", "manifest"} and body["task_id"] == task_id
    assert body["spec"]["sources"][0]["auth"] == {"type": "bearer", "token": "***"}
    assert body["spec"]["sources"][0]["params"]["echo"] == "***"
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
    started = time.monotonic()
    button.click()
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
