"""The first run in a real browser: the server `make run` starts (`saga serve` on
config/config.yaml, from a directory laid out like a clean clone, with its demo participants),
the console at the URL it prints, `order-fulfillment` started from the form and watched to
COMPLETED."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.browser.conftest import wait_for
from tests.e2e.test_first_run import MakeRun, clean_clone


def test_make_run_then_start_order_fulfillment_in_the_console(page: Any, tmp_path: Path) -> None:
    """At the console URL `make run` prints, starting order-fulfillment with the form's example
    payload opens the saga, which the page follows to COMPLETED with one SUCCESS bar per step."""
    server = MakeRun(clean_clone(tmp_path / "saga-server"))
    try:
        console_url = server.printed().strip().removeprefix("console: ")
        page.get(console_url + "#/start")
        Select(wait_for(lambda: page.find_element(By.ID, "start-workflow"))).select_by_value(
            "order-fulfillment"
        )
        page.find_element(By.ID, "start-submit").click()
        wait_for(lambda: "#/sagas/" in page.current_url, what="the saga page")
        saga_id = page.current_url.rsplit("/", 1)[1]
        wait_for(
            lambda: page.find_element(By.ID, "saga-status").text == "COMPLETED",
            30,
            "COMPLETED on the page",
        )
        bars = wait_for(
            lambda: (
                len(found := page.find_elements(By.CSS_SELECTOR, "#timeline g.bar")) == 3 and found
            ),
            what="three timeline bars",
        )
        assert [b.get_attribute("data-step") for b in bars] == [
            "reserve-inventory",
            "process-payment",
            "arrange-shipping",
        ]
        assert {b.get_attribute("data-status") for b in bars} == {"SUCCESS"}
        detail = requests.get(f"{server.url}/api/v1/sagas/{saga_id}", timeout=10).json()
        assert detail["saga"]["status"] == "COMPLETED"
        assert detail["saga"]["workflow_name"] == "order-fulfillment"
    finally:
        assert server.stop() == 0, server.log()
