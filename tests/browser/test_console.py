"""The console's flows in a real browser against a real server: starting a saga and watching
it complete, a compensated saga's timeline, the overview, registering a workflow with an
error then a fix, and live updates that stop while the tab is hidden."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.browser.conftest import ConsoleServer, screenshot, wait_for


def open_ui(driver: Any, server: ConsoleServer, hash_path: str = "#/") -> None:
    driver.get(server.ui + hash_path)
    wait_for(lambda: driver.find_element(By.ID, "auth-state").text, what="the session to show")


def text_of(driver: Any, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def saga_status(driver: Any) -> str:
    return text_of(driver, "#saga-status")


def set_field(driver: Any, element_id: str, value: str) -> None:
    """Replace a field's text the way a person would (select all, type)."""
    field = driver.find_element(By.ID, element_id)
    field.clear()
    driver.execute_script("arguments[0].value = '';", field)
    field.send_keys(value)


def test_first_run_start_from_console_and_watch_it_complete(
    page: Any, console: ConsoleServer
) -> None:
    """Starting order-fulfillment from the console's form opens the saga, which is followed
    live until the page shows COMPLETED with one SUCCESS bar per step."""
    open_ui(page, console, "#/start")
    Select(wait_for(lambda: page.find_element(By.ID, "start-workflow"))).select_by_value(
        "order-fulfillment"
    )
    set_field(page, "start-payload", json.dumps({"order_id": "A-1", "card": "ok"}))
    set_field(page, "start-correlation", "first-run-A-1")
    page.find_element(By.ID, "start-submit").click()
    wait_for(lambda: "#/sagas/" in page.current_url, what="the saga page")
    saga_id = page.current_url.rsplit("/", 1)[1]
    wait_for(lambda: saga_status(page) == "COMPLETED", 20, "COMPLETED on the page")
    bars = wait_for(
        lambda: len(found := page.find_elements(By.CSS_SELECTOR, "#timeline g.bar")) == 3 and found,
        what="three timeline bars",
    )
    assert [b.get_attribute("data-step") for b in bars] == [
        "reserve-inventory",
        "process-payment",
        "arrange-shipping",
    ]
    assert {b.get_attribute("data-status") for b in bars} == {"SUCCESS"}
    assert text_of(page, "#saga-id") == saga_id
    detail = console.detail(saga_id)
    assert detail["saga"]["status"] == "COMPLETED"
    assert detail["saga"]["correlation_id"] == "first-run-A-1"
    assert detail["saga"]["payload"] == {"order_id": "A-1", "card": "ok"}


def test_start_form_refuses_a_payload_that_is_not_a_json_object(
    page: Any, console: ConsoleServer
) -> None:
    """A payload that is not JSON, or not an object, is refused next to the field before
    anything is sent: no saga is created."""
    before = console.call("GET", "/api/v1/sagas").json()["pagination"]["total_count"]
    open_ui(page, console, "#/start?workflow=order-fulfillment")
    for text, expected in (('{"order_id": ', "not valid JSON"), ("[1, 2]", "not an array")):
        set_field(page, "start-payload", text)
        page.find_element(By.ID, "start-submit").click()
        error = wait_for(lambda: page.find_element(By.ID, "start-payload-error").text, what="error")
        assert error.startswith("payload:") and expected in error, error
        field = page.find_element(By.ID, "start-payload")
        assert field.get_attribute("aria-invalid") == "true"
    assert "#/start" in page.current_url
    after = console.call("GET", "/api/v1/sagas").json()["pagination"]["total_count"]
    assert after == before


def test_compensated_saga_timeline(page: Any, console: ConsoleServer, tmp_path: Path) -> None:
    """A shipment that cannot be made shows as a timeline: three executions (the last
    FAILED), then the payment and inventory compensations drawn going back up the steps,
    later in time, newest first; the error and each step log's payloads are on the page."""
    saga_id = console.start(
        "order-fulfillment",
        {"order_id": "B-7", "card": "ok", "address": "nowhere"},
        correlation_id="B-7",
    )
    detail = console.wait_terminal(saga_id)
    assert detail["saga"]["status"] == "FAILED"
    open_ui(page, console, f"#/sagas/{saga_id}")
    wait_for(lambda: saga_status(page) == "FAILED", what="FAILED on the page")
    bars = wait_for(
        lambda: len(found := page.find_elements(By.CSS_SELECTOR, "#timeline g.bar")) == 5 and found,
        what="five bars",
    )
    seen = [
        (
            b.get_attribute("data-action"),
            b.get_attribute("data-step"),
            b.get_attribute("data-status"),
        )
        for b in bars
    ]
    assert seen == [
        ("EXECUTE", "reserve-inventory", "SUCCESS"),
        ("EXECUTE", "process-payment", "SUCCESS"),
        ("EXECUTE", "arrange-shipping", "FAILED"),
        ("COMPENSATE", "process-payment", "SUCCESS"),
        ("COMPENSATE", "reserve-inventory", "SUCCESS"),
    ]
    assert all("bar-compensate" in b.get_attribute("class") for b in bars[3:])
    shapes = [b.find_element(By.CSS_SELECTOR, ".bar-shape").rect for b in bars]
    for earlier, later in zip(shapes, shapes[1:], strict=False):
        assert later["x"] >= earlier["x"] + earlier["width"] - 1  # time runs left to right
    # Executions go down the lanes; compensations come back up.
    assert shapes[0]["y"] < shapes[1]["y"] < shapes[2]["y"]
    assert shapes[2]["y"] > shapes[3]["y"] > shapes[4]["y"]
    assert "no carrier delivers to this address" in text_of(page, "#saga-error")
    logs = page.find_elements(By.CSS_SELECTOR, "#step-logs details.log")
    assert len(logs) == 5
    assert [log.get_attribute("open") is not None for log in logs] == [
        False,
        False,
        True,
        False,
        False,
    ]
    assert "no carrier delivers to this address" in logs[2].text
    request = logs[2].find_element(By.CSS_SELECTOR, ".payload .json")
    assert '"order_id"' in request.text and '"B-7"' in request.text
    # The payload trees fold and unfold.
    node = logs[2].find_element(By.CSS_SELECTOR, ".payload details.j-node")
    node.find_element(By.TAG_NAME, "summary").click()
    assert node.get_attribute("open") is None
    node.find_element(By.TAG_NAME, "summary").click()
    assert node.get_attribute("open") is not None
    screenshot(page, "console-saga-timeline", tmp_path)


def test_overview_counts_activity_and_need_a_look(
    page: Any, console: ConsoleServer, tmp_path: Path
) -> None:
    """The overview shows the API's counts per status, the last hour's activity, the outbox,
    and the newest FAILED sagas linking to their pages."""
    failed = console.start("order-fulfillment", {"order_id": "C-1", "card": "declined"})
    done = console.start("order-fulfillment", {"order_id": "C-2", "card": "ok"})
    console.wait_terminal(failed)
    console.wait_terminal(done)
    stats = console.call("GET", "/api/v1/stats").json()
    open_ui(page, console, "#/")
    tiles = wait_for(
        lambda: (
            len(found := page.find_elements(By.CSS_SELECTOR, "#status-counts .tile")) == 7 and found
        ),
        what="status tiles",
    )
    shown = {
        t.get_attribute("data-status"): t.find_element(By.CLASS_NAME, "tile-count").text
        for t in tiles
    }
    assert shown["FAILED"] == str(stats["counts"]["FAILED"])
    assert shown["COMPLETED"] == str(stats["counts"]["COMPLETED"])
    assert int(shown["FAILED"]) >= 1 and int(shown["COMPLETED"]) >= 1
    assert len(page.find_elements(By.CSS_SELECTOR, "#activity g.slot")) == 60
    assert page.find_element(By.ID, "outbox-backlog").text == str(stats["outbox"]["backlog"])
    links = page.find_elements(By.CSS_SELECTOR, "#need-a-look-failed a")
    assert any(a.get_attribute("title") == failed for a in links)
    screenshot(page, "console-overview", tmp_path)
    next(a for a in links if a.get_attribute("title") == failed).click()
    wait_for(lambda: page.current_url.endswith(f"#/sagas/{failed}"), what="the saga page")
    wait_for(lambda: saga_status(page) == "FAILED", what="its status")


def test_saga_list_filters_and_pages(page: Any, console: ConsoleServer) -> None:
    """The list shows what the API's list gives for the same filters (status, workflow,
    correlation id), in its order, and pages with its pagination, each row linking to its
    saga."""
    ids = [
        console.start("order-fulfillment", {"order_id": f"L-{i}"}, correlation_id="list-test")
        for i in range(3)
    ]
    ids.append(
        console.start(
            "order-fulfillment", {"order_id": "L-x", "card": "declined"}, correlation_id="list-test"
        )
    )
    for saga_id in ids:
        console.wait_terminal(saga_id)

    def api_ids(**query: Any) -> list[str]:
        listed = console.call("GET", "/api/v1/sagas", params=query).json()["sagas"]
        return [s["saga_id"] for s in listed]

    def shown_ids() -> list[str]:
        rows = page.find_elements(By.CSS_SELECTOR, "#saga-table tbody tr")
        return [r.get_attribute("data-saga-id") for r in rows]

    completed = api_ids(correlation_id="list-test", status="COMPLETED")
    assert sorted(completed) == sorted(ids[:3])
    open_ui(page, console, "#/sagas")
    set_field(page, "filter-correlation", "list-test")
    set_field(page, "filter-workflow", "order-fulfillment")
    Select(page.find_element(By.ID, "filter-status")).select_by_value("COMPLETED")
    page.find_element(By.ID, "filter-apply").click()
    wait_for(lambda: "correlation_id=list-test" in page.current_url, what="the filters in the URL")
    wait_for(lambda: shown_ids() == completed, what="the API's three COMPLETED sagas")
    assert text_of(page, "#pager-range") == "1–3 of 3"
    # One a page, every status: the API's pagination, followed with Next.
    everything = api_ids(correlation_id="list-test")
    assert len(everything) == 4
    page.get(console.ui + "#/sagas?correlation_id=list-test&page_size=1")
    wait_for(lambda: text_of(page, "#pager-range") == "1–1 of 4", what="page 1")
    assert shown_ids() == everything[:1]
    page.find_element(By.ID, "pager-next").click()
    wait_for(lambda: text_of(page, "#pager-range") == "2–2 of 4", what="page 2")
    assert shown_ids() == everything[1:2]
    page.find_element(By.CSS_SELECTOR, "#saga-table a.saga-link").click()
    wait_for(lambda: page.current_url.endswith(f"#/sagas/{everything[1]}"), what="the saga page")


def test_register_workflow_error_then_fix(
    page: Any, console: ConsoleServer, tmp_path: Path
) -> None:
    """Registering a workflow with a mistake shows the server's message next to the YAML
    field and registers nothing; the fixed document registers, is listed, and its page draws
    its steps in order."""
    open_ui(page, console, "#/workflows")
    broken = (
        "name: console-shipping\n"
        "steps:\n"
        "  - name: pack\n"
        "    service: shipping-service\n"
        "    compensate: ShippingService.Unpack\n"
    )
    set_field(page, "workflow-yaml", broken)
    page.find_element(By.ID, "register-submit").click()
    error = wait_for(lambda: page.find_element(By.ID, "workflow-yaml-error").text, what="error")
    assert "steps[0].method" in error and "required" in error, error
    assert page.find_element(By.ID, "workflow-yaml").get_attribute("aria-invalid") == "true"
    names = [w["name"] for w in console.call("GET", "/api/v1/workflows").json()["workflows"]]
    assert "console-shipping" not in names
    fixed = broken.replace(
        "    service: shipping-service\n",
        "    service: shipping-service\n    method: ShippingService.Pack\n",
    ) + ("  - name: label\n    service: shipping-service\n    method: ShippingService.Label\n")
    set_field(page, "workflow-yaml", fixed)
    assert not page.find_element(By.ID, "workflow-yaml-error").is_displayed()
    page.find_element(By.ID, "register-submit").click()
    result = wait_for(lambda: page.find_element(By.ID, "register-result").text, what="result")
    assert "Registered console-shipping" in result and "2 steps" in result
    wait_for(
        lambda: page.find_elements(
            By.CSS_SELECTOR, "#workflow-table tr[data-workflow='console-shipping']"
        ),
        what="the new workflow in the list",
    )
    page.find_element(By.CSS_SELECTOR, "#register-result a").click()
    wait_for(
        lambda: page.find_elements(By.CSS_SELECTOR, "#workflow-diagram g.diagram-step"),
        what="diagram",
    )
    steps = page.find_elements(By.CSS_SELECTOR, "#workflow-diagram g.diagram-step")
    assert [s.get_attribute("data-step") for s in steps] == ["pack", "label"]
    # The diagram of the demo workflow, with every compensation, for the README.
    page.get(console.ui + "#/workflows/order-fulfillment")
    wait_for(
        lambda: len(page.find_elements(By.CSS_SELECTOR, "#workflow-diagram g.diagram-step")) == 3,
        what="three steps",
    )
    # The server gives the whole definition: each step's service and method, the step table,
    # and the server's own YAML of it.
    definition = console.call("GET", "/api/v1/workflows/order-fulfillment").json()
    assert not page.find_elements(By.ID, "diagram-note")
    diagram = page.find_element(By.ID, "workflow-diagram").text
    for step in definition["steps"]:
        assert step["name"] in diagram and step["service"] in diagram
    rows = page.find_elements(By.CSS_SELECTOR, "#workflow-steps tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[3].text for r in rows] == [
        s["method"] for s in definition["steps"]
    ]
    shown = page.find_element(By.ID, "workflow-yaml-text").text
    assert shown.strip() == definition["workflow_yaml"].strip()
    assert page.find_element(By.ID, "workflow-version").text == f"version {definition['version']}"
    screenshot(page, "console-workflow-diagram", tmp_path)


def test_live_updates_stop_while_the_tab_is_hidden(page: Any, console: ConsoleServer) -> None:
    """A running saga's page shows the step in flight and polls the API while shown; while
    the tab is hidden it sends nothing, and when shown again it refreshes at once."""
    saga_id = console.start("console-long", {"order_id": "H-1"})
    path = f"/api/v1/sagas/{saga_id}"
    try:
        open_ui(page, console, f"#/sagas/{saga_id}")
        wait_for(lambda: saga_status(page) in ("STARTED", "RUNNING"), what="the saga")
        # The step in flight has no log yet; the timeline still shows where the saga is.
        wait_for(
            lambda: (
                page.find_element(
                    By.CSS_SELECTOR, "#timeline g.bar[data-inflight='true']"
                ).get_attribute("data-step")
                == "wait-long"
            ),
            what="the step in flight",
        )
        wait_for(lambda: console.requests.count(path) >= 2, 6, "polling while shown")
        page.execute_script(
            "Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});"
            "Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'hidden'});"
            "document.dispatchEvent(new Event('visibilitychange'));"
        )
        hidden_at = console.requests.count(path)
        time.sleep(5)
        assert console.requests.count(path) - hidden_at <= 1  # at most one already in flight
        quiet = console.requests.count(path)
        time.sleep(1)
        assert console.requests.count(path) == quiet
        page.execute_script(
            "Object.defineProperty(document, 'hidden', {configurable: true, get: () => false});"
            "Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'visible'});"
            "document.dispatchEvent(new Event('visibilitychange'));"
        )
        wait_for(lambda: console.requests.count(path) > quiet, 1.5, "a refresh when shown again")
    finally:
        console.call("POST", f"/api/v1/sagas/{saga_id}/cancel")
