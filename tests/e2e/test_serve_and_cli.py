"""`saga serve`, the client CLI and `saga demo`, as a user runs them: real processes, real ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests

from saga_grpc.gen.k1s0.system.saga.v1 import saga_pb2, saga_pb2_grpc
from tests.harness import ROOT, ParticipantProcess, free_port, wait_until, write_config

SAGA = [sys.executable, "-m", "saga_cli.main"]


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


class Server:
    def __init__(self, tmp: Path, participant_port: int) -> None:
        self.rest, self.grpc = free_port(), free_port()
        self.config = write_config(
            tmp / "serve.yaml",
            port=participant_port,
            sqlite_path=tmp / "serve.sqlite3",
            workflow_dir=ROOT / "workflows",
            extra={
                "server": {"host": "127.0.0.1", "port": self.rest, "workers": 2},
                "grpc": {"host": "127.0.0.1", "port": self.grpc},
            },
        )
        self.log = open(tmp / "serve.log", "wb")  # noqa: SIM115 - closed in stop()
        env = {
            k: v
            for k, v in os.environ.items()
            if k != "DATABASE_URL" and not k.startswith("SAGA_SAGA")
        }
        self.proc = subprocess.Popen(
            [*SAGA, "serve", "--config", str(self.config)],
            cwd=tmp,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.rest}"

        def ready() -> bool:
            try:
                return requests.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except requests.RequestException:
                assert self.proc.poll() is None, (tmp / "serve.log").read_text()
                return False

        wait_until(ready, 60, interval=0.2, what="saga serve to be ready")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*SAGA, *args, "--url", self.url], capture_output=True, text=True, cwd=ROOT, timeout=60
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    participant = ParticipantProcess(
        {
            "PaymentService.Charge": {
                "fail_if_payload": {"field": "card", "equals": "declined"},
                "fail": "FAILED_PRECONDITION",
                "message": "payment declined",
            },
            "ShippingService.CreateShipment": {"sleep_ms": 1500},
        },
        tmp_path,
    )
    srv = Server(tmp_path, participant.port)
    try:
        yield srv
    finally:
        srv.stop()
        participant.stop()


def test_cli_drives_a_saga_through_saga_serve(server: Server, tmp_path: Path) -> None:
    """workflows list, start, get --watch, list and cancel work against `saga serve`, with --json too."""
    listed = server.cli("workflows", "list")
    assert listed.returncode == 0, listed.stderr
    assert "order-fulfillment" in listed.stdout and "reserve-inventory" in listed.stdout

    payload = tmp_path / "order.json"
    payload.write_text(json.dumps({"order_id": "o-1", "card": "ok"}))
    started = server.cli(
        "start",
        "order-fulfillment",
        "--payload",
        f"@{payload}",
        "--correlation-id",
        "cli-1",
        "--json",
    )
    assert started.returncode == 0, started.stderr
    saga_id = json.loads(started.stdout)["saga_id"]

    watched = server.cli("get", saga_id, "--watch")
    assert watched.returncode == 0, watched.stderr
    assert "status COMPLETED" in watched.stdout
    assert watched.stdout.index("reserve-inventory") < watched.stdout.index("arrange-shipping")

    table = server.cli("list", "--correlation-id", "cli-1")
    assert saga_id in table.stdout and "COMPLETED" in table.stdout
    as_json = json.loads(server.cli("list", "--status", "COMPLETED", "--json").stdout)
    assert as_json["pagination"]["total_count"] >= 1

    refused = server.cli("cancel", saga_id)
    assert refused.returncode != 0
    assert "SYS_SAGA_CONFLICT" in refused.stderr and "COMPLETED" in refused.stderr
    bad = server.cli("get", "not-a-uuid")
    assert bad.returncode != 0 and "SYS_SAGA_VALIDATION_ERROR" in bad.stderr
    missing = server.cli("start", "no-such-workflow")
    assert missing.returncode != 0 and "workflow not found: no-such-workflow" in missing.stderr


def test_cancel_from_the_cli_compensates(server: Server) -> None:
    """`saga cancel` during the slow shipping step ends the saga CANCELLED after compensation."""
    started = server.cli("start", "order-fulfillment", "--payload", '{"card": "ok"}')
    saga_id = started.stdout.split()[0]
    wait_until(lambda: "process-payment" in server.cli("get", saga_id).stdout, 20)
    cancelled = server.cli("cancel", saga_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"saga {saga_id} cancelled"
    watched = server.cli("get", saga_id, "--watch")
    assert "status CANCELLED" in watched.stdout
    assert "COMPENSATE reserve-inventory" in " ".join(watched.stdout.split())


def test_rest_and_grpc_see_the_same_sagas(server: Server) -> None:
    """A saga started over REST is read over gRPC, and one started over gRPC is read over REST."""
    rest_id = requests.post(
        f"{server.url}/api/v1/sagas",
        json={"workflow_name": "order-fulfillment", "payload": {"card": "ok"}},
        timeout=10,
    ).json()["saga_id"]
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc}") as channel:
        stub = saga_pb2_grpc.SagaServiceStub(channel)
        got = stub.GetSaga(saga_pb2.GetSagaRequest(saga_id=rest_id), timeout=10)
        assert got.saga.id == rest_id and json.loads(got.saga.payload) == {"card": "ok"}
        started = stub.StartSaga(
            saga_pb2.StartSagaRequest(
                workflow_name="order-fulfillment", payload=b'{"card": "declined"}'
            ),
            timeout=10,
        )
    wait_until(
        lambda: (
            requests.get(f"{server.url}/api/v1/sagas/{started.saga_id}", timeout=5).json()["saga"][
                "status"
            ]
            == "FAILED"
        ),
        30,
    )
    body = requests.get(f"{server.url}/api/v1/sagas/{started.saga_id}", timeout=5).json()
    assert [(g["step_name"], g["action"]) for g in body["step_logs"]][-1] == (
        "reserve-inventory",
        "COMPENSATE",
    )


def test_serve_stops_cleanly_on_sigterm(server: Server) -> None:
    """SIGTERM stops REST, gRPC and execution with status 0 and leaves no process behind."""
    config = str(server.config)
    assert processes_mentioning(config)
    assert server.stop() == 0
    wait_until(lambda: not processes_mentioning(config), 10, what="no process left")


def test_demo_runs_from_a_clean_directory_and_leaves_nothing_running(tmp_path: Path) -> None:
    """`saga demo` prints its four orders (one that completes, a digital one whose shipping is
    skipped, one that cannot be shipped and is refunded with the charge id the payment
    answered, one whose payment is declined), exits 0, and leaves no process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGA_") and k != "DATABASE_URL"}
    env["PYTHONPATH"] = str(ROOT)
    marker = f"demo-{uuid.uuid4().hex[:6]}"
    result = subprocess.run(
        [*SAGA, "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env={**env, "SAGA_DEMO_MARK": marker},
    )
    assert result.returncode == 0, result.stderr
    blocks = {b.split("\n", 1)[0]: " ".join(b.split()) for b in result.stdout.split("== ")[1:]}
    through, digital, unshippable, declined = (
        blocks[k]
        for k in (
            "an order that goes through",
            "a digital order: nothing to ship, so shipping is skipped",
            "an order that cannot be shipped: the refund gets the charge id",
            "an order whose payment is declined",
        )
    )
    assert "status COMPLETED" in through and "arrange-shipping SUCCESS" in through
    assert "status COMPLETED" in digital and "EXECUTE arrange-shipping SKIPPED" in digital
    assert "COMPENSATE arrange-shipping" not in digital
    assert "status FAILED" in unshippable and "address not deliverable" in unshippable
    assert (
        'COMPENSATE process-payment SUCCESS sent {"order_id":"A-1003","charge_id":"ch_1"}'
        in unshippable
    )
    assert "COMPENSATE reserve-inventory SUCCESS" in unshippable
    assert "status FAILED" in declined
    assert "FAILED_PRECONDITION: payment declined" in declined
    assert "COMPENSATE reserve-inventory" in declined
    assert "arrange-shipping" not in declined
    assert list(tmp_path.iterdir()) == []
    wait_until(lambda: not processes_mentioning("saga-demo-"), 10, what="demo processes to be gone")


def test_the_demo_workflow_is_the_sample_file() -> None:
    """The workflow the demo registers is the one shipped in workflows/order-fulfillment.yaml."""
    from saga_cli.demo import ORDER_FULFILLMENT

    assert (ROOT / "workflows" / "order-fulfillment.yaml").read_text() == ORDER_FULFILLMENT
