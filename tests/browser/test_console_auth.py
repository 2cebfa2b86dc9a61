"""The console with `auth` configured: it asks for a bearer token, keeps it in session storage
only, and shows the buttons that change something only to roles that may use them; without
`auth` it says the API is open."""

from __future__ import annotations

from typing import Any

from selenium.webdriver.common.by import By

from tests.browser.conftest import ConsoleServer, wait_for
from tests.browser.test_console import saga_status, set_field
from tests.security.jwks import Keys

TOKEN_KEY = "saga-console.token"


def sign_in(driver: Any, token: str) -> None:
    set_field(driver, "token", token)
    driver.find_element(By.ID, "signin-submit").click()


def roles_shown(driver: Any) -> str:
    return str(driver.find_element(By.ID, "auth-roles").text)


def test_open_api_says_so(page: Any, console: ConsoleServer) -> None:
    """Without `auth` the console asks for nothing and says the API is open."""
    page.get(console.ui)
    state = wait_for(lambda: page.find_element(By.ID, "auth-state").text, what="session state")
    assert "API is open" in state
    assert not page.find_elements(By.ID, "signin")
    assert page.find_element(By.ID, "nav-start").is_displayed()


def test_token_prompt_and_role_restricted_buttons(
    page: Any, secure_console: ConsoleServer, keys: Keys
) -> None:
    """With `auth` the console asks for a token and refuses one the server refuses; an
    auditor reads everything but sees no start, register, cancel or pause; an operator sees
    them and can cancel; the token lives in session storage only."""
    server = secure_console
    running = server.start("console-long", {"order_id": "R-1"})
    try:
        page.get(server.ui + f"#/sagas/{running}")
        wait_for(lambda: page.find_element(By.ID, "signin").is_displayed(), what="the sign-in form")
        assert page.find_element(By.ID, "auth-state").text == "Sign-in required"
        assert not page.find_elements(By.ID, "saga-status")

        sign_in(page, "not a token")
        error = wait_for(lambda: page.find_element(By.ID, "token-error").text, what="an error")
        assert "three base64url parts" in error
        sign_in(page, keys.unsigned())  # alg "none", admin roles claimed
        wait_for(
            lambda: "refused by the server" in page.find_element(By.ID, "token-error").text,
            what="the server's refusal",
        )
        assert page.execute_script(f"return sessionStorage.getItem('{TOKEN_KEY}')") is None

        auditor = keys.token(("sys_auditor",), sub="audrey")
        sign_in(page, auditor)
        wait_for(lambda: saga_status(page) in ("STARTED", "RUNNING"), what="the saga, read")
        assert roles_shown(page) == "sys_auditor"
        assert "audrey" in page.find_element(By.ID, "auth-state").text
        assert page.execute_script(f"return sessionStorage.getItem('{TOKEN_KEY}')") == auditor
        assert page.execute_script("return localStorage.length") == 0
        assert not page.find_element(By.ID, "nav-start").is_displayed()
        assert page.find_element(By.ID, "read-only").is_displayed()
        assert not page.find_elements(By.ID, "action-cancel")
        assert not page.find_elements(By.ID, "action-pause")
        page.get(server.ui + "#/workflows")
        wait_for(
            lambda: page.find_elements(By.CSS_SELECTOR, "#workflow-table tr"), what="workflows"
        )
        assert not page.find_elements(By.ID, "register-form")
        page.get(server.ui + "#/")
        wait_for(
            lambda: len(page.find_elements(By.CSS_SELECTOR, "#status-counts .tile")) == 7,
            what="the overview, read",
        )
        page.refresh()  # the token survives a reload of the tab
        wait_for(lambda: roles_shown(page) == "sys_auditor", what="still signed in")

        page.find_element(By.ID, "signout").click()
        wait_for(lambda: page.find_element(By.ID, "signin").is_displayed(), what="signed out")
        assert page.execute_script(f"return sessionStorage.getItem('{TOKEN_KEY}')") is None

        short = server.start("console-pause", {"order_id": "R-2"})
        page.get(server.ui + f"#/sagas/{short}")
        sign_in(page, keys.token(("sys_operator",), sub="oscar"))
        wait_for(lambda: roles_shown(page) == "sys_operator", what="the operator")
        assert page.find_element(By.ID, "nav-start").is_displayed()
        wait_for(lambda: page.find_element(By.ID, "action-pause").is_displayed(), what="pause")
        page.find_element(By.ID, "action-cancel").click()
        page.find_element(By.ID, "cancel-confirm-yes").click()
        wait_for(
            lambda: "cancelled" in page.find_element(By.ID, "action-message").text,
            what="the cancel's answer",
        )
        wait_for(lambda: saga_status(page) == "CANCELLED", 15, "CANCELLED on the page")
        assert not page.find_elements(By.ID, "action-cancel")  # nothing left to do
        detail = server.detail(short)
        assert [(g["action"], g["status"]) for g in detail["step_logs"]] == [
            ("EXECUTE", "SUCCESS"),
            ("COMPENSATE", "SUCCESS"),
        ]
    finally:
        server.call("POST", f"/api/v1/sagas/{running}/cancel")
