"""The page tests' browser and services: headless Chromium (Debian's `chromium` and
`chromium-driver`) driven by selenium, against real gunicorn (2 workers) and the local test API.

Without Chromium these tests fail (they never skip): install it with
`apt-get install chromium chromium-driver` (.ci/install does)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.browser.pagekit import ARTIFACTS, DESKTOP, TOKEN


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
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
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
    """The browser at a normal desktop size, in one tab, with no leftovers from the test before."""
    for handle in browser.window_handles[1:]:
        browser.switch_to.window(handle)
        browser.close()
    browser.switch_to.window(browser.window_handles[0])
    browser.set_window_size(*DESKTOP)
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
    """One service for the module's tests (overrides conftest's per-test one); the form's
    example reads the local test API (EXAMPLE_SOURCE_URL)."""
    return module_service_factory({"EXAMPLE_SOURCE_URL": test_api.url("/items/page")})


@pytest.fixture(scope="module")
def token_service(test_api, module_service_factory):
    return module_service_factory(
        {"API_TOKEN": TOKEN, "EXAMPLE_SOURCE_URL": test_api.url("/items/page")},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
