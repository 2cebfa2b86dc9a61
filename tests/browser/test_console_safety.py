"""The console is safe by construction: values from sagas render as text in a real browser,
every answer carries the strict Content-Security-Policy, and its files hold no inline script,
no HTML parsing of data and no address outside the server."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
from selenium.webdriver.common.by import By

from saga_http.console import CONSOLE_DIR, CONTENT_SECURITY_POLICY
from tests.browser.conftest import XSS_ERROR, ConsoleServer, wait_for
from tests.browser.test_console import open_ui, saga_status

SCRIPT = "<script>window.__xss='script'</script>"
IMG = '"><img src=x onerror="window.__xss=\'img\'">'
SVG = "<svg onload=\"window.__xss='svg'\"></svg>"
HOSTILE_WORKFLOW = '"><img src=x onerror="window.__xss=\'workflow\'">'


def assert_inert(driver: Any) -> None:
    """No script from the data ran and no element from the data was made."""
    assert driver.execute_script("return window.__xss === undefined"), driver.execute_script(
        "return window.__xss"
    )
    images = driver.execute_script("return [...document.images].map(i => i.getAttribute('src'))")
    assert images == ["favicon.svg"], images  # the brand's icon, nothing else
    scripts = driver.execute_script("return [...document.scripts].map(s => s.getAttribute('src'))")
    assert scripts == ["console.js"], scripts
    assert not driver.find_elements(By.CSS_SELECTOR, "main svg[onload], main [onerror]")


def test_hostile_values_render_as_text(page: Any, console: ConsoleServer) -> None:
    """A payload, correlation id, initiator, participant error and workflow name holding
    <script>, "><img onerror=...> and <svg onload> show as those characters on the list,
    the overview, the saga page and the workflow page, and nothing runs."""
    document = {
        "name": HOSTILE_WORKFLOW,
        "steps": [
            {
                "name": SCRIPT,
                "service": "inventory-service",
                "method": "Shop.Reserve",
                "compensate": "Shop.Release",
                "timeout_secs": 5,
                "retry": {"max_attempts": 1},
            },
            {
                "name": "explode",
                "service": "inventory-service",
                "method": "Xss.Fail",
                "timeout_secs": 5,
                "retry": {"max_attempts": 1},
            },
        ],
    }
    registered = console.call(
        "POST", "/api/v1/workflows", json={"workflow_yaml": json.dumps(document)}
    )
    assert registered.status_code == 201, registered.text
    saga_id = console.start(
        HOSTILE_WORKFLOW,
        {"note": SCRIPT, "html": IMG, SVG: 1},
        correlation_id=IMG,
        initiated_by=SCRIPT,
    )
    assert console.wait_terminal(saga_id)["saga"]["status"] == "FAILED"

    open_ui(page, console, f"#/sagas?correlation_id={quote(IMG)}")
    row = wait_for(
        lambda: page.find_element(By.CSS_SELECTOR, f"#saga-table tr[data-saga-id='{saga_id}']"),
        what="the saga's row",
    )
    assert IMG in row.text and HOSTILE_WORKFLOW in row.text
    assert_inert(page)

    open_ui(page, console, "#/")
    look = wait_for(lambda: page.find_element(By.ID, "need-a-look-failed"), what="need a look")
    assert XSS_ERROR in look.text or "FAILED_PRECONDITION" in look.text
    assert_inert(page)

    open_ui(page, console, f"#/sagas/{saga_id}")
    wait_for(lambda: saga_status(page) == "FAILED", what="the saga page")
    body = page.find_element(By.TAG_NAME, "body").text
    for text in (XSS_ERROR, IMG, SCRIPT, HOSTILE_WORKFLOW):
        assert text in body or json.dumps(text) in body, text
    assert XSS_ERROR in page.find_element(By.ID, "saga-error").text
    bar_titles = page.execute_script(
        "return [...document.querySelectorAll('#timeline g.bar title')].map(t => t.textContent)"
    )
    assert any(SCRIPT in t for t in bar_titles)
    assert_inert(page)

    open_ui(page, console, f"#/workflows/{quote(HOSTILE_WORKFLOW, safe='')}")
    wait_for(
        lambda: page.find_elements(By.CSS_SELECTOR, "#workflow-diagram g.diagram-step"),
        what="diagram",
    )
    assert HOSTILE_WORKFLOW in page.find_element(By.TAG_NAME, "h1").text
    steps = page.find_elements(By.CSS_SELECTOR, "#workflow-diagram g.diagram-step")
    assert steps[0].get_attribute("data-step") == SCRIPT
    assert_inert(page)


def test_console_answers_carry_the_security_headers(console: ConsoleServer) -> None:
    """The index, every asset and a missing asset answer with the strict CSP, nosniff and a
    revalidate cache policy; assets have their own content types; /ui redirects to /ui/; a
    conditional GET is a 304."""
    index = requests.get(console.ui, timeout=10)
    assert index.status_code == 200
    assert index.headers["Content-Type"] == "text/html; charset=utf-8"
    for response in (
        index,
        requests.get(console.ui + "console.js", timeout=10),
        requests.get(console.ui + "pages/saga.js", timeout=10),
        requests.get(console.ui + "console.css", timeout=10),
        requests.get(console.ui + "no-such-file.js", timeout=10),
    ):
        assert response.headers["Content-Security-Policy"] == (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        )
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-cache"
    assert (
        requests.get(console.ui + "console.js", timeout=10)
        .headers["Content-Type"]
        .startswith("text/javascript")
    )
    assert (
        requests.get(console.ui + "console.css", timeout=10)
        .headers["Content-Type"]
        .startswith("text/css")
    )
    assert (
        requests.get(console.ui + "favicon.svg", timeout=10)
        .headers["Content-Type"]
        .startswith("image/svg+xml")
    )
    missing = requests.get(console.ui + "no-such-file.js", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "SYS_SAGA_NOT_FOUND"
    for escape in ("..%2fapp.py", "%2e%2e/console.py", "../console.py", "pages/../../app.py"):
        assert requests.get(console.ui + escape, timeout=10).status_code == 404, escape
    bare = requests.get(console.base + "/ui", timeout=10, allow_redirects=False)
    assert bare.status_code == 308 and bare.headers["Location"].endswith("/ui/")
    etag = index.headers["ETag"]
    again = requests.get(console.ui, headers={"If-None-Match": etag}, timeout=10)
    assert again.status_code == 304
    assert index.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


def _assets() -> list[Path]:
    return sorted(p for p in CONSOLE_DIR.rglob("*") if p.is_file())


def test_console_files_hold_no_inline_script_html_parsing_or_outside_address() -> None:
    """The page has no inline script or style and the scripts never parse HTML or code
    (innerHTML, insertAdjacentHTML, document.write, eval, Function) nor name an address
    outside the server: the only URL in them is the SVG namespace."""
    files = _assets()
    assert {p.name for p in files} >= {"index.html", "console.js", "console.css"}
    html = (CONSOLE_DIR / "index.html").read_text(encoding="utf-8")
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert "src=" in tag, tag
    assert not re.search(r"<script\b[^>]*>(?!\s*</script>)", html), "inline script"
    assert "<style" not in html and " style=" not in html and re.search(r"\son\w+=", html) is None
    banned = re.compile(
        r"\.(?:innerHTML|outerHTML)\s*\+?=|insertAdjacentHTML|document\.write|\beval\(|"
        r"new Function|setAttribute\(\s*[\"'](?:style|on)|DOMParser|createContextualFragment"
    )
    for path in files:
        if path.suffix not in (".js", ".html", ".css", ".svg"):
            continue
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".js":
            found = banned.findall(text)
            assert not found, (path.name, found)
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'`)]*", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (path.name, urls)
