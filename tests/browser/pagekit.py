"""What the page tests share: screenshots, element lookups, keyboard helpers, the task view's
state, waiting for downloads, the browser's network log and colour contrast."""

from __future__ import annotations

import base64
import functools
import json
import re
import time
from pathlib import Path

from selenium.common.exceptions import StaleElementReferenceException

from tests.support import specs
from tests.support.net import wait_for as _wait_for

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "page"  # git-ignored (/tests/artifacts/)
TOKEN = "tok-page-7a1c9e"
DESKTOP = (1280, 900)
PHONE = (390, 844)

page_spec = functools.partial(specs.page_spec, concurrency=2)  # the page's specs: two requests in flight


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"):
    """`tests.support.net.wait_for` for the page, which re-renders lists while it is watched: an
    element gone stale between its lookup and its use means "not yet", not a failure."""

    def tolerant():
        try:
            return predicate()
        except StaleElementReferenceException:
            return None

    return _wait_for(tolerant, timeout, interval, message)


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
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    path.write_bytes(base64.b64decode(data["data"]))
    return path


def no_sideways_scroll(driver, what: str) -> None:
    widths = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"{what} scrolls sideways: {widths}"


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def css_all(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def visible(driver, selector):
    """The first element matching `selector` that is displayed, or None."""
    for element in css_all(driver, selector):
        if element.is_displayed():
            return element
    return None


def click(driver, element) -> None:
    """Scroll `element` to the middle of the view, then click it (as a person would)."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    element.click()


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


def listed_ids(driver) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#task-list li.task')).map(li => li.dataset.taskId)"
    )


def detail_state(driver) -> dict:
    return driver.execute_script("""
        const v = document.getElementById('view-task');
        const bar = v.querySelector('.detail-progress [role=progressbar]');
        const badge = v.querySelector('.detail-head .badge');
        const note = document.getElementById('live-note');
        return {status: v.dataset.status || null, live: v.dataset.live || null,
                now: bar ? bar.getAttribute('aria-valuenow') : null,
                text: bar ? bar.getAttribute('aria-valuetext') : null,
                badge: badge ? badge.textContent : null, hidden: v.hidden,
                note: note && !note.hidden ? note.textContent : null};""")


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
    """Fill the JSON spec field as a paste would (typing long JSON key by key is slow)."""
    field = css(driver, "#spec-input")
    driver.execute_script(
        "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'));", field, text
    )


def type_into(driver, element, text: str) -> None:
    """Replace what a text field holds by typing `text` (real key presses)."""
    from selenium.webdriver.common.keys import Keys

    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    element.click()
    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(Keys.DELETE)
    element.send_keys(text)


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


def hash_task_id(driver, other_than: str | None = None) -> str:
    def current():
        match = re.fullmatch(r"#/task/(task_[0-9a-f]{12})", driver.execute_script("return location.hash"))
        return match if match and match.group(1) != other_than else None

    task_id = wait_for(current, 15, message="the task's address").group(1)
    wait_for(
        lambda: driver.execute_script("return document.getElementById('view-task').dataset.taskId") == task_id,
        15,
        message="the task's live view",
    )
    return task_id


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
