"""The console in a real browser: Debian's Chromium driven by selenium (headless, offline),
against real servers on loopback: the REST app (werkzeug, threaded) over an engine executing
sagas on a SQLite file, calling a scripted participant in its own process; one server open,
one with `auth` configured against a real JWKS endpoint.

Without Chromium the tests skip with the reason; under CI=true `scripts/chromium.sh` installs
it first and a browser that is still missing fails them.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

from saga_http.app import create_app
from tests.harness import ROOT, ParticipantProcess, write_config
from tests.security.jwks import JwksServer, Keys, auth_section
from tests.services import in_ci
from workers.config import load_config
from workers.service.engine import Engine

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DOCS = ROOT / "docs"
WINDOW = (1360, 900)
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
XSS_ERROR = "<img src=x onerror=\"window.__xss='error'\">"

# The demo participants of `order-fulfillment`, and methods for the console's own workflows.
BEHAVIOUR: dict[str, Any] = {
    "InventoryService.Reserve": {"sleep_ms": 120},
    "InventoryService.Release": {"sleep_ms": 40},
    "PaymentService.Charge": {
        "sleep_ms": 80,
        "fail_if_payload": {"field": "card", "equals": "declined"},
        "fail": "FAILED_PRECONDITION",
        "message": "payment declined: card ending 0002",
    },
    "PaymentService.Refund": {"sleep_ms": 60},
    "ShippingService.CreateShipment": {
        "sleep_ms": 150,
        "fail_if_payload": {"field": "address", "equals": "nowhere"},
        "fail": "FAILED_PRECONDITION",
        "message": "no carrier delivers to this address",
    },
    "Slow.Wait": {"sleep_ms": 3000},
    "Long.Wait": {"sleep_ms": 9000},
    "Xss.Fail": {"fail": "FAILED_PRECONDITION", "message": XSS_ERROR},
}


def console_workflow(name: str, *steps: tuple[str, str, str | None, float]) -> str:
    """A workflow document: (step name, method, compensate method, timeout) per step."""
    doc = {
        "name": name,
        "steps": [
            {
                "name": step,
                "service": "inventory-service",
                "method": method,
                **({"compensate": compensate} if compensate else {}),
                "timeout_secs": timeout,
                "retry": {"max_attempts": 1},
            }
            for step, method, compensate, timeout in steps
        ],
    }
    return json.dumps(doc)  # JSON is YAML


WORKFLOWS = (
    console_workflow(
        "console-pause",
        ("wait", "Slow.Wait", "Slow.Undo", 10),
        ("record", "Shop.Record", None, 5),
    ),
    console_workflow("console-long", ("wait-long", "Long.Wait", None, 20)),
    console_workflow(
        "console-xss",
        ("reserve", "Shop.Reserve", "Shop.Release", 5),
        ("explode", "Xss.Fail", None, 5),
    ),
)


# ------------------------------------------------------------------ the browser


def _chromium_or_end() -> None:
    """Return when Chromium and its driver are there; else install (CI), fail (CI) or skip."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    if in_ci():
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / "chromium.sh")],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if CHROMIUM.exists() and CHROMEDRIVER.exists():
            return
        pytest.fail(
            f"Chromium is required in CI but {CHROMIUM} or {CHROMEDRIVER} is missing and "
            f"scripts/chromium.sh did not install it:\n{done.stderr[-2000:]}",
            pytrace=False,
        )
    missing = f"{CHROMIUM} or {CHROMEDRIVER} missing: run `bash scripts/chromium.sh` (as root)"
    pytest.skip(f"{missing}; never skipped under CI=true (it fails above)")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session, with a fresh profile and no network but loopback."""
    _chromium_or_end()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if in_ci():
            pytest.fail("selenium is not installed (pip install -e '.[test]')", pytrace=False)
        pytest.skip("selenium is not installed (pip install -e '.[test]'; under CI this fails)")
    # Selenium never looks for or downloads a driver or a browser: both are given.
    os.environ["SE_OFFLINE"] = "true"
    os.environ["SE_AVOID_STATS"] = "true"
    profile = tempfile.mkdtemp(prefix="saga-console-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--force-device-scale-factor=1",
        "--lang=en-GB",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _console_problems(driver: Any) -> list[str]:
    """Browser log lines that mean the console broke: a script error or a CSP violation
    (an API answering 4xx is logged too, and is expected in some tests)."""
    problems = []
    for entry in driver.get_log("browser"):
        message = str(entry.get("message", ""))
        if (
            "Content Security Policy" in message
            or "Refused to" in message
            or entry.get("level") == "SEVERE"
            and "Failed to load resource" not in message
        ):
            problems.append(message)
    return problems


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """The browser, on a blank page with an empty session, checked once the test is done for
    script errors, CSP violations and requests to anywhere but the server."""
    browser.get("about:blank")
    browser.set_window_size(*WINDOW)
    browser.get_log("browser")  # drop what earlier tests left
    yield browser
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    elsewhere = [u for u in fetched if not u.startswith(("http://127.0.0.1:", "data:"))]
    assert not elsewhere, f"the console fetched from outside the server: {elsewhere}"
    problems = _console_problems(browser)
    browser.execute_script("try { sessionStorage.clear(); } catch (e) {}")
    assert not problems, problems


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "", interval: float = 0.1
) -> Any:
    """Poll `predicate` (ignoring a stale or missing element) until it gives something truthy."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except (NoSuchElementException, StaleElementReferenceException):
            last = None
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def screenshot(driver: Any, name: str, tmp_path: Path) -> Path:
    """A PNG of the whole page as the browser lays it out: into docs/ when
    SAGA_WRITE_SCREENSHOTS=1 (the README's pictures), else beside the test."""
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.3)  # let the last refresh paint
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": WINDOW[0], "height": size["height"], "scale": 1},
        },
    )
    target = DOCS if os.environ.get("SAGA_WRITE_SCREENSHOTS") == "1" else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.stat().st_size > 10_000, f"{path} is too small to show the console"
    return path


# ------------------------------------------------------------------ the servers


class RequestLog:
    """WSGI middleware that notes the path of every request the console makes."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.paths: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        with self.lock:
            self.paths.append(environ.get("PATH_INFO", ""))
        return self.app(environ, start_response)

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for p in self.paths if p == path)


class ConsoleServer:
    """The REST app and its console on a real 127.0.0.1 socket, with an API client."""

    def __init__(self, directory: Path, participant_port: int, **sections: Any) -> None:
        path = write_config(
            directory / "config.yaml",
            port=participant_port,
            sqlite_path=directory / "saga.sqlite3",
            workflow_dir=ROOT / "workflows",
            extra=sections,
        )
        self.config = load_config(str(path))
        self.engine = Engine.from_config(self.config)
        self.engine.start()
        self.requests = RequestLog(create_app(self.config, self.engine))
        self.http = make_server("127.0.0.1", 0, self.requests, threaded=True)
        self.base = f"http://127.0.0.1:{self.http.server_port}"
        self.ui = f"{self.base}/ui/"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()
        self.token: str | None = None  # sent by `call` when set

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        kwargs.setdefault("timeout", 15)
        return requests.request(method, self.base + path, headers=headers, **kwargs)

    def start(self, workflow: str, payload: dict[str, Any], **fields: Any) -> str:
        response = self.call(
            "POST", "/api/v1/sagas", json={"workflow_name": workflow, "payload": payload, **fields}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["saga_id"])

    def detail(self, saga_id: str) -> dict[str, Any]:
        response = self.call("GET", f"/api/v1/sagas/{saga_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_terminal(self, saga_id: str, timeout: float = 20.0) -> dict[str, Any]:
        return dict(
            wait_for(
                lambda: (d := self.detail(saga_id))["saga"]["status"] in TERMINAL and d,
                timeout,
                f"saga {saga_id} to end",
            )
        )

    def close(self) -> None:
        self.http.shutdown()
        self.thread.join(timeout=10)
        self.http.server_close()
        self.engine.close(grace_secs=1)


@pytest.fixture(scope="session")
def participant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParticipantProcess]:
    proc = ParticipantProcess(BEHAVIOUR, tmp_path_factory.mktemp("participant"))
    try:
        yield proc
    finally:
        proc.stop()


def _register(server: ConsoleServer) -> None:
    for document in WORKFLOWS:
        response = server.call("POST", "/api/v1/workflows", json={"workflow_yaml": document})
        assert response.status_code == 201, response.text


@pytest.fixture(scope="session")
def console(
    tmp_path_factory: pytest.TempPathFactory, participant: ParticipantProcess
) -> Iterator[ConsoleServer]:
    """The open server (no `auth`): every caller may read and act."""
    server = ConsoleServer(tmp_path_factory.mktemp("console"), participant.port)
    try:
        _register(server)
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="session")
def secure_console(
    tmp_path_factory: pytest.TempPathFactory, participant: ParticipantProcess, keys: Keys
) -> Iterator[ConsoleServer]:
    """A server with `auth` configured: bearer tokens signed by the JWKS server's keys."""
    jwks = JwksServer(keys)
    server = ConsoleServer(
        tmp_path_factory.mktemp("secure-console"), participant.port, auth=auth_section(jwks.url)
    )
    try:
        server.token = keys.token(("sys_admin",), sub="setup")
        _register(server)
        yield server
    finally:
        server.close()
        jwks.close()
