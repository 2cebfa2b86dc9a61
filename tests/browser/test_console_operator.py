"""Operator actions from the console (SPEC §11): pause a running saga, then resume it with a
replaced payload that the editor checks before anything is sent."""

from __future__ import annotations

from typing import Any

from selenium.webdriver.common.by import By

from tests.browser.conftest import ConsoleServer, wait_for
from tests.browser.test_console import open_ui, saga_status, set_field


def test_pause_then_resume_with_a_replaced_payload(page: Any, console: ConsoleServer) -> None:
    """Pause on a running saga's page takes effect at the next step boundary (PAUSED, only
    Resume and Cancel offered); a replaced payload that is not a JSON object is refused next
    to the editor without a request; a valid one is sent with the resume, the rest of the saga
    runs with it to COMPLETED, and both actions are listed."""
    saga_id = console.start("console-pause", {"order_id": "P-1"})
    open_ui(page, console, f"#/sagas/{saga_id}")
    wait_for(lambda: page.find_element(By.ID, "action-pause").is_displayed(), what="Pause")
    page.find_element(By.ID, "action-pause").click()
    wait_for(
        lambda: (
            saga_status(page) == "PAUSED"
            or page.find_elements(By.CSS_SELECTOR, "#action-message .alert-error")
        ),
        10,
        "PAUSED, or the server's refusal",
    )
    refused = page.find_elements(By.CSS_SELECTOR, "#action-message .alert-error")
    assert not refused, refused[0].text
    detail = console.detail(saga_id)
    assert [(g["step_name"], g["status"]) for g in detail["step_logs"]] == [("wait", "SUCCESS")]
    assert not page.find_elements(By.ID, "action-pause")
    assert page.find_element(By.ID, "action-cancel").is_displayed()  # paused going forward

    page.find_element(By.ID, "action-resume").click()
    page.find_element(By.ID, "resume-action-continue").click()
    page.find_element(By.ID, "resume-replace-payload").click()
    set_field(page, "resume-payload", '{"order_id": "P-2",}')
    page.find_element(By.ID, "resume-submit").click()
    error = wait_for(lambda: page.find_element(By.ID, "resume-payload-error").text, what="error")
    assert error.startswith("payload: not valid JSON"), error
    assert console.detail(saga_id)["saga"]["status"] == "PAUSED"  # nothing was sent
    set_field(page, "resume-payload", '{"order_id": "P-2"}')
    page.find_element(By.ID, "resume-submit").click()
    wait_for(lambda: saga_status(page) == "COMPLETED", 20, "COMPLETED on the page")

    detail = console.detail(saga_id)
    assert detail["saga"]["payload"] == {"order_id": "P-2"}
    record = next(g for g in detail["step_logs"] if g["step_name"] == "record")
    assert record["request_payload"] == {"order_id": "P-2"}
    actions = detail["operator_actions"]
    assert [str(a["action"]).lower() for a in actions] == ["pause", "resume"]
    assert actions[1]["resume_action"] == "continue" and actions[1]["payload_replaced"] is True
    table = wait_for(lambda: page.find_element(By.ID, "operator-actions").text, what="actions")
    assert "continue" in table
