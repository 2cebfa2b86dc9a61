"""The REST API (SPEC §4) over real sockets: the app under a real gunicorn (3 gthread workers,
one SQLite file, executing sagas against an in-process participant), plus a few in-process
servers for the failures a healthy server cannot show (500, 503)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from werkzeug.serving import make_server

from saga_http.app import create_app
from tests.harness import free_port
from workers.adapters.store.memory import MemoryStore
from workers.config import load_config
from workers.scripted_participants import start_participant_server
from workers.service.engine import Engine

REPO = Path(__file__).resolve().parents[2]
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
GENERATED_ID = re.compile(r"^req_[0-9a-f]{32}$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
SAGA_FIELDS = {
    "saga_id",
    "workflow_name",
    "current_step",
    "status",
    "payload",
    "correlation_id",
    "initiated_by",
    "error_message",
    "created_at",
    "updated_at",
    "trace_id",
}
STEP_LOG_FIELDS = {
    "id",
    "saga_id",
    "step_index",
    "step_name",
    "action",
    "status",
    "request_payload",
    "response_payload",
    "error_message",
    "started_at",
    "completed_at",
}
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
BEHAVIOUR: dict[str, Any] = {
    "Shop.Charge": {
        "fail_if_payload": {"field": "card", "equals": "declined"},
        "fail": "FAILED_PRECONDITION",
        "message": "payment declined",
    },
    "Slow.Wait": {"sleep_ms": 1500},
}
ORDER_YAML = """\
name: rest-order
steps:
  - name: reserve
    service: shop
    method: Shop.Reserve
    compensate: Shop.Release
    timeout_secs: 5
    retry: {max_attempts: 1}
  - name: charge
    service: shop
    method: Shop.Charge
    timeout_secs: 5
    retry: {max_attempts: 1}
"""
SLOW_YAML = """\
name: rest-slow
steps:
  - name: wait
    service: shop
    method: Slow.Wait
    compensate: Shop.Release
    timeout_secs: 10
    retry: {max_attempts: 1}
  - name: reserve
    service: shop
    method: Shop.Reserve
    timeout_secs: 5
    retry: {max_attempts: 1}
"""


# ----------------------------------------------------------------------------- harness


def gunicorn_executable() -> str:
    beside = Path(sys.executable).with_name("gunicorn")
    found = str(beside) if beside.exists() else shutil.which("gunicorn")
    assert found, "gunicorn is not installed"
    return found


def child_pids(parent: int) -> list[int]:
    """Live processes whose parent is `parent` (Linux /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent:
            children.append(int(entry.name))
    return children


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def write_config(directory: Path, participant_port: int, **sections: Any) -> Path:
    """A config file for a server on a free port, its SQLite file and `workflow_dir` (holding
    `rest-order`) in `directory`; `sections` update the defaults."""
    (directory / "workflows").mkdir(exist_ok=True)
    (directory / "workflows" / "rest-order.yaml").write_text(ORDER_YAML, encoding="utf-8")
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": free_port(), "workers": 3, "threads": 4},
        "grpc": {"host": "127.0.0.1", "port": 0},
        "services": {"shop": {"host": "127.0.0.1", "port": participant_port}},
        "saga": {
            "sqlite_path": str(directory / "saga.sqlite3"),
            "workflow_dir": str(directory / "workflows"),
            "execute": True,
            "claim_interval_ms": 50,
        },
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


class GunicornServer:
    """`gunicorn -c saga_http/gunicorn.conf.py saga_http.wsgi:app` as a child process."""

    def __init__(self, config_path: Path, log_path: Path, tmpdir: Path | None = None) -> None:
        self.config = load_config(str(config_path))
        self.base = f"http://127.0.0.1:{self.config.server.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"} | {
            "CONFIG_PATH": str(config_path),
            "SAGA_LOG_FORMAT": "json",
        }
        if tmpdir is not None:
            env["TMPDIR"] = str(tmpdir)
        self.proc = subprocess.Popen(
            [gunicorn_executable(), "-c", "saga_http/gunicorn.conf.py", "saga_http.wsgi:app"],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers: list[int] = []

    def wait_ready(self, workers: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited early:\n{self.log()}")
            self.workers = child_pids(self.proc.pid)
            try:
                ready = requests.get(self.base + "/readyz", timeout=2).status_code == 200
            except requests.ConnectionError:
                ready = False
            if ready and len(self.workers) == workers:
                return
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"gunicorn not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 45.0) -> int:
        """SIGTERM, a bounded wait, then SIGKILL of the whole group if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        # requests.request opens a new connection for each call.
        kwargs.setdefault("timeout", 15)
        return requests.request(method, self.base + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)


@pytest.fixture(scope="module")
def participant() -> Iterator[int]:
    server, port = start_participant_server(BEHAVIOUR)
    try:
        yield port
    finally:
        server.stop(grace=None).wait(5)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, participant: int) -> Iterator[GunicornServer]:
    directory = tmp_path_factory.mktemp("rest")
    running = GunicornServer(write_config(directory, participant), directory / "gunicorn.log")
    try:
        running.wait_ready(workers=3)
        response = running.post("/api/v1/workflows", json={"workflow_yaml": SLOW_YAML})
        assert response.status_code == 201, response.text
        yield running
    finally:
        workers = list(running.workers)
        code = running.stop()
        assert code == 0, running.log()
        assert not [pid for pid in workers if alive(pid)]


def assert_error(
    response: requests.Response, status: int, code: str, message: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "request_id", "details"}
    assert error["code"] == code
    assert error["details"] == []
    assert error["request_id"] == response.headers["X-Request-Id"]
    assert isinstance(error["message"], str) and error["message"]
    if message is not None:
        assert message in error["message"], error["message"]
    return error


def start(server: GunicornServer, **body: Any) -> str:
    body.setdefault("workflow_name", "rest-order")
    response = server.post("/api/v1/sagas", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["saga_id"])


def wait_for(
    server: GunicornServer,
    saga_id: str,
    done: Callable[[dict[str, Any]], bool] = lambda d: d["saga"]["status"] in TERMINAL,
    timeout: float = 20.0,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = server.get(f"/api/v1/sagas/{saga_id}")
        assert response.status_code == 200, response.text
        detail: dict[str, Any] = response.json()
        if done(detail):
            return detail
        assert time.monotonic() < deadline, f"saga {saga_id} still {detail['saga']['status']}"
        time.sleep(0.05)


# ----------------------------------------------------------------------------- operations


def test_healthz_answers_ok(server: GunicornServer) -> None:
    """GET /healthz is 200 {"status": "ok"} with a generated request id."""
    response = server.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert GENERATED_ID.match(response.headers["X-Request-Id"])


def test_readyz_answers_ready(server: GunicornServer) -> None:
    """GET /readyz is 200 {"status": "ready"} while the store answers."""
    response = server.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def test_metrics_count_requests_by_route_template(server: GunicornServer) -> None:
    """GET /metrics is Prometheus text, aggregated over the workers, labelled by route template
    (never the raw path)."""
    saga_id = str(uuid.uuid4())
    for _ in range(6):
        server.get(f"/api/v1/sagas/{saga_id}")
    response = server.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.text
    pattern = re.compile(
        r'^saga_http_requests_total\{method="GET",route="/api/v1/sagas/<saga_id>",'
        r'status="404"\} (\d+\.\d+)$',
        re.M,
    )
    found = pattern.search(text)
    assert found and float(found.group(1)) >= 6, text
    assert saga_id not in text


# ----------------------------------------------------------------------------- sagas


def test_start_returns_201_with_id_and_status(server: GunicornServer) -> None:
    """POST /api/v1/sagas is 201 {"saga_id": <uuid>, "status": "STARTED"}."""
    response = server.post("/api/v1/sagas", json={"workflow_name": "rest-order", "payload": {}})
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"saga_id", "status"}
    assert UUID_RE.match(body["saga_id"])
    assert body["status"] == "STARTED"


def test_saga_completes_and_shows_every_field(server: GunicornServer) -> None:
    """A started saga completes; GET shows every Saga and StepLog field, timestamps in
    RFC 3339 UTC milliseconds, absent values as null, and no operator action."""
    saga_id = start(server, payload={"order": 7}, initiated_by="tester")
    detail = wait_for(server, saga_id)
    assert set(detail) == {"saga", "step_logs", "operator_actions"}
    assert detail["operator_actions"] == []  # nobody paused, resumed or cancelled it
    saga = detail["saga"]
    assert set(saga) == SAGA_FIELDS
    assert saga["saga_id"] == saga_id
    assert saga["status"] == "COMPLETED"
    assert saga["current_step"] == 2
    assert saga["payload"] == {"order": 7}
    assert saga["initiated_by"] == "tester"
    assert saga["correlation_id"] is None
    assert saga["error_message"] is None
    assert TIMESTAMP.match(saga["created_at"]) and TIMESTAMP.match(saga["updated_at"])
    logs = detail["step_logs"]
    assert [(g["step_index"], g["step_name"], g["action"], g["status"]) for g in logs] == [
        (0, "reserve", "EXECUTE", "SUCCESS"),
        (1, "charge", "EXECUTE", "SUCCESS"),
    ]
    for log in logs:
        assert set(log) == STEP_LOG_FIELDS
        assert UUID_RE.match(log["id"])
        assert log["saga_id"] == saga_id
        assert log["error_message"] is None
        assert log["request_payload"] == {"order": 7}
        assert isinstance(log["response_payload"], dict)
        assert TIMESTAMP.match(log["started_at"]) and TIMESTAMP.match(log["completed_at"])
    assert logs[0]["started_at"] <= logs[1]["started_at"]


def test_failed_step_compensates_and_fails(server: GunicornServer) -> None:
    """A failing step ends the saga FAILED, with the completed step compensated, in log order."""
    saga_id = start(server, payload={"card": "declined"})
    detail = wait_for(server, saga_id)
    assert detail["saga"]["status"] == "FAILED"
    assert detail["saga"]["error_message"]
    logs = detail["step_logs"]
    assert [(g["step_name"], g["action"], g["status"]) for g in logs] == [
        ("reserve", "EXECUTE", "SUCCESS"),
        ("charge", "EXECUTE", "FAILED"),
        ("reserve", "COMPENSATE", "SUCCESS"),
    ]
    assert "payment declined" in logs[1]["error_message"]


def test_get_unknown_saga_is_404(server: GunicornServer) -> None:
    """GET of an unknown saga id is 404 SYS_SAGA_NOT_FOUND."""
    assert_error(
        server.get(f"/api/v1/sagas/{uuid.uuid4()}"), 404, "SYS_SAGA_NOT_FOUND", "saga not found"
    )


def test_get_invalid_uuid_is_400(server: GunicornServer) -> None:
    """GET with a saga id that is not a UUID is 400 naming saga_id."""
    assert_error(
        server.get("/api/v1/sagas/not-a-uuid"), 400, "SYS_SAGA_VALIDATION_ERROR", "saga_id"
    )


def test_list_pages_newest_first_with_filters(server: GunicornServer) -> None:
    """GET /api/v1/sagas filters by correlation_id/workflow_name/status and pages newest first."""
    correlation = f"list-{uuid.uuid4()}"
    ids = [start(server, correlation_id=correlation) for _ in range(3)]
    for saga_id in ids:
        wait_for(server, saga_id)
    first = server.get(
        "/api/v1/sagas",
        params={"correlation_id": correlation, "page_size": 2, "workflow_name": "rest-order"},
    )
    assert first.status_code == 200, first.text
    body = first.json()
    assert set(body) == {"sagas", "pagination"}
    assert body["pagination"] == {"total_count": 3, "page": 1, "page_size": 2, "has_next": True}
    second = server.get(
        "/api/v1/sagas", params={"correlation_id": correlation, "page_size": 2, "page": 2}
    ).json()
    assert second["pagination"] == {"total_count": 3, "page": 2, "page_size": 2, "has_next": False}
    listed = body["sagas"] + second["sagas"]
    assert [s["saga_id"] for s in listed] == list(reversed(ids))
    for saga in listed:
        assert set(saga) == SAGA_FIELDS
        assert saga["correlation_id"] == correlation
    completed = server.get(
        "/api/v1/sagas", params={"correlation_id": correlation, "status": "COMPLETED"}
    ).json()
    assert completed["pagination"]["total_count"] == 3
    failed = server.get(
        "/api/v1/sagas", params={"correlation_id": correlation, "status": "FAILED"}
    ).json()
    assert failed == {
        "sagas": [],
        "pagination": {"total_count": 0, "page": 1, "page_size": 20, "has_next": False},
    }


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=abc", "page"),
        ("page=1.5", "page"),
        ("page_size=0", "page_size"),
        ("page_size=101", "page_size"),
        ("page_size=", "page_size"),
        ("status=DONE", "status"),
        ("status=completed", "status"),
        ("foo=1&bar=2", "bar, foo"),
        ("page=1&page=2", "page"),
        ("workflow_name=" + "x" * 256, "workflow_name"),
        ("correlation_id=a%00b", "correlation_id"),
    ],
)
def test_list_rejects_bad_query(server: GunicornServer, query: str, message: str) -> None:
    """A bad, unknown, repeated or out-of-range list parameter is a 400 naming it, never a clamp."""
    assert_error(server.get(f"/api/v1/sagas?{query}"), 400, "SYS_SAGA_VALIDATION_ERROR", message)


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"payload": {}}', "workflow_name"),
        (b'{"workflow_name": ""}', "workflow_name"),
        (b'{"workflow_name": 5}', "workflow_name"),
        (b'{"workflow_name": "rest-order", "payload": [1, 2]}', "payload"),
        (b'{"workflow_name": "rest-order", "payload": "text"}', "payload"),
        (b'{"workflow_name": "rest-order", "payload": 3}', "payload"),
        (b'{"workflow_name": "rest-order", "correlation_id": 3}', "correlation_id"),
        (b'{"workflow_name": "rest-order", "initiated_by": "' + b"x" * 256 + b'"}', "initiated_by"),
        (b'{"workflow_name": "rest\\u0000order"}', "NUL"),
        (b'{"workflow_name": "rest-order", "payload": {"k": "\\ud800"}}', "surrogate"),
        (b'{"workflow_name": "rest-order", "correlation_id": "\\udfff"}', "surrogate"),
        (b'{"workflow_name": "rest-order", "payload": {"n": NaN}}', "NaN"),
        (b'{"workflow_name": "rest-order", "payload": {"n": 1e400}}', "finite"),
        (b'{"workflow_name": "rest-order"', "malformed JSON"),
        (b"{'workflow_name': 'rest-order'}", "malformed JSON"),
        (b"not json", "malformed JSON"),
        (b'{"workflow_name": "rest-order", "payload": {"n": ' + b"1" * 5000 + b"}}", "number"),
        (b"", "JSON object"),
        (b"[]", "JSON object"),
        (b'"rest-order"', "JSON object"),
        (b"null", "JSON object"),
        (b'{"workflow_name": "caf\xe9"}', "UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested"),
        (
            b'{"workflow_name": "rest-order", "payload": ' + b'{"a":' * 65 + b"1" + b"}" * 66,
            "payload",
        ),
    ],
)
def test_start_rejects_bad_body(server: GunicornServer, body: bytes, message: str) -> None:
    """A start body that is malformed, not an object, or has a missing/invalid field is a 400."""
    response = server.post("/api/v1/sagas", data=body, headers=JSON)
    assert_error(response, 400, "SYS_SAGA_VALIDATION_ERROR", message)


def test_start_accepts_payload_at_the_depth_limit(server: GunicornServer) -> None:
    """A payload nested exactly json_depth (64) levels deep is accepted."""
    body = b'{"workflow_name": "rest-order", "payload": ' + b'{"a":' * 63 + b"{}" + b"}" * 64
    response = server.post("/api/v1/sagas", data=body, headers=JSON)
    assert response.status_code == 201, response.text


def test_start_rejects_non_json_content_type(server: GunicornServer) -> None:
    """A body declared as something other than JSON is a 400; a missing Content-Type is fine."""
    body = json.dumps({"workflow_name": "rest-order"}).encode()
    response = server.post("/api/v1/sagas", data=body, headers={"Content-Type": "text/plain"})
    assert_error(response, 400, "SYS_SAGA_VALIDATION_ERROR", "Content-Type")
    untyped = server.post("/api/v1/sagas", data=body, headers={"Content-Type": ""})
    assert untyped.status_code == 201, untyped.text


def test_start_unknown_workflow_is_404(server: GunicornServer) -> None:
    """Starting an unknown workflow is 404 `workflow not found: <name>`."""
    response = server.post("/api/v1/sagas", json={"workflow_name": "no-such-flow"})
    assert_error(response, 404, "SYS_SAGA_NOT_FOUND", "workflow not found: no-such-flow")


def test_oversized_body_is_413(server: GunicornServer) -> None:
    """A body over limits.request_body_bytes (1 MiB) is 413, with or without Content-Length."""
    big = json.dumps({"workflow_name": "rest-order", "pad": "x" * (1024 * 1024)}).encode()
    assert_error(
        server.post("/api/v1/sagas", data=big, headers=JSON), 413, "SYS_SAGA_PAYLOAD_TOO_LARGE"
    )
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))
    chunked = server.post("/api/v1/sagas", data=chunks, headers=JSON)  # Transfer-Encoding: chunked
    assert_error(chunked, 413, "SYS_SAGA_PAYLOAD_TOO_LARGE")


def test_payload_over_its_own_limit_is_400(server: GunicornServer) -> None:
    """A payload over limits.payload_bytes (256 KiB) in a body under 1 MiB is a 400."""
    body = {"workflow_name": "rest-order", "payload": {"pad": "x" * (300 * 1024)}}
    assert_error(
        server.post("/api/v1/sagas", json=body), 400, "SYS_SAGA_VALIDATION_ERROR", "payload"
    )


def raw_exchange(server: GunicornServer, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, half-close, and read one HTTP response (bounded by a socket timeout)."""
    port = server.config.server.port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            assert chunk, data
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        while len(rest) < length:
            chunk = conn.recv(65536)
            assert chunk
            rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def test_body_shorter_than_content_length_is_400(server: GunicornServer) -> None:
    """A Content-Length larger than the body actually sent is a 400 envelope, not a hang."""
    status, headers, body = raw_exchange(
        server,
        b"POST /api/v1/sagas HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"workflow_name"',
    )
    assert status == 400
    error = json.loads(body)["error"]
    assert error["code"] == "SYS_SAGA_VALIDATION_ERROR"
    assert error["request_id"] == headers["x-request-id"]


def test_body_without_content_length_is_read_as_empty(server: GunicornServer) -> None:
    """A body sent with neither Content-Length nor chunking is not read: a 400 envelope."""
    status, _, body = raw_exchange(
        server,
        b"POST /api/v1/sagas HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Connection: close\r\n\r\n{"workflow_name": "rest-order"}',
    )
    assert status == 400
    assert json.loads(body)["error"]["code"] == "SYS_SAGA_VALIDATION_ERROR"


# ----------------------------------------------------------------------------- request ids


def test_request_id_is_echoed(server: GunicornServer) -> None:
    """A valid X-Request-Id is echoed in the header and as the error's request_id."""
    sent = "client-id_42:" + "x" * 115  # 128 printable characters
    ok = server.get("/healthz", headers={"X-Request-Id": sent})
    assert ok.headers["X-Request-Id"] == sent
    error = server.get(f"/api/v1/sagas/{uuid.uuid4()}", headers={"X-Request-Id": "abc 123"})
    assert assert_error(error, 404, "SYS_SAGA_NOT_FOUND")["request_id"] == "abc 123"


@pytest.mark.parametrize("sent", ["x" * 129, "caf\xe9", "tab\there"])
def test_invalid_request_id_is_replaced(server: GunicornServer, sent: str) -> None:
    """An X-Request-Id over 128 characters or not printable ASCII gets a fresh req_<hex>."""
    response = server.get(f"/api/v1/sagas/{uuid.uuid4()}", headers={"X-Request-Id": sent})
    error = assert_error(response, 404, "SYS_SAGA_NOT_FOUND")
    assert GENERATED_ID.match(error["request_id"])


# ----------------------------------------------------------------------------- idempotency


def test_idempotency_key_replays_the_first_saga(server: GunicornServer) -> None:
    """The same Idempotency-Key and body return 200 with the first saga id and its current
    status; the same key with another body is 409."""
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    body = {"workflow_name": "rest-order", "payload": {"order": 1}}
    first = server.post("/api/v1/sagas", json=body, headers=key)
    assert first.status_code == 201, first.text
    saga_id = first.json()["saga_id"]
    wait_for(server, saga_id)
    again = server.post("/api/v1/sagas", json=body, headers=key)
    assert again.status_code == 200, again.text
    assert again.json() == {"saga_id": saga_id, "status": "COMPLETED"}
    other = server.post(
        "/api/v1/sagas", json={"workflow_name": "rest-order", "payload": {"order": 2}}, headers=key
    )
    assert_error(other, 409, "SYS_SAGA_CONFLICT", "Idempotency-Key")


@pytest.mark.parametrize("key", ["", "k" * 256, "caf\xe9"])
def test_bad_idempotency_key_is_400(server: GunicornServer, key: str) -> None:
    """An Idempotency-Key that is empty, over 255 characters or not printable ASCII is a 400."""
    response = server.post(
        "/api/v1/sagas", json={"workflow_name": "rest-order"}, headers={"Idempotency-Key": key}
    )
    assert_error(response, 400, "SYS_SAGA_VALIDATION_ERROR", "Idempotency-Key")


# ----------------------------------------------------------------------------- cancel


@pytest.mark.parametrize("action", ["cancel", "compensate"])
def test_cancel_running_saga_compensates_it(server: GunicornServer, action: str) -> None:
    """POST /cancel (and its alias /compensate) on a running saga is 200; the saga then ends
    CANCELLED with its completed step compensated."""
    saga_id = start(server, workflow_name="rest-slow")
    wait_for(server, saga_id, lambda d: d["saga"]["status"] == "RUNNING", timeout=10)
    response = server.post(f"/api/v1/sagas/{saga_id}/{action}")
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True, "message": f"saga {saga_id} cancelled"}
    detail = wait_for(server, saga_id)
    assert detail["saga"]["status"] == "CANCELLED"
    assert [(g["step_name"], g["action"], g["status"]) for g in detail["step_logs"]] == [
        ("wait", "EXECUTE", "SUCCESS"),
        ("wait", "COMPENSATE", "SUCCESS"),
    ]


@pytest.mark.parametrize("action", ["cancel", "compensate"])
def test_cancel_terminal_saga_is_409(server: GunicornServer, action: str) -> None:
    """Cancelling a terminal saga is 409 SYS_SAGA_CONFLICT and changes nothing."""
    saga_id = start(server)
    wait_for(server, saga_id)
    assert_error(
        server.post(f"/api/v1/sagas/{saga_id}/{action}"), 409, "SYS_SAGA_CONFLICT", "COMPLETED"
    )
    assert wait_for(server, saga_id)["saga"]["status"] == "COMPLETED"


@pytest.mark.parametrize("action", ["cancel", "compensate"])
def test_cancel_unknown_or_invalid_saga(server: GunicornServer, action: str) -> None:
    """Cancelling an unknown saga is 404; a saga id that is not a UUID is 400."""
    assert_error(server.post(f"/api/v1/sagas/{uuid.uuid4()}/{action}"), 404, "SYS_SAGA_NOT_FOUND")
    assert_error(server.post(f"/api/v1/sagas/nope/{action}"), 400, "SYS_SAGA_VALIDATION_ERROR")


# ----------------------------------------------------------------------------- workflows


def test_register_and_list_workflows(server: GunicornServer) -> None:
    """POST /api/v1/workflows is 201 {name, step_count, version}; registering again adds a
    version; GET lists name, step_count and step_names of the latest version."""
    name = f"flow-{uuid.uuid4().hex[:8]}"
    text = ORDER_YAML.replace("name: rest-order", f"name: {name}")
    first = server.post("/api/v1/workflows", json={"workflow_yaml": text})
    assert first.status_code == 201, first.text
    assert first.json() == {"name": name, "step_count": 2, "version": 1}
    second = server.post("/api/v1/workflows", json={"workflow_yaml": text})
    assert second.json() == {"name": name, "step_count": 2, "version": 2}
    listed = server.get("/api/v1/workflows")
    assert listed.status_code == 200
    body = listed.json()
    assert set(body) == {"workflows"}
    by_name = {w["name"]: w for w in body["workflows"]}
    assert by_name[name] == {
        "name": name,
        "step_count": 2,
        "step_names": ["reserve", "charge"],
        "version": 2,
    }
    assert by_name["rest-order"]["step_names"] == ["reserve", "charge"]  # from workflow_dir


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "workflow_yaml"),
        ({"workflow_yaml": ""}, "workflow_yaml"),
        ({"workflow_yaml": 5}, "workflow_yaml"),
        ({"workflow_yaml": "name: [unclosed"}, None),
        ({"workflow_yaml": "name: x\nsteps: []\n"}, "steps"),
        ({"workflow_yaml": ORDER_YAML.replace("service: shop", "service: ghost")}, "ghost"),
        ({"workflow_yaml": ORDER_YAML + "unknown_key: 1\n"}, "unknown_key"),
        ({"workflow_yaml": "name: x\x00\n"}, "NUL"),
    ],
)
def test_register_rejects_bad_workflow(
    server: GunicornServer, body: dict[str, Any], message: str | None
) -> None:
    """Bad YAML, a missing document, an unknown service or an unknown key is a 400."""
    response = server.post("/api/v1/workflows", json=body)
    assert_error(response, 400, "SYS_SAGA_VALIDATION_ERROR", message)


# ----------------------------------------------------------------------------- routing


def test_unknown_route_is_404_envelope(server: GunicornServer) -> None:
    """An unknown path is a 404 in the error envelope, with a request id."""
    assert_error(server.get("/api/v2/nothing"), 404, "SYS_SAGA_NOT_FOUND")
    assert_error(server.get("/api/v1/sagas/"), 404, "SYS_SAGA_NOT_FOUND")


def test_wrong_method_is_405_envelope(server: GunicornServer) -> None:
    """A known path with the wrong method is a 405 in the error envelope, with Allow."""
    response = server.request("DELETE", "/api/v1/sagas")
    assert_error(response, 405, "SYS_SAGA_VALIDATION_ERROR")
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}
    assert_error(
        server.get(f"/api/v1/sagas/{uuid.uuid4()}/cancel"), 405, "SYS_SAGA_VALIDATION_ERROR"
    )


def test_openapi_document_is_served(server: GunicornServer) -> None:
    """GET /api/v1/openapi.json is 200 with an OpenAPI 3.1 document."""
    response = server.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.json()["openapi"].startswith("3.1")


# ----------------------------------------------------------------------------- scale-out


def test_every_worker_sees_a_saga_started_through_one(server: GunicornServer) -> None:
    """With 3 gunicorn workers on one store, a saga started through one worker is read by
    every request, each on a new connection (so spread over the workers)."""
    assert len(server.workers) == 3
    saga_id = start(server)
    for _ in range(60):
        response = server.get(f"/api/v1/sagas/{saga_id}")
        assert response.status_code == 200, response.text
        assert response.json()["saga"]["saga_id"] == saga_id
    listed = server.get("/api/v1/sagas", params={"page_size": 100}).json()
    assert saga_id in {s["saga_id"] for s in listed["sagas"]}


def test_concurrent_starts_through_all_workers_all_complete(server: GunicornServer) -> None:
    """Sagas started concurrently through every worker all complete, each exactly once."""
    correlation = f"burst-{uuid.uuid4()}"
    ids: list[str] = []
    lock = threading.Lock()

    def starter() -> None:
        for _ in range(5):
            saga_id = start(server, correlation_id=correlation)
            with lock:
                ids.append(saga_id)

    threads = [threading.Thread(target=starter) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(set(ids)) == 30
    for saga_id in ids:
        detail = wait_for(server, saga_id, timeout=30)
        assert detail["saga"]["status"] == "COMPLETED"
        assert len(detail["step_logs"]) == 2


# ----------------------------------------------------------------------------- process life


def test_sigterm_stops_every_worker_and_cleans_up(tmp_path: Path, participant: int) -> None:
    """SIGTERM stops the master and every worker with status 0, each worker closes its engine,
    and the Prometheus multiprocess directory the master created is removed."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    running = GunicornServer(
        write_config(tmp_path, participant), tmp_path / "gunicorn.log", tmpdir=scratch
    )
    try:
        running.wait_ready(workers=3)
        workers = list(running.workers)
        assert start(running) and start(running)
        made = list(scratch.glob("saga-prometheus-*"))
        assert len(made) == 1 and list(made[0].glob("*.db"))
    finally:
        code = running.stop()
    assert code == 0, running.log()
    assert not [pid for pid in workers if alive(pid)]
    assert not made[0].exists()
    assert running.log().count("closing its engine") == 3  # worker_exit ran in each worker
    assert "Traceback" not in running.log()


def test_bad_config_stops_gunicorn_with_one_line(tmp_path: Path, participant: int) -> None:
    """A bad config file stops gunicorn before it forks: non-zero exit, one line naming the
    file, the key and the problem."""
    path = write_config(tmp_path, participant, saga={"max_concurrent": 0})
    result = subprocess.run(
        [gunicorn_executable(), "-c", "saga_http/gunicorn.conf.py", "saga_http.wsgi:app"],
        cwd=REPO,
        env=os.environ | {"CONFIG_PATH": str(path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "saga.max_concurrent" in lines[0]


# ----------------------------------------------------------------------------- in-process


class InProcessServer:
    """The Flask app over a given engine, on a real loopback socket (werkzeug, threaded)."""

    def __init__(self, engine: Engine) -> None:
        self.app = create_app(engine.config, engine)
        self.http = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.base = f"http://127.0.0.1:{self.http.server_port}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.thread.join(timeout=10)
        self.http.server_close()


class _UnreachableStore(MemoryStore):
    def ping(self) -> None:
        raise ConnectionError("connection refused")

    def get_saga(self, saga_id: str) -> Any:
        raise RuntimeError('SELECT * FROM saga_states WHERE id = %s -- password="hunter2"')


@pytest.fixture
def broken_server(tmp_path: Path) -> Iterator[InProcessServer]:
    config = load_config(str(write_config(tmp_path, 1)))
    running = InProcessServer(Engine(config, _UnreachableStore(), execute=False))
    try:
        yield running
    finally:
        running.close()


def test_readyz_is_503_when_the_store_does_not_answer(broken_server: InProcessServer) -> None:
    """GET /readyz is 503 {"status": "not ready", "reason": ...} when the store fails."""
    response = requests.get(broken_server.base + "/readyz", timeout=10)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready" and body["reason"]
    assert requests.get(broken_server.base + "/healthz", timeout=10).status_code == 200


def test_internal_error_is_500_without_details(
    broken_server: InProcessServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected error is 500 SYS_SAGA_INTERNAL_ERROR with a generic message (no SQL, no
    trace), and the server log has the exception with the request id."""
    response = requests.get(
        f"{broken_server.base}/api/v1/sagas/{uuid.uuid4()}",
        headers={"X-Request-Id": "trace-me"},
        timeout=10,
    )
    error = assert_error(response, 500, "SYS_SAGA_INTERNAL_ERROR")
    assert error["request_id"] == "trace-me"
    for leak in ("SELECT", "hunter2", "Traceback", "RuntimeError"):
        assert leak not in response.text
    logged = [r for r in caplog.records if getattr(r, "request_id", None) == "trace-me"]
    assert logged and logged[0].exc_info is not None


def test_stats_answer_counts_an_hour_of_minutes_and_the_outbox(server: GunicornServer) -> None:
    """/api/v1/stats has every status, 60 minutes oldest first ending now, and the outbox; a
    saga started now shows in the last minute and in its status count."""
    before = requests.get(f"{server.base}/api/v1/stats", timeout=10).json()
    start(server, payload={"n": 1})
    got = requests.get(f"{server.base}/api/v1/stats", timeout=10)
    assert got.status_code == 200
    body = got.json()
    assert set(body["counts"]) == {
        "STARTED", "RUNNING", "COMPLETED", "COMPENSATING", "FAILED", "CANCELLED"
    } | ({"PAUSED"} if "PAUSED" in body["counts"] else set())  # fmt: skip
    assert sum(body["counts"].values()) == sum(before["counts"].values()) + 1
    minutes = [m["minute"] for m in body["activity"]]
    assert len(minutes) == 60 and minutes == sorted(minutes)
    assert sum(m["started"] for m in body["activity"][-2:]) >= 1
    assert set(body["outbox"]) == {"backlog", "oldest_age_secs"}
    bad = requests.get(f"{server.base}/api/v1/stats?x=1", timeout=10)
    assert_error(bad, 400, "SYS_SAGA_VALIDATION_ERROR", "unknown query parameter")
