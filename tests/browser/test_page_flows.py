"""The page's second edition in a real browser (headless Chromium, real gunicorn, the local test
API): a first task from the guided form and Preview without typing JSON; re-run, edit & re-run,
retry of the failed pages and delete; the list's pages, status filter and name search with queue
positions; the live view when the websocket upgrade is never answered, when a socket breaks and
when the service goes away; schedules created, previewed, run now, paused and deleted from the
page; a task opened in a new tab with the API token. Screenshots at desktop and phone sizes go to
tests/artifacts/page/ (git-ignored)."""

from __future__ import annotations

import json
import time

from selenium.webdriver.support.ui import Select

from service.store import SQLiteTaskStore
from tests.browser.pagekit import (
    DESKTOP,
    PHONE,
    TOKEN,
    click,
    css,
    css_all,
    detail_state,
    hash_task_id,
    listed_ids,
    no_sideways_scroll,
    page_spec,
    set_spec_text,
    shot,
    task_row,
    type_into,
    visible,
    wait_for,
    watch_detail_until_final,
)
from tests.support.readback import rows_of
from tests.support.service_process import ServiceProcess
from tests.testapi.faults import fault_key, is_failing

# ------------------------------------------------------------------ helpers


def open_form(page, service):
    page.get(service.url("/"))
    wait_for(lambda: css(page, "#view-tasks").is_displayed(), message="the task list")
    css(page, "#tasks-new").click()
    wait_for(lambda: css(page, "#view-new").is_displayed(), message="the form")


def preview_done(page):
    return wait_for(
        lambda: (
            "Page 1 answered" in css(page, "#preview-status").text or "could not" in css(page, "#preview-status").text
        ),
        20,
        message="the preview",
    )


def column_row(page, source: str):
    return css(page, f'#columns-picker tr[data-column="{source}"]')


def one_failing_page(pages: int, size: int, rate: float) -> int:
    """A seed for which exactly one page of /items/page fails (not page 1): the task fails
    there, and a retry meets no failing page it never asked for."""

    def failing(page_number: int, seed: int) -> bool:
        key = fault_key("/items/page", {"n": pages * size, "page": page_number, "per_page": size})
        return is_failing(key, rate, seed)

    for seed in range(2000):
        bad = [p for p in range(1, pages + 1) if failing(p, seed)]
        if len(bad) == 1 and bad[0] > 1:
            return seed
    raise AssertionError("no such seed")


def insert_tasks(service, rows: list[tuple[str, str]]) -> list[str]:
    """Finished tasks written straight into the service's store (listing needs no running)."""
    store = SQLiteTaskStore(service.data_dir / "pageferry.db")
    ids, start = [], time.time() - 3600
    for i, (name, status) in enumerate(rows):
        task_id = f"task_{0xB00000000000 + i:012x}"
        store.create_task(
            {
                "id": task_id,
                "name": name,
                "status": status,
                "spec": {"sources": [{"url": "http://x"}]},
                "created_at": start + i,
            }
        )
        ids.append(task_id)
    store.close()
    return ids


# ------------------------------------------------------------------ the first task, from the form


def test_first_task_from_the_example_and_preview_without_typing_json(api, service, page):
    open_form(page, service)
    assert css(page, "#mode-form").get_attribute("aria-pressed") == "true"
    assert not css(page, "#spec-input").is_displayed()  # the JSON editor is the advanced mode
    shot(page, "20-form-empty")
    css(page, "#example-button").click()
    preview_done(page)
    assert "Page 1 answered HTTP 200" in css(page, "#preview-status").text
    # the first page's records in a table, and what the preview found, filled in
    assert len(css_all(page, "#preview table.records tbody tr")) == 20
    headers = [th.text for th in css_all(page, "#preview table.records thead th")]
    assert headers[:3] == ["id", "name", "sku"]
    assert css(page, "#f-records").get_attribute("value") == "data"
    assert Select(css(page, "#f-pag-type")).first_selected_option.get_attribute("value") == "page"
    assert css(page, "#f-pag-total-pages").get_attribute("value") == "meta.total_pages"
    detected = {
        tr.get_attribute("data-column"): tr.find_element("css selector", "td:nth-child(3)").text
        for tr in css_all(page, "#columns-picker tbody tr")
    }
    assert detected["id"] == "int" and detected["price"] == "float" and detected["meta.created"] == "date"
    # pick and rename columns in the table
    click(page, column_row(page, "description").find_element("css selector", "input[type=checkbox]"))
    click(page, column_row(page, "note").find_element("css selector", "input[type=checkbox]"))
    type_into(page, column_row(page, "name").find_element("css selector", "input.col-name"), "item_name")
    Select(column_row(page, "price").find_element("css selector", "select")).select_by_value("string")
    assert css(page, "#columns-count").text == "10 of 12 columns picked"
    shot(page, "21-form-preview")
    # the JSON (advanced) follows the form...
    css(page, "#mode-json").click()
    spec = json.loads(css(page, "#spec-input").get_attribute("value"))
    columns = {c["name"]: c for c in spec["columns"]}
    assert "description" not in columns and columns["item_name"]["source"] == "name"
    assert columns["price"]["type"] == "string" and spec["sources"][0]["url"] == api.url("/items/page")
    # every field of a spec is listed beside it, from the service's own models
    css(page, "#field-reference summary").click()
    type_into(page, css(page, "#field-filter"), "total_pages")
    listed = wait_for(lambda: [th.text for th in css_all(page, "#field-table tbody th")], message="the field list")
    assert listed == ["sources[].pagination.total_pages"]
    # ...and the form follows the JSON
    spec["name"] = "first-try"
    set_spec_text(page, json.dumps(spec, indent=2))
    css(page, "#mode-form").click()
    assert css(page, "#f-name").get_attribute("value") == "first-try"
    click(page, css(page, "#start-button"))
    task_id = hash_task_id(page)
    samples = watch_detail_until_final(page, timeout=60)
    assert samples[-1]["status"] == "completed", samples[-1]
    rows = rows_of(service.download(task_id).content, "csv")
    assert len(rows) == 1000 and [int(r["id"]) for r in rows] == list(range(1, 1001))
    assert list(rows[0]) == [
        "id",
        "item_name",
        "sku",
        "price",
        "quantity",
        "category",
        "active",
        "tags",
        "meta.created",
        "meta.score",
    ]
    assert rows[4]["item_name"] == "item-5" and rows[3]["price"] == "5.0"
    # the detail shows what happened, the spec as submitted and the effective one
    wait_for(lambda: css_all(page, ".event-log li[data-kind=completed]"), message="the event log")
    kinds = [li.get_attribute("data-kind") for li in css_all(page, ".event-log li")]
    assert kinds[0] == "created" and kinds[1] == "started"
    submitted = json.loads(css(page, ".detail-spec pre").text)
    assert submitted["name"] == "first-try" and "retry" not in submitted
    effective = css(page, "details.effective")
    effective.find_element("css selector", "summary").click()
    assert '"attempts": 5' in effective.find_element("css selector", "pre").text
    shot(page, "22-detail-completed-from-form")
    page.set_window_size(*PHONE)
    no_sideways_scroll(page, "the task view")
    shot(page, "22p-phone-detail")
    page.get(service.url("/#/new"))
    wait_for(lambda: css(page, "#view-new").is_displayed(), message="the form")
    css(page, "#example-button").click()
    preview_done(page)
    no_sideways_scroll(page, "the form with its preview")
    shot(page, "21p-phone-form-preview")


def test_a_typed_url_is_previewed_and_its_pagination_filled_in(api, service, page):
    open_form(page, service)
    type_into(page, css(page, "#f-url"), api.url("/items/page") + "?n=250")
    type_into(page, css(page, "#f-name"), "typed-url")
    Select(css(page, "#f-export-format")).select_by_value("ndjson")
    assert not css(page, "#f-pag-size").is_displayed()  # fields appear with the pagination they belong to
    click(page, css(page, "#preview-button"))
    preview_done(page)
    assert css(page, "#f-records").get_attribute("value") == "data"
    assert Select(css(page, "#f-pag-type")).first_selected_option.get_attribute("value") == "page"
    assert css(page, "#f-pag-param").get_attribute("value") == "page"
    assert "Pagination" in css(page, ".preview-applied").text
    click(page, css(page, "#start-button"))
    task_id = hash_task_id(page)
    assert watch_detail_until_final(page)[-1]["status"] == "completed"
    rows = rows_of(service.download(task_id).content, "ndjson")
    assert [r["id"] for r in rows] == list(range(1, 251))


def test_the_form_asks_for_a_secret_reference_and_names_bad_fields(api, service, page):
    open_form(page, service)
    type_into(page, css(page, "#f-url"), api.url("/auth/bearer"))
    Select(css(page, "#f-auth-type")).select_by_value("bearer")
    type_into(page, css(page, "#f-auth-token"), "plain-secret-123")
    click(page, css(page, "#validate-button"))
    error = wait_for(lambda: visible(page, "#err-f-auth-token"), message="the error under the token")
    assert "${NAME}" in error.text and css(page, "#f-auth-token").get_attribute("aria-invalid") == "true"
    assert page.switch_to.active_element.get_attribute("id") == "f-auth-token"
    type_into(page, css(page, "#f-auth-token"), "${PAGEFERRY_SECRET_NOT_SET}")
    Select(css(page, "#f-pag-type")).select_by_value("page")
    type_into(page, css(page, "#f-pag-size"), "0")
    click(page, css(page, "#validate-button"))
    wait_for(lambda: visible(page, "#err-f-pag-size"), message="the page size error from the service")
    assert "greater than or equal to 1" in css(page, "#err-f-pag-size").text
    assert [li.get_attribute("data-field") for li in css_all(page, "#spec-errors li")] == ["sources.0.pagination.size"]
    assert not css_all(page, "#err-f-auth-token")  # the earlier error went once the field was fixed
    type_into(page, css(page, "#f-pag-size"), "10")
    click(page, css(page, "#start-button"))
    error = wait_for(lambda: visible(page, "#err-f-auth-token"), message="the service's word on the reference")
    assert "PAGEFERRY_SECRET_NOT_SET" in error.text and "not set" in error.text
    assert [li.get_attribute("data-field") for li in css_all(page, "#spec-errors li")] == ["sources.0.auth.token"]
    assert "Not started" in css(page, "#form-status").text
    shot(page, "23-form-field-errors")


# ------------------------------------------------------------------ every task actionable


def test_rerun_edit_and_rerun_and_delete_from_the_page(api, service, page):
    original = service.start_task(page_spec(api, name="original-run", n=120, size=20))
    first = service.wait(original)
    page.get(service.url(f"/#/task/{original}"))
    wait_for(lambda: detail_state(page)["status"] == "completed", message="the task view")
    click(page, css(page, ".detail-actions button.rerun"))
    rerun = hash_task_id(page, other_than=original)
    assert watch_detail_until_final(page)[-1]["status"] == "completed"
    assert original in css(page, "#view-task .task-meta").text  # "re-run of task_…"
    assert service.status(rerun)["result"]["sha256"] == first["result"]["sha256"]
    # edit & re-run: the form opens on a copy of the spec, a new task is made
    page.get(service.url(f"/#/task/{original}"))
    wait_for(lambda: detail_state(page)["status"] == "completed", message="the task view")
    click(page, css(page, ".detail-actions button.edit"))
    wait_for(lambda: css(page, "#view-new").is_displayed(), message="the form")
    assert css(page, "#f-name").get_attribute("value") == "original-run"
    assert "original-run" in css(page, "#form-banner").text
    type_into(page, css(page, "#f-name"), "edited-run")
    type_into(page, css(page, "#f-pag-size"), "40")
    click(page, css(page, "#start-button"))
    edited = hash_task_id(page, other_than=original)
    assert watch_detail_until_final(page)[-1]["status"] == "completed"
    status = service.status(edited)
    assert status["name"] == "edited-run" and status["result"]["rows"] == 120 and status["result"]["pages"] == 3
    # delete from the list, after a confirmation
    page.get(service.url("/"))
    row = wait_for(lambda: task_row(page, original), message="the row")
    click(page, row.find_element("css selector", "button.delete"))
    confirm = wait_for(lambda: row.find_elements("css selector", ".confirm"), message="the question")[0]
    assert "Delete original-run" in confirm.text
    shot(page, "24-list-delete-confirm")
    confirm.find_element("css selector", "button.confirm-yes").click()
    wait_for(lambda: task_row(page, original) is None, message="the row gone")
    assert service.call("GET", f"/api/export/status/{original}").status_code == 404
    assert task_row(page, rerun) is not None


def test_retry_only_the_failed_pages_from_the_task_view(api, service, page):
    pages, size, rate = 30, 20, 0.05
    seed = one_failing_page(pages, size, rate)
    spec = page_spec(
        api, name="one-bad-page", n=pages * size, size=size, fault=503, fail_rate=rate, fail_times=2, seed=seed
    )
    spec["retry"] = {"attempts": 2, "backoff": 0.01}
    failed = service.start_task(spec)
    assert service.wait(failed)["status"] == "failed"
    page.get(service.url(f"/#/task/{failed}"))
    wait_for(lambda: detail_state(page)["status"] == "failed", message="the failed task")
    box = css(page, ".detail-errors .error-box")
    assert "Next step" in box.text and len(box.find_elements("css selector", ".cause")) == 1
    shot(page, "25-detail-failed-retry")
    retry_button = css(page, ".detail-actions button.retry")
    assert retry_button.text.startswith("Retry failed pages")
    seen = len(api.log())
    click(page, retry_button)
    retry = hash_task_id(page, other_than=failed)
    assert watch_detail_until_final(page)[-1]["status"] == "completed", (service.status(retry), api.log()[seen:])
    rows = rows_of(service.download(retry).content, "csv")
    assert [int(r["id"]) for r in rows] == list(range(1, pages * size + 1))
    assert len({e["query"]["page"] for e in api.log()[seen:] if e["path"] == "/items/page"}) < pages
    assert failed in css(page, "#view-task .task-meta").text  # "retry of task_…"


# ------------------------------------------------------------------ the list: pages, filters, queue


def test_list_pages_filters_search_and_queue_positions(api, service_factory, page):
    svc = service_factory({"MAX_CONCURRENT_TASKS": "1"})
    names = [
        (("gamma-" if i % 5 == 0 else "delta-") + f"{i:02d}", "failed" if i % 4 == 0 else "completed")
        for i in range(60)
    ]
    ids = insert_tasks(svc, names)
    hog = svc.start_task(page_spec(api, name="hog", n=4000, size=20, delay_ms=100))
    svc.wait(hog, until=("running",))
    waiting = [svc.start_task(page_spec(api, name=f"waiting-{i}", n=10)) for i in range(2)]
    try:
        page.get(svc.url("/"))
        wait_for(lambda: len(listed_ids(page)) == 25, message="the first page")
        newest = [*waiting[::-1], hog, *ids[::-1]]
        first = listed_ids(page)
        assert first == newest[:25]
        assert "next to start" in task_row(page, waiting[0]).text and "2nd in line" in task_row(page, waiting[1]).text
        shot(page, "26-list-page-1")
        seen = list(first)
        while not css(page, "#page-older").get_property("disabled"):
            before = listed_ids(page)
            click(page, css(page, "#page-older"))
            wait_for(lambda: listed_ids(page) and listed_ids(page) != before, message="the next page")
            seen += listed_ids(page)
        assert seen == newest, "every task once, newest first"
        assert "Page 3" in css(page, "#page-state").text
        click(page, css(page, "#page-newer"))
        wait_for(lambda: listed_ids(page) == newest[25:50], message="back to page 2")
        # filter by status and search by name; the address keeps them
        Select(css(page, "#filter-status")).select_by_value("failed")
        wait_for(
            lambda: set(listed_ids(page)) == {i for i, (_, s) in zip(ids, names) if s == "failed"},
            message="failed only",
        )
        type_into(page, css(page, "#filter-q"), "gamma")
        expected = [i for i, (n, s) in zip(ids, names) if s == "failed" and "gamma" in n][::-1]
        wait_for(lambda: listed_ids(page) == expected, message="failed gammas")
        assert page.switch_to.active_element.get_attribute("id") == "filter-q"  # typing is not interrupted
        assert "status=failed" in page.current_url and "q=gamma" in page.current_url
        shot(page, "27-list-filtered")
        page.refresh()
        wait_for(lambda: listed_ids(page) == expected, message="the same after a reload")
        assert css(page, "#filter-q").get_attribute("value") == "gamma"
        page.set_window_size(*PHONE)
        page.get(svc.url("/"))
        wait_for(lambda: len(listed_ids(page)) == 25, message="the list on a phone")
        no_sideways_scroll(page, "the list")
        shot(page, "26p-phone-list")
    finally:
        page.set_window_size(*DESKTOP)
        for task_id in [hog, *waiting]:
            svc.call("DELETE", f"/api/export/cancel/{task_id}")


# ------------------------------------------------------------------ the live view, robust

NEVER_ANSWERED = """
window.__wsTried = 0;
window.WebSocket = class { constructor(url) { window.__wsTried += 1; this.readyState = 0; } close() {} };
"""

BREAKS_ONCE = """
window.__wsTried = 0;
const RealSocket = window.WebSocket;
window.WebSocket = class {
  constructor(url) {
    window.__wsTried += 1;
    const real = new RealSocket(url);
    const first = window.__wsTried === 1;
    let seen = 0;
    real.onmessage = (e) => {
      seen += 1;
      if (this.onmessage) this.onmessage(e);
      if (first && seen === 2) { real.onclose = null; real.close(); if (this.onclose) this.onclose({code: 1006}); }
    };
    real.onclose = (e) => { if (this.onclose) this.onclose(e); };
    this.real = real;
  }
  close(code) { this.real.onclose = null; this.real.close(code); }
};
"""


def with_script(page, source):
    return page.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": source})["identifier"]


def test_an_upgrade_that_is_never_answered_falls_back_to_polling_with_a_note(api, service, page):
    script = with_script(page, NEVER_ANSWERED)
    try:
        task_id = service.start_task(page_spec(api, name="no-upgrade", n=1600, size=20, delay_ms=200))
        page.get(service.url(f"/#/task/{task_id}"))
        started = time.monotonic()
        state = wait_for(lambda: (s := detail_state(page))["live"] == "poll" and s, 10, message="polling")
        assert time.monotonic() - started < 7, "the connect timeout is a few seconds"
        assert "did not open within 4" in state["note"]
        assert css(page, "#live-state").text == "● polling"
        shot(page, "28-detail-polling-fallback")
        samples = watch_detail_until_final(page, timeout=60)
        assert samples[-1]["status"] == "completed" and samples[-1]["now"] == "100"
        moving = [float(s["now"]) for s in samples if s["now"] and s["status"] == "running"]
        assert len(set(moving)) >= 3, "the progress moved while polling"
        assert page.execute_script("return window.__wsTried") >= 2, "the socket is tried again"
    finally:
        page.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script})


def test_a_socket_that_breaks_is_replaced_and_polling_bridges_the_gap(api, service, page):
    script = with_script(page, BREAKS_ONCE)
    try:
        task_id = service.start_task(page_spec(api, name="breaks-once", n=1200, size=20, delay_ms=120))
        page.get(service.url(f"/#/task/{task_id}"))
        samples = watch_detail_until_final(page, timeout=60)
        modes = [s["live"] for s in samples]
        assert samples[-1]["status"] == "completed"
        assert "poll" in modes and "socket" in modes[modes.index("poll") :], modes[:50]
        assert page.execute_script("return window.__wsTried") >= 2
    finally:
        page.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script})


def test_offline_while_the_service_is_down_and_live_again_when_it_returns(api, service_factory, page):
    svc = service_factory()
    task_id = svc.start_task(page_spec(api, name="survivor", n=3000, size=20, delay_ms=100))
    page.get(svc.url(f"/#/task/{task_id}"))
    wait_for(lambda: detail_state(page)["live"] == "socket", 15, message="live")
    svc.kill_group()  # the service is gone at once (a graceful stop would let the task finish first)
    svc.proc.wait(timeout=10)
    wait_for(lambda: css(page, "#offline").is_displayed(), 15, message="the offline notice")
    assert css(page, "#conn-state").text == "● offline"
    wait_for(lambda: detail_state(page)["live"] == "offline", 10, message="the view saying offline")
    assert "does not answer" in css(page, "#offline-text").text
    shot(page, "29-offline")
    again = ServiceProcess(svc.data_dir, port=svc.port).start()
    svc.proc = again.proc  # stopped with the factory's services
    wait_for(lambda: not css(page, "#offline").is_displayed(), 30, message="back online")
    samples = watch_detail_until_final(page, timeout=90)
    assert samples[-1]["status"] == "completed"
    assert css(page, "#conn-state").get_attribute("hidden") is not None


# ------------------------------------------------------------------ schedules


def test_schedule_created_from_the_form_previewed_run_now_paused_and_deleted(api, service, page):
    open_form(page, service)
    css(page, "#example-button").click()
    preview_done(page)
    type_into(page, css(page, "#f-name"), "nightly-items")
    click(page, css(page, "#schedule-button"))
    wait_for(lambda: css(page, "#schedule-form").is_displayed(), message="the schedule form")
    assert json.loads(css(page, "#s-spec").get_attribute("value"))["name"] == "nightly-items"
    type_into(page, css(page, "#s-timezone"), "UTC")
    type_into(page, css(page, "#s-cron"), "0 3 * * *")
    preview = wait_for(
        lambda: "Every day at 03:00" in css(page, "#s-cron-preview").text and css(page, "#s-cron-preview")
    )
    runs = preview.find_elements("css selector", ".next-runs li")
    assert len(runs) == 5 and all("03:00:00 UTC" in r.text for r in runs)
    shot(page, "30-schedule-form")
    click(page, css(page, "#schedule-create"))
    item = wait_for(lambda: visible(page, "#schedule-list li.schedule"), message="the schedule")
    sid = item.get_attribute("data-schedule-id")
    assert "nightly-items" in item.text and "every day at 03:00" in item.text and "Active" in item.text
    assert service.call("GET", f"/api/export/schedules/{sid}").json()["cron"] == "0 3 * * *"
    click(page, item.find_element("css selector", "button.sched-run"))

    def completed_run():
        item = css(page, f'li[data-schedule-id="{sid}"]')
        runs = item.find_elements("css selector", "li.run")
        return runs and "Completed" in runs[0].text and runs[0].get_attribute("data-task-id")

    task_id = wait_for(completed_run, 30, message="the run, completed")
    assert service.status(task_id)["schedule_id"] == sid and service.status(task_id)["result"]["rows"] == 1000
    shot(page, "31-schedules")
    click(page, css(page, f'li[data-schedule-id="{sid}"] button.sched-pause'))
    wait_for(lambda: "Paused" in css(page, f'li[data-schedule-id="{sid}"]').text, message="paused")
    assert service.call("GET", f"/api/export/schedules/{sid}").json()["paused"] is True
    click(page, css(page, f'li[data-schedule-id="{sid}"] button.sched-pause'))
    wait_for(lambda: "Active" in css(page, f'li[data-schedule-id="{sid}"]').text, message="resumed")
    page.set_window_size(*PHONE)
    no_sideways_scroll(page, "the schedules")
    shot(page, "31p-phone-schedules")
    page.set_window_size(*DESKTOP)
    click(page, css(page, f'li[data-schedule-id="{sid}"] button.sched-delete'))
    css(page, f'li[data-schedule-id="{sid}"] button.confirm-yes').click()
    wait_for(lambda: not css_all(page, f'li[data-schedule-id="{sid}"]'), message="the schedule gone")
    assert service.call("GET", f"/api/export/schedules/{sid}").status_code == 404


# ------------------------------------------------------------------ the token, in a new tab


def test_a_task_opened_in_a_new_tab_gets_the_token_from_the_open_tab(api, token_service, page):
    svc = token_service
    page.get(svc.url("/"))
    wait_for(lambda: css(page, "#notice").is_displayed(), message="the token notice")
    css(page, "#token-input").send_keys(TOKEN)
    css(page, "#token-save").click()
    wait_for(lambda: not css(page, "#notice").is_displayed(), message="the token accepted")
    task_id = svc.start_task(page_spec(api, name="new-tab", n=60))
    svc.wait(task_id)
    page.switch_to.new_window("tab")
    page.get(svc.url(f"/#/task/{task_id}"))
    wait_for(lambda: detail_state(page)["status"] == "completed", 15, message="the task in the new tab")
    assert not css(page, "#notice").is_displayed()
    assert "another tab" in css(page, "#token-state").text
    assert page.execute_script("return localStorage.getItem('pageferry.apiToken')") is None  # not kept on disk
    shot(page, "32-new-tab-with-token")
