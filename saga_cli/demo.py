"""`saga demo`: demo participants (inventory, payment, shipping) on loopback, a real server
(`saga serve` in a child process, on a throw-away SQLite file), the `order-fulfillment`
workflow, one saga that completes and one whose payment is declined and is compensated.
It prints both timelines and leaves nothing running.

The same participants (`BEHAVIOURS`, `start_demo_participants`) are what `saga serve` starts
for `saga.demo_participants` (config/config.yaml, so `make run` completes the sample workflow).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from saga_cli.client import TERMINAL, Client, ClientError, print_timeline

ORDER_FULFILLMENT = """name: order-fulfillment
steps:
  - name: reserve-inventory
    service: inventory-service
    method: InventoryService.Reserve
    compensate: InventoryService.Release
    timeout_secs: 30
    retry:
      max_attempts: 3
      backoff: exponential
      initial_interval_ms: 1000
  - name: process-payment
    service: payment-service
    method: PaymentService.Charge
    compensate: PaymentService.Refund
    timeout_secs: 30
    retry:
      max_attempts: 3
      backoff: exponential
      initial_interval_ms: 1000
    # The charge gets what it needs; the refund gets the charge id the charge answered.
    input: "{order_id: payload.order_id, amount: payload.amount, card: payload.card}"
    compensate_input: '{order_id: payload.order_id, charge_id: steps."process-payment".response.charge_id}'
  - name: arrange-shipping
    service: shipping-service
    method: ShippingService.CreateShipment
    compensate: ShippingService.CancelShipment
    timeout_secs: 30
    retry:
      max_attempts: 3
      backoff: exponential
      initial_interval_ms: 1000
    # A digital order has nothing to ship: the step is skipped (and never compensated).
    when: "!(payload.digital)"
"""

BEHAVIOURS: dict[str, dict[str, Any]] = {
    "inventory-service": {
        "InventoryService.Reserve": {"reply": {"reservation_id": "r-1", "reserved": True}}
    },
    "payment-service": {
        "PaymentService.Charge": {
            "fail_if_payload": {"field": "card", "equals": "declined"},
            "fail": "FAILED_PRECONDITION",
            "message": "payment declined",
            "reply": {"charge_id": "ch_1", "charged": True},
        }
    },
    "shipping-service": {
        "ShippingService.CreateShipment": {
            "fail_if_payload": {"field": "address", "equals": "nowhere"},
            "fail": "FAILED_PRECONDITION",
            "message": "address not deliverable",
            "reply": {"tracking": "TRK-42"},
        }
    },
}


class DemoParticipants:
    """The demo participants running in this process: one gRPC server per service."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.ports: dict[str, int] = {}
        self._servers: list[Any] = []

    def add(self, name: str, server: Any, port: int) -> None:
        """Keep `server`, which serves `name` on `port`, to be stopped with the others."""
        self._servers.append(server)
        self.ports[name] = port

    def stop(self) -> None:
        """Stop every participant server now and wait until each has stopped."""
        for server in self._servers:
            server.stop(grace=None).wait(5)
        self._servers.clear()


def start_demo_participants(host: str = "127.0.0.1") -> DemoParticipants:
    """Start the inventory, payment and shipping participants of `BEHAVIOURS` in this process,
    each on a free port of `host`; if one cannot start, stop the others and raise."""
    from workers.scripted_participants import start_participant_server

    running = DemoParticipants(host)
    try:
        for name, behaviour in BEHAVIOURS.items():
            server, port = start_participant_server(behaviour, host=host)
            running.add(name, server, port)
    except BaseException:
        running.stop()
        raise
    return running


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_demo(out: Any = sys.stdout) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="saga-demo-"))
    participants: DemoParticipants | None = None
    server_proc: subprocess.Popen[bytes] | None = None
    try:
        participants = start_demo_participants()
        ports = participants.ports
        for name, port in ports.items():
            print(f"participant {name} on {participants.host}:{port}", file=out)
        rest, grpc_port = _free_port(), _free_port()
        config = {
            "server": {"host": "127.0.0.1", "port": rest, "workers": 1},
            "grpc": {"host": "127.0.0.1", "port": grpc_port},
            "services": {name: {"host": "127.0.0.1", "port": port} for name, port in ports.items()},
            "saga": {
                "sqlite_path": str(workdir / "saga.sqlite3"),
                "workflow_dir": str(workdir / "workflows"),
            },
        }
        config_path = workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("SAGA_") and k != "DATABASE_URL"
        }
        env["SAGA_LOG_LEVEL"] = "WARNING"
        server_proc = subprocess.Popen(
            [sys.executable, "-m", "saga_cli.main", "serve", "--config", str(config_path)],
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / "server.log", "wb"),  # noqa: SIM115 - closed with the process
        )
        client = Client(f"http://127.0.0.1:{rest}")
        deadline = time.monotonic() + 60
        while True:
            try:
                client.request("GET", "/readyz")
                break
            except ClientError:
                if server_proc.poll() is not None or time.monotonic() > deadline:
                    print(
                        (workdir / "server.log").read_text(errors="replace")[-2000:],
                        file=sys.stderr,
                    )
                    print("saga demo: the server did not start", file=sys.stderr)
                    return 1
                time.sleep(0.2)
        print(f"server: REST http://127.0.0.1:{rest}, gRPC 127.0.0.1:{grpc_port}", file=out)
        _, registered = client.request(
            "POST", "/api/v1/workflows", json={"workflow_yaml": ORDER_FULFILLMENT}
        )
        print(
            f"registered workflow {registered['name']} ({registered['step_count']} steps)\n",
            file=out,
        )
        orders = [
            ("an order that goes through", {"order_id": "A-1001", "amount": 42, "card": "ok"}),
            (
                "a digital order: nothing to ship, so shipping is skipped",
                {"order_id": "A-1002", "amount": 15, "card": "ok", "digital": True},
            ),
            (
                "an order that cannot be shipped: the refund gets the charge id",
                {"order_id": "A-1003", "amount": 30, "card": "ok", "address": "nowhere"},
            ),
            (
                "an order whose payment is declined",
                {"order_id": "A-1004", "amount": 99, "card": "declined"},
            ),
        ]
        for title, payload in orders:
            _, started = client.request(
                "POST",
                "/api/v1/sagas",
                json={
                    "workflow_name": "order-fulfillment",
                    "payload": payload,
                    "initiated_by": "saga-demo",
                },
            )
            saga_id = started["saga_id"]
            detail: dict[str, Any] = {}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                _, detail = client.request("GET", f"/api/v1/sagas/{saga_id}")
                if detail["saga"]["status"] in TERMINAL:
                    break
                time.sleep(0.1)
            print(f"== {title}", file=out)
            print_timeline(detail, out)
            print(file=out)
        return 0
    except ClientError as exc:
        print(f"saga demo: {exc.message}", file=sys.stderr)
        return 1
    finally:
        if server_proc is not None and server_proc.poll() is None:
            os.killpg(server_proc.pid, signal.SIGTERM)
            try:
                server_proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server_proc.pid, signal.SIGKILL)
                server_proc.wait(5)
        if participants is not None:
            participants.stop()
        shutil.rmtree(workdir, ignore_errors=True)
